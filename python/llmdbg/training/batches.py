"""Keep the batch of a bad step for replay: its forwards' inputs as one safetensors file.

A step's recorded forwards are ``(args, kwargs)`` pairs: nested tuples, lists and dicts whose
leaves are tensors, plain scalars, strings, dtypes or devices. :class:`BatchStore` writes them
as **one** ``batch-step<step>-rank<rank>.safetensors`` file: the tensors (cloned to contiguous
CPU memory) by their place in the structure (``0.kwargs.input_ids``), and the structure itself
(how to rebuild ``args``/``kwargs``, with the non-tensor leaves) as JSON in the file's metadata.
:func:`load_batch` rebuilds the forwards exactly: dtypes, shapes, values and containers. Nothing
is pickled, and nothing is unpickled when reading.

A batch that holds anything else (a cache object, a custom class) cannot be rebuilt, so nothing
of it is written: the :class:`BatchRef` keeps its metadata only (the tensors' shapes, and the
type and a truncated ``repr`` of what was not saved) and a ``UserWarning`` names it. So does a
batch larger than the store's cap. Files are written to a temporary name and renamed into
place, so a reader never sees half a batch.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

__all__ = ["BatchRef", "BatchStore", "batch_ids", "describe", "load_batch"]

FORMAT = "llmdbg-batch"
VERSION = 1
ID_KEYS = ("idx", "index", "indices", "ids", "example_id", "example_ids")
_REPR_CHARS = 120
_MAX_DEPTH = 32
# What safetensors stores (bfloat16 and float8 included); anything else is "not saved".
_DTYPES = {
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
    *(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64") if hasattr(torch, n)),
}


@dataclass(frozen=True)
class BatchRef:
    """Where the batch of one step (on one rank) went: what ``event.batch`` holds.

    Attributes
    ----------
    step, rank : int
        The optimizer step and the rank that recorded the forwards.
    path : str or None
        The safetensors file (:func:`load_batch` reads it), or None when nothing was saved.
    ids : tuple or None
        Example ids/indices the batch carried (:func:`batch_ids`), or None.
    shapes : dict of str to tuple of int
        Every input tensor's shape, by its place in the forwards (``"0.kwargs.input_ids"``),
        also when the batch was not saved.
    saved : bool
        Whether ``path`` holds the whole batch.
    reason : str
        Why it was not saved (``""`` when it was).
    """

    step: int
    rank: int
    path: str | None
    ids: tuple | None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, hash=False)  # events stay hashable
    saved: bool = False
    reason: str = ""


def _ids_of(value: Any) -> tuple | None:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool or value.dim() > 1:
            return None
        return tuple(value.reshape(-1).tolist())
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return tuple(value)
    return None


def batch_ids(kwargs_or_batch: Any) -> tuple | None:
    """The example ids or indices a batch carries, or None.

    Parameters
    ----------
    kwargs_or_batch : Mapping
        A forward's keyword arguments or the user's batch dict. Looked up, in order, under the
        keys ``idx``, ``index``, ``indices``, ``ids``, ``example_id``, ``example_ids``: an
        integer tensor (0-d or 1-d), an int or str, or a list/tuple of them.

    Returns
    -------
    tuple or None
        The ids as a flat tuple of Python ints/strs; None when the batch is not a mapping or
        carries none (``input_ids`` are token ids, not example ids, and are never used).
    """
    if not isinstance(kwargs_or_batch, Mapping):
        return None
    for key in ID_KEYS:
        if key in kwargs_or_batch:
            got = _ids_of(kwargs_or_batch[key])
            if got is not None:
                return got
    return None


class _Encoder:
    """Walks the forwards once: the JSON structure, the tensors by name, what cannot be saved."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.unsaved: list[str] = []

    def node(self, obj: Any, where: str, depth: int = 0) -> Any:
        if isinstance(obj, torch.Tensor):
            return self._tensor(obj, where)
        # exact types only: a numpy scalar, an IntEnum or a str enum would come back as a plain one
        if obj is None or type(obj) in (bool, str):
            return {"k": "v", "v": obj}
        if type(obj) is int:
            return {"k": "int", "v": str(obj)}
        if type(obj) is float:
            return {"k": "float", "v": repr(obj)}  # repr round-trips exactly, nan and inf too
        if isinstance(obj, torch.dtype):
            return {"k": "dtype", "v": str(obj).removeprefix("torch.")}
        if isinstance(obj, torch.device):
            return {"k": "device", "v": str(obj)}
        if type(obj) in (tuple, list) and depth < _MAX_DEPTH:
            items = [self.node(v, f"{where}.{i}", depth + 1) for i, v in enumerate(obj)]
            return {"k": type(obj).__name__, "items": items}
        if type(obj) is dict and depth < _MAX_DEPTH and all(type(k) in (str, int) for k in obj):
            items = [[type(k).__name__, k, self.node(v, f"{where}.{k}", depth + 1)] for k, v in obj.items()]
            return {"k": "dict", "items": items}
        return self._object(obj, where)

    def _tensor(self, t: torch.Tensor, where: str) -> Any:
        if hasattr(t, "to_local"):  # a DTensor input: this rank's part
            t = t.to_local()
        if t.layout != torch.strided or t.is_quantized or t.dtype not in _DTYPES:
            return self._object(t, where, f"{t.dtype} {t.layout} tensor of shape {tuple(t.shape)}")
        name = where if where not in self.tensors else f"{where}#{len(self.tensors)}"
        self.tensors[name] = t.detach()
        return {"k": "tensor", "name": name}

    def _object(self, obj: Any, where: str, desc: str | None = None) -> Any:
        kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
        text = desc if desc is not None else _short_repr(obj)
        self.unsaved.append(f"{where} ({kind}: {text})")
        return {"k": "object", "type": kind, "repr": text}


