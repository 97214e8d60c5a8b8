"""The on-disk format of every saved llmdbg object: one directory, JSON beside safetensors.

A saved object is a directory holding exactly two files:

- ``meta.json``: ``{"format": "llmdbg", "version": 1, "kind": ..., "llmdbg_version": ...,
  "created": ..., "arrays": {name: {"dtype": ..., "shape": [...]}}, ...}`` plus whatever the kind
  stores (strings, token lists, module names, scalars);
- ``arrays.safetensors``: every numpy array, by name, stored with its exact dtype and shape.

Both are open formats that any language reads; nothing is ever pickled or unpickled. A directory
is written next to its target and renamed into place, so a reader never sees half an object and a
failed save leaves what was there before untouched. This module knows nothing of llmdbg's types:
the per-kind writers and readers (``tracing/persist.py``, ``attribution/persist.py``,
``training/persist.py``) decide what goes into ``meta`` and ``arrays``.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ARRAYS_FILE", "FORMAT", "META_FILE", "VERSION", "read_archive", "read_meta", "write_archive"]

#: The ``format`` field of every meta.json llmdbg writes.
FORMAT = "llmdbg"
#: The newest format version this llmdbg writes and reads; a reader refuses anything newer.
VERSION = 1
META_FILE = "meta.json"
ARRAYS_FILE = "arrays.safetensors"

# What safetensors stores exactly (bfloat16 and the float8 types have no numpy dtype).
_KINDS = "biuf"
_RESERVED = ("format", "version", "kind", "llmdbg_version", "created", "arrays")


def _as_path(path: Any) -> Path:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _checked_array(name: str, value: Any) -> np.ndarray:
    """``value`` as a C-contiguous little-endian array (safetensors writes raw memory, so a
    transposed view would be saved in the wrong order)."""
    if not isinstance(name, str) or not name or name == "__metadata__":
        raise ValueError(f"array names must be non-empty strings other than '__metadata__', got {name!r}")
    if not isinstance(value, np.ndarray):
        raise TypeError(f"array {name!r} must be a numpy.ndarray, got {type(value).__name__}")
    if value.dtype.kind not in _KINDS or value.dtype.itemsize > 8:
        raise TypeError(
            f"array {name!r} has dtype {value.dtype}; only bool, integer and float16/32/64 arrays can be saved"
        )
    if value.dtype.byteorder == ">" or (value.dtype.byteorder == "=" and sys.byteorder == "big"):
        value = value.astype(value.dtype.newbyteorder("<"))
    # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
    return value if value.flags.c_contiguous else value.copy(order="C")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _is_archive(path: Path) -> bool:
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _check_target(path: Path, overwrite: bool) -> bool:
    """Whether ``path`` holds something to replace; refuses what must not be replaced."""
    if not path.exists() and not path.is_symlink():
        return False
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return False  # an empty directory: renaming onto it is allowed
    if not overwrite:
        raise ValueError(f"{str(path)!r} already exists and is not empty; pass overwrite=True to replace it")
    if not (path.is_dir() and not path.is_symlink() and _is_archive(path)):
        # overwrite=True must never delete a user's unrelated directory or file.
        raise ValueError(
            f"{str(path)!r} exists and is not a saved llmdbg object (no llmdbg meta.json); "
            "refusing to replace it even with overwrite=True: remove it yourself or choose another path"
        )
    return True


def write_archive(
    path: Any,
    kind: str,
    meta: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    *,
    overwrite: bool = False,
) -> Path:
    """Write one saved object atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The directory to create. An existing empty directory is filled; an existing non-empty
        path is refused unless ``overwrite=True``, and even then only a saved llmdbg object is
        replaced, after the new one is complete.
    kind : str
        What is saved (``"trace"``, ``"attribution"``, ...), checked again by :func:`read_archive`.
    meta : Mapping
        JSON-serialisable fields of the kind (no NaN or infinity: floats that may be non-finite
        belong in ``arrays``). The reserved keys ``format``, ``version``, ``kind``,
        ``llmdbg_version``, ``created`` and ``arrays`` are filled here.
    arrays : Mapping of str to numpy.ndarray
        Bool, integer or float16/32/64 arrays of any shape (0-size and 0-d included); saved
        contiguous, with their dtype and shape.
    overwrite : bool
        Replace an existing saved object at ``path``.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from safetensors.numpy import save_file

    from .. import __version__

    target = _as_path(path)
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    clash = sorted(set(meta) & set(_RESERVED))
    if clash:
        raise ValueError(f"meta must not set the reserved keys {clash}")
    checked = {name: _checked_array(name, value) for name, value in arrays.items()}
    replace = _check_target(target, overwrite)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "llmdbg_version": __version__,
        "created": _now(),
        **meta,
        "arrays": {n: {"dtype": a.dtype.name, "shape": list(a.shape)} for n, a in checked.items()},
    }
    try:  # fail before touching the disk when meta is not plain JSON
        text = json.dumps(header, ensure_ascii=False, allow_nan=False, indent=1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta is not plain JSON (floats must be finite; arrays go into arrays): {e}") from None
    parent = target.absolute().parent
    if not parent.is_dir():
        raise ValueError(f"the parent directory of {str(target)!r} does not exist")
    tmp = parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    old = parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        save_file(checked, str(tmp / ARRAYS_FILE), metadata={"format": FORMAT})
        (tmp / META_FILE).write_text(text, encoding="utf-8")
        if replace:
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)  # put the previous object back
                raise
        else:
            os.replace(tmp, target)  # onto nothing or an empty directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replace:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_meta(path: Any) -> dict[str, Any]:
    """The checked ``meta.json`` of the saved object at ``path``.

    Raises
    ------
    ValueError
        ``path`` is not a directory holding a ``meta.json`` that llmdbg wrote, or it was written by
        a newer llmdbg (a format version above :data:`VERSION`).
    """
    where = _as_path(path)
    if not where.is_dir():
        raise ValueError(f"{str(where)!r} is not a directory saved by llmdbg (it does not exist or is a file)")
    file = where / META_FILE
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{str(where)!r} is not a saved llmdbg object: it has no {META_FILE}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(file)!r} is not a readable llmdbg {META_FILE}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f'{str(file)!r} was not written by llmdbg (no "format": "llmdbg" field)')
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{str(file)!r} has no valid format version (got {version!r})")
    if version > VERSION:
        raise ValueError(
            f"{str(where)!r} was saved by a newer llmdbg (format version {version}, llmdbg "
            f"{meta.get('llmdbg_version', '?')}); this llmdbg reads up to version {VERSION}: upgrade llmdbg"
        )
    if not isinstance(meta.get("kind"), str) or not isinstance(meta.get("arrays"), dict):
        raise ValueError(f"{str(file)!r} is incomplete: it lacks the 'kind' or 'arrays' field")
    return meta


