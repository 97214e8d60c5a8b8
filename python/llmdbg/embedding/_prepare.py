"""Input checks and the PCA step shared by the t-SNE estimator (private).

PCA runs through torch: the covariance is one GEMM (X^T X, D x D) in the input's dtype and the
eigendecomposition of the small D x D matrix is done in float64. torch's BLAS dispatches to the
CPU's widest vector unit at run time, which makes this several times faster than the same GEMM in
the portable (SSE2-only) build of the C++ core.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._internal.threads import torch_threads


def as_float_matrix(X, name: str = "X") -> np.ndarray:
    """X (numpy array, torch tensor or array-like) as a C-contiguous float32/float64 (N, D) array.

    float32 and float64 are kept; other real dtypes (integers, float16, bfloat16) become float32
    or float64. Raises TypeError for non-numeric input and ValueError for anything not 2-D.
    """
    if isinstance(X, torch.Tensor):
        t = X.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be a real floating-point tensor, got dtype {t.dtype}")
        X = t.cpu().numpy()
    X = np.asarray(X)
    if X.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (float32/float64), got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float32 if X.dtype.itemsize <= 2 else np.float64)
    return np.ascontiguousarray(X)


def check_finite_rows(X: np.ndarray, name: str = "X") -> None:
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise ValueError(f"{name} has {len(rows)} row(s) with NaN or Inf (rows {shown}); drop or impute them first")


def to_unit_scale(X: np.ndarray) -> np.ndarray:
    """X times the power of two that brings its largest |x| into [0.5, 1), same dtype.

    Exact (only exponents change, except for entries that become subnormal): t-SNE does not
    depend on the data's scale, and at unit scale float32 covariances (|x| ~ 1e30) and float64
    squared distances (|x| ~ 1e300 or 1e-300) neither overflow nor underflow. X and X * 2**s
    give the same array. X must be finite.
    """
    if X.size == 0:
        return X
    largest = max(float(X.max()), -float(X.min()))
    if largest == 0.0:
        return X
    exponent = math.frexp(largest)[1]  # largest = f * 2**exponent, f in [0.5, 1)
    if exponent == 0:
        return X
    return np.ascontiguousarray(np.ldexp(X, -exponent), dtype=X.dtype)


def normalize_rows(X: np.ndarray, name: str = "X") -> np.ndarray:
    """Rows scaled to unit L2 norm (the cosine metric); zero rows are an error."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))
    zero = norms == 0
    if zero.any():
        raise ValueError(
            f"{name} has {int(zero.sum())} all-zero row(s) (first: row "
            f"{int(np.flatnonzero(zero)[0])}); the cosine metric needs nonzero rows"
        )
    return np.ascontiguousarray(X / norms[:, None].astype(X.dtype))


def pca(X: np.ndarray, n_components: int, num_threads: int) -> np.ndarray:
    """Project the centred X onto its first n_components principal axes, (N, n_components).

    Deterministic: the sign of each axis is fixed so its largest-magnitude loading is positive.
    The output has X's dtype. The GEMMs always run on one thread: a multi-threaded BLAS splits
    the sums differently for each thread count, and t-SNE turns those last-bit differences of
    its initial map into maps that differ by whole units (up to 8.0 measured at 1.3M entries).
    One thread costs about a second per 50 GFLOP, small next to the optimisation it seeds.
    ``num_threads`` is accepted for the callers' symmetry and not used.
    """
    del num_threads
    if not X.flags.writeable:  # torch.from_numpy warns on read-only arrays
        X = X.copy()
    with torch_threads(1), torch.no_grad():
        Xt = torch.from_numpy(X)
        mean = Xt.mean(dim=0, dtype=torch.float64).to(Xt.dtype)
        Xc = Xt - mean
        cov = (Xc.T @ Xc).double()
        _evals, evecs = torch.linalg.eigh(cov)  # ascending
        V = evecs.flip(1)[:, :n_components]
        signs = torch.sign(V.gather(0, V.abs().argmax(dim=0, keepdim=True)))
        V = (V * signs).to(Xt.dtype)
        return (Xc @ V).numpy()
