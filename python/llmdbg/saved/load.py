"""``llmdbg.load(path)``: read back anything an llmdbg ``.save(path)`` wrote.

Every saved object is a directory whose ``meta.json`` names its kind; this module reads that
field and hands the directory to the feature that wrote it. It sits above the features so that
one call reads them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .._internal.archive import read_meta
from ..attribution.persist import load_attribution, load_generation_attribution
from ..tracing.persist import load_trace
from ..training.persist import load_watch

__all__ = ["LOADERS", "load"]

#: ``kind`` in meta.json -> the function that rebuilds it.
LOADERS: dict[str, Callable[[Any], Any]] = {
    "trace": load_trace,
    "attribution": load_attribution,
    "generation_attribution": load_generation_attribution,
    "watch": load_watch,
}


def load(path: str | os.PathLike[str]) -> Any:
    """Load what ``trace.save``, ``Attribution.save``, ``GenerationAttribution.save`` or
    ``Watch.save`` wrote.

    Nothing is unpickled and no model is needed: the directory holds ``meta.json`` and
    ``arrays.safetensors`` (``docs/saving.md``).

    Parameters
    ----------
    path : str or os.PathLike
        The saved directory.

    Returns
    -------
    Trace, Attribution, GenerationAttribution or WatchHistory
        A :class:`llmdbg.Trace` that every trace function accepts, the attribution result with
        every field as saved, or a read-only :class:`~llmdbg.training.persist.WatchHistory` of a
        watch.

    Raises
    ------
    ValueError
        ``path`` does not exist or was not written by llmdbg, was written by a newer llmdbg
        (its format version is above the one this llmdbg reads), holds an unknown kind, or is
        corrupted.

    Examples
    --------
    >>> trace.save("runs/before")  # doctest: +SKIP
    >>> llmdbg.load("runs/before").activations["model.layers.0"]  # doctest: +SKIP
    """
    kind = read_meta(path)["kind"]
    loader = LOADERS.get(kind)
    if loader is None:
        raise ValueError(
            f"{os.fspath(path)!r} holds a saved {kind!r}, which this llmdbg cannot read "
            f"(it reads {', '.join(LOADERS)}): upgrade llmdbg"
        )
    return loader(path)
