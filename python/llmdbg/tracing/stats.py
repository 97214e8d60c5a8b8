"""Summary statistics of tensors, computed in one fused pass by the C++ core.

The statistics are what a debugger needs to spot a broken activation at a glance: how many
values are NaN or infinite, how many are exactly zero, the mean, spread and range of the finite
values, and a histogram of magnitudes on fixed log2 bins. Fixed bins mean that two summaries
(two forward calls, two shards, two ranks) merge exactly by adding counts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from .. import _core
from .._internal.threads import renamed_num_threads, resolve_n_jobs

#: Number of histogram bins and the exponent of the first bin edge.
HIST_BINS: int = _core.HIST_BINS
HIST_MIN_EXP: int = _core.HIST_MIN_EXP


def hist_edges() -> np.ndarray:
    """Edges of the magnitude histogram, shape ``(HIST_BINS + 1,)``, float64.

    Bin ``b`` counts finite non-zero values with ``edges[b] <= |x| < edges[b + 1]``, that is
    ``2**(b - 32) <= |x| < 2**(b - 31)``. Magnitudes below ``2**-32`` are counted in the first
    bin and magnitudes of ``2**32`` or more in the last; exact zeros are counted separately.
    """
    return np.ldexp(1.0, np.arange(HIST_MIN_EXP, HIST_MIN_EXP + HIST_BINS + 1))


@dataclasses.dataclass(frozen=True)
class ActivationStats:
    """Statistics of one captured tensor (or of all calls of one module, merged).

    ``mean``, ``std`` (population, ``ddof=0``), ``min``, ``max`` and ``absmax`` are over the
    finite values and are NaN when there are none. Everything is accumulated in float64, also for
    bf16/fp16 tensors.

    Attributes
    ----------
    count : int
        Number of elements.
    finite_count, nan_count, inf_count, zero_count : int
        Element counts by kind (zeros of either sign count as zero).
    mean, std, var, min, max, absmax : float
        Moments and extrema of the finite values.
    zero_fraction : float
        ``zero_count / count``.
    histogram : numpy.ndarray
        ``(HIST_BINS,)`` int64 counts of finite non-zero magnitudes; edges from
        :func:`hist_edges`.
    """

    count: int
    finite_count: int
    nan_count: int
    inf_count: int
    zero_count: int
    mean: float
    std: float
    var: float
    min: float
    max: float
    absmax: float
    zero_fraction: float
    histogram: np.ndarray

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActivationStats:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    @property
    def has_nonfinite(self) -> bool:
        """True when any element is NaN or infinite."""
        return self.nan_count > 0 or self.inf_count > 0

    def as_dict(self) -> dict[str, Any]:
        """The statistics as a plain dict (the histogram as a list), e.g. for JSON."""
        d = dataclasses.asdict(self)
        d["histogram"] = self.histogram.tolist()
        return d


@renamed_num_threads
def summarize(x: Any, *, n_jobs: int | None = None) -> ActivationStats:
    """Summary statistics of an array or tensor in one fused pass (float64 accumulation).

    Parameters
    ----------
    x : array_like or torch.Tensor
        Any shape. float32 and float64 are read in place; other real dtypes (bf16, fp16,
        integers) are widened to float32 first.
    n_jobs : int, optional
        Threads for the C++ kernel: None uses ``torch.get_num_threads()``, -1 all cores.
        for every thread count.

    Returns
    -------
    ActivationStats

    Examples
    --------
    >>> s = summarize(np.array([0.0, 1.0, np.nan]))
    >>> s.nan_count, s.zero_count, s.mean
    (1, 1, 0.5)
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_complex():
            raise TypeError("summarize: complex tensors are not supported")
        if t.dtype != torch.float64:
            t = t.to(torch.float32)
        arr = t.cpu().contiguous().numpy()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"summarize: expected a real numeric array, got dtype {arr.dtype}")
        if arr.dtype != np.float64:
            arr = arr.astype(np.float32, copy=False)
        arr = np.ascontiguousarray(arr)
    threads = resolve_n_jobs(n_jobs)
    return ActivationStats.from_dict(_core.summarize(arr, threads))
