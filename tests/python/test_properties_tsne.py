"""Property tests (hypothesis) of every t-SNE ``_core`` entry point, ``llmdbg.TSNE`` and the
embedding-map functions: dtypes, non-contiguous strides, empty and tiny shapes (n < k + 1, n = 1,
n = 2), magnitudes from 1e-300 to 1e300, NaN/Inf and duplicates.

The invariant everywhere: the result equals a plain numpy reference (brute-force neighbours, a
numpy search for each row's precision, the dense joint P, O(N^2) forces, gradient and KL, the
optimiser's update rule, a PCA by SVD, masked means), or the call raises ValueError/TypeError
naming the argument. Never a crash, a hang, a C++ backtrace or a pybind11 signature dump.
Example counts come from the shared profiles (_hypothesis_profiles.py).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import _hypothesis_profiles  # noqa: F401 - registers and loads the profile
import llmdbg
from llmdbg import _core
from llmdbg.embedding import TSNE, embed_tokens, pool_hidden_states

# ---- shared strategies and checks ------------------------------------------------------------

SPECIALS = [np.nan, np.inf, -np.inf]
F32_MAX = float(np.finfo(np.float32).max)


def named_error(excinfo, *names: str) -> None:
    """A ValueError/TypeError (pytest.ExceptionInfo or the exception) naming one of `names`, with
    no signature dump or backtrace."""
    err = excinfo.value if isinstance(excinfo, pytest.ExceptionInfo) else excinfo
    message = str(err)
    assert type(err) in (ValueError, TypeError), (type(err), message)
    assert any(n in message for n in names), message
    assert "incompatible function arguments" not in message and "frame #" not in message, message


def unit_exponent(x: np.ndarray) -> int:
    """The e with max |x| / 2**e in [0.5, 1) (0 for an all-zero or empty x)."""
    largest = float(np.abs(x).max(initial=0.0))
    return math.frexp(largest)[1] if largest > 0 else 0


def maybe_strided(draw, x: np.ndarray) -> np.ndarray:
    """x itself, or the same values as a non-contiguous view (stride 2 along the last axis)."""
    if x.ndim and x.shape[-1] and draw(st.booleans()):
        return np.repeat(x, 2, axis=-1)[..., ::2]
    return x


@st.composite
def point_sets(draw, max_n=12, max_d=5, specials=True):
    """(n, d) float32/float64 points: unit-scale values times 2**s (s from subnormal to near
    overflow), duplicated rows, sometimes NaN/Inf or a non-contiguous view."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n, d = draw(st.integers(0, max_n)), draw(st.integers(0, max_d))
    base = draw(hnp.arrays(np.float64, (n, d), elements=st.floats(-4, 4, allow_subnormal=False)))
    if n >= 2 and draw(st.booleans()):
        base[draw(st.integers(0, n - 1))] = base[draw(st.integers(0, n - 1))]  # a duplicate
    exponents = [-1060, -1000, -600, -100, 0, 100, 500, 510, 1015] if dtype == np.float64 else [-140, -60, 0, 60, 125]
    X = np.ldexp(base, draw(st.sampled_from(exponents))).astype(dtype)
    if specials and X.size and draw(st.integers(0, 5)) == 0:
        X[draw(st.integers(0, n - 1)), draw(st.integers(0, d - 1))] = draw(st.sampled_from(SPECIALS))
    return maybe_strided(draw, X)


def csr_of(dense: np.ndarray):
    """(indptr, indices, data) of the nonzero pattern of a square matrix."""
    rows, cols = np.nonzero(dense)
    indptr = np.searchsorted(rows, np.arange(len(dense) + 1)).astype(np.int64)
    return indptr, cols.astype(np.int64), dense[rows, cols].astype(np.float64)


def brute_forces(Y: np.ndarray):
    """rep_i = sum_j w_ij^2 (y_i - y_j), Z = sum_{i != j} w_ij and w, in float64."""
    diff = Y[:, None, :] - Y[None, :, :]
    w = 1.0 / (1.0 + (diff**2).sum(-1))
    np.fill_diagonal(w, 0.0)
    return (w[..., None] ** 2 * diff).sum(1), w.sum(), w


@st.composite
def joint_problems(draw, min_n=2, max_n=10):
    """A symmetric P (sum 1, zero diagonal) as CSR, its dense form, and a generic map Y."""
    n = draw(st.integers(min_n, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dense = rng.random((n, n)) * (rng.random((n, n)) < 0.6)
    dense = dense + dense.T
    np.fill_diagonal(dense, 0.0)
    if dense.sum() == 0:
        dense[0, 1] = dense[1, 0] = 1.0
    dense /= dense.sum()
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 30.0, 1e4]))
    Y = rng.standard_normal((n, 2)) * scale
    return csr_of(dense), dense, Y


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
