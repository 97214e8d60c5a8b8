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


class InputSpace:
    """How ``fit`` mapped its input to the space the neighbours are searched in.

    ``apply`` maps new rows the same way (``TSNE.transform``): the training data's power-of-two
    scale, row normalisation for the cosine metric, then the training PCA (if any).

    Attributes
    ----------
    exponent : int
        Rows are multiplied by ``2**-exponent`` (exact).
    cosine : bool
        Rows are L2-normalised after scaling.
    mean, components : ndarray or None
        PCA centre (D,) and axes (D, n_components), in the input's dtype; None without PCA.
    dtype : numpy dtype
        float32 or float64.
    """

    def __init__(self, exponent: int, cosine: bool, dtype: np.dtype) -> None:
        self.exponent = exponent
        self.cosine = cosine
        self.dtype = np.dtype(dtype)
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None

    def scale(self, chunk: np.ndarray, name: str = "X") -> np.ndarray:
        """Chunk at the training data's unit scale (normalised rows for the cosine metric)."""
        out = np.ldexp(chunk, -self.exponent).astype(self.dtype, copy=False) if self.exponent else chunk
        if self.cosine:
            out = normalize_rows(out, name)
        return np.ascontiguousarray(out, dtype=self.dtype)

    def project(self, scaled: np.ndarray) -> np.ndarray:
        """Scaled rows onto the PCA axes (one thread: the same bits for every thread count)."""
        if self.components is None:
            return scaled
        with torch_threads(1), torch.no_grad():
            Xt = torch.from_numpy(np.ascontiguousarray(scaled))
            out = (Xt - torch.from_numpy(self.mean)) @ torch.from_numpy(self.components)
            return out.numpy()

    def apply(self, chunk: np.ndarray, name: str = "X") -> np.ndarray:
        return self.project(self.scale(chunk, name))


def _unit_exponent(largest: float) -> int:
    return math.frexp(largest)[1] if largest > 0 else 0


def prepare_rows(source, metric: str, n_pca: int | None) -> tuple[np.ndarray, InputSpace]:
    """Check, scale and reduce a row source (``_source.ArrayRows`` / ``ParquetColumn``).

    Streams over the rows (a few passes, one chunk in memory at a time): checks every row is
    finite (and nonzero for the cosine metric) and that not all rows are equal, brings the data
    to unit scale by an exact power of two, then either returns the whole scaled array (no PCA,
    ``n_pca`` None or >= D) or projects it onto its first ``n_pca`` principal axes from the
    covariance accumulated chunk by chunk in float64. Only the (N, n_pca) result is held whole.

    Returns
    -------
    Xk : ndarray, shape (N, D) or (N, n_pca), the input's float dtype
    space : InputSpace
    """
    n, d = source.shape
    largest = 0.0
    first: np.ndarray | None = None
    varies = False
    bad: list[np.ndarray] = []
    zero: list[np.ndarray] = []
    for start, chunk in source.chunks():
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            bad.append(np.flatnonzero(~finite) + start)
            continue
        if metric == "cosine":
            zero.append(np.flatnonzero(~chunk.any(axis=1)) + start)
        if chunk.size:
            largest = max(largest, float(chunk.max()), -float(chunk.min()))
            if first is None:
                first = chunk[0].copy()
            if not varies:
                varies = bool((chunk != first).any())
    if bad:
        rows = np.concatenate(bad)
        shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise ValueError(f"X has {len(rows)} row(s) with NaN or Inf (rows {shown}); drop or impute them first")
    zeros = np.concatenate(zero) if zero else np.zeros(0, np.int64)
    if len(zeros):
        raise ValueError(
            f"X has {len(zeros)} all-zero row(s) (first: row {int(zeros[0])}); the cosine metric needs nonzero rows"
        )
    space = InputSpace(_unit_exponent(largest), metric == "cosine", source.dtype)
    if not varies:
        raise ValueError("X is constant (all rows identical); t-SNE needs distinct points")
    if n_pca is None or n_pca >= d:
        out = np.empty((n, d), dtype=space.dtype)
        for start, chunk in source.chunks():
            out[start : start + len(chunk)] = space.scale(chunk)
        if space.cosine and not (out != out[0]).any():
            raise ValueError("X is constant (all rows identical); t-SNE needs distinct points")
        return out, space
    # PCA: the mean in float64, then the covariance of the centred rows (GEMMs in the input's
    # dtype, accumulated in float64), then the projection, all on one thread.
    total = np.zeros(d, np.float64)
    for _, chunk in source.chunks():
        total += space.scale(chunk).sum(axis=0, dtype=np.float64)
    mean = (total / n).astype(space.dtype)
    cov = torch.zeros((d, d), dtype=torch.float64)
    with torch_threads(1), torch.no_grad():
        mt = torch.from_numpy(mean)
        for _, chunk in source.chunks():
            Xc = torch.from_numpy(space.scale(chunk)) - mt
            cov += (Xc.T @ Xc).double()
        _evals, evecs = torch.linalg.eigh(cov)  # ascending
        V = evecs.flip(1)[:, :n_pca]
        signs = torch.sign(V.gather(0, V.abs().argmax(dim=0, keepdim=True)))
        space.mean = mean
        space.components = np.ascontiguousarray((V * signs).numpy().astype(space.dtype))
    out = np.empty((n, n_pca), dtype=space.dtype)
    for start, chunk in source.chunks():
        out[start : start + len(chunk)] = space.apply(chunk)
    return out, space
