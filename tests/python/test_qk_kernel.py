"""_core.qk_attention against transformers' own eager attention (Llama, Gemma-2 soft-capping,
gpt-oss sinks) and a float64 torch softmax written here, plus its requests (statistics, maps,
row product), thread determinism, every bad-argument error, the GIL and Ctrl-C."""

from __future__ import annotations

import _thread
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.models.gemma2 import modeling_gemma2
from transformers.models.gpt_oss import modeling_gpt_oss
from transformers.models.llama import modeling_llama

from gil_check import ticks_while_running
from llmdbg import _core

F32_MIN = float(np.finfo(np.float32).min)


def qk(b=2, hq=4, hkv=2, tq=11, tk=11, d=16, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((b, hq, tq, d)) * spread).astype(np.float32)
    k = (rng.standard_normal((b, hkv, tk, d)) * spread).astype(np.float32)
    return q, k


def reference(
    q, k, *, scaling, softcap=0.0, causal=False, window=0, offset=0, bool_mask=None, add_mask=None, sinks=None
):
    """(B, Hq, Tq, Tk) probabilities in float64, in eager attention's order: scale, cap, add the
    mask, exclude, softmax (with the sink logit as an extra column, then dropped). Rows whose keys
    are all excluded are 0."""
    qt, kt = torch.from_numpy(q).double(), torch.from_numpy(k).double()
    b, hq, tq, _ = qt.shape
    kt = kt.repeat_interleave(hq // kt.shape[1], dim=1)
    w = qt @ kt.transpose(-1, -2) * scaling
    if softcap:
        w = torch.tanh(w / softcap) * softcap
    if add_mask is not None:
        w = w + torch.from_numpy(add_mask).double()
    pos = torch.arange(tq)[:, None] + offset
    j = torch.arange(kt.shape[2])[None, :]
    keep = torch.ones_like(w, dtype=torch.bool)
    if causal:
        keep &= j <= pos
    if window:
        keep &= j > pos - window
    if bool_mask is not None:
        keep &= torch.from_numpy(bool_mask.astype(bool))
    keep &= w != -torch.inf
    w = w.masked_fill(~keep, -torch.inf)
    if sinks is not None:
        sink = torch.from_numpy(sinks).double().view(1, hq, 1, 1).expand(b, hq, tq, 1)
        p = torch.softmax(torch.cat([w, sink], -1), -1)[..., :-1]
    else:
        p = torch.softmax(w, -1)
    return torch.where(keep.any(-1, keepdim=True), p, 0.0).numpy()


def stats_of(p, special=None, sink_index=None):
    """entropy, max_prob, sink_mass, special_mass of (B, H, Tq, Tk) probabilities; NaN for zero rows."""
    b = p.shape[0]
    sink_index = np.zeros(b, np.int64) if sink_index is None else sink_index
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
    out = {"entropy": ent, "max_prob": p.max(-1), "sink_mass": np.stack([p[i, :, :, sink_index[i]] for i in range(b)])}
    if special is not None:
        out["special_mass"] = (p * special.astype(bool)[:, None, None, :]).sum(-1)
    dead = p.sum(-1) == 0
    return {key: np.where(dead, np.nan, v) for key, v in out.items()}


def check(q, k, *, special=None, sink_index=None, **options):
    """Statistics and full maps of the kernel against the float64 reference."""
    got = _core.qk_attention(q, k, stats=True, maps=True, special=special, sink_index=sink_index, **options)
    want = reference(q, k, **options)
    np.testing.assert_allclose(got["maps"], want, atol=1e-6, rtol=0)
    for key, value in stats_of(want, special, sink_index).items():
        np.testing.assert_allclose(got[key], value, atol=1e-5 if key == "entropy" else 1e-6, rtol=0, err_msg=key)
    return got


CASES = {
    "causal GQA": dict(causal=True),
    "bidirectional, 3 key chunks": dict(tq=7, tk=1300),
    "sliding window": dict(causal=True, window=4),
    "window without causal": dict(window=3),
    "offset, Tq < Tk": dict(causal=True, offset=30, tq=5, tk=35),
    "offset and window": dict(causal=True, offset=20, window=6, tq=9, tk=35),
    "softcap": dict(causal=True, softcap=2.0, spread=3.0),
    "sinks": dict(causal=True, sinks=np.array([-1.0, 0.0, 2.0, 8.0], np.float32)),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_float64_reference(case):
    options = dict(CASES[case])
    shape = {key: options.pop(key) for key in ("tq", "tk", "spread") if key in options}
    q, k = qk(**shape)
    check(q, k, scaling=q.shape[-1] ** -0.5, **options)


@pytest.mark.parametrize(("bm", "hm"), [(1, 1), (2, 1), (1, 4), (2, 4)])
@pytest.mark.parametrize("dtype", [bool, np.uint8])
def test_bool_mask_broadcasts_without_copies(bm, hm, dtype):
    q, k = qk(tq=9, tk=13)
    mask = np.random.default_rng(1).random((bm, hm, 9, 13)) > 0.3
    mask[0, 0, 4] = False  # a row with every key masked: zeros and NaN statistics
    got = check(q, k, scaling=0.25, bool_mask=mask.astype(dtype), softcap=3.0)
    assert (got["maps"][0, 0, 4] == 0).all() and np.isnan(got["entropy"][0, 0, 4])


def test_additive_relative_position_bias_and_infinite_mask():
    """T5-style per-head bias (1, Hq, Tq, Tk), with -inf entries and a whole -inf row."""
    q, k = qk(hq=4, hkv=4)
    bias = np.random.default_rng(2).standard_normal((1, 4, 11, 11)).astype(np.float32)
    bias[..., ::3] = -np.inf
    bias[0, 2, 5] = -np.inf
    got = check(q, k, scaling=1.0, add_mask=bias)
    assert np.isnan(got["max_prob"][:, 2, 5]).all()


def test_special_mass_and_sink_index():
    q, k = qk(b=2, tq=10, tk=10)
    special = np.zeros((2, 10), bool)
    special[0, [0, 3]] = True
    special[1, [2, 9]] = True
    got = check(q, k, scaling=0.25, causal=True, special=special, sink_index=np.array([0, 4]))
    assert (got["sink_mass"][1, :, :4] == 0).all()  # queries before key 4 cannot see it
    assert "special_mass" not in _core.qk_attention(q, k, scaling=0.25, stats=True)


def hf_module(groups, **extra):
    return SimpleNamespace(num_key_value_groups=groups, training=False, **extra)


def hf_weights(forward, module, q, k, mask, **kwargs):
    v = torch.zeros(k.shape)
    _, weights = forward(module, torch.from_numpy(q), torch.from_numpy(k), v, mask, **kwargs)
    return weights.numpy()


def test_matches_hf_llama_eager_with_left_padding():
    """The additive mask HF builds (0 / float32 min, causal + padding): a padding query row is
    uniform over every key in eager attention, and so it is here."""
    q, k = qk(b=2, hq=6, hkv=2, tq=12, tk=12)
    real = np.ones((2, 12), bool)
    real[1, :5] = False
    allowed = np.tril(np.ones((12, 12), bool))[None] & real[:, None, :]
    mask = np.where(allowed, 0.0, F32_MIN).astype(np.float32)[:, None]
    want = hf_weights(modeling_llama.eager_attention_forward, hf_module(3), q, k, torch.from_numpy(mask), scaling=0.25)
    got = _core.qk_attention(q, k, scaling=0.25, add_mask=mask, maps=True)["maps"]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got[1, :, 2], 1 / 12, atol=1e-7)


def test_matches_hf_gemma2_eager_softcap_and_sliding_window():
    q, k = qk(hq=4, hkv=2, tq=16, tk=16, spread=2.5)
    pos = np.arange(16)
    allowed = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - 4)
    mask = np.where(allowed, 0.0, F32_MIN).astype(np.float32)[None, None]
    want = hf_weights(
        modeling_gemma2.eager_attention_forward,
        hf_module(2, head_dim=16),
        q,
        k,
        torch.from_numpy(mask),
        scaling=0.25,
        softcap=5.0,
    )
    got = _core.qk_attention(q, k, scaling=0.25, softcap=5.0, causal=True, window=4, maps=True)["maps"]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_matches_hf_gpt_oss_eager_sinks():
    q, k = qk(hq=4, hkv=2, tq=10, tk=10)
    sinks = np.array([0.5, -2.0, 3.0, 1.0], np.float32)
    mask = np.where(np.tril(np.ones((10, 10), bool)), 0.0, F32_MIN).astype(np.float32)[None, None]
    module = hf_module(2, sinks=torch.from_numpy(sinks))
    want = hf_weights(modeling_gpt_oss.eager_attention_forward, module, q, k, torch.from_numpy(mask), scaling=0.25)
    got = _core.qk_attention(q, k, scaling=0.25, causal=True, sinks=sinks, maps=True)["maps"]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert (got.sum(-1) < 1).all()


