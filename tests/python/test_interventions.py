"""Activation patching, head ablation and head importance against independent references."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers as tf

from llmdbg.adapters.heads import head_geometry
from llmdbg.interventions import ablate, head_importance, head_means, logit_diff, patch
from tiny_models import tiny_inputs, tiny_model

CAUSAL = {"gpt2": tf.GPT2LMHeadModel, "llama": tf.LlamaForCausalLM, "gpt_neox": tf.GPTNeoXForCausalLM}


def _hook_counts(model):
    return {k: (len(m._forward_hooks), len(m._forward_pre_hooks)) for k, m in model.named_modules()}


def _pair(family="gpt2"):
    clean = tiny_inputs(family, batch=2, length=6, seed=1)
    corrupt = {k: v.clone() for k, v in clean.items()}
    corrupt["input_ids"][:, 2] = (corrupt["input_ids"][:, 2] + 7) % 97 + 3
    return clean, corrupt


def test_patch_identities():
    model = tiny_model("gpt2", tf.GPT2LMHeadModel)
    clean, corrupt = _pair()
    metric = logit_diff(5, 6)
    with torch.no_grad():
        m_clean = float(metric(model(**clean)))
        m_corrupt = float(metric(model(**corrupt)))
    before = _hook_counts(model)
    # The clean run patched with its own activations: zero effect everywhere.
    same = patch(model, clean, clean, metric=metric, progress=False)
    np.testing.assert_allclose(same.effects, 0.0, atol=1e-6)
    np.testing.assert_allclose(same.values, m_clean, rtol=1e-6)
    # The corrupted run "restored" with the corrupted run's own activations: the corrupted metric.
    own = patch(model, corrupt, corrupt, metric=metric, modules="mlp", progress=False)
    np.testing.assert_allclose(own.values, m_corrupt, rtol=1e-6)
    res = patch(model, clean, corrupt, metric=metric, modules="blocks", positions="all", progress=False)
    assert res.effects.shape == (2, 6) and res.clean_metric == pytest.approx(m_clean)
    assert res.corrupted_metric == pytest.approx(m_corrupt)
    # Positions before the corrupted token carry no difference in a causal model.
    np.testing.assert_allclose(res.effects[:, :2], 0.0, atol=1e-6)
    # Restoring the whole last block output (all positions at once) restores the clean run.
    joint = patch(model, clean, corrupt, metric=metric, positions="joint", progress=False)
    assert joint.values[-1, 0] == pytest.approx(m_clean, rel=1e-5)
    assert joint.recovered[-1, 0] == pytest.approx(1.0, rel=1e-4)
    assert _hook_counts(model) == before
    assert len(res.plot().axes) == 2


def test_patch_matches_manual_hook():
    model = tiny_model("llama", tf.LlamaForCausalLM)
    clean, corrupt = _pair("llama")
    metric = logit_diff(5, 6)
    res = patch(model, clean, corrupt, metric=metric, modules=["model.layers.0.mlp"], positions=[2, -1], progress=False)
    with torch.no_grad():
        store = {}
        h = model.model.layers[0].mlp.register_forward_hook(lambda m, a, o: store.setdefault("c", o.clone()))
        model(**clean)
        h.remove()
        for j, p in enumerate([2, 5]):

            def put(m, a, o, p=p):
                o = o.clone()
                o[:, p] = store["c"][:, p]
                return o

            h = model.model.layers[0].mlp.register_forward_hook(put)
            v = float(metric(model(**corrupt)))
            h.remove()
            assert res.values[0, j] == pytest.approx(v, rel=1e-6)


def test_patch_bad_input():
    model = tiny_model("gpt2", tf.GPT2LMHeadModel)
    clean, corrupt = _pair()
    short = {k: v[:, :5] for k, v in corrupt.items()}
    with pytest.raises(ValueError, match="different|same length|shape"):
        patch(model, clean, short, metric=logit_diff(1, 2))
    with pytest.raises(ValueError, match="out of range"):
        patch(model, clean, corrupt, metric=logit_diff(1, 2), positions=[6])
    with pytest.raises(ValueError, match="neither a role"):
        patch(model, clean, corrupt, metric=logit_diff(1, 2), modules=["nope"])


@pytest.mark.parametrize("family", list(CAUSAL))
def test_ablating_no_heads_changes_nothing(family):
    model = tiny_model(family, CAUSAL[family])
    inputs = tiny_inputs(family)
    res = ablate(model, inputs, heads=[])
    with torch.no_grad():
        ref = model(**inputs).logits.numpy()
    np.testing.assert_array_equal(res.logits, ref)
    np.testing.assert_array_equal(res.baseline_logits, ref)
    np.testing.assert_allclose(res.kl, 0.0, atol=1e-12)


def _zero_columns(model, family, layer, head, shift=None):
    """Reference: an edited copy whose output projection ignores the head (and adds W·mean)."""
    ref = copy.deepcopy(model)
    names, _, d = head_geometry(ref)
    proj = ref.get_submodule(names[layer])
    sl = slice(head * d, (head + 1) * d)
    with torch.no_grad():
        conv = type(proj).__name__ == "Conv1D"  # GPT-2: weight (in, out)
        w = proj.weight[sl, :] if conv else proj.weight[:, sl]
        if shift is not None:
            add = shift @ w if conv else w @ shift
            if proj.bias is None:
                proj.bias = torch.nn.Parameter(torch.zeros(proj.weight.shape[1 if conv else 0]))
            proj.bias += add
        w.zero_()
    return ref


@pytest.mark.parametrize("family", list(CAUSAL))
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablation_equals_weight_edit(family, mode):
    model = tiny_model(family, CAUSAL[family])
    inputs = tiny_inputs(family)
    res = ablate(model, inputs, heads=[(1, 2)], mode=mode)
    shift = head_means(model, inputs)[1, 2] if mode == "mean" else None
    ref = _zero_columns(model, family, 1, 2, shift)
    with torch.no_grad():
        expected = ref(**inputs).logits.numpy()
    np.testing.assert_allclose(res.logits, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(res.logits, res.baseline_logits)


def test_head_means_reference():
    model = tiny_model("llama", tf.LlamaForCausalLM)
    inputs = tiny_inputs("llama")
    store = {}
    h = model.model.layers[0].self_attn.o_proj.register_forward_pre_hook(lambda m, a: store.setdefault("x", a[0]))
    with torch.no_grad():
        model(**inputs)
    h.remove()
    x = store["x"].view(2, 7, 4, 8)
    valid = inputs["attention_mask"].bool()
    np.testing.assert_allclose(head_means(model, inputs)[0].numpy(), x[valid].mean(0).numpy(), rtol=1e-5, atol=1e-6)


def test_ablation_works_under_sdpa_and_eager_alike():
    inputs = tiny_inputs("llama")
    out = {}
    for impl in ("sdpa", "eager"):
        model = tiny_model("llama", tf.LlamaForCausalLM)
        model.set_attn_implementation(impl)
        out[impl] = ablate(model, inputs, heads=[(0, 1), (1, 3)]).logits
        assert model.config._attn_implementation == impl
    np.testing.assert_allclose(out["sdpa"], out["eager"], rtol=1e-4, atol=1e-5)


def test_head_importance_equals_finite_differences():
    model = tiny_model("gpt2", tf.GPT2LMHeadModel, dtype=torch.float64).train()
    inputs = tiny_inputs("gpt2")
    imp = head_importance(model, inputs, progress=False)
    assert model.training and all(p.requires_grad for p in model.parameters())
    _, n_heads, _ = head_geometry(model)
    tokens = int(inputs["attention_mask"].sum())
    from llmdbg.interventions import lm_loss
    from llmdbg.interventions.heads import ablation

    model.eval()
    eps = 1e-5
    for layer in range(2):
        for head in range(n_heads):
            vals = []
            for s in (1, -1):
                g = torch.ones(2, n_heads, dtype=torch.float64)
                g[layer, head] += s * eps
                with ablation(model, [], gates=g), torch.no_grad():
                    vals.append(float(lm_loss(model(**inputs), inputs)))
            fd = abs(vals[0] - vals[1]) / (2 * eps) / tokens
            assert imp.raw[layer, head] == pytest.approx(fd, rel=1e-5, abs=1e-12)
    raw = imp.raw / np.linalg.norm(imp.raw, axis=1, keepdims=True)
    np.testing.assert_allclose(imp.scores, (raw - raw.min()) / (raw.max() - raw.min()), rtol=1e-12)
    assert imp.ranking[0] == tuple(np.unravel_index(imp.scores.argmax(), imp.scores.shape))
    assert len(imp.ranking) == 2 * n_heads
    assert len(imp.plot().axes) == 2


def test_head_importance_batches_accumulate():
    model = tiny_model("llama", tf.LlamaForCausalLM, dtype=torch.float64)
    a, b = tiny_inputs("llama", seed=1), tiny_inputs("llama", seed=2)
    ia = head_importance(model, a, normalize=False, progress=False).raw
    ib = head_importance(model, b, normalize=False, progress=False).raw
    both = head_importance(model, [a, b], normalize=False, progress=False).raw
    ta, tb = int(a["attention_mask"].sum()), int(b["attention_mask"].sum())
    np.testing.assert_allclose(both, (ia * ta + ib * tb) / (ta + tb), rtol=1e-10)


def test_ablation_bad_input():
    model = tiny_model("gpt2", tf.GPT2LMHeadModel)
    inputs = tiny_inputs("gpt2")
    before = _hook_counts(model)
    with pytest.raises(ValueError, match="out of range"):
        ablate(model, inputs, heads=[(2, 0)])
    with pytest.raises(ValueError, match="out of range"):
        ablate(model, inputs, heads=[(0, 4)])
    with pytest.raises(ValueError, match="mode"):
        ablate(model, inputs, heads=[(0, 0)], mode="noise")
    with pytest.raises(TypeError, match="pairs"):
        ablate(model, inputs, heads=[3])
    assert _hook_counts(model) == before
    with pytest.raises(ValueError, match="masked LM"):
        head_importance(tiny_model("bert", tf.BertForMaskedLM), tiny_inputs("bert"), progress=False)


def _seq2seq(family):
    cls = tf.T5ForConditionalGeneration if family == "t5" else tf.BartForConditionalGeneration
    return tiny_model(family, cls)


def _hidden(output):
    """A block's hidden states: BART's layers return a tensor, T5's blocks a tuple."""
    return output if isinstance(output, torch.Tensor) else output[0]


