"""attention_rollout against an fp64 numpy rollout written here, its documented discard semantics,
padding invariance, the row path, thread determinism, Traces, and every bad-input path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmdbg
from llmdbg.attention import attention_rollout
from tiny_models import tiny_inputs, tiny_model


def softmax_maps(l=3, b=2, h=4, t=9, seed=0, causal=False, dtype=np.float32):
    x = np.random.default_rng(seed).standard_normal((l, b, h, t, t)) * 2
    if causal:
        x = np.where(np.tril(np.ones((t, t), bool)), x, -np.inf)
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(dtype)


def discard(fused, ratio):
    """vit-explain's filter as documented: zero the int(n*n*ratio) smallest entries in (value,
    row-major position) order, except flat position 0."""
    flat = fused.reshape(-1).copy()
    k = int(flat.size * ratio)
    order = np.lexsort((np.arange(flat.size), flat))[:k]
    flat[order[order != 0]] = 0.0
    return flat.reshape(fused.shape)


def numpy_rollout(maps, fusion="mean", residual=True, discard_ratio=0.0):
    """Abnar & Zuidema's recursion in float64 for one (L, H, T, T) sequence, written independently."""
    reduce = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
    result = None
    for a in maps:
        a = reduce(a.astype(np.float64), axis=0)
        if discard_ratio:
            a = discard(a, discard_ratio)
        if residual:
            a = a + np.eye(a.shape[-1])
            a = a / a.sum(-1, keepdims=True)
        result = a if result is None else a @ result
    return result


def reference(maps, **kw):
    return np.stack([numpy_rollout(maps[:, b], **kw) for b in range(maps.shape[1])])


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("residual", [True, False])
def test_equals_numpy_reference(fusion, residual):
    maps = softmax_maps()
    got = attention_rollout(maps, head_fusion=fusion, residual=residual)
    assert got.dtype == np.float32 and got.shape == (2, 9, 9)
    np.testing.assert_allclose(got, reference(maps, fusion=fusion, residual=residual), rtol=1e-5, atol=1e-7)


def test_input_forms_and_float64():
    maps = softmax_maps(dtype=np.float64)
    want = reference(maps)
    for given in (maps, list(maps), [torch.from_numpy(m) for m in maps], [m.astype(np.float32) for m in maps]):
        np.testing.assert_allclose(attention_rollout(given), want, atol=1e-6)
    # Head-mean (B, T, T) maps are one fused head.
    np.testing.assert_allclose(attention_rollout([m.mean(1) for m in maps]), want, atol=1e-6)


def test_identity_and_uniform_attention():
    t = 6
    eye = np.broadcast_to(np.eye(t, dtype=np.float32), (4, 1, 2, t, t))
    np.testing.assert_array_equal(attention_rollout(eye), np.eye(t)[None])
    uniform = np.full((5, 1, 3, t, t), 1 / t, np.float32)
    np.testing.assert_allclose(attention_rollout(uniform, residual=False), np.full((1, t, t), 1 / t), atol=1e-7)
    # With the residual, Â = (U + I) / 2 and Â^L = 2^-L I + (1 − 2^-L) U.
    w = 2.0**-5
    np.testing.assert_allclose(attention_rollout(uniform), (w * np.eye(t) + (1 - w) / t)[None], atol=1e-7)


def test_rows_equal_rows_of_the_full_product():
    maps = softmax_maps(l=4, t=33, seed=1)
    full = attention_rollout(maps)
    rows = [32, 0, -1, 5, 5]
    got = attention_rollout(maps, rows=rows)
    assert got.shape == (2, 5, 33)
    np.testing.assert_allclose(got, full[:, [32, 0, 32, 5, 5]], rtol=1e-6, atol=1e-8)
    assert attention_rollout(maps, rows=np.array([], int)).shape == (2, 0, 33)