@pytest.mark.parametrize("fusion", ["none", "mean", "max"])
def test_maps_of_chosen_heads_and_rows(fusion):
    q, k = qk(hq=6, hkv=3, tq=13, tk=13)
    p = reference(q, k, scaling=0.25, causal=True)
    heads, rows = np.array([5, 0, 5]), np.array([12, 3, 3, 0])
    got = _core.qk_attention(
        q, k, scaling=0.25, causal=True, maps=True, map_heads=heads, map_rows=rows, map_fusion=fusion
    )
    chosen = p[:, heads][:, :, rows]  # (B, nh, nr, Tk)
    want = {"none": chosen, "mean": chosen.mean(1), "max": chosen.max(1)}[fusion]
    np.testing.assert_allclose(got["maps"], want, atol=1e-6, rtol=0)
    assert set(got) == {"maps"}


def test_row_product_skips_rows_of_weight_zero():
    q, k = qk(b=2, hq=4, hkv=2, tq=20, tk=20)
    bias = np.zeros((2, 1, 20, 20), np.float32)
    weights = np.zeros((2, 20))
    weights[0, [19, 4]] = [1.0, 0.5]
    weights[1, 7] = -2.0
    heads = np.array([1, 2])
    p = reference(q, k, scaling=0.25, causal=True)
    want = np.einsum("bi,bhij->bj", weights, p[:, heads]) / len(heads)
    bias[0, 0, 3, 1] = np.nan  # in a row of weight 0: never computed, so no error
    got = _core.qk_attention(q, k, scaling=0.25, causal=True, add_mask=bias, row_weights=weights, row_heads=heads)
    assert got["row_product"].dtype == np.float64
    np.testing.assert_allclose(got["row_product"], want, atol=1e-6, rtol=0)
    zero = _core.qk_attention(q, k, scaling=0.25, causal=True, add_mask=bias, row_weights=np.zeros((2, 20)))
    assert (zero["row_product"] == 0).all()
    with pytest.raises(ValueError, match=r"batch 0, head 0, query 3 hold NaN.*add_mask"):
        _core.qk_attention(q, k, scaling=0.25, causal=True, add_mask=bias, stats=True)


