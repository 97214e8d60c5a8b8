"""Property tests (hypothesis) of every t-SNE ``_core`` entry point (``tsne_knn``,
``tsne_calibrate``, ``tsne_joint_probabilities``, ``tsne_repulsion``, ``tsne_gradient``,
``tsne_kl_divergence``, ``tsne_optimize``): dtypes, non-contiguous strides, empty and tiny shapes
(n < k + 1, n = 1, n = 2), magnitudes from 1e-300 to 1e300, NaN/Inf and duplicates.

The invariant everywhere: the result equals a plain numpy reference (brute-force neighbours, a
numpy search for each row's precision, the dense joint P, O(N^2) forces, gradient and KL, the
optimiser's update rule), or the call raises ValueError/TypeError naming the argument. Never a
crash, a hang, a C++ backtrace or a pybind11 signature dump. ``llmdbg.TSNE`` and the embedding
maps: test_properties_tsne_api.py. Example counts come from _hypothesis_profiles.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import _hypothesis_profiles  # noqa: F401 - registers and loads the profile
from _tsne_strategies import (
    SPECIALS,
    brute_forces,
    joint_problems,
    maybe_strided,
    named_error,
    point_sets,
    unit_exponent,
)
from llmdbg import _core

# ---- tsne_knn ----------------------------------------------------------------------------------


@given(X=point_sets(), k=st.integers(-1, 12), metric=st.sampled_from(["euclidean", "cosine"]))
def test_knn_matches_brute_force_or_names_the_argument(X, k, metric):
    n, d = X.shape
    bad = None
    if not X.flags.c_contiguous:
        bad = ("X must be C-contiguous",)
    elif n == 0 or d == 0:
        bad = ("X has shape",)
    elif not 1 <= k < n:
        bad = ("k must be",)
    elif not np.isfinite(X).all():
        bad = ("of X holds NaN or Inf",)
    elif metric == "cosine" and not np.abs(X).max(axis=1).all():
        bad = ("cosine metric needs nonzero rows",)
    if bad:
        with pytest.raises((ValueError, TypeError)) as e:
            _core.tsne_knn(X, k, metric, 2)
        named_error(e, *bad)
        return
    # Reference: every pair in float64 at unit scale (X / 2**e is exact), then scaled back.
    e = unit_exponent(X.astype(np.float64))
    U = np.ldexp(X.astype(np.float64), -e)
    if metric == "cosine":  # each row at its own unit scale, then normalised
        U = np.stack([np.ldexp(u, -unit_exponent(u)) for u in X.astype(np.float64)])
        U = U / np.linalg.norm(U, axis=1, keepdims=True)
    D = ((U[:, None, :] - U[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(D, np.inf)
    kth = np.sort(D, axis=1)[:, :k]
    scale_back = 0 if metric == "cosine" else 2 * e
    with np.errstate(over="ignore"):
        overflow = np.isinf(np.ldexp(kth.max() * (1 + 1e-9), scale_back))
    if overflow:
        with pytest.raises(ValueError) as exc:
            _core.tsne_knn(X, k, metric, 2)
        named_error(exc, "X: squared distances overflow float64")
        return
    idx, d2 = _core.tsne_knn(X, k, metric, 2)
    assert idx.shape == d2.shape == (n, k) and idx.dtype == np.int64 and d2.dtype == np.float64
    assert ((idx >= 0) & (idx < n)).all() and (idx != np.arange(n)[:, None]).all()
    assert all(len(set(row)) == k for row in idx.tolist())
    got = D[np.arange(n)[:, None], idx]
    # The k smallest distances, up to the float32 ranking's resolution relative to the spread.
    spread = float(np.max(D[np.isfinite(D)], initial=0.0))
    np.testing.assert_allclose(got, kth, rtol=0, atol=1e-6 * spread)
    np.testing.assert_allclose(d2, np.ldexp(got, scale_back), rtol=1e-12, atol=0)
    assert (np.diff(d2, axis=1) >= 0).all()


@given(st.sampled_from([[[1.0, 2.0], [3.0, 4.0]], "x", None, np.zeros((3, 2), np.int64), np.zeros((2, 2, 2))]))
def test_knn_refuses_non_arrays_and_wrong_dtypes(X):
    with pytest.raises((ValueError, TypeError)) as e:
        _core.tsne_knn(X, 1)
    named_error(e, "tsne_knn: X")


@given(k=st.sampled_from([1.5, "2", None, 2**70, True]))
def test_knn_scalar_arguments_are_checked(k):
    with pytest.raises((ValueError, TypeError)) as e:
        _core.tsne_knn(np.zeros((5, 2)), k)
    named_error(e, "tsne_knn: k")


# ---- tsne_calibrate ----------------------------------------------------------------------------


def reference_row(s: np.ndarray, target: float) -> np.ndarray:
    """The conditional probabilities of one row from a numpy search for the precision: s are the
    distances minus their minimum, at unit scale; entropy = target, or its limits."""
    ties = int((s == 0).sum())
    if target <= math.log(ties) + 1e-12 or s.max() == 0:  # below the beta -> inf limit
        return (s == 0) / ties
    if target >= math.log(len(s)) - 1e-12:  # beyond the beta -> 0 limit
        return np.full(len(s), 1.0 / len(s))

    def entropy(beta):
        w = np.exp(-beta * s)
        p = w / w.sum()
        return -(p[p > 0] * np.log(p[p > 0])).sum(), p

    lo, hi = 0.0, 1.0
    while entropy(hi)[0] > target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if entropy(mid)[0] > target else (lo, mid)
    return entropy(0.5 * (lo + hi))[1]


@st.composite
def distance_rows(draw):
    n, k = draw(st.integers(0, 5)), draw(st.integers(0, 8))
    base = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(0, 16, allow_subnormal=False)))
    if base.size and draw(st.booleans()):
        base[:, : max(1, k // 2)] = base[:, :1]  # ties at the nearest distance
    D = np.ldexp(base, draw(st.sampled_from([-1070, -1040, -300, 0, 300, 1015])))
    if D.size and draw(st.integers(0, 5)) == 0:
        D[draw(st.integers(0, n - 1)), draw(st.integers(0, k - 1))] = draw(st.sampled_from([*SPECIALS, -1.0]))
    return maybe_strided(draw, D)


@given(
    sqdist=distance_rows(),
    perplexity=st.one_of(st.floats(1.0, 12.0), st.sampled_from([0.5, np.nan, np.inf])),
)
def test_calibrate_matches_a_numpy_search_or_names_the_argument(sqdist, perplexity):
    n, k = sqdist.shape
    bad = None
    if not sqdist.flags.c_contiguous:
        bad = ("sqdist must be C-contiguous",)
    elif not (1 <= perplexity < np.inf):
        bad = ("perplexity must be a finite number >= 1",)
    elif k == 0:
        bad = ("sqdist needs at least one column",)
    elif not (np.isfinite(sqdist).all() and (sqdist >= 0).all()):
        bad = ("is not a finite squared distance >= 0",)
    if bad:
        with pytest.raises((ValueError, TypeError)) as e:
            _core.tsne_calibrate(sqdist, perplexity)
        named_error(e, *bad)
        return
    P, perp = _core.tsne_calibrate(sqdist, perplexity, 1e-5, 200, 2)
    assert P.shape == (n, k) and perp.shape == (n,)
    for i in range(n):
        s = sqdist[i] - sqdist[i].min()
        s = np.ldexp(s, -unit_exponent(s))
        np.testing.assert_allclose(P[i].sum(), 1.0, rtol=1e-12)
        ref = reference_row(s, math.log(perplexity))
        np.testing.assert_allclose(P[i], ref, atol=2e-3)
        h = -(P[i][P[i] > 0] * np.log(P[i][P[i] > 0])).sum()
        np.testing.assert_allclose(perp[i], math.exp(h), rtol=1e-6)


# ---- tsne_joint_probabilities ------------------------------------------------------------------


@given(
    n=st.integers(0, 7),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    defect=st.sampled_from([None, None, None, "self", "range", "nan", "negative", "zeros", "shape"]),
)
def test_joint_probabilities_match_the_dense_definition(n, k, seed, defect):
    rng = np.random.default_rng(seed)
    assume(n == 0 or n > k)
    idx = np.array([rng.choice([j for j in range(n) if j != i], k, replace=False) for i in range(n)], dtype=np.int64)
    idx = idx.reshape(n, k)
    P = rng.random((n, k)) * rng.choice([1e-300, 1.0, 1e300])
    if n == 0:
        indptr, cols, vals = _core.tsne_joint_probabilities(idx, P)
        assert indptr.tolist() == [0] and len(cols) == len(vals) == 0
        return
    names = {
        "self": "or the row itself",
        "range": "is out of range",
        "nan": "is not a finite probability",
        "negative": "is not a finite probability",
        "zeros": "P sums to 0",
        "shape": "must have the same shape",
    }
    if defect == "self":
        idx[0, 0] = 0
    elif defect == "range":
        idx[-1, -1] = n
    elif defect == "nan":
        P[0, 0] = np.nan
    elif defect == "negative":
        P[-1, 0] = -1e-3
    elif defect == "zeros":
        P[:] = 0.0
    elif defect == "shape":
        P = P[:, :-1] if k > 1 else P[:-1]
    if defect:
        with pytest.raises((ValueError, TypeError)) as e:
            _core.tsne_joint_probabilities(idx, np.ascontiguousarray(P))
        named_error(e, names[defect], "indices", "P")
        return
    indptr, cols, vals = _core.tsne_joint_probabilities(idx, P, 2)
    M = np.zeros((n, n))
    np.add.at(M, (np.repeat(np.arange(n), k), idx.ravel()), np.ldexp(P, -unit_exponent(P)).ravel())
    ref = (M + M.T) / (M + M.T).sum()
    got = np.zeros((n, n))
    for i in range(n):
        assert (np.diff(cols[indptr[i] : indptr[i + 1]]) > 0).all()  # sorted, no repeats
        got[i, cols[indptr[i] : indptr[i + 1]]] = vals[indptr[i] : indptr[i + 1]]
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-300)
    assert set(zip(*np.nonzero(ref))) <= {(i, c) for i in range(n) for c in cols[indptr[i] : indptr[i + 1]]}


# ---- tsne_repulsion ----------------------------------------------------------------------------


@st.composite
def maps(draw, max_n=10):
    """(n, 2) float64 maps: generic points at one of many scales, duplicates, rarely NaN/Inf or
    coordinates beyond 1e150 (refused), sometimes non-contiguous."""
    n = draw(st.integers(0, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    Y = rng.standard_normal((n, 2)) * draw(st.sampled_from([0.0, 1e-300, 1e-8, 1.0, 20.0, 300.0, 1e12, 1e150, 1e200]))
    if n >= 2 and draw(st.booleans()):
        Y[draw(st.integers(0, n - 1))] = Y[draw(st.integers(0, n - 1))]
    if n and draw(st.integers(0, 6)) == 0:
        Y[draw(st.integers(0, n - 1)), draw(st.integers(0, 1))] = draw(st.sampled_from(SPECIALS))
    return maybe_strided(draw, Y)


def embedding_error(Y: np.ndarray) -> tuple[str, ...] | None:
    """The error a binding must raise for this map argument, if any."""
    if not Y.flags.c_contiguous:
        return ("Y must be C-contiguous",)
    if not np.isfinite(Y).all():
        return ("holds NaN or Inf",)
    if np.abs(Y).max(initial=0.0) > 1e150:
        return ("coordinates must be within +-1e150",)
    return None


@given(Y=maps(), method=st.sampled_from(["exact", "bh", "fft"]), theta=st.sampled_from([0.0, 0.5, 1.0]))
def test_repulsion_matches_the_pairwise_sum_or_names_the_argument(Y, method, theta):
    n = len(Y)
    bad = embedding_error(Y) or (("Y needs at least 2 rows",) if n < 2 else None)
    if bad is None and method == "fft" and np.ptp(Y, axis=0).max() * (1 + 1e-9) > 512:
        bad = ("Y spans",)
    if bad:
        with pytest.raises((ValueError, TypeError)) as e:
            _core.tsne_repulsion(Y, method, theta)
        named_error(e, *bad)
        return
    rep, Z = _core.tsne_repulsion(Y, method, theta, num_threads=2)
    ref, Zref, _ = brute_forces(Y)
    assert rep.shape == (n, 2) and np.isfinite(rep).all() and np.isfinite(Z)
    size = np.abs(ref).max() + 1e-300
    if method == "exact" or (method == "bh" and theta == 0.0):
        np.testing.assert_allclose(Z, Zref, rtol=1e-10)
        np.testing.assert_allclose(rep, ref, rtol=1e-9, atol=1e-12 * size)
    elif method == "bh":  # cells accepted at side / distance < theta: a bounded approximation
        np.testing.assert_allclose(Z, Zref, rtol=0.1 * theta)
    else:  # interpolation with 3 nodes per unit interval: ~0.12 error per close pair at most
        np.testing.assert_allclose(Z, Zref, rtol=0.15, atol=1e-3)
        np.testing.assert_allclose(rep, ref, atol=0.15 * size + 1e-3)


@given(
    arg=st.sampled_from(["theta", "n_interp", "min_intervals", "intervals_per_unit", "method"]),
    value=st.sampled_from([np.nan, -1.0, 0, 17, "x", 2**40, np.inf]),
)
def test_repulsion_parameters_are_checked(arg, value):
    Y = np.random.default_rng(0).standard_normal((6, 2))
    kwargs = {"method": "fft" if arg != "theta" else "bh", arg: value}
    try:
        rep, Z = _core.tsne_repulsion(Y, **kwargs)
    except (ValueError, TypeError) as err:
        named_error(err, arg, "intervals")
        return
    # Accepted values give the exact answer's approximation: theta = inf summarises every cell.
    _, Zref, _ = brute_forces(Y)
    assert np.isfinite(rep).all() and Z > 0
    np.testing.assert_allclose(Z, Zref, rtol=0.5)


# ---- tsne_gradient, tsne_kl_divergence ---------------------------------------------------------


@given(problem=joint_problems(), exaggeration=st.floats(0.1, 20.0))
def test_gradient_and_kl_match_numpy(problem, exaggeration):
    (indptr, cols, vals), dense, Y = problem
    g, Z = _core.tsne_gradient(indptr, cols, vals, Y, exaggeration, "exact", num_threads=2)
    rep, Zref, w = brute_forces(Y)
    diff = Y[:, None, :] - Y[None, :, :]
    attr = ((dense * w)[..., None] * diff).sum(1)
    ref = exaggeration * attr - rep / Zref
    np.testing.assert_allclose(Z, Zref, rtol=1e-12)
    np.testing.assert_allclose(g, ref, rtol=1e-9, atol=1e-12 * (np.abs(ref).max() + 1e-300))
    kl = _core.tsne_kl_divergence(indptr, cols, vals, Y, num_threads=2)
    mask = dense > 0
    np.testing.assert_allclose(kl, (dense[mask] * np.log(dense[mask] / (w[mask] / Zref))).sum(), rtol=1e-9, atol=1e-12)


@given(
    problem=joint_problems(),
    defect=st.sampled_from(["Y", "Y_big", "data_nan", "data_negative", "indices", "indptr", "rows", "exaggeration"]),
)
def test_gradient_and_kl_name_bad_arguments(problem, defect):
    (indptr, cols, vals), _, Y = problem
    indptr, cols, vals, Y = indptr.copy(), cols.copy(), vals.copy(), Y.copy()
    exaggeration = 1.0
    expect = {
        "Y": "Y: row",
        "Y_big": "within +-1e150",
        "data_nan": "data[",
        "data_negative": "data[",
        "indices": "indices[",
        "indptr": "indptr",
        "rows": "rows but P has",
        "exaggeration": "exaggeration",
    }[defect]
    if defect == "Y":
        Y[0, 1] = np.nan
    elif defect == "Y_big":
        Y[-1, 0] = 1e151
    elif defect == "data_nan":
        vals[0] = np.nan
    elif defect == "data_negative":
        vals[-1] = -0.5
    elif defect == "indices":
        cols[0] = len(Y)
    elif defect == "indptr":
        indptr[-1] += 1
    elif defect == "rows":
        Y = Y[:-1].copy()
    elif defect == "exaggeration":
        exaggeration = np.nan
    with pytest.raises((ValueError, TypeError)) as e:
        _core.tsne_gradient(indptr, cols, vals, Y, exaggeration, "exact")
    named_error(e, expect)
    if defect != "exaggeration":
        with pytest.raises((ValueError, TypeError)) as e:
            _core.tsne_kl_divergence(indptr, cols, vals, Y)
        named_error(e, expect)


# ---- tsne_optimize -----------------------------------------------------------------------------


def reference_optimize(dense, Y, phases, max_step_norm, min_gain=0.01):
    """The optimiser's update written out in numpy (exact repulsion)."""
    Y = Y.copy()
    update, gains = np.zeros_like(Y), np.ones_like(Y)
    for n_iter, alpha, eta, mu in phases:
        for _ in range(n_iter):
            rep, Z, w = brute_forces(Y)
            diff = Y[:, None, :] - Y[None, :, :]
            grad = alpha * ((dense * w)[..., None] * diff).sum(1) - rep / Z
            gains = np.where(np.sign(update) != np.sign(grad), gains + 0.2, np.maximum(gains * 0.8, min_gain))
            u = mu * update - eta * gains * grad
            norm = np.sqrt((u**2).sum(1, keepdims=True))
            if max_step_norm > 0:
                u = np.where(norm > max_step_norm, u * (max_step_norm / np.maximum(norm, 1e-300)), u)
            update = u
            Y = Y + u
            Y = Y - Y.mean(0)
    return Y


