"""Saving and loading :class:`Attribution` and :class:`GenerationAttribution`.

Both results are dataclasses whose fields are numpy arrays, dicts of arrays (the step scores),
or plain JSON values (token strings, word ids with None entries, the method, flags). Each field
goes where it is kept exactly: arrays (and numpy scalars, as 0-d arrays) into
``arrays.safetensors`` under the field's name (``step_scores/<name>`` for a dict), everything
else into ``meta.json`` under ``"fields"``. ``meta["layout"]`` says which field went where, so a
loaded result has the same fields with the same types, dtypes and shapes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .._internal.archive import read_archive, write_archive
from .generation_result import GenerationAttribution
from .result import Attribution

__all__ = ["load_attribution", "load_generation_attribution", "save_result"]

KINDS: dict[type, str] = {Attribution: "attribution", GenerationAttribution: "generation_attribution"}
R = TypeVar("R", Attribution, GenerationAttribution)


def _encode(obj: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    fields: dict[str, Any] = {}
    layout: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            arrays[f.name], layout[f.name] = value, "array"
        elif isinstance(value, np.generic):
            arrays[f.name], layout[f.name] = np.asarray(value), "scalar"
        elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            for k, v in value.items():
                arrays[f"{f.name}/{k}"] = v
            layout[f.name] = {"arrays": [str(k) for k in value]}
        else:
            fields[f.name], layout[f.name] = value, "json"
    return {"fields": fields, "layout": layout}, arrays


def save_result(result: Attribution | GenerationAttribution, path: Any, *, overwrite: bool = False) -> Path:
    """Save an attribution result to the directory ``path`` (see :meth:`llmdbg.Attribution.save`)."""
    kind = KINDS.get(type(result))
    if kind is None:
        raise TypeError(
            f"result must be an llmdbg.Attribution or llmdbg.GenerationAttribution, got {type(result).__name__}"
        )
    meta, arrays = _encode(result)
    try:
        return write_archive(path, kind, meta, arrays, overwrite=overwrite)
    except ValueError as e:
        if "not plain JSON" not in str(e):
            raise
        raise ValueError(
            f"{type(result).__name__} has a field that is neither a numpy array nor plain JSON: {e}"
        ) from None


def _decode(cls: type[R], path: Any) -> R:
    meta, arrays = read_archive(path, [KINDS[cls]])
    try:
        fields, layout = meta["fields"], meta["layout"]
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            where = layout[f.name]
            if where == "array":
                kwargs[f.name] = arrays[f.name]
            elif where == "scalar":
                kwargs[f.name] = arrays[f.name][()]
            elif where == "json":
                kwargs[f.name] = fields[f.name]
            else:
                kwargs[f.name] = {k: arrays[f"{f.name}/{k}"] for k in where["arrays"]}
        return cls(**kwargs)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{str(path)!r} is a corrupted saved {cls.__name__}: {type(e).__name__}: {e}") from None


def load_attribution(path: Any) -> Attribution:
    """Load an :class:`llmdbg.Attribution` saved with :meth:`~llmdbg.Attribution.save`.

    Raises
    ------
    ValueError
        ``path`` is not a saved Attribution, was saved by a newer llmdbg, or is corrupted.
    """
    return _decode(Attribution, path)


def load_generation_attribution(path: Any) -> GenerationAttribution:
    """Load an :class:`llmdbg.GenerationAttribution` saved with
    :meth:`~llmdbg.GenerationAttribution.save`.

    Raises
    ------
    ValueError
        ``path`` is not a saved GenerationAttribution, was saved by a newer llmdbg, or is corrupted.
    """
    return _decode(GenerationAttribution, path)