def _seq2seq_pair():
    """Input tokens (2, 8) and decoder tokens (2, 5): the two stacks run on different lengths."""
    g = torch.Generator().manual_seed(3)
    clean = {
        "input_ids": torch.randint(3, 100, (2, 8), generator=g),
        "decoder_input_ids": torch.randint(3, 100, (2, 5), generator=g),
    }
    corrupt = {**clean, "input_ids": clean["input_ids"].clone()}
    corrupt["input_ids"][:, 3] = (corrupt["input_ids"][:, 3] + 11) % 97 + 3
    return clean, corrupt


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_patch_encoder_decoder_identity_and_manual_hooks(family):
    model = _seq2seq(family)
    clean, corrupt = _seq2seq_pair()
    metric = logit_diff(5, 6)
    with torch.no_grad():
        m_clean = float(metric(model(**clean)))
    # Patching a run with its own activations reproduces its metric exactly, on both stacks.
    same = patch(model, clean, clean, metric=metric, progress=False)
    encoder, decoder = (len(v) for v in __import__("llmdbg").find_layout(model).stacks.values())
    assert same.values.shape == (encoder + decoder, 8)
    np.testing.assert_array_equal(same.values[:encoder], m_clean)
    np.testing.assert_array_equal(same.values[encoder:, :5], m_clean)
    assert np.isnan(same.values[encoder:, 5:]).all()  # the decoder has 5 tokens
    # A real patch: one encoder block at one input position, one decoder block at one decoder
    # position, each against a hand-written hook.
    enc_name, dec_name = same.modules[0], same.modules[encoder]
    res = patch(model, clean, corrupt, metric=metric, modules=[enc_name, dec_name], positions=[3, 4], progress=False)
    store = {}
    with torch.no_grad():
        handles = [
            model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: store.__setitem__(n, _hidden(o).clone()))
            for n in (enc_name, dec_name)
        ]
        model(**clean)
        for h in handles:
            h.remove()
        for i, name in enumerate((enc_name, dec_name)):
            for j, p in enumerate((3, 4)):

                def put(m, a, o, name=name, p=p):
                    h = _hidden(o).clone()
                    h[:, p] = store[name][:, p]
                    return h if isinstance(o, torch.Tensor) else (h, *o[1:])

                handle = model.get_submodule(name).register_forward_hook(put)
                want = float(metric(model(**corrupt)))
                handle.remove()
                assert res.values[i, j] == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert np.abs(res.effects[0]).max() > 0  # the input token 3 was corrupted
    with pytest.raises(ValueError, match="ambiguous"):
        patch(model, clean, corrupt, metric=metric, positions=[-1], progress=False)
    short = {**corrupt, "decoder_input_ids": corrupt["decoder_input_ids"][:, :4]}
    with pytest.raises(ValueError, match="decoder tokens"):
        patch(model, clean, short, metric=metric, progress=False)


def test_head_means_of_a_decoder_average_over_decoder_tokens():
    model = _seq2seq("t5")
    clean, _ = _seq2seq_pair()
    clean["attention_mask"] = torch.ones(2, 8, dtype=torch.long)
    clean["attention_mask"][1, -2:] = 0
    names, n_heads, d = head_geometry(model)
    means = head_means(model, clean)  # was: a (2, 8) mask applied to (2, 5) decoder activations
    kept = {}
    handles = [
        model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: kept.__setitem__(n, a[0].double()))
        for n in names
    ]
    with torch.no_grad():
        model(**clean)
    for h in handles:
        h.remove()
    w = clean["attention_mask"].double()[..., None]
    want_enc = (kept[names[0]] * w).sum((0, 1)) / w.sum()
    want_dec = kept[names[-1]].mean((0, 1))  # no decoder mask: every decoder token is real
    np.testing.assert_allclose(means[0].numpy(), want_enc.view(n_heads, d).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(means[-1].numpy(), want_dec.view(n_heads, d).numpy(), rtol=1e-5, atol=1e-7)
    res = ablate(model, clean, [(3, 1)], mode="mean", progress=False)
    assert res.logits.shape == (2, 5, 100) and np.abs(res.logits - res.baseline_logits).max() > 0
