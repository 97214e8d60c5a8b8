"""Lightning integration: ``Trainer(callbacks=[DebugCallback()])`` (``pip install 'llmdbg[lightning]'``).

Lightning calls ``on_before_backward`` with the loss, then ``on_before_optimizer_step`` after
the backward and *before* it clips gradients: the watch records the step there. Validation
epochs feed ``watch.eval`` with ``val_loss`` (or ``val/loss``) from ``trainer.callback_metrics``.
Only global rank zero writes TensorBoard events.
"""

from __future__ import annotations

import os
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on the environment
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError("llmdbg.integrations.lightning needs Lightning: pip install 'llmdbg[lightning]'") from exc

from ..training import TRACKS, Watch

__all__ = ["DebugCallback"]


class DebugCallback(pl.Callback):
    """Watch a Lightning run (see :func:`llmdbg.watch` for the parameters).

    Works under DDP and under FSDP2 (``ModelParallelStrategy`` with ``fully_shard`` in
    ``configure_model``); Lightning's ``FSDPStrategy`` is FSDP1, which the watch refuses.

    ``log_dir`` defaults to ``<trainer.default_root_dir>/llmdbg``; ``False`` writes nothing.
    """

    def __init__(
        self,
        *,
        every: int = 50,
        log_dir: Any = None,
        detectors: Any = "default",
        track: Any = TRACKS,
        on_nan: str = "warn",
        locate: str = "replay",
        keep_batches: Any = "auto",
        batch_dir: Any = None,
        max_batch_bytes: int = 64 * 2**20,
    ) -> None:
        super().__init__()
        self.every, self.log_dir, self.detectors = every, log_dir, detectors
        self.track, self.on_nan, self.locate = track, on_nan, locate
        self.batches = {"keep_batches": keep_batches, "batch_dir": batch_dir, "max_batch_bytes": max_batch_bytes}
        self.watch: Watch | None = None
        self._loss = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        opt = trainer.optimizers[0] if trainer.optimizers else None
        log_dir = None
        if trainer.is_global_zero and self.log_dir is not False:
            log_dir = self.log_dir if self.log_dir is not None else os.path.join(trainer.default_root_dir, "llmdbg")
        self.watch = Watch(
            pl_module,
            opt,
            every=self.every,
            log_dir=log_dir,
            detectors=self.detectors,
            track=self.track,
            on_nan=self.on_nan,
            locate=self.locate,
            **self.batches,
        )

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.watch is not None and not self.watch.closed:
            self.watch.step(loss=self._loss)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.watch is None or self.watch.closed or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        val = m.get("val_loss", m.get("val/loss"))
        if val is not None:
            self.watch.eval(max(trainer.global_step - 1, 0), val_loss=float(val))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.watch is not None:
            self.watch.close()
