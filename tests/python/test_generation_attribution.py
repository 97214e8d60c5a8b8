"""attribute_generation against independent references: Captum's LLMGradientAttribution and
LayerIntegratedGradients, inseq, completeness recomputed from the model's own logits, plain
autograd, occlusion by hand, eager attention; bad input and the model left untouched."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import transformers as tf
from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

import llmdbg
from tiny_models import CONFIGS, minilm_tokenizer

FAMILIES = ["gpt2", "llama", "qwen2"]
# Baseline token: id 3 has a non-zero embedding in every test model (the pad id 0 is a zero row
# under padding_idx in Llama and Qwen2, a baseline integrated gradients cannot converge from).
BASE = 3
PROMPT = "the cat sat on the"


def _lm(family: str, vocab: int | None = None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = CONFIGS[family]()
    if vocab is not None:
        cfg.vocab_size = vocab
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early
    return model


def _embedding(model):
    return model.get_input_embeddings()


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():  # Captum's token decoding warns on WordPiece
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_source_equals_captum_llm_gradient_attribution(family):
    tok = minilm_tokenizer()
    model = _lm(family, tok.vocab_size)
    inp = TextTokenInput(PROMPT, tok, baselines=BASE)  # Captum takes the baseline id from here
    ours = llmdbg.attribute_generation(
        model, tok, inp.inp_tensor, max_new_tokens=4, n_steps=10, source="prompt", baseline=BASE, progress=False
    )
    llm = LLMGradientAttribution(LayerIntegratedGradients(model, _embedding(model)), tok)
    theirs = _quiet(
        llm.attribute,
        inp,
        target=torch.from_numpy(ours.target_ids),
        n_steps=10,
    )
    ref = theirs.token_attr.detach().numpy()
    assert ours.scores.shape == ref.shape == (4, inp.inp_tensor.shape[1])
    np.testing.assert_allclose(ours.scores, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def _captum_one(model, prefix: torch.Tensor, target: int, baseline: int, n_steps: int, method="gausslegendre"):
    """LayerIntegratedGradients of log p(target | prefix), every prefix position interpolated."""

    def f(ids):
        return model(input_ids=ids).logits[:, -1].float().log_softmax(-1)[:, target]

    lig = LayerIntegratedGradients(f, _embedding(model))
    attr = lig.attribute(prefix, baselines=torch.full_like(prefix, baseline), n_steps=n_steps, method=method)
    return attr.sum(-1)[0].detach().numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_plus_generated_equals_one_captum_run_per_target(family):
    model = _lm(family)
    prompt = torch.randint(3, 100, (6,), generator=torch.Generator().manual_seed(2))
    ours = llmdbg.attribute_generation(model, None, prompt, max_new_tokens=4, n_steps=12, baseline=BASE, progress=False)
    assert ours.scores.shape == (4, 6 + 3)
    seq = torch.cat([prompt, torch.from_numpy(ours.target_ids)])
    for k in range(4):
        ref = _captum_one(model, seq[None, : 6 + k], int(ours.target_ids[k]), BASE, 12)
        np.testing.assert_allclose(ours.scores[k, : 6 + k], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        assert (ours.scores[k, 6 + k :] == 0).all()  # causal: later tokens do not exist for step k


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_completeness_per_target_from_the_models_own_logits(family):
    model = _lm(family)
    prompt = torch.randint(3, 100, (8,), generator=torch.Generator().manual_seed(4))
    ours = llmdbg.attribute_generation(
        model, None, prompt, max_new_tokens=5, rule="adaptive", tol=1e-2, baseline=BASE, progress=False
    )
    seq = torch.cat([prompt, torch.from_numpy(ours.target_ids)])[None]
    with torch.no_grad():
        fx = model(input_ids=seq).logits[0].float().log_softmax(-1)
        fb = model(input_ids=torch.full_like(seq, BASE)).logits[0].float().log_softmax(-1)
    for k in range(5):
        y = int(ours.target_ids[k])
        gap = float(fx[7 + k, y] - fb[7 + k, y])
        assert abs(float(ours.scores[k].sum()) - gap) <= 1e-2 * abs(gap) + 1e-6
        assert ours.value[k] == pytest.approx(float(fx[7 + k, y]), abs=1e-5)
    assert ours.converged.all() and ours.method == "integrated_gradients/adaptive"
    np.testing.assert_allclose(ours.step_scores["probability"], np.exp(ours.value), rtol=1e-5)


def test_every_fixed_rule_runs_and_reports_delta():
    model = _lm("llama")
    prompt = [5, 6, 7, 8]
    for rule in ("riemann_middle", "trapezoid", "gausslegendre", "clenshaw_curtis"):
        r = llmdbg.attribute_generation(
            model, None, prompt, max_new_tokens=2, rule=rule, n_steps=8, baseline=BASE, progress=False
        )
        np.testing.assert_allclose(r.delta, r.scores.sum(1) - (r.value - r.baseline_value), atol=1e-5)


def test_contrast_equals_difference_of_single_target_runs():
    model = _lm("llama")
    prompt = torch.randint(3, 100, (6,), generator=torch.Generator().manual_seed(5))
    foil = [9, 10, 11]
    plain = llmdbg.attribute_generation(
        model, None, prompt, max_new_tokens=3, n_steps=10, baseline=BASE, progress=False
    )
    contrast = llmdbg.attribute_generation(
        model, None, prompt, target=plain.target_ids, contrast=foil, n_steps=10, baseline=BASE, progress=False
    )
    seq = torch.cat([prompt, torch.from_numpy(plain.target_ids)])
    for k in range(3):
        foil_k = _captum_one(model, seq[None, : 6 + k], foil[k], BASE, 10)
        np.testing.assert_allclose(contrast.scores[k, : 6 + k], plain.scores[k, : 6 + k] - foil_k, atol=2e-5)
    np.testing.assert_array_equal(contrast.contrast_ids, foil)
    with torch.no_grad():
        logp = model(input_ids=seq[None]).logits[0].float().log_softmax(-1)
    want = [float(logp[5 + k, plain.target_ids[k]] - logp[5 + k, foil[k]]) for k in range(3)]
    np.testing.assert_allclose(contrast.value, want, atol=1e-5)
    one = llmdbg.attribute_generation(
        model, None, prompt, target=plain.target_ids, contrast=9, baseline=BASE, progress=False
    )
    np.testing.assert_array_equal(one.contrast_ids, [9, 9, 9])


def test_saliency_and_input_x_gradient_equal_plain_autograd():
    model = _lm("qwen2")
    prompt = torch.tensor([4, 5, 6, 7, 8])
    sal = llmdbg.attribute_generation(model, None, prompt, max_new_tokens=3, method="saliency", progress=False)
    ixg = llmdbg.attribute_generation(model, None, prompt, max_new_tokens=3, method="input_x_gradient", progress=False)
    seq = torch.cat([prompt, torch.from_numpy(sal.target_ids)])[None]
    emb = _embedding(model)(seq).detach().requires_grad_(True)
    logp = model(inputs_embeds=emb).logits[0].float().log_softmax(-1)
    for k in range(3):
        (g,) = torch.autograd.grad(logp[4 + k, int(sal.target_ids[k])], emb, retain_graph=True)
        np.testing.assert_allclose(sal.scores[k, : 5 + k], g[0, : 5 + k].abs().sum(-1).numpy(), rtol=1e-4, atol=1e-7)
        want = (g * emb)[0, : 5 + k].sum(-1).detach().numpy()
        np.testing.assert_allclose(ixg.scores[k, : 5 + k], want, rtol=1e-4, atol=1e-7)


def test_occlusion_equals_replacing_each_token_by_hand():
    model = _lm("gpt2")
    prompt = torch.tensor([4, 5, 6, 7, 8])
    occ = llmdbg.attribute_generation(model, None, prompt, max_new_tokens=3, method="occlusion", progress=False)
    seq = torch.cat([prompt, torch.from_numpy(occ.target_ids)])
    pad = model.config.pad_token_id
    with torch.no_grad():

        def logp(ids):
            return model(input_ids=ids[None]).logits[0].float().log_softmax(-1)

        clean = logp(seq)
        for j in range(5 + 2):
            hit = seq.clone()
            hit[j] = pad
            out = logp(hit)
            for k in range(3):
                y = int(occ.target_ids[k])
                want = float(clean[4 + k, y] - out[4 + k, y]) if j < 5 + k else 0.0
                assert occ.scores[k, j] == pytest.approx(want, abs=1e-6)


def test_attention_rows_equal_eager_attention():
    model = _lm("llama")
    prompt = torch.tensor([4, 5, 6, 7, 8, 9])
    last = llmdbg.attribute_generation(model, None, prompt, max_new_tokens=3, method="attention", progress=False)
    roll = llmdbg.attribute_generation(
        model, None, prompt, max_new_tokens=3, method="attention", attention="rollout", progress=False
    )
    seq = torch.cat([prompt, torch.from_numpy(last.target_ids)])[None]
    with llmdbg.eager_attention(model), torch.no_grad():
        maps = [a[0].mean(0).double().numpy() for a in model(input_ids=seq, output_attentions=True).attentions]
    rows = np.arange(5, 8)
    np.testing.assert_allclose(last.scores, maps[-1][rows, :8], atol=1e-6)
    stored = llmdbg.attention_rollout([m[None, None] for m in maps])[0]
    np.testing.assert_allclose(roll.scores, stored[rows, :8], atol=1e-6)
    assert last.method == "attention/last_layer" and roll.method == "attention/rollout"


def test_inseq_agrees_on_a_generated_sequence():
    inseq = pytest.importorskip("inseq")
    base = minilm_tokenizer()
    backend = copy.deepcopy(base.backend_tokenizer)
    backend.post_processor = None  # a decoder-style tokenizer: no [CLS]/[SEP] added
    tok = tf.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", bos_token="[CLS]", eos_token="[SEP]"
    )
    torch.manual_seed(0)
    cfg = CONFIGS["llama"]()
    cfg.update(dict(vocab_size=tok.vocab_size, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    cfg.pad_token_id = tok.pad_token_id
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    ours = llmdbg.attribute_generation(
        model, tok, PROMPT, max_new_tokens=4, n_steps=8, baseline=tok.unk_token_id, progress=False
    )
    im = inseq.load_model(model, "integrated_gradients", tokenizer=tok)
    out = _quiet(
        im.attribute,
        PROMPT,
        generation_args={"max_new_tokens": 4, "do_sample": False},
        n_steps=8,
        show_progress=False,
        step_scores=["probability"],
        attributed_fn="probability",
        attributed_fn_args={"logprob": True},
    )
    seq = out.sequence_attributions[0]
    assert [t.token for t in seq.target][-4:] == ours.target_tokens
    theirs = np.nan_to_num(seq.target_attributions.sum(-1).T.numpy())[:, : ours.scores.shape[1]]
    np.testing.assert_allclose(ours.scores, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    np.testing.assert_allclose(ours.step_scores["probability"], seq.step_scores["probability"].numpy(), rtol=1e-4)


def test_result_views():
    tok = minilm_tokenizer()
    model = _lm("gpt2", tok.vocab_size)
    r = llmdbg.attribute_generation(model, tok, PROMPT, max_new_tokens=3, n_steps=4, progress=False)
    frame = r.to_frame()
    p = r.prompt_length
    assert len(frame) == p + (p + 1) + (p + 2)  # each step sees one more source
    assert set(frame.columns) >= {"step", "target", "position", "source", "score", "probability", "surprisal"}
    np.testing.assert_allclose(frame.groupby("step")["score"].sum(), r.scores.sum(1), rtol=1e-5)
    assert r.source_tokens[:p] == tok.convert_ids_to_tokens(tok(PROMPT)["input_ids"])
    html = r._repr_html_()
    assert "GenerationAttribution" in html and r.target_tokens[0] in html
    import matplotlib

    matplotlib.use("Agg")
    ax = r.plot()
    assert ax.get_ylabel() == "generated token"
    assert r.sequence_scores.shape == (r.scores.shape[1],)


def test_memory_plan_chunks_targets_and_refuses_what_cannot_fit():
    model = _lm("llama")
    prompt = list(range(4, 14))
    whole = llmdbg.attribute_generation(model, None, prompt, max_new_tokens=4, n_steps=4, baseline=BASE, progress=False)
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        small = llmdbg.attribute_generation(
            model, None, prompt, target=whole.target_ids, n_steps=4, max_bytes=250_000, baseline=BASE, progress=False
        )
        np.testing.assert_allclose(small.scores, whole.scores, rtol=1e-5, atol=1e-7)
        calls.clear()
        with pytest.raises(llmdbg.CaptureBudgetError, match="needs about .* MiB for one target"):
            llmdbg.attribute_generation(model, None, prompt, target=whole.target_ids, max_bytes=1000, progress=False)
        assert not calls  # refused before any model call
        with pytest.raises(llmdbg.CaptureBudgetError, match="needs about .* MiB for one target"):
            llmdbg.attribute_generation(model, None, prompt, max_new_tokens=4, max_bytes=1000, progress=False)
        assert not calls  # also before generating
    finally:
        handle.remove()


def test_bad_input():
    tok = minilm_tokenizer()
    model = _lm("llama", tok.vocab_size)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        llmdbg.attribute_generation(model, tok, PROMPT, max_new_tokens=0)
    with pytest.raises(ValueError, match="contrast has 2 tokens but the target has 3"):
        llmdbg.attribute_generation(model, tok, PROMPT, target=[5, 6, 7], contrast=[1, 2])
    with pytest.raises(ValueError, match="cannot encode"):
        llmdbg.attribute_generation(model, tok, PROMPT, target="snow ☃ man")
    with pytest.raises(ValueError, match="num_return_sequences"):
        llmdbg.attribute_generation(
            model, tok, PROMPT, max_new_tokens=2, generation_kwargs=dict(num_return_sequences=2, do_sample=True)
        )
    with pytest.raises(ValueError, match="one prompt at a time"):
        llmdbg.attribute_generation(model, tok, torch.ones(2, 4, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(ValueError, match="method must be one of"):
        llmdbg.attribute_generation(model, tok, PROMPT, max_new_tokens=2, method="shap")
    with pytest.raises(ValueError, match="source must be one of"):
        llmdbg.attribute_generation(model, tok, PROMPT, max_new_tokens=2, source="all")
    with pytest.raises(TypeError, match="max_new_tokens must be a positive int"):
        llmdbg.attribute_generation(model, tok, PROMPT)
    with pytest.raises(ValueError, match="target ids must be in"):
        llmdbg.attribute_generation(model, tok, PROMPT, target=[tok.vocab_size])
    with pytest.raises(TypeError, match="prompt is text; pass the tokenizer"):
        llmdbg.attribute_generation(model, None, PROMPT, max_new_tokens=2)
    torch.manual_seed(0)
    t5 = tf.T5ForConditionalGeneration(CONFIGS["t5"]()).eval()
    with pytest.raises(ValueError, match="encoder-decoder"):
        llmdbg.attribute_generation(t5, None, [4, 5, 6], max_new_tokens=2)
    bare = tf.AutoModel.from_config(CONFIGS["gpt2"]()).eval()
    with pytest.raises(ValueError, match="needs a causal language model"):
        llmdbg.attribute_generation(bare, None, [4, 5, 6], max_new_tokens=2)


def test_model_state_is_restored_also_after_errors():
    model = _lm("llama")
    model.train()
    model.model.layers[0].eval()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    eval_run = llmdbg.attribute_generation(
        _lm("llama"), None, [4, 5, 6, 7], max_new_tokens=2, n_steps=2, baseline=BASE, progress=False
    )
    with pytest.warns(UserWarning, match="train mode"):  # generated and attributed in eval mode
        run = llmdbg.attribute_generation(
            model, None, [4, 5, 6, 7], max_new_tokens=2, n_steps=2, baseline=BASE, progress=False
        )
    np.testing.assert_array_equal(run.target_ids, eval_run.target_ids)
    np.testing.assert_allclose(run.scores, eval_run.scores, rtol=1e-6)

    def boom(*args):
        raise RuntimeError("boom")

    handle = model.model.layers[1].register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"), pytest.warns(UserWarning, match="train mode"):
        llmdbg.attribute_generation(model, None, [4, 5, 6, 7], target=[5, 6], n_steps=2, baseline=BASE, progress=False)
    handle.remove()
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert not model._forward_hooks and not model.model.embed_tokens._forward_hooks


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_activation_derivative_once_gives_autograd_gradients(family):
    from llmdbg.attribution._activations import derivative_once

    model = _lm(family)
    x = torch.randn(2, 6, 32, requires_grad=True, generator=torch.Generator().manual_seed(0))
    cot = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(1))

    def grads():
        out = model.model(inputs_embeds=x) if family == "llama" else model.transformer(inputs_embeds=x)
        h = out.last_hidden_state
        return [torch.autograd.grad(h, x, cot * s, retain_graph=True)[0] for s in (1.0, -0.5)]

    plain = grads()
    with derivative_once(model) as hooked:
        once = grads()
    assert hooked == 2  # one activation module per block
    for a, b in zip(once, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not any(m._forward_hooks for m in model.modules())


def test_zero_baseline_that_does_not_converge_is_named():
    """A pad row of zeros (padding_idx) as baseline: RMSNorm makes the integrand nearly singular
    near α = 0, more steps do not help, and the warning says which baseline to use instead."""
    from llmdbg.attribution import ConvergenceWarning

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=12, num_key_value_heads=2,
        intermediate_size=1536, vocab_size=1000, pad_token_id=0, unk_token_id=7,
    )  # fmt: skip
    model = tf.LlamaForCausalLM(cfg).eval()
    assert float(model.model.embed_tokens.weight[0].detach().abs().max()) == 0.0
    prompt = torch.randint(10, 1000, (16,), generator=torch.Generator().manual_seed(0))
    with pytest.warns(ConvergenceWarning, match="all zero"):
        bad = llmdbg.attribute_generation(model, None, prompt, target=[11, 12], n_steps=32, progress=False)
    assert not bad.converged.all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        good = llmdbg.attribute_generation(model, None, prompt, target=[11, 12], n_steps=32, baseline=7, progress=False)
    assert good.converged.all()