def test_row_product_of_several_weight_sets():
    """(B, R, Tq) weights, as top-down rollout of R rows passes them: R products in one pass."""
    q, k = qk(b=2, hq=4, hkv=2, tq=16, tk=16)
    rng = np.random.default_rng(6)
    weights = np.where(rng.random((2, 3, 16)) < 0.4, rng.standard_normal((2, 3, 16)), 0.0)
    weights[1, 1] = 0.0
    p = reference(q, k, scaling=0.25, causal=True)
    got = _core.qk_attention(q, k, scaling=0.25, causal=True, row_weights=weights)["row_product"]
    assert got.shape == (2, 3, 16)
    np.testing.assert_allclose(got, np.einsum("bri,bhij->brj", weights, p) / 4, atol=1e-6, rtol=0)
    assert (got[1, 1] == 0).all()


def test_bitwise_equal_for_every_thread_count():
    q, k = qk(b=2, hq=8, hkv=2, tq=300, tk=300, d=32)
    weights = np.random.default_rng(3).random((2, 300))
    weights[:, ::4] = 0.0
    kwargs = dict(scaling=0.2, causal=True, stats=True, maps=True, map_fusion="mean", row_weights=weights)
    one = _core.qk_attention(q, k, num_threads=1, **kwargs)
    for n in (2, 3):
        many = _core.qk_attention(q, k, num_threads=n, **kwargs)
        for key in one:
            assert np.array_equal(one[key], many[key], equal_nan=True), key