def _short_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not break the training step
        text = f"<repr failed: {type(exc).__name__}>"
    return text if len(text) <= _REPR_CHARS else text[: _REPR_CHARS - 3] + "..."


def _check_forwards(forwards: Any) -> list[tuple[tuple, dict]]:
    if not isinstance(forwards, Sequence) or isinstance(forwards, (str, bytes)):
        raise TypeError(f"forwards: expected a list of (args, kwargs) pairs, got {type(forwards).__name__}")
    out = []
    for i, f in enumerate(forwards):
        if not (isinstance(f, tuple) and len(f) == 2 and isinstance(f[0], tuple) and isinstance(f[1], dict)):
            raise TypeError(f"forwards[{i}]: expected an (args: tuple, kwargs: dict) pair, got {f!r:.80}")
        out.append((f[0], f[1]))
    return out


def _encode(step: int, rank: int, forwards: Any) -> tuple[_Encoder, list, BatchRef]:
    """Walk ``forwards`` once: the encoder (tensors, unsaved leaves), the JSON structure, and the
    unsaved :class:`BatchRef` (ids, shapes)."""
    for name, v in (("step", step), ("rank", rank)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}: expected a non-negative int, got {v!r}")
    enc = _Encoder()
    checked = _check_forwards(forwards)
    structure = [
        {"args": enc.node(a, f"{i}.args"), "kwargs": enc.node(k, f"{i}.kwargs")} for i, (a, k) in enumerate(checked)
    ]
    ids: list = []
    for a, k in checked:
        got = batch_ids(k)
        if got is None and a and isinstance(a[0], Mapping):  # model(batch) with a dict batch
            got = batch_ids(a[0])
        ids += got or ()
    shapes = {n: tuple(t.shape) for n, t in enc.tensors.items()}
    return enc, structure, BatchRef(step, rank, None, tuple(ids) or None, shapes, saved=False)


def describe(step: int, rank: int, forwards: list[tuple[tuple, dict]], reason: str = "not kept") -> BatchRef:
    """A :class:`BatchRef` with the ids and shapes of ``forwards`` and nothing saved (no copy, no
    warning): ``event.batch`` of an event whose batch is not kept (``reason`` says why)."""
    return replace(_encode(step, rank, forwards)[2], reason=reason)


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


