"""One progress-bar helper for every long operation (``progress=True``).

tqdm's ``disable=None`` turns the bar off by itself when output is not a terminal or notebook,
so logs of batch jobs stay clean; ``progress=False`` always turns it off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

__all__ = ["check_progress", "progress_bar", "progress_iter"]

T = TypeVar("T")


def check_progress(progress: Any) -> bool:
    """``progress`` as a bool; raises TypeError for anything else."""
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {type(progress).__name__}")
    return progress


@contextlib.contextmanager
def progress_bar(progress: bool, total: int | None, desc: str, unit: str = "it") -> Iterator[Any]:
    """A tqdm bar (``bar.update(n)``) that is closed on exit, also after exceptions."""
    bar = tqdm(total=total, desc=desc, unit=unit, disable=None if check_progress(progress) else True, leave=False)
    try:
        yield bar
    finally:
        bar.close()


def progress_iter(
    items: Iterable[T], progress: bool, desc: str, total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """Iterate ``items`` with a progress bar."""
    with progress_bar(progress, total if total is not None else _len(items), desc, unit) as bar:
        for item in items:
            yield item
            bar.update(1)


def _len(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None