def test_causal_maps_stay_lower_triangular_and_exact():
    maps = softmax_maps(l=4, b=1, t=70, seed=2, causal=True)
    got = attention_rollout(maps)
    assert not np.triu(got[0], 1).any()
    np.testing.assert_allclose(got, reference(maps), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(attention_rollout(maps, rows=[69, 3]), got[:, [69, 3]], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_discard_ratio_follows_documented_semantics(ratio, fusion):
    maps = softmax_maps(seed=3)
    maps[0, 0, :, 0, 0] = 1e-6  # entry [0, 0] among the smallest: kept anyway
    maps[0, 0, :, 0] /= maps[0, 0, :, 0].sum(-1, keepdims=True)
    got = attention_rollout(maps, discard_ratio=ratio, head_fusion=fusion)
    np.testing.assert_allclose(got, reference(maps, fusion=fusion, discard_ratio=ratio), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
    # Without the residual the filtered maps are used as they are.
    np.testing.assert_allclose(
        attention_rollout(maps, discard_ratio=ratio, residual=False),
        reference(maps, discard_ratio=ratio, residual=False),
        rtol=1e-5,
        atol=1e-7,
    )


def test_discard_ties_are_taken_in_row_major_order():
    t = 4
    a = np.full((1, 1, 1, t, t), 1 / t, np.float32)  # all 16 entries tie
    got = attention_rollout(a, discard_ratio=0.5, residual=False)  # k = 8: positions 1..7 zeroed
    want = np.full((t, t), 1 / t)
    want.reshape(-1)[1:8] = 0
    np.testing.assert_allclose(got[0], want, atol=1e-7)


@pytest.mark.parametrize("side", ["left", "right", "middle"])
def test_padding_gives_exactly_the_unpadded_result(side):
    maps = softmax_maps(l=3, b=1, t=7, seed=4)
    t, pad = 10, 3
    real = {"left": np.arange(pad, t), "right": np.arange(0, t - pad), "middle": np.r_[0:2, 5:10]}[side]
    padded = np.random.default_rng(5).random((3, 1, 4, t, t)).astype(np.float32)  # garbage at padding
    padded[..., real[:, None], :] = 0
    padded[..., real[:, None], real[None, :]] = maps
    mask = np.zeros((1, t), int)
    mask[0, real] = 1
    for ratio in (0.0, 0.2):
        want = attention_rollout(maps, discard_ratio=ratio)
        expected = np.zeros((1, t, t), np.float32)
        expected[0][np.ix_(real, real)] = want[0]
        got = attention_rollout(padded, attention_mask=mask, discard_ratio=ratio)
        np.testing.assert_array_equal(got, expected)
        want_rows = attention_rollout(maps, discard_ratio=ratio, rows=[6, 0])
        expected_rows = np.zeros((1, 2, t), np.float32)
        expected_rows[0][:, real] = want_rows[0]
        got_rows = attention_rollout(padded, attention_mask=mask, discard_ratio=ratio, rows=[real[-1], real[0]])
        np.testing.assert_array_equal(got_rows, expected_rows)
    # A padding row asked for comes out as zeros.
    pad_row = int(np.setdiff1d(np.arange(t), real)[0])
    assert not attention_rollout(padded, attention_mask=mask, rows=[pad_row]).any()


def test_bitwise_identical_for_every_thread_count():
    maps = softmax_maps(l=3, b=3, t=120, seed=6)
    ref = attention_rollout(maps, n_jobs=1)
    for n in (2, 3, 4):
        np.testing.assert_array_equal(attention_rollout(maps, n_jobs=n), ref)
        np.testing.assert_array_equal(attention_rollout(maps[:, :1], n_jobs=n), ref[:1])
        np.testing.assert_array_equal(attention_rollout(maps, rows=[7, 100], n_jobs=n), ref[:, [7, 100]])


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_trace_from_capture(family):
    model, inputs = tiny_model(family), tiny_inputs(family)
    with llmdbg.capture(model, attentions=True) as trace, torch.no_grad():
        model(**inputs)
    got = attention_rollout(trace)
    mask = inputs["attention_mask"].numpy()
    want = attention_rollout(trace.attentions, attention_mask=mask)
    np.testing.assert_array_equal(got, want)
    ref = reference(np.stack(trace.attentions))  # no real query attends to padding in these models
    m = mask.astype(bool)
    np.testing.assert_allclose(got, ref * m[:, :, None] * m[:, None, :], atol=1e-6)
    assert got[-1, -1].sum() == 0 and got[-1, :, -1].sum() == 0  # the padded position
    np.testing.assert_allclose(got[m].sum(-1), 1.0, rtol=1e-5)


def test_encoder_decoder_trace_needs_a_stack():
    model, inputs = tiny_model("t5"), tiny_inputs("t5")
    with llmdbg.capture(model, attentions=True) as trace, torch.no_grad():
        model(**inputs)
    with pytest.raises(ValueError, match="encoder and decoder stacks"):
        attention_rollout(trace)
    assert attention_rollout(trace, stack="decoder").shape == (2, 5, 5)


def test_renormalize():
    maps = softmax_maps() * 1.5
    with pytest.raises(ValueError, match="sums to 1.5, not 1; pass renormalize=True"):
        attention_rollout(maps)
    np.testing.assert_allclose(attention_rollout(maps, renormalize=True), reference(maps / 1.5), atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    maps = softmax_maps()
    with pytest.raises(ValueError, match="one array of shape"):
        attention_rollout(maps[0])  # 4-D: not a stack
    with pytest.raises(ValueError, match=r"has shape \(9, 9\); expected \(B, H, T, T\)"):
        attention_rollout([m[0, 0] for m in maps])
    with pytest.raises(ValueError, match="batch size and T must agree"):
        attention_rollout([maps[0], softmax_maps(l=1, t=8)[0]])
    with pytest.raises(ValueError, match="must be square"):
        attention_rollout([maps[0][..., :5]])
    nan = maps.copy()
    nan[1, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"attentions\[1\] contains NaN or Inf"):
        attention_rollout(nan)
    with pytest.raises(ValueError, match="not 1; pass renormalize=True"):
        attention_rollout(maps * 0.5)
    with pytest.raises(TypeError, match="floating point"):
        attention_rollout([np.ones((1, 1, 2, 2), int)])
    for ratio in (-0.1, 1.0, 2, float("nan")):
        with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\)"):
            attention_rollout(maps, discard_ratio=ratio)
    with pytest.raises(ValueError, match="head_fusion must be one of"):
        attention_rollout(maps, head_fusion="sum")
    with pytest.raises(ValueError, match=r"rows must be in \[-9, 9\) .* got 9"):
        attention_rollout(maps, rows=[0, 9])
    with pytest.raises(ValueError, match=r"rows must be in \[-9, 9\) .* got -10"):
        attention_rollout(maps, rows=[-10])
    with pytest.raises(TypeError, match="rows must be integers"):
        attention_rollout(maps, rows=[0.5])
    with pytest.raises(TypeError, match=r"e\.g\. rows=\[3\]"):
        attention_rollout(maps, rows=3)
    with pytest.raises(ValueError, match="1-D"):
        attention_rollout(maps, rows=[[1]])
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 8\)"):
        attention_rollout(maps, attention_mask=np.ones((2, 8)))
    with pytest.raises(ValueError, match="no real token"):
        attention_rollout(maps, attention_mask=np.zeros((2, 9)))
    with pytest.raises(ValueError, match="n_jobs"):
        attention_rollout(maps, n_jobs=0)


def test_core_binding_checks_its_arguments():
    from llmdbg import _core

    maps = softmax_maps()
    with pytest.raises(TypeError, match=r"layers\[0\] must be float32 or float64, got float16"):
        _core.attention_rollout([maps[0].astype(np.float16)])
    with pytest.raises(ValueError, match=r"layers\[0\] must be C-contiguous"):
        _core.attention_rollout([maps[0][..., ::2, :]])
    with pytest.raises(ValueError, match=r"layers\[1\] has shape .* but layers\[0\] has batch 2 and T 9"):
        _core.attention_rollout([maps[0], maps[1][:1]])
    with pytest.raises(ValueError, match=r"rows\[1\] = 9 is outside \[0, 9\)"):
        _core.attention_rollout(list(maps), rows=np.array([0, 9]))
    with pytest.raises(ValueError, match=r"mask has shape \(2, 3\); expected \(B, T\) = \(2, 9\)"):
        _core.attention_rollout(list(maps), mask=np.ones((2, 3), bool))
    with pytest.raises(TypeError, match=r"mask must be a \(B, T\) array of 0/1 or bool"):
        _core.attention_rollout(list(maps), mask="not a mask")
    with pytest.raises(ValueError, match="non-empty list"):
        _core.attention_rollout([])


@pytest.mark.parametrize("value", [256, 0.5, 2, -1])
def test_core_masks_must_be_zero_or_one(value):
    """A cast to uint8 used to read 256 and 0.5 as 0: real tokens silently became padding."""
    from llmdbg import _core

    rng = np.random.default_rng(0)
    a = rng.random((1, 2, 3, 4, 4)).astype(np.float32) + 0.1
    a /= a.sum(-1, keepdims=True)
    mask = np.ones((2, 4)) if isinstance(value, float) else np.ones((2, 4), dtype=np.int64)
    mask[1, 2] = value
    with pytest.raises(ValueError, match=r"mask must hold only 0 \(padding\) and 1 \(real token\)"):
        _core.attention_rollout(list(a), mask=mask)
    with pytest.raises(ValueError, match=r"mask must hold only 0 \(padding\) and 1"):
        _core.attention_flow(list(a), mask=mask, rows=np.array([0]))
    ok = mask.copy()
    ok[1, 2] = 0
    assert np.isfinite(_core.attention_rollout(list(a), mask=ok)).all()
    u8 = np.ones((2, 4), dtype=np.uint8)
    u8[0, 1] = 7
    with pytest.raises(ValueError, match=r"mask must hold only 0 \(padding\) and 1"):
        _core.attention_head_stats(list(a), u8, None, 1)


def test_core_row_sums_and_minima_equal_numpy():
    from llmdbg import _core

    a = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    sums, mins = _core.attention_row_sums(a, 2, with_min=True)
    np.testing.assert_allclose(sums, a.astype(np.float64).sum(-1), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(mins, a.min(-1).astype(np.float64))
    np.testing.assert_array_equal(_core.attention_row_sums(a, 2), sums)
