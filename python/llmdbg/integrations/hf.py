"""``transformers.Trainer`` integration: ``Trainer(..., callbacks=[DebugCallback()])``.

The Trainer's order within one optimizer step is: backward (per micro-batch), gradient clipping,
``on_pre_optimizer_step``, ``optimizer.step``, ``on_optimizer_step``, ``zero_grad``,
``on_step_end``. The watch reads the gradient norms at the end of each backward pass (so the
recorded global norm is the one *before* clipping) and records the step in
``on_pre_optimizer_step``, while the gradients are still there; the loss is the mean of the
model outputs' ``loss`` over the step's micro-batches. Only world process zero writes
TensorBoard events.
"""

from __future__ import annotations

import math
import os
from typing import Any

from transformers import TrainerCallback

from ..training import TRACKS, Watch

__all__ = ["DebugCallback"]


class DebugCallback(TrainerCallback):
    """Watch a ``transformers.Trainer`` run (see :func:`llmdbg.watch` for the parameters).

    Parameters
    ----------
    every, detectors, track, on_nan, locate, keep_batches, batch_dir, max_batch_bytes
        As for :func:`llmdbg.watch`. The Trainer's ``max_grad_norm`` is passed to the
        exploding-gradient detector (clip rate). Under DDP or FSDP2 every rank watches its
        process and the numbers are reduced across ranks (see :func:`llmdbg.watch`).
    log_dir : str, optional
        TensorBoard directory; default ``<output_dir>/llmdbg``. ``False`` writes nothing.

    Attributes
    ----------
    watch : Watch or None
        The live watch during training (kept, closed, after training for inspection).
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
        self.every, self.log_dir, self.detectors = every, log_dir, detectors
        self.track, self.on_nan, self.locate = track, on_nan, locate
        self.batches = {"keep_batches": keep_batches, "batch_dir": batch_dir, "max_batch_bytes": max_batch_bytes}
        self.watch: Watch | None = None

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        if model is None:
            raise ValueError("DebugCallback: the Trainer passed no model to on_train_begin")
        log_dir = None
        if state.is_world_process_zero and self.log_dir is not False:
            log_dir = self.log_dir if self.log_dir is not None else os.path.join(args.output_dir, "llmdbg")
        detectors = self.detectors
        clip = getattr(args, "max_grad_norm", None)
        if detectors == "default" and clip and math.isfinite(clip) and clip > 0:
            from ..training.detectors import DEFAULTS

            detectors = {k: dict(v) for k, v in DEFAULTS.items()}
            detectors["exploding_gradients"]["max_grad_norm"] = float(clip)
        opt = optimizer
        while opt is not None and not hasattr(opt, "register_step_pre_hook") and hasattr(opt, "optimizer"):
            opt = opt.optimizer
        import torch

        if opt is not None and not isinstance(opt, torch.optim.Optimizer):
            opt = getattr(opt, "optimizer", None)
        self.watch = Watch(
            model,
            opt,
            every=self.every,
            log_dir=log_dir,
            detectors=detectors,
            track=self.track,
            on_nan=self.on_nan,
            locate=self.locate,
            **self.batches,
        )

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is not None and not self.watch.closed:
            self.watch.step()

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        if self.watch is None or self.watch.closed or not metrics:
            return
        val = metrics.get("eval_loss")
        extra = {
            k[5:]: float(v)
            for k, v in metrics.items()
            if k.startswith("eval_")
            and k != "eval_loss"
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and not k.endswith(("_runtime", "_per_second"))
        }
        self.watch.eval(max(state.global_step - 1, 0), val_loss=val, metrics=extra)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is not None:
            self.watch.close()
