"""Property tests (hypothesis) of ``llmdbg.TSNE`` and the embedding-map functions
(``pool_hidden_states``, ``embed_tokens``): dtypes, strides, tiny and empty shapes, magnitudes
from 1e-300 to 1e300, NaN/Inf, duplicates, bad parameters.

The invariant: a finite map whose P and KL match numpy references and which does not depend on
the data's scale, pooled vectors equal to numpy's masked means, PCA maps equal to numpy's SVD;
or a ValueError/TypeError naming the argument. The ``_core`` entry points:
test_properties_tsne.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import _hypothesis_profiles  # noqa: F401 - registers and loads the profile
import llmdbg
from _tsne_strategies import F32_MAX, SPECIALS, brute_forces, maybe_strided, named_error, point_sets
from llmdbg.embedding import TSNE, embed_tokens, pool_hidden_states

# ---- llmdbg.TSNE -------------------------------------------------------------------------------


@given(X=point_sets(max_n=30, max_d=4), method=st.sampled_from(["bh", "exact", "fft"]), shift=st.integers(-40, 40))
def test_tsne_gives_a_finite_scale_free_map_or_names_x(X, method, shift):
    n = len(X)
    perplexity = max(1.0, min(3.0, (n - 1) / 3))  # below N / 3: no clamp warning
    kw = dict(perplexity=perplexity, n_iter=25, exaggeration_iter=10, random_state=0, progress=False, method=method)
    finite = np.isfinite(X).all()
    if X.ndim != 2 or n < 4 or X.shape[1] == 0 or not finite or not (X != X[:1]).any():
        with pytest.raises((ValueError, TypeError)) as e:
            TSNE(**kw).fit_transform(X)
        named_error(e, "X")
        return
    t = TSNE(**kw)
    Y = t.fit_transform(X)
    assert Y.shape == (n, 2) and Y.dtype == np.float64 and np.isfinite(Y).all()
    # P is symmetric and sums to 1; KL is that of the map under P (numpy reference).
    indptr, cols, vals = t.affinities_
    dense = np.zeros((n, n))
    for i in range(n):
        dense[i, cols[indptr[i] : indptr[i + 1]]] = vals[indptr[i] : indptr[i + 1]]
    np.testing.assert_allclose(dense, dense.T, rtol=1e-12, atol=0)
    np.testing.assert_allclose(dense.sum(), 1.0, rtol=1e-12)
    _, Z, w = brute_forces(Y)
    mask = dense > 0
    np.testing.assert_allclose(t.kl_divergence_, (dense[mask] * np.log(dense[mask] / (w[mask] / Z))).sum(), rtol=1e-9)
    # Scale-free: X * 2**s gives bitwise the same map when the scaling is exact (no overflow, no
    # subnormal entries either way).
    tiny = np.finfo(X.dtype).tiny
    nonzero = np.abs(X[X != 0])
    with np.errstate(over="ignore"):
        Xs = np.ldexp(X, shift).astype(X.dtype)
    if np.isfinite(Xs).all() and nonzero.size and (np.ldexp(nonzero, shift) >= tiny).all() and (nonzero >= tiny).all():
        np.testing.assert_array_equal(TSNE(**kw).fit_transform(Xs), Y)


@given(
    param=st.sampled_from(
        ["perplexity", "learning_rate", "early_exaggeration", "theta", "max_step_norm", "n_iter", "init"]
    ),
    value=st.sampled_from([np.nan, np.inf, -1.0, 0, "x", None, 1e151]),
)
def test_tsne_names_bad_parameters(param, value):
    X = np.random.default_rng(0).standard_normal((20, 3))
    if param == "init":
        value = np.full((20, 2), value, dtype=np.float64) if not isinstance(value, str) and value is not None else value
    est = TSNE(perplexity=3.0, n_iter=10, exaggeration_iter=5, progress=False)
    est.set_params(**{param: value})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a huge perplexity is clamped, with a warning
            Y = est.fit_transform(X)
    except (ValueError, TypeError) as err:
        named_error(err, param)
        return
    assert np.isfinite(Y).all()  # an accepted value (perplexity inf is clamped, max_step_norm inf: no cap)


# ---- embedding maps ----------------------------------------------------------------------------


@st.composite
def hidden_batches(draw):
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64, np.int32]))
    B, T, D = draw(st.integers(0, 4)), draw(st.integers(0, 5)), draw(st.integers(0, 3))
    scale = draw(st.sampled_from([1e-300, 1.0, 1e30, 1e300])) if dtype == np.float64 else 1.0
    h = (draw(hnp.arrays(np.float64, (B, T, D), elements=st.floats(-8, 8))) * scale).astype(dtype)
    if h.size and dtype != np.int32 and draw(st.integers(0, 5)) == 0:
        h.flat[draw(st.integers(0, h.size - 1))] = draw(st.sampled_from(SPECIALS))
    mask = None
    if draw(st.booleans()):
        mask = draw(hnp.arrays(np.int64, (B, T), elements=st.integers(0, 2)))
    return maybe_strided(draw, h), mask


@given(batch=hidden_batches(), pooling=st.sampled_from(["mean", "cls", "last", "max"]))
def test_pool_hidden_states_matches_numpy(batch, pooling):
    h, mask = batch
    B, T, _ = h.shape
    m = np.ones((B, T), bool) if mask is None else mask != 0
    if pooling == "max":
        with pytest.raises(ValueError) as e:
            pool_hidden_states(h, mask, pooling)
        named_error(e, "pooling")
        return
    if T == 0:
        with pytest.raises(ValueError) as e:
            pool_hidden_states(h, mask, pooling)
        named_error(e, "hidden states")
        return
    if not m.any(axis=1).all():
        with pytest.raises(ValueError) as e:
            pool_hidden_states(h, mask, pooling)
        named_error(e, "attention_mask")
        return
    h64 = h.astype(np.float64)
    if pooling == "mean":  # over the real tokens only: padding's NaN/Inf must not leak in
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf among real tokens: NaN
            ref = np.where(m[..., None], h64, 0.0).sum(1) / m.sum(1, keepdims=True)
    elif pooling == "cls":
        ref = h64[:, 0]
    else:
        ref = h64[np.arange(B), T - 1 - np.argmax(m[:, ::-1], axis=1)]
    used = h64[m] if pooling == "mean" else ref
    too_big = (np.abs(used[np.isfinite(used)]) > F32_MAX).any()
    if too_big:
        with pytest.raises(ValueError) as e:
            pool_hidden_states(h, mask, pooling)
        named_error(e, "hidden states")
        return
    out = pool_hidden_states(h, mask, pooling)
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref.astype(np.float32), rtol=1e-6, atol=1e-30, equal_nan=True)


@given(
    W=point_sets(max_n=12, max_d=5, specials=True),
    projection=st.sampled_from(["pca", "tsne"]),
    use_ids=st.booleans(),
)
def test_embed_tokens_of_a_weight_matrix(W, projection, use_ids):
    V = len(W)
    tokens = list(range(0, V, 2)) if use_ids and V else None
    rows = W[tokens] if tokens is not None else W
    n = len(rows)
    kw = dict(tokens=tokens, projection=projection, progress=False, tsne={"n_iter": 20, "exaggeration_iter": 5})
    ref = None
    if W.ndim != 2 or W.shape[1] == 0 or V == 0:
        expect = ("model", "need at least", "t-SNE needs")
    elif not np.isfinite(rows).all() or np.abs(rows).max(initial=0.0) > F32_MAX:
        expect = ("model",)
    elif projection == "pca" and n < 2:
        expect = ("need at least 2 points",)
    elif projection == "tsne" and (n < 4 or not (rows.astype(np.float32) != rows[:1].astype(np.float32)).any()):
        expect = ("t-SNE needs at least 4 points", "X")
    else:
        expect = None
        if projection == "pca":  # the first two principal components, by SVD in float64
            X = rows.astype(np.float32).astype(np.float64)
            Xc = X - X.mean(0)
            _, s, vt = np.linalg.svd(Xc, full_matrices=False)
            ref = np.pad(Xc @ vt[:2].T, ((0, 0), (0, max(0, 2 - len(vt)))))
            if np.abs(ref).max() > F32_MAX:
                expect = ("float32 range",)
    if expect:
        with pytest.raises((ValueError, TypeError)) as e:
            embed_tokens(W, **kw)
        named_error(e, *expect)
        return
    m = embed_tokens(W, **kw)
    assert m.coords.shape == (n, 2) and m.coords.dtype == np.float32 and np.isfinite(m.coords).all()
    np.testing.assert_array_equal(m.vectors, rows.astype(np.float32))
    if ref is not None:  # equal up to the sign of each axis; a repeated singular value has none
        scale = np.abs(ref).max() + 1e-300
        for c in range(2):
            if c + 1 < len(s) and s[c] - s[c + 1] <= 1e-6 * s[0]:
                continue
            a, b = m.coords[:, c].astype(np.float64), ref[:, c]
            tol = 1e-5 * scale + 4 * float(np.finfo(np.float32).smallest_subnormal)
            assert min(np.abs(a - b).max(), np.abs(a + b).max()) <= tol


def test_pca_map_refuses_coordinates_beyond_float32():
    W = np.zeros((6, 3), np.float32)
    W[::2, :2] = 3e38  # PC1 coordinates of +-3e38 * sqrt(2)
    W[1::2, :2] = -3e38
    with pytest.raises(ValueError) as e:
        llmdbg.embed_tokens(W, projection="pca", progress=False)
    named_error(e, "float32 range")