def test_nothing_requested_gives_an_empty_dict():
    q, k = qk()
    assert _core.qk_attention(q, k, scaling=1.0) == {}


def bad_cases():
    q, k = qk(b=2, hq=4, hkv=2, tq=5, tk=6, d=8)
    m = np.ones((1, 1, 5, 6), bool)
    nan_q, inf_k = q.copy(), k.copy()
    nan_q[1, 2, 3, 4] = np.nan
    inf_k[0, 1, 2, 3] = np.inf
    nan_w = np.ones((2, 3, 5))
    nan_w[1, 0, 4] = np.nan
    cases = [
        (dict(q=q.astype(np.float64)), TypeError, "q must be float32, got float64"),
        (dict(q=q[0]), ValueError, r"q has shape \(4, 5, 8\); expected \(B, Hq, Tq, D\)"),
        (dict(q=q.transpose(0, 1, 3, 2)), ValueError, "q must be C-contiguous"),
        (dict(q=[[1.0]]), TypeError, "q must be a numpy array"),
        (dict(k=k[:1]), ValueError, r"k has shape \(1, 2, 6, 8\); expected \(B, Hkv, Tk, D\) = \(2, Hkv, Tk, 8\)"),
        (dict(k=np.zeros((2, 3, 6, 8), np.float32)), ValueError, "q has 4 heads and k has 3"),
        (dict(q=nan_q), ValueError, r"q holds NaN or inf, first at \(1, 2, 3, 4\) = nan"),
        (dict(k=inf_k), ValueError, r"k holds NaN or inf, first at \(0, 1, 2, 3\) = inf"),
        (dict(scaling=float("nan")), ValueError, "scaling must be finite"),
        (dict(softcap=-1.0), ValueError, "softcap must be >= 0"),
        (dict(softcap=float("inf")), ValueError, "softcap must be >= 0 and finite"),
        (dict(window=-1), ValueError, "window must be >= 0"),
        (dict(offset=-2), ValueError, "offset must be >= 0"),
        (dict(bool_mask=m, add_mask=m.astype(np.float32)), ValueError, "pass bool_mask or add_mask, not both"),
        (dict(bool_mask=m.astype(np.float32)), TypeError, "bool_mask must be bool or uint8"),
        (
            dict(bool_mask=np.ones((3, 1, 5, 6), bool)),
            ValueError,
            r"bool_mask has shape \(3, 1, 5, 6\).*Bm in \{1, 2\}",
        ),
        (dict(add_mask=np.zeros((1, 2, 5, 6), np.float32)), ValueError, r"add_mask has shape .*Hm in \{1, 4\}"),
        (dict(add_mask=np.zeros((1, 1, 5, 5), np.float32)), ValueError, "add_mask has shape"),
        (dict(add_mask=np.zeros((1, 1, 5, 6))), TypeError, "add_mask must be float32"),
        (dict(special=np.ones((2, 5), bool)), ValueError, r"special has shape \(2, 5\); expected \(B, Tk\)"),
        (dict(sink_index=np.array([0, 6])), ValueError, r"sink_index\[1\] = 6 is outside \[0, 6\)"),
        (dict(sink_index=np.array([0])), ValueError, r"sink_index has shape \(1,\); expected \(B,\) = \(2,\)"),
        (dict(sink_index=np.array([0.0, 1.0])), TypeError, "sink_index must be an integer type"),
        (dict(sinks=np.zeros(3, np.float32)), ValueError, "sinks has shape"),
        (dict(sinks=np.array([0, 0, np.inf, 0], np.float32)), ValueError, r"sinks must be finite; sinks\[2\] = inf"),
        (dict(maps=True, map_heads=np.array([0, 4])), ValueError, r"map_heads\[1\] = 4 is outside \[0, 4\)"),
        (dict(maps=True, map_heads=np.array([], np.int64)), ValueError, "map_heads must not be empty"),
        (dict(maps=True, map_rows=np.array([-1])), ValueError, r"map_rows\[0\] = -1 is outside \[0, 5\)"),
        (dict(maps=True, map_rows=np.array([[0]])), ValueError, "map_rows has shape"),
        (dict(maps=True, map_fusion="min"), ValueError, "map_fusion must be 'none', 'mean' or 'max', got 'min'"),
        (dict(map_heads=np.array([0])), ValueError, "map_heads is given but maps=False"),
        (dict(map_rows=np.array([0])), ValueError, "map_rows is given but maps=False"),
        (dict(map_fusion="mean"), ValueError, "map_fusion is given but maps=False"),
        (dict(row_weights=np.ones((2, 5), np.float32)), TypeError, "row_weights must be float64"),
        (dict(row_weights=np.ones((2, 6))), ValueError, r"row_weights has shape \(2, 6\); expected \(B, Tq\)"),
        (
            dict(row_weights=np.ones((2, 0, 5))),
            ValueError,
            r"row_weights has shape \(2, 0, 5\); expected \(B, Tq\) = \(2, 5\) or \(B, R, Tq\) = \(2, R, 5\) with R >= 1",
        ),
        (dict(row_weights=np.full((2, 5), np.inf)), ValueError, r"row_weights must be finite; row_weights\[0, 0\]"),
        (dict(row_weights=nan_w), ValueError, r"row_weights must be finite; row_weights\[1, 0, 4\] = nan"),
        (dict(row_heads=np.array([0])), ValueError, "row_heads is given but row_weights is None"),
        (dict(row_weights=np.ones((2, 5)), row_heads=np.array([9])), ValueError, r"row_heads\[0\] = 9 is outside"),
    ]
    return [pytest.param(*case, id=f"{n}-{'-'.join(case[0])}") for n, case in enumerate(cases)]