@given(
    # n >= 3: with two points attraction and repulsion cancel exactly for any map, so the gradient
    # is rounding noise and its sign (which picks the gain) differs between any two summations.
    problem=joint_problems(min_n=3, max_n=8),
    phases=st.lists(
        st.tuples(st.integers(0, 3), st.floats(1.0, 12.0), st.floats(0.1, 50.0), st.floats(0.0, 0.9)),
        min_size=1,
        max_size=2,
    ),
    max_step_norm=st.sampled_from([0.0, 0.5, 5.0]),
)
def test_optimize_follows_the_update_rule(problem, phases, max_step_norm):
    (indptr, cols, vals), dense, Y = problem
    out = _core.tsne_optimize(indptr, cols, vals, Y, phases, method="exact", max_step_norm=max_step_norm, num_threads=2)
    ref = reference_optimize(dense, Y, phases, max_step_norm)
    assert out["n_iter"] == sum(p[0] for p in phases) and not out["stopped"]
    np.testing.assert_allclose(out["embedding"], ref, rtol=1e-7, atol=1e-9 * (np.abs(ref).max() + 1e-300))
    _, Z, w = brute_forces(out["embedding"])
    mask = dense > 0
    np.testing.assert_allclose(
        out["kl_divergence"], (dense[mask] * np.log(dense[mask] / (w[mask] / Z))).sum(), rtol=1e-9, atol=1e-12
    )


