"""Strategies, references and checks shared by the t-SNE property tests
(test_properties_tsne.py: the ``_core.tsne_*`` entry points; test_properties_tsne_api.py:
``llmdbg.TSNE`` and the embedding-map functions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

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
