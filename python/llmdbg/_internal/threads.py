"""One spelling for thread counts, ``n_jobs`` (scikit-learn's), resolved in one place.

``None`` means torch's intra-op setting (``torch.get_num_threads()``), a positive integer that
many threads (at most four per core: the C++ core clamps larger requests the same way), and a
negative one counts back from all cores: -1 is every core, -2 all but one.
Kernels receive the resolved count explicitly, because ``torch.set_num_threads`` does not reach
an OpenMP team that the kernel opens itself.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["renamed_num_threads", "resolve_n_jobs", "torch_threads"]

F = TypeVar("F", bound=Callable[..., Any])


def resolve_n_jobs(n_jobs: Any, name: str = "n_jobs") -> int:
    """The number of threads ``n_jobs`` asks for, at least 1.

    Raises
    ------
    ValueError
        If ``n_jobs`` is 0, a bool or not an integer.
    """
    if n_jobs is None:
        return max(1, int(torch.get_num_threads()))
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0:
        raise ValueError(f"{name} must be None, a positive integer or a negative one (-1 = all cores), got {n_jobs!r}")
    cores = os.cpu_count() or 1
    if n_jobs < 0:
        return max(1, cores + 1 + int(n_jobs))
    return min(int(n_jobs), 4 * cores)


def renamed_num_threads(fn: F) -> F:
    """Accept the old keyword ``num_threads=`` for ``n_jobs=`` with a DeprecationWarning."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "num_threads" in kwargs:
            if "n_jobs" in kwargs:
                raise TypeError(f"{fn.__name__}() got both n_jobs and its old name num_threads; pass n_jobs only")
            warnings.warn(
                f"{fn.__name__}(num_threads=...) is deprecated; pass n_jobs=... (same meaning, and -1 = all cores)",
                DeprecationWarning,
                stacklevel=2,
            )
            kwargs["n_jobs"] = kwargs.pop("num_threads")
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch ops with ``n`` intra-op threads, restoring the previous setting afterwards."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
