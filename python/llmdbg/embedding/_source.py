"""Row sources for t-SNE input that may not fit in memory (private).

``fit`` reads its input in row chunks, so a ``numpy.memmap`` (or any array) is never copied
whole, and the vector column of a dataset run's Parquet shards is read shard by shard. Every
source yields the same chunks for the same rows, so a memory-mapped array gives exactly the
in-memory result.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ._prepare import as_float_matrix

# Rows per chunk: about 32 MB of float64 per chunk, at least 1024 rows.
_CHUNK_BYTES = 1 << 25


def chunk_rows(n_features: int) -> int:
    """Rows per chunk for ``n_features`` columns (depends on the shape only, never the source)."""
    return max(1024, _CHUNK_BYTES // (8 * max(int(n_features), 1)))


class ArrayRows:
    """An (N, D) array (numpy, memmap, torch tensor) read in row chunks without a whole copy.

    Parameters
    ----------
    X : array-like, shape (N, D)
        float32/float64 are read as they are; other real dtypes become float32 (<= 2 bytes per
        entry) or float64, one chunk at a time.
    """

    def __init__(self, X: Any) -> None:
        if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
            raise TypeError("X: sparse input is not supported by TSNE; pass a dense array (X.toarray())")
        if isinstance(X, torch.Tensor):
            X = as_float_matrix(X, "X")
        if not isinstance(X, np.ndarray):
            X = as_float_matrix(X, "X")
        if X.dtype.kind not in "fiu":
            raise TypeError(f"X must hold real numbers (float32/float64), got dtype {X.dtype}")
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
        self._X = X
        self.shape: tuple[int, int] = (int(X.shape[0]), int(X.shape[1]))
        self.dtype = (
            X.dtype
            if X.dtype in (np.float32, np.float64)
            else np.dtype(np.float32 if X.dtype.itemsize <= 2 else np.float64)
        )
        self.example_ids: np.ndarray | None = None

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, C-contiguous float chunk) pairs covering the rows in order."""
        n, d = self.shape
        step = chunk_rows(d)
        for start in range(0, n, step):
            yield start, np.ascontiguousarray(self._X[start : start + step], dtype=self.dtype)


def _shard_files(out: str) -> list[str]:
    files = sorted(f for f in os.listdir(out) if f.startswith("part-") and f.endswith(".parquet"))
    if not files:
        raise ValueError(f"X: {out!r} holds no Parquet shards (part-*.parquet); is it a run directory?")
    return [os.path.join(out, f) for f in files]


class ParquetColumn:
    """A vector column of a dataset run's Parquet shards, read one shard at a time.

    Rows are the records with ``status == "ok"`` (as ``RunResult.matrix`` selects), in shard
    order and ``example_id`` order within a shard; ``example_ids`` holds their ids.

    Parameters
    ----------
    run : str, os.PathLike or RunResult
        The run directory (``llmdbg.run(..., out=...)``) or the object ``llmdbg.open_run`` returns.
    column : str
        A fixed-width vector column, e.g. ``"embedding"``.
    """

    def __init__(self, run: Any, column: str) -> None:
        import pyarrow.parquet as pq

        out = getattr(run, "out", run)
        if not isinstance(out, (str, os.PathLike)):
            raise TypeError(f"X: expected a run directory or RunResult, got {type(run).__name__}")
        if not isinstance(column, str):
            raise TypeError(f"column must be a str naming a vector column, got {column!r}")
        self.files = _shard_files(os.fspath(out))
        self.column = column
        ids: list[np.ndarray] = []
        width: int | None = None
        dtype: np.dtype | None = None
        for f in self.files:
            schema = pq.read_schema(f)
            if column not in schema.names:
                raise ValueError(f"column {column!r} is not in {f!r}; columns: {schema.names}")
            value_type = getattr(schema.field(column).type, "value_type", None)
            if value_type is None:
                raise ValueError(f"column {column!r} is not a vector column (got {schema.field(column).type})")
            dtype = np.dtype(value_type.to_pandas_dtype())
            ids.append(self._ids(f))
        self.example_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        for f in self.files:  # the width from the first non-empty shard
            _, rows = self._read(f)
            if len(rows):
                width = rows.shape[1]
                break
        if width is None:
            raise ValueError(f"X: no record with status 'ok' holds column {column!r}")
        assert dtype is not None
        self.dtype = dtype if dtype in (np.float32, np.float64) else np.dtype(np.float32)
        self.shape = (len(self.example_ids), int(width))

    def _ids(self, f: str) -> np.ndarray:
        import pyarrow.parquet as pq

        t = pq.read_table(f, columns=["example_id", "status"])
        ok = np.asarray(t.column("status").to_numpy(zero_copy_only=False) == "ok")
        return np.sort(t.column("example_id").to_numpy()[ok].astype(np.int64), kind="stable")

    def _read(self, f: str) -> tuple[np.ndarray, np.ndarray]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        t = pq.read_table(f, columns=["example_id", "status", self.column])
        ok = np.asarray(t.column("status").to_numpy(zero_copy_only=False) == "ok")
        ids = t.column("example_id").to_numpy().astype(np.int64)[ok]
        col = t.column(self.column).combine_chunks().filter(pa.array(ok))
        if col.null_count:
            raise ValueError(f"column {self.column!r} has {col.null_count} null value(s) among the 'ok' records")
        if len(col) == 0:
            return ids, np.zeros((0, 0), np.float32)
        flat = col.flatten().to_numpy(zero_copy_only=False)
        width = len(flat) // len(col)
        if width * len(col) != len(flat):
            raise ValueError(f"column {self.column!r} holds vectors of different lengths")
        order = np.argsort(ids, kind="stable")
        return ids[order], flat.reshape(len(col), width)[order]

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """The same chunk boundaries as an in-memory array of this shape (so the same sums)."""
        step = chunk_rows(self.shape[1])
        pending: list[np.ndarray] = []
        have = start = 0
        for f in self.files:
            _, rows = self._read(f)
            if not len(rows):
                continue
            if rows.shape[1] != self.shape[1]:
                raise ValueError(f"column {self.column!r}: {f!r} has width {rows.shape[1]}, expected {self.shape[1]}")
            pending.append(np.asarray(rows, dtype=self.dtype))
            have += len(rows)
            while have >= step:
                block = np.concatenate(pending) if len(pending) > 1 else pending[0]
                yield start, np.ascontiguousarray(block[:step])
                start += step
                pending, have = [block[step:]], have - step
        if have:
            yield start, np.ascontiguousarray(np.concatenate(pending))


def as_rows(X: Any, column: str | None = None) -> ArrayRows | ParquetColumn:
    """The row source for ``fit``'s X: a run (path or RunResult) with ``column``, else an array."""
    if isinstance(X, (ArrayRows, ParquetColumn)):
        return X
    if isinstance(X, (str, os.PathLike)) or (hasattr(X, "manifest") and hasattr(X, "out")):
        return ParquetColumn(X, column if column is not None else "embedding")
    if column is not None:
        raise ValueError("column is only for a run directory or RunResult input")
    return ArrayRows(X)
