"""The output directory of a run: Parquet shards, cached activations and the manifest.

Layout of ``out``::

    part-00000.parquet ...          one row per example, example_id order (pandas.read_parquet(out))
    _activations/shard-00000.safetensors   module -> (rows, D) tensors, with "activations"
    _manifest.json                  the job, the shards written, column shapes

The manifest's name starts with an underscore, as Spark's ``_SUCCESS`` and Dask's ``_metadata``
do, because Parquet readers (pyarrow, hence pandas and Ray) skip such files when they read a
directory; a file called ``manifest.json`` beside the shards makes ``pandas.read_parquet(out)``
fail. Every file is written to a hidden temporary name, flushed, then renamed into place, so a
shard either exists whole or not at all: a run killed at any moment and rerun with
``resume=True`` skips exactly the shards that exist, and no row is lost or written twice.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import json
import os
import re
import shutil
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

__all__ = ["MANIFEST", "RunStore", "shard_name"]

MANIFEST = "_manifest.json"
REPORT = "_report.html"  # llmdbg report --run's default page: stale once the shards are replaced
ACTIVATIONS = "_activations"
FORMAT, VERSION = "llmdbg-run", 1
_PART = re.compile(r"^part-(\d{5,})\.parquet$")


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def activations_name(shard: int) -> str:
    return f"{ACTIVATIONS}/shard-{shard:05d}.safetensors"


class RunStore:
    """Reads and writes one run directory (see the module docstring).

    Parameters
    ----------
    out : str or os.PathLike
    job : dict
        The job's identity (tasks, options, model, data fingerprint, shard size): a directory
        holding another job's manifest is refused unless ``force``.
    resume : bool
        Keep the shards already written (else they are deleted and recomputed).
    force : bool
        Replace another job's output in ``out`` (its shards, activations and manifest only).
    """

    def __init__(self, out: Any, job: dict[str, Any], *, resume: bool, force: bool) -> None:
        if not isinstance(out, (str, os.PathLike)):
            raise TypeError(f"out must be a directory path, got {type(out).__name__}")
        self.out = os.fspath(out)
        job = json.loads(json.dumps(job))  # compared with a manifest read back from JSON (tuples become lists)
        self.job = job
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ValueError(f"out={self.out!r} exists and is not a directory")
        os.makedirs(self.out, exist_ok=True)
        old = self._read_manifest()
        if old is None:
            ours = [f for f in os.listdir(self.out) if _PART.match(f) or f == ACTIVATIONS]
            others = [f for f in os.listdir(self.out) if not f.startswith(".") and f not in ours]
            if (ours or others) and not force:
                raise ValueError(
                    f"out={self.out!r} is not empty and holds no llmdbg run ({sorted(ours + others)[:5]}): "
                    "choose an empty directory, or pass force=True (--force) to write there anyway"
                )
            self._clear()
        elif old.get("job") != job:
            if not force:
                diff = sorted(k for k in set(job) | set(old.get("job", {})) if job.get(k) != old["job"].get(k))
                raise ValueError(
                    f"out={self.out!r} holds another job's output (it differs in {diff}): choose another "
                    "directory, or pass force=True (--force) to replace it"
                )
            self._clear()
        elif not resume:
            self._clear()
        self.manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "job": job,
            "created": _now(),
            "shards": {},
            "columns": {},
            "complete": False,
        }
        if old is not None and old.get("job") == job and resume:
            self.manifest["shards"] = {k: v for k, v in old.get("shards", {}).items() if self.has_shard(int(k))}
            # A shard renamed into place by a process that died before it updated the manifest
            # (or by a Ray actor whose driver died) is complete: describe it from its own file.
            for f in os.listdir(self.out):
                m = _PART.match(f)
                if m and str(int(m.group(1))) not in self.manifest["shards"]:
                    self.manifest["shards"][str(int(m.group(1)))] = self._entry_from_file(int(m.group(1)))
            self.manifest["columns"] = old.get("columns", {})
            self.manifest["created"] = old.get("created", self.manifest["created"])
            if "schema" in old:
                self.manifest["schema"] = old["schema"]
        self.write_manifest()

    @property
    def schema(self) -> pa.Schema | None:
        """The Arrow schema every shard is written with (set once, from the preflight)."""
        raw = self.manifest.get("schema")
        return None if raw is None else pa.ipc.read_schema(pa.py_buffer(base64.b64decode(raw)))

    def set_schema(self, schema: pa.Schema, shapes: dict[str, tuple[int, ...]]) -> None:
        # Arrow's IPC encoding of the schema: an open format (not a pickle), exact for every type.
        self.manifest["schema"] = base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")
        for name, shape in shapes.items():
            self.manifest["columns"][name] = {"shape": list(shape)}
        self.write_manifest()

    # -- reading -------------------------------------------------------------------------------------
    def _read_manifest(self) -> dict[str, Any] | None:
        path = os.path.join(self.out, MANIFEST)
        if not os.path.exists(path):
            return None
        return read_manifest(self.out)

    def has_shard(self, shard: int) -> bool:
        """The shard's Parquet file exists (renamed into place, hence complete)."""
        return os.path.exists(os.path.join(self.out, shard_name(shard)))

    def _entry_from_file(self, shard: int) -> dict[str, Any]:
        table = pq.read_table(os.path.join(self.out, shard_name(shard)), columns=["example_id", "status", "n_tokens"])
        acts = activations_name(shard)
        info = _entry(shard, table, acts if os.path.exists(os.path.join(self.out, acts)) else None)
        status = table.column("status").to_pylist()
        info["tokens"] = sum(n for n, st in zip(table.column("n_tokens").to_pylist(), status) if st == "ok")
        return info

    # -- writing -------------------------------------------------------------------------------------
    def _clear(self) -> None:
        for f in os.listdir(self.out):
            if _PART.match(f) or f in (MANIFEST, REPORT) or (f.startswith(".") and f.endswith(".tmp")):
                os.remove(os.path.join(self.out, f))
        shutil.rmtree(os.path.join(self.out, ACTIVATIONS), ignore_errors=True)

    def write_manifest(self) -> None:
        _atomic_bytes(os.path.join(self.out, MANIFEST), json.dumps(self.manifest, indent=1).encode())

    def record_shard(self, shard: int, info: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
        """Note a written shard (and its columns' shapes) in the manifest."""
        self.manifest["shards"][str(shard)] = info
        for name, shape in shapes.items():
            self.manifest["columns"][name] = {"shape": list(shape)}
        self.write_manifest()

    def finish(self, n_shards: int) -> None:
        done = all(self.has_shard(s) for s in range(n_shards))
        self.manifest["complete"] = done
        self.manifest["finished"] = _now()
        self.write_manifest()


def write_shard(out: str, shard: int, table: pa.Table, activations: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write one shard atomically: activations first, the Parquet file last (its presence marks
    the shard done). Returns the shard's manifest entry. Used by every engine (also inside Ray
    actors, which write to ``out`` themselves)."""
    act_file = None
    if activations:
        from safetensors.torch import save_file

        act_file = activations_name(shard)
        path = os.path.join(out, act_file)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = _tmp_name(path)
        try:
            save_file({k: v.contiguous() for k, v in activations.items()}, tmp)
            _fsync(tmp)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    path = os.path.join(out, shard_name(shard))
    tmp = _tmp_name(path)
    try:
        pq.write_table(table, tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    return _entry(shard, table, act_file)


def _entry(shard: int, table: pa.Table, act_file: str | None) -> dict[str, Any]:
    """A shard's manifest entry, from its records."""
    ids = table.column("example_id")
    status = table.column("status").to_pylist()
    return {
        "file": shard_name(shard),
        "rows": table.num_rows,
        "first_example": int(ids[0].as_py()) if table.num_rows else None,
        "last_example": int(ids[-1].as_py()) if table.num_rows else None,
        "skipped": status.count("skipped"),
        "errors": status.count("error"),
        "activations": act_file,
    }


def read_manifest(out: Any) -> dict[str, Any]:
    """The manifest of a run directory, checked to be one this llmdbg reads."""
    path = os.path.join(os.fspath(out), MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{os.fspath(out)!r} holds no llmdbg run (no {MANIFEST})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path!r} is not a valid run manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not an llmdbg run manifest")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise ValueError(
            f"{path!r} was written by a newer llmdbg (run format version {manifest.get('version')}); this "
            f"llmdbg reads up to version {VERSION}: upgrade llmdbg"
        )
    return manifest


def _tmp_name(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.{os.getpid()}.tmp")  # a leading dot: readers skip it


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_bytes(path: str, data: bytes) -> None:
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