class BatchStore:
    """Saves the forwards of bad steps beside the log, one safetensors file per step and rank.

    Parameters
    ----------
    directory : str or os.PathLike
        Where the files go (created if missing).
    max_bytes : int
        Largest batch (the sum of its tensors' bytes) that is saved; a larger one is described
        in its :class:`BatchRef` only, with a warning. Default 64 MiB.

    Examples
    --------
    >>> store = BatchStore(tmp / "batches")                     # doctest: +SKIP
    >>> ref = store.keep(812, 0, [((), {"input_ids": ids})])   # doctest: +SKIP
    >>> load_batch(ref.path)[0][1]["input_ids"].equal(ids)     # doctest: +SKIP
    True
    """

    def __init__(self, directory: Any, max_bytes: int = 64 * 2**20) -> None:
        if isinstance(directory, bytes) or not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory: expected a str or os.PathLike, got {type(directory).__name__}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes: expected a positive int, got {max_bytes!r}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)

    def keep(self, step: int, rank: int, forwards: list[tuple[tuple, dict]]) -> BatchRef:
        """Save the inputs of ``forwards`` (the step's recorded ``(args, kwargs)`` pairs).

        Parameters
        ----------
        step, rank : int
            Name the file ``batch-step<step>-rank<rank>.safetensors`` (an existing one is replaced).
        forwards : list of (tuple, dict)
            Each forward's positional and keyword arguments, in call order.

        Returns
        -------
        BatchRef
            ``saved=True`` with the file's ``path``; or ``saved=False``, ``path=None`` and the
            ``reason`` (a leaf that is not a tensor/scalar/string, or the cap), with a ``UserWarning``.
        """
        enc, structure, ref = _encode(step, rank, forwards)
        where = f"the batch of step {step} (rank {rank})"
        if enc.unsaved:
            reason = (
                f"not saved: {len(enc.unsaved)} input(s) are not tensors, scalars or strings: "
                + "; ".join(enc.unsaved[:3])
                + (" ..." if len(enc.unsaved) > 3 else "")
            )
            warnings.warn(f"{where} is kept as metadata only, {reason}", UserWarning, stacklevel=2)
            return replace(ref, reason=reason)
        nbytes = sum(t.numel() * t.element_size() for t in enc.tensors.values())
        if nbytes > self.max_bytes:
            reason = f"not saved: {_mib(nbytes)} ({nbytes} bytes) is over the cap max_bytes={self.max_bytes}"
            warnings.warn(f"{where} is kept as metadata only, {reason}", UserWarning, stacklevel=2)
            return replace(ref, reason=reason)
        meta = {"format": FORMAT, "version": str(VERSION), "step": str(step), "rank": str(rank)}
        meta["structure"] = json.dumps(structure, separators=(",", ":"))
        path = self.directory / f"batch-step{step}-rank{rank}.safetensors"
        _write_atomic(path, {n: t.to("cpu", copy=True).contiguous() for n, t in enc.tensors.items()}, meta)
        return replace(ref, path=str(path), saved=True)


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Write next to ``path`` and rename into place: a reader sees the old file or the whole new one."""
    from safetensors.torch import save

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        data = save(tensors, metadata=meta)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _decode(node: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if not isinstance(node, dict) or "k" not in node:
        raise ValueError(f"unexpected structure node {node!r:.80}")
    k = node["k"]
    if k == "tensor":
        return tensors[node["name"]]
    if k == "v":
        return node["v"]
    if k == "int":
        return int(node["v"])
    if k == "float":
        return float(node["v"])
    if k == "dtype":
        dtype = getattr(torch, node["v"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {node['v']!r}")
        return dtype
    if k == "device":
        return torch.device(node["v"])
    if k in ("tuple", "list"):
        items = [_decode(v, tensors) for v in node["items"]]
        return tuple(items) if k == "tuple" else items
    if k == "dict":
        return {(int(key) if kt == "int" else str(key)): _decode(v, tensors) for kt, key, v in node["items"]}
    raise ValueError(f"unknown structure node kind {k!r}")


def load_batch(path: Any, device: Any = None) -> list[tuple[tuple, dict]]:
    """Rebuild the forwards saved by :meth:`BatchStore.keep` (safetensors and JSON only).

    Parameters
    ----------
    path : str or os.PathLike
        A ``batch-step<step>-rank<rank>.safetensors`` file (``BatchRef.path``).
    device : str or torch.device, optional
        Where the tensors go (default: the CPU), e.g. the model's device for a replay.

    Returns
    -------
    list of (tuple, dict)
        Each forward's ``(args, kwargs)`` with the saved containers, scalars and tensors of the
        original dtypes, shapes and values.

    Raises
    ------
    ValueError
        The file is missing, is not a safetensors file, or is not an llmdbg batch.
    """
    from safetensors import SafetensorError, safe_open

    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"path: no batch file at {str(p)!r} (was the batch kept? see event.batch.reason)")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ValueError(f"path: {str(p)!r} is not a readable safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"path: {str(p)!r} is not an llmdbg batch (format {meta.get('format')!r})")
    if meta.get("version") != str(VERSION):
        raise ValueError(
            f"path: {str(p)!r} has batch format version {meta.get('version')!r}; this llmdbg reads {VERSION}"
        )
    if device is not None:
        tensors = {k: t.to(device) for k, t in tensors.items()}
    try:
        structure = json.loads(meta["structure"])
        return [(_decode(f["args"], tensors), _decode(f["kwargs"], tensors)) for f in structure]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"path: {str(p)!r} has a corrupt batch structure ({exc!r})") from exc