def read_archive(path: Any, kinds: Iterable[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a saved object written by :func:`write_archive`.

    Parameters
    ----------
    path : str or os.PathLike
        The saved directory.
    kinds : iterable of str
        The kinds the caller can rebuild.

    Returns
    -------
    meta : dict
        Everything of ``meta.json``.
    arrays : dict of str to numpy.ndarray
        Every array, with the dtype and shape ``meta["arrays"]`` lists.

    Raises
    ------
    ValueError
        Not an llmdbg object, a newer format, another kind, or a missing, corrupted or
        inconsistent ``arrays.safetensors``.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta = read_meta(path)
    wanted = list(kinds)
    where = _as_path(path)
    if meta["kind"] not in wanted:
        raise ValueError(
            f"{str(where)!r} holds a saved {meta['kind']!r}, not {' or '.join(map(repr, wanted))}; "
            "llmdbg.load(path) reads any kind"
        )
    file = where / ARRAYS_FILE
    if not file.is_file():
        raise ValueError(f"{str(where)!r} is incomplete: {ARRAYS_FILE} is missing")
    try:
        arrays = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{str(file)!r} is corrupted: {e}") from None
    listed = meta["arrays"]
    if set(listed) != set(arrays):
        missing, extra = sorted(set(listed) - set(arrays)), sorted(set(arrays) - set(listed))
        raise ValueError(
            f"{str(file)!r} does not match {META_FILE}: missing arrays {missing[:5]}, unlisted arrays {extra[:5]}"
        )
    for name, spec in listed.items():
        a = arrays[name]
        if not isinstance(spec, dict) or spec.get("dtype") != a.dtype.name or spec.get("shape") != list(a.shape):
            raise ValueError(
                f"{str(file)!r} does not match {META_FILE}: array {name!r} is {a.dtype.name} {list(a.shape)}, "
                f"{META_FILE} says {spec!r}"
            )
    return meta, arrays