@given(
    problem=joint_problems(max_n=6),
    phases=st.sampled_from(
        [
            [(3, np.nan, 1.0, 0.5)],
            [(3, 1.0, np.inf, 0.5)],
            [(3, 1.0, 1.0, 1.0)],
            [(3, 1.0, -1.0, 0.5)],
            [(-1, 1.0, 1.0, 0.5)],
            [(3, 1.0, 1.0)],
            [("3", 1.0, 1.0, 0.5)],
            "fast",
            [(2.5, 1.0, 1.0, 0.5)],
            [(3, "x", 1.0, 0.5)],
        ]
    ),
    method=st.sampled_from(["exact", "bh", "fft"]),
)
def test_optimize_names_bad_phases(problem, phases, method):
    (indptr, cols, vals), _, Y = problem
    with pytest.raises((ValueError, TypeError)) as e:
        _core.tsne_optimize(indptr, cols, vals, Y, phases, method=method)
    named_error(e, "phases")


@given(
    problem=joint_problems(max_n=6),
    method=st.sampled_from(["exact", "bh", "fft"]),
    spread=st.sampled_from([1e3, 1e12, 1e150]),
)
def test_optimize_from_a_wide_map_stays_finite(problem, method, spread):
    """A map spread over 1e12 made the FFT grid hang; every method now returns a finite map."""
    (indptr, cols, vals), _, Y = problem
    Y = Y - Y.mean(0)  # the loop re-centres: a centred map keeps its extent
    Y = Y / (np.abs(Y).max() + 1e-300) * (0.5 * spread)
    out = _core.tsne_optimize(indptr, cols, vals, Y, [(5, 4.0, 10.0, 0.5), (5, 1.0, 10.0, 0.8)], method=method)
    assert np.isfinite(out["embedding"]).all() and np.isfinite(out["kl_divergence"])
