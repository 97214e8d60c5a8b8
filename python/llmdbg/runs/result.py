"""What :func:`llmdbg.run` returns, and how a finished run directory is read back."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .._internal import html as h
from .store import ACTIVATIONS, read_manifest

__all__ = ["RunResult", "open_run"]


class RunResult:
    """A run directory, read lazily: the records, the cached activations, the manifest.

    Parameters
    ----------
    out : str or os.PathLike
        A directory written by :func:`llmdbg.run`.
    """

    def __init__(self, out: Any) -> None:
        self.out = os.fspath(out)
        self.manifest: dict[str, Any] = read_manifest(self.out)

    @property
    def complete(self) -> bool:
        """Every shard was written."""
        return bool(self.manifest.get("complete"))

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest["job"]["tasks"])

    def column_shape(self, column: str) -> tuple[int, ...] | None:
        """The logical shape of a flattened vector column (``attention_*``: ``(L, H)``), or None."""
        info = self.manifest.get("columns", {}).get(column)
        return tuple(info["shape"]) if info else None

    def records(self, columns: list[str] | None = None) -> Any:
        """Every record as a pandas DataFrame, one row per example, sorted by ``example_id``.
        Vector columns hold numpy arrays."""
        import pandas as pd

        files = sorted(f for f in os.listdir(self.out) if f.startswith("part-") and f.endswith(".parquet"))
        if not files:
            return pd.DataFrame()
        cols = None if columns is None else list(dict.fromkeys(["example_id", *columns]))
        frames = [pd.read_parquet(os.path.join(self.out, f), columns=cols) for f in files]
        df = pd.concat(frames, ignore_index=True)
        return df.sort_values("example_id", kind="stable").reset_index(drop=True)

    def matrix(self, column: str, *, status: str = "ok") -> tuple[np.ndarray, np.ndarray]:
        """A vector column stacked into ``(N, width)`` (e.g. ``"embedding"`` for a map), over the
        records with ``status``; returns ``(example_ids (N,) int64, values (N, width))``."""
        df = self.records(["status", column])
        df = df[df["status"] == status]
        if df.empty:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return df["example_id"].to_numpy(np.int64), np.stack(df[column].to_numpy())

    def activations(self, module: str) -> Any:
        """The cached activations of ``module``, all shards concatenated: a ``(rows, D)`` torch
        tensor in the run's ``activation_dtype``; rows of example ``i`` start at its record's
        ``activations_offset`` within its shard (shards follow each other in order)."""
        import torch
        from safetensors import safe_open

        shards = sorted(self.manifest.get("shards", {}).items(), key=lambda kv: int(kv[0]))
        files = [info["activations"] for _, info in shards if info.get("activations")]
        if not files:
            raise ValueError(f"{self.out!r} has no cached activations: run with tasks including 'activations'")
        parts = []
        for f in files:
            with safe_open(os.path.join(self.out, f), framework="pt") as st:
                if module not in st.keys():
                    raise KeyError(f"no activations of {module!r}; cached modules: {sorted(st.keys())}")
                parts.append(st.get_tensor(module))
        return torch.cat(parts)

    def activation_files(self) -> list[str]:
        """Paths of the safetensors shards under ``out/_activations``, in shard order."""
        d = os.path.join(self.out, ACTIVATIONS)
        return sorted(os.path.join(d, f) for f in os.listdir(d)) if os.path.isdir(d) else []

    def summary(self) -> dict[str, Any]:
        """Examples, shards, statuses and the last run's timing."""
        shards = self.manifest.get("shards", {})
        rows = sum(v.get("rows", 0) for v in shards.values())
        return {
            "examples": self.manifest["job"]["data"]["n_examples"],
            "rows": rows,
            "skipped": sum(v.get("skipped", 0) for v in shards.values()),
            "errors": sum(v.get("errors", 0) for v in shards.values()),
            "tokens": sum(v.get("tokens", 0) for v in shards.values()),
            "shards": len(shards),
            "complete": self.complete,
            **self.manifest.get("last_run", {}),
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"<llmdbg.RunResult {self.out!r}: {s['rows']:,}/{s['examples']:,} examples in {s['shards']} shards, "
            f"{s['skipped']} skipped, {s['errors']} errors, tasks {self.tasks}>"
        )

    def _repr_html_(self) -> str:
        s = self.summary()
        body = h.table(
            ["", ""],
            [
                [h.esc(k), h.esc(f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else v)]
                for k, v in s.items()
            ],
        )
        footer = "<code>.records()</code> gives every row as a DataFrame"
        return h.box("llmdbg.RunResult", f"{h.esc(self.out)}: tasks {h.esc(', '.join(self.tasks))}", body, footer)


def open_run(out: Any) -> RunResult:
    """Read a run directory written by :func:`llmdbg.run` (see :class:`RunResult`)."""
    return RunResult(out)
