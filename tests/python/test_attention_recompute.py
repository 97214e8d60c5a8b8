"""Attention recomputed from the queries and keys of the model's own attention calls, against the
truth: eager attention's ``output_attentions`` maps, numpy statistics over them, and the model's
logits of an uncaptured run (bit for bit)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
import transformers as tf

import llmdbg
from llmdbg.adapters.attention_calls import recording_attention
from llmdbg.tracing import attention_recorder
from tiny_models import IDS, VOCAB, H, one_thread  # noqa: F401

_COMMON = dict(
    hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=2 * H, vocab_size=VOCAB, **IDS
)

# The families of the exactness goal: GQA, sliding windows shorter than T, soft-capping, learned
# sinks, absolute and relative position schemes, padding in bidirectional models.
CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**_COMMON, num_key_value_heads=2),
    "mistral": lambda: tf.MistralConfig(**_COMMON, num_key_value_heads=2, sliding_window=4),
    "gemma2": lambda: tf.Gemma2Config(
        **_COMMON, num_key_value_heads=2, head_dim=8, sliding_window=4, attn_logit_softcapping=5.0
    ),
    "qwen2": lambda: tf.Qwen2Config(**_COMMON, num_key_value_heads=2),
    "qwen3": lambda: tf.Qwen3Config(**_COMMON, num_key_value_heads=2, head_dim=8),
    "phi3": lambda: tf.Phi3Config(**_COMMON, num_key_value_heads=2),
    "gpt2": lambda: tf.GPT2Config(n_embd=H, n_layer=2, n_head=4, vocab_size=VOCAB, **IDS),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**_COMMON),
    "opt": lambda: tf.OPTConfig(
        hidden_size=H, num_hidden_layers=2, num_attention_heads=4, ffn_dim=2 * H, vocab_size=VOCAB,
        word_embed_proj_dim=H, **IDS,
    ),
    "bert": lambda: tf.BertConfig(**_COMMON),
    "t5": lambda: tf.T5Config(
        d_model=H, d_kv=8, d_ff=2 * H, num_layers=2, num_heads=4, vocab_size=VOCAB, decoder_start_token_id=0, **IDS
    ),
    "gpt_oss": lambda: tf.GptOssConfig(
        **{**_COMMON, "intermediate_size": H}, num_key_value_heads=2, head_dim=8, num_local_experts=2,
        num_experts_per_tok=1, sliding_window=4,
    ),
}  # fmt: skip

T = 9


@functools.cache
def _model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return tf.AutoModel.from_config(CONFIGS[family]()).eval()


def _inputs(family: str, *, pad: str = "right") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, VOCAB, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    if pad == "right":
        mask[1, -2:] = 0
    else:
        mask[1, :2] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if family == "t5":
        out["decoder_input_ids"] = torch.randint(3, VOCAB, (2, T - 3), generator=g)
    return out


def _eager_maps(model, inputs) -> list[np.ndarray]:
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation(impl)
    if hasattr(out, "encoder_attentions") and out.encoder_attentions is not None:
        maps = [*out.encoder_attentions, *out.decoder_attentions, *out.cross_attentions]
    else:
        maps = list(out.attentions)
    return [m.to(torch.float64).numpy() for m in maps]


@pytest.mark.parametrize("family", list(CONFIGS))
def test_recomputed_maps_equal_eager_and_logits_stay_bitwise(family):
    model, inputs = _model(family), _inputs(family)
    impl = model.config._attn_implementation
    with torch.no_grad():
        plain = model(**inputs)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to eager
        with llmdbg.capture(model, attentions=True, verify=True) as trace, torch.no_grad():
            captured = model(**inputs)[0]
    assert torch.equal(plain, captured), "the capture changed the model's outputs"
    assert model.config._attn_implementation == impl
    want = _eager_maps(model, inputs)
    assert len(trace.attentions) == len(want)
    for got, ref in zip(trace.attentions, want):
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def _numpy_stats(a: np.ndarray, special: np.ndarray, first: np.ndarray) -> dict[str, np.ndarray]:
    b = a.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(a > 0, a * np.log(a), 0.0).sum(-1)
    return {
        "entropy": entropy,
        "max_prob": a.max(-1),
        "sink_mass": np.stack([a[i, :, :, first[i]] for i in range(b)]),
        "special_mass": (a * special[:, None, None, :]).sum(-1),
    }


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "bert"])
@pytest.mark.parametrize("pad", ["right", "left"])
def test_stats_equal_numpy_over_eager_maps(family, pad):
    model, inputs = _model(family), _inputs(family, pad=pad)
    with llmdbg.capture(model, attentions="stats") as trace, torch.no_grad():
        model(**inputs)
    ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy().astype(bool)
    special = np.isin(ids, [IDS["bos_token_id"], IDS["eos_token_id"], IDS["pad_token_id"]]).astype(np.float64)
    first = mask.argmax(1)
    stats = trace.attention_stats
    assert sorted(stats) == list(range(2))
    for layer, a in enumerate(_eager_maps(model, inputs)):
        want = _numpy_stats(a, special, first)
        for name, ref in want.items():
            got = stats[layer][name]
            assert got.shape == a.shape[:3] and got.dtype == np.float32
            # Fully masked rows (left padding under a causal mask) are NaN by convention: eager
            # gives them uniform weights over the masked keys, SDPA's boolean mask none at all.
            empty = np.isnan(got)
            if pad == "left" and model.config._attn_implementation == "sdpa" and family != "bert":
                np.testing.assert_array_equal(empty, np.broadcast_to(~mask[:, None, :], got.shape))
            else:
                assert not empty.any()
            np.testing.assert_allclose(got[~empty], ref[~empty], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduce", [None, "mean", "max"])
def test_query_restricts_layers_heads_rows_and_fuses(reduce):
    model, inputs = _model("llama"), _inputs("llama")
    query = llmdbg.AttentionQuery(layers=[-1], heads=[3, 1], rows=[-1, 2], reduce=reduce)
    with llmdbg.capture(model, attentions=query) as trace, torch.no_grad():
        model(**inputs)
    full = _eager_maps(model, inputs)[-1][:, [3, 1]][:, :, [T - 1, 2]]  # (B, 2, 2, T)
    want = {None: full, "mean": full.mean(1), "max": full.max(1)}[reduce]
    (got,) = trace.attentions
    assert len(trace.calls(trace.attention_modules[-1] + ":attn")) == 1
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_head_mean_and_token_selection_of_attentions_true():
    model, inputs = _model("gpt2"), _inputs("gpt2")
    with llmdbg.capture(model, attentions=True, reduce=("head_mean", "last_token")) as trace, torch.no_grad():
        model(**inputs)
    for got, ref in zip(trace.attentions, _eager_maps(model, inputs)):
        np.testing.assert_allclose(got, ref.mean(1)[:, -1:], atol=1e-6)


def _forward_counter(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(attentions=llmdbg.AttentionQuery(rows=[T])), ValueError, r"row 9 is out of range for 9 query"),
        (dict(attentions=llmdbg.AttentionQuery(heads=[4])), ValueError, r"head 4 is beyond the 4 query heads"),
        (dict(attentions=llmdbg.AttentionQuery(layers=[2])), ValueError, r"layer 2 does not exist; the model has 2"),
        (dict(attentions="stats", reduce="head_mean"), ValueError, r"attentions='stats' keeps per-query statistics"),
        (dict(attentions="maps"), ValueError, r"attentions must be True, False, 'stats' or an AttentionQuery"),
        (dict(attentions=True, attention_impl="fast"), ValueError, r"attention_impl must be one of"),
        (dict(attentions=True, max_bytes=1000), llmdbg.CaptureBudgetError, r"needs .* GiB stored .*max_bytes=1,000"),
        (dict(attentions=True, grads=True, attention_impl="recompute"), ValueError, r"cannot give gradients"),
    ],
)
def test_bad_requests_fail_clearly_and_before_the_model_runs_where_possible(kwargs, err, match):
    model, inputs = _model("llama"), _inputs("llama")
    hooks = dict(model._forward_pre_hooks), dict(model._forward_hooks)
    with pytest.raises(err, match=match):
        with llmdbg.capture(model, **kwargs), torch.no_grad():
            model(**inputs)
    assert (dict(model._forward_pre_hooks), dict(model._forward_hooks)) == hooks
    assert model.config._attn_implementation == "sdpa"


def test_budget_error_is_raised_before_any_attention_is_computed():
    model, inputs = _model("llama"), _inputs("llama")
    est = llmdbg.estimate_memory(model, inputs, attentions=True)
    assert est.stored_bytes == 2 * 2 * 4 * T * T * 4  # layers · B · H · T · T · float32
    seen = []
    with pytest.raises(llmdbg.CaptureBudgetError, match="estimate_memory"):
        with llmdbg.capture(model, attentions=True, max_bytes=est.stored_bytes - 1) as trace:
            with recording_attention(model, {}, seen.append), torch.no_grad():
                model(**inputs)
    assert trace.attentions == [] and not seen
    with llmdbg.capture(model, attentions=True, max_bytes=est.stored_bytes) as trace, torch.no_grad():
        model(**inputs)
    assert trace.nbytes == est.stored_bytes


def test_estimate_memory_follows_the_formula():
    model = _model("llama")  # H_q = 4, H_kv = 2, d = 8, 2 layers
    ids = torch.zeros(3, 100, dtype=torch.long)
    stats = llmdbg.estimate_memory(model, ids, attentions="stats")
    assert stats.implementation == "recompute" and stats.layers == 2
    assert stats.stored_bytes == 2 * 4 * 3 * 4 * 100 * 4
    assert stats.eager_bytes == 3 * 4 * 100 * 100 * 4
    assert stats.working_bytes >= 3 * (4 * 100 + 2 * 100) * 8 * 4
    q = llmdbg.estimate_memory(model, ids, attentions=llmdbg.AttentionQuery(layers=[0], rows=[-1], reduce="mean"))
    assert q.stored_bytes == 3 * 1 * 1 * 100 * 4
    eager = llmdbg.estimate_memory(model, ids, attentions=True, attention_impl="eager")
    assert eager.implementation == "eager" and eager.working_bytes == eager.eager_bytes
    assert "GiB stored" in str(eager)


def test_dispatch_is_restored_nested_captures_compose_and_other_models_pass_through():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import AttentionInterface

    a, b, c = _model("llama"), _model("qwen2"), _model("mistral")
    inputs = _inputs("llama")
    with torch.no_grad():
        plain_c = c(**inputs)[0]
    with llmdbg.capture(a, attentions="stats") as ta, llmdbg.capture(b, attentions=True) as tb, torch.no_grad():
        a(**inputs)
        b(**inputs)
        out_c = c(**inputs)[0]
    assert torch.equal(out_c, plain_c)
    assert len(ta.attention_stats) == 2 and len(tb.attentions) == 2
    assert AttentionInterface._global_mapping["sdpa"] is sdpa_attention_forward
    with pytest.raises(KeyError, match="boom"):
        with llmdbg.capture(a, attentions=True), torch.no_grad():
            a(**inputs)
            raise KeyError("boom")
    assert AttentionInterface._global_mapping["sdpa"] is sdpa_attention_forward
    assert "eager" not in AttentionInterface._global_mapping


def test_verify_catches_a_misread_call(monkeypatch):
    model, inputs = _model("mistral"), _inputs("mistral")
    real = attention_recorder.kernel_problem

    def without_mask(call):
        problem = real(call)
        problem.bool_mask = problem.add_mask = None  # drops padding and the sliding window
        problem.causal = False
        return problem

    monkeypatch.setattr(attention_recorder, "kernel_problem", without_mask)
    with pytest.raises(llmdbg.VerificationError, match=r"does not reproduce the model's sdpa output"):
        with llmdbg.capture(model, attentions="stats", verify=True), torch.no_grad():
            model(**inputs)


def test_custom_attention_implementation_falls_back_to_eager_or_refuses():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register("my_kernel", sdpa_attention_forward)
    AttentionMaskInterface.register("my_kernel", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    try:
        torch.manual_seed(0)
        model = tf.AutoModel.from_config(CONFIGS["llama"]()).eval()
        model.set_attn_implementation("my_kernel")
        inputs = _inputs("llama")
        with pytest.warns(UserWarning, match=r"from eager attention .*attention_implementation='my_kernel'"):
            with llmdbg.capture(model, attentions=True) as trace, torch.no_grad():
                model(**inputs)
        assert len(trace.attentions) == 2 and model.config._attn_implementation == "my_kernel"
        refused = llmdbg.capture(model, attentions=True, attention_impl="recompute")
        with pytest.raises(RuntimeError, match=r"attention_impl='recompute' is not possible.*my_kernel"):
            refused.__enter__()  # refused before any hook is left behind
        assert not model._forward_hooks and not model._forward_pre_hooks
    finally:  # the registries are process-wide
        del AttentionInterface._global_mapping["my_kernel"]
        del AttentionMaskInterface._global_mapping["my_kernel"]


def test_module_bypassing_the_interface_is_an_error_not_a_gap():
    torch.manual_seed(0)
    config = CONFIGS["gpt2"]()
    config.reorder_and_upcast_attn = True  # GPT-2's eager path then calls its own kernel
    model = tf.AutoModel.from_config(config, attn_implementation="eager").eval()
    with pytest.raises(RuntimeError, match=r"never reached llmdbg"):
        with llmdbg.capture(model, attentions="stats"), torch.no_grad():
            model(**_inputs("gpt2"))


def test_bfloat16_model_recomputes_in_float32():
    torch.manual_seed(0)
    model = tf.AutoModel.from_config(CONFIGS["llama"]()).to(torch.bfloat16).eval()
    inputs = _inputs("llama")
    with llmdbg.capture(model, attentions=True, verify=True) as trace, torch.no_grad():
        model(**inputs)
    for got, ref in zip(trace.attentions, _eager_maps(model, inputs)):
        assert got.dtype == np.float32
        real = inputs["attention_mask"].numpy().astype(bool)
        np.testing.assert_allclose(got.sum(-1)[real[:, None, :].repeat(4, 1)], 1.0, atol=1e-6)
        np.testing.assert_allclose(got, ref, atol=2e-2)  # eager rounds its weights to bfloat16


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_attention_summary_from_stats_matches_the_map_based_summary(family):
    model, inputs = _model(family), _inputs(family)
    with llmdbg.capture(model, attentions="stats") as stats, torch.no_grad():
        model(**inputs)
    with llmdbg.capture(model, attentions=True) as maps, torch.no_grad():
        model(**inputs)
    special = np.isin(inputs["input_ids"].numpy(), list(IDS.values()))  # what the capture flags without a tokenizer
    got, want = llmdbg.attention_summary(stats), llmdbg.attention_summary(maps, special_tokens=special)
    assert got.attrs["causal"] == want.attrs["causal"] == (family == "llama")
    for column in ("entropy", "entropy_norm", "max_weight", "special_mass"):
        np.testing.assert_allclose(got[column], want[column], rtol=1e-5, atol=1e-6, err_msg=column)
    # The stats summary's sink score is alpha at the first real token: sink_scores()[..., 0].
    alpha0 = llmdbg.sink_scores(maps)[:, :, :, 0].mean(1)  # (L, B, H, T) -> (L, H)
    np.testing.assert_allclose(got["sink_score"], alpha0.reshape(-1), rtol=1e-5, atol=1e-6)
    assert (got["sink_token"] == 0).all()


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_rollout_and_flow_of_recomputed_maps_equal_the_eager_ones(family):
    model, inputs = _model(family), _inputs(family)
    traces = {}
    for impl in ("auto", "eager"):
        with llmdbg.capture(model, attentions=True, attention_impl=impl) as traces[impl], torch.no_grad():
            model(**inputs)
    np.testing.assert_allclose(
        llmdbg.attention_rollout(traces["auto"]), llmdbg.attention_rollout(traces["eager"]), atol=1e-6
    )
    np.testing.assert_allclose(llmdbg.attention_flow(traces["auto"]), llmdbg.attention_flow(traces["eager"]), atol=1e-6)


@pytest.mark.parametrize(
    ("family", "pad"), [("llama", "left"), ("gemma2", "left"), ("bert", "right"), ("gpt_oss", "left")]
)
@pytest.mark.parametrize("residual", [True, False])
def test_top_down_rows_equal_the_eager_streaming_product(family, pad, residual):
    model, inputs = _model(family), _inputs(family, pad=pad)
    rows = [-1, 4]
    got = llmdbg.streaming_rollout(model, inputs, rows=rows, residual=residual, attention_impl="recompute")
    want = llmdbg.streaming_rollout(model, inputs, rows=rows, residual=residual, attention_impl="eager")
    assert got.rollout.shape == want.rollout.shape == (2, 2, T)
    np.testing.assert_allclose(got.rollout, want.rollout, atol=1e-6)
    full = llmdbg.streaming_rollout(model, inputs, residual=residual, attention_impl="recompute")
    np.testing.assert_allclose(full.rollout[:, [T - 1, 4]], want.rollout, atol=1e-6)
    assert model.config._attn_implementation in ("sdpa", "eager")


def test_streaming_rollout_recompute_refuses_other_head_fusions():
    model, inputs = _model("llama"), _inputs("llama")
    with pytest.raises(ValueError, match=r"head_fusion='max'"):
        llmdbg.streaming_rollout(model, inputs, rows=[-1], head_fusion="max", attention_impl="recompute")


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_oss", "t5"])
def test_device_path_in_torch_equals_the_cpu_kernel(family):
    # CUDA tensors take qk_attention_torch; check it against the C++ kernel on recorded calls.
    from llmdbg.adapters.attention_calls import kernel_problem
    from llmdbg.tracing.qk_torch import qk_attention_torch
    from llmdbg.tracing.recompute import recompute, uses_core

    model, inputs = _model(family), _inputs(family, pad="left")
    layout = llmdbg.find_layout(model)
    names = list(layout.attention) + list(layout.cross_attention)
    calls = []
    with recording_attention(model, {n: model.get_submodule(n) for n in names}, calls.append), torch.no_grad():
        model(**inputs)
    assert len(calls) == len(names)
    for call in calls:
        problem = kernel_problem(call)
        assert uses_core(problem)
        b, hq, tq, tk = problem.shape
        special = np.zeros((b, tk), bool)
        special[:, 1] = True
        weights = np.random.default_rng(0).random((b, 2, tq))
        request = dict(
            stats=True, special=special, maps=True, map_heads=np.array([hq - 1, 0]), map_rows=np.array([tq - 1, 1]),
            row_weights=weights,
        )  # fmt: skip
        cpu = recompute(problem, **request)
        as_t = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in request.items()}
        dev = {k: v.numpy() for k, v in qk_attention_torch(problem, **as_t).items()}
        assert set(cpu) == set(dev)
        for key in cpu:
            np.testing.assert_allclose(cpu[key], dev[key], rtol=1e-5, atol=1e-6, err_msg=f"{call.name} {key}")


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(layers="0"), TypeError, r"layers must be None or a sequence of ints"),
        (dict(heads=[1.5]), TypeError, r"heads must hold ints"),
        (dict(rows=[]), ValueError, r"rows is empty; pass None for all"),
        (dict(reduce="sum"), ValueError, r"reduce must be one of"),
    ],
)
def test_attention_query_validates_its_fields(kwargs, err, match):
    with pytest.raises(err, match=match):
        llmdbg.AttentionQuery(**kwargs)


def test_estimate_memory_rejects_requests_without_attention():
    model = _model("llama")
    with pytest.raises(ValueError, match="estimate_memory needs attentions=True"):
        llmdbg.estimate_memory(model, torch.zeros(1, 4, dtype=torch.long), attentions=False)
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        llmdbg.estimate_memory(model, torch.zeros(1, 4, dtype=torch.long), attention_impl="flash")


def test_stats_of_calls_with_different_lengths_are_read_per_call():
    model = _model("llama")
    with llmdbg.capture(model, attentions="stats") as trace, torch.no_grad():
        model(input_ids=torch.randint(3, VOCAB, (1, 6)))
        model(input_ids=torch.randint(3, VOCAB, (1, 4)))
    with pytest.raises(ValueError, match=r"ran 2 times with different shapes .*attention_stats_calls\(0\)"):
        trace.attention_stats  # noqa: B018
    calls = trace.attention_stats_calls(0)
    assert [c["entropy"].shape for c in calls] == [(1, 4, 6), (1, 4, 4)]
    with pytest.raises(KeyError, match="no attention statistics for layer 5"):
        trace.attention_stats_calls(5)


@pytest.mark.parametrize(
    ("family", "pad"), [("llama", "left"), ("gpt2", "right"), ("bert", "right"), ("gemma2", "left")]
)
def test_gradient_rollout_from_recorded_calls_equals_the_eager_one(family, pad):
    model, inputs = _model(family), _inputs(family, pad=pad)
    target = lambda out: out.last_hidden_state[:, -1, :4].sum(-1)
    with torch.no_grad():
        plain = model(**inputs)[0]
    got = llmdbg.gradient_rollout(model, inputs, target=target, attention_impl="recompute")
    want = llmdbg.gradient_rollout(model, inputs, target=target, attention_impl="eager")
    np.testing.assert_allclose(got.value, want.value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.matrix, want.matrix, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(got.rows, want.rows)
    with torch.no_grad():
        assert torch.equal(model(**inputs)[0], plain)  # nothing left behind
    assert all(p.grad is None for p in model.parameters())


def _call(implementation="sdpa", **kwargs):
    from llmdbg.adapters.attention_calls import AttentionCall

    q, k = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8)
    module = _model("llama").layers[0].self_attn
    return AttentionCall(module, "layers.0.self_attn", 0, implementation, q, k, k.clone(), None, kwargs)


def test_calls_with_arguments_llmdbg_does_not_model_are_refused_not_recomputed_wrong():
    from llmdbg.adapters.attention_calls import kernel_problem

    assert kernel_problem(_call(scaling=0.5, position_ids=torch.arange(5)[None])).scaling == 0.5
    with pytest.raises(RuntimeError, match=r"LlamaAttention .*passes 'alibi'.*attention_impl='eager'"):
        kernel_problem(_call(alibi=torch.zeros(1, 4, 5, 5)))
    with pytest.raises(RuntimeError, match=r"passes 'head_mask'"):
        kernel_problem(_call(head_mask=torch.ones(4)))
    packed = torch.tensor([[0, 1, 2, 0, 1]])  # two sequences packed into one row
    with pytest.raises(RuntimeError, match=r"packed sequences under flash_attention_2"):
        kernel_problem(_call("flash_attention_2", position_ids=packed))
    with pytest.raises(RuntimeError, match=r"packed sequences"):
        kernel_problem(_call("flash_attention_2", cu_seq_lens_q=torch.tensor([0, 3, 5])))
    assert kernel_problem(_call("flash_attention_2", position_ids=torch.arange(5)[None])).causal


def test_attention_dropout_in_train_mode_is_announced():
    torch.manual_seed(0)
    config = CONFIGS["llama"]()
    config.attention_dropout = 0.1
    model = tf.AutoModel.from_config(config).train()
    with pytest.warns(UserWarning, match=r"attention dropout is active .*before dropout"):
        with llmdbg.capture(model, attentions="stats"), torch.no_grad():
            model(**_inputs("llama"))