@pytest.mark.parametrize(("change", "error", "message"), bad_cases())
def test_bad_arguments_name_the_argument(change, error, message):
    q, k = qk(b=2, hq=4, hkv=2, tq=5, tk=6, d=8)
    kwargs = dict(q=q, k=k, scaling=1.0, stats=True) | change
    with pytest.raises(error, match="qk_attention: " + message):
        _core.qk_attention(kwargs.pop("q"), kwargs.pop("k"), **kwargs)


def long_problem():
    """About 10 s of work on one thread (B=1, Hq=8, Hkv=2, T=32768, D=64, causal)."""
    q, k = qk(b=1, hq=8, hkv=2, tq=32768, tk=32768, d=64, seed=4)
    return q, k, dict(scaling=0.125, causal=True, stats=True, num_threads=1)


def test_ctrl_c_raises_keyboard_interrupt_promptly():
    q, k, kwargs = long_problem()
    fired = []

    def interrupt():
        fired.append(time.perf_counter())
        _thread.interrupt_main()

    timer = threading.Timer(0.3, interrupt)
    start = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        _core.qk_attention(q, k, **kwargs)
    stopped = time.perf_counter()
    timer.join()
    assert fired and stopped - fired[0] < 2.0
    assert stopped - start < 3.0  # interrupted, not finished (the whole run takes ~10 s)
    # The kernel is usable afterwards.
    small = _core.qk_attention(q[:, :, :64].copy(), k[:, :, :64].copy(), scaling=0.125, causal=True, stats=True)
    assert np.isfinite(small["entropy"]).all()


def test_releases_the_gil_and_runs_without_polling_off_the_main_thread():
    q, k = qk(b=1, hq=8, hkv=2, tq=4096, tk=4096, d=64, seed=5)
    result = {}
    work = lambda: result.update(_core.qk_attention(q, k, scaling=0.125, causal=True, stats=True, num_threads=1))
    assert ticks_while_running(work) > 20 and np.isfinite(result["entropy"]).all()
