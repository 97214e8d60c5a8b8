"""Where :class:`~llmdbg.training.Watch` writes: TensorBoard event files.

Tags follow TensorBoard's ``section/name`` convention: ``loss/train``, ``loss/val``,
``grad_norm/global``, ``grad_norm/<layer>``, ``weight_norm/<layer>``, ``update_ratio/<layer>``,
``lr``, ``metrics/<name>``, ``activations/<block>/absmax``, histograms ``grads/<layer>`` and
``activations/<block>``, and ``events`` as text. Histograms are written with
``add_histogram_raw`` on llmdbg's fixed log2 magnitude bins, so TensorBoard shows exactly the
counts the C++ kernel produced (no re-binning, NaN/Inf counted apart instead of hidden).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..tracing.stats import hist_edges


def check_writable(log_dir: str | os.PathLike) -> Path:
    """Create ``log_dir`` if needed and check that a file can be written in it."""
    path = Path(log_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".llmdbg-write-test-"):
            pass
    except OSError as exc:
        raise ValueError(
            f"log_dir: cannot write to {str(path)!r} ({exc.strerror or exc}); pass a writable directory or log_dir=None"
        ) from exc
    return path


class TensorBoardSink:
    """A ``torch.utils.tensorboard.SummaryWriter`` fed by a watch (rank 0 only)."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("log_dir needs tensorboard: pip install 'llmdbg[tensorboard]'") from exc
        self.log_dir = check_writable(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self._edges = hist_edges()

    def scalars(self, step: int, values: Mapping[str, float | None]) -> None:
        for tag, v in values.items():
            if v is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(tag, float(v), step)

    def histogram(self, tag: str, step: int, counts: np.ndarray, total: float, s: float, ss: float) -> None:
        """Write fixed-bin magnitude counts (``(HIST_BINS,)``) as a raw TensorBoard histogram."""
        counts = np.asarray(counts, np.float64)
        nz = np.flatnonzero(counts)
        if nz.size == 0:
            return
        lo, hi = int(nz[0]), int(nz[-1]) + 1
        self.writer.add_histogram_raw(
            tag,
            min=float(self._edges[lo]),
            max=float(self._edges[hi]),
            num=int(total),
            sum=float(s) if math.isfinite(s) else 0.0,
            sum_squares=float(ss) if math.isfinite(ss) else 0.0,
            bucket_limits=self._edges[lo + 1 : hi + 1].tolist(),
            bucket_counts=counts[lo:hi].tolist(),
            global_step=step,
        )

    def write_step(
        self,
        row: dict[str, Any],
        layers: list[dict[str, Any]],
        histograms: dict[str, dict[str, dict[int, np.ndarray]]],
        act_rows: list[dict[str, Any]],
    ) -> None:
        """One step of a watch: its history ``row``, per-layer norms (``layers``: the step's layer
        rows), and the gradient/activation ``histograms`` and block statistics (``act_rows``)
        recorded at this step, if any."""
        step = row["step"]
        extra = {f"metrics/{k}": v for k, v in row.items() if k not in ("step", "loss", "grad_norm", "lr", "nonfinite")}
        self.scalars(step, {"loss/train": row["loss"], "grad_norm/global": row["grad_norm"], "lr": row["lr"], **extra})
        for r in layers:
            self.scalars(
                step, {f"grad_norm/{r['layer']}": r["grad_norm"], f"weight_norm/{r['layer']}": r["weight_norm"]}
            )
        for kind in ("grads", "activations"):
            for name, by_step in histograms[kind].items():
                if step in by_step:
                    self.histogram(f"{kind}/{name}", step, by_step[step], by_step[step].sum(), 0.0, 0.0)
        for r in act_rows:
            if r["step"] == step and "absmax" in r:
                self.scalars(
                    step, {f"activations/{r['module']}/absmax": r["absmax"], f"activations/{r['module']}/std": r["std"]}
                )

    def text(self, tag: str, step: int, text: str) -> None:
        self.writer.add_text(tag, text, step)

    def embedding(self, mat: Any, metadata: Any = None, tag: str = "default", step: int | None = None) -> None:
        self.writer.add_embedding(mat, metadata=metadata, tag=tag, global_step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
