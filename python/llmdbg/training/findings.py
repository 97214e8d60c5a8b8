"""What a :class:`~llmdbg.training.Watch` adds to each event before it is emitted: the step's
batch (kept for replay when the event is severe enough) and advice computed from the run.

Also :func:`rerun`, behind :meth:`Watch.replay`: a kept batch run again through the model's
forward and backward inside :func:`llmdbg.capture`, returning the :class:`~llmdbg.Trace`.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .advice import advise
from .batches import BatchRef, BatchStore, describe, load_batch
from .detectors import SEVERITIES, Event
from .replay import ForwardRecorder
from .state import WatchState

KEEP = ("auto", True, False)
#: With ``keep_batches="auto"``, events at or above this severity keep their batch.
AUTO_SEVERITY = "high"
#: Steps after an advised event during which events of the same kind and module get no advice
#: again (a burst of events is one incident; its first event carries the advice).
ADVICE_QUIET = 50


class Findings:
    """Attaches ``batch`` and ``advice`` to a watch's events.

    Advice is given once per incident: an event of the same kind and module as one advised in
    the last :data:`ADVICE_QUIET` steps carries none.

    Parameters
    ----------
    keep : {"auto", True, False}
        ``"auto"``: save the batch of high and critical events; ``True``: of every event of a
        step; ``False``: describe batches (ids, shapes) without saving them.
    directory : path or None
        Where kept batches go; None: a new temporary directory, made on the first kept batch and
        removed when this object (its watch) is garbage collected or the process exits.
    max_bytes : int
        Cap on one kept batch (the sum of its tensors' bytes).
    recorder : ForwardRecorder or None
        The step's recorded forwards (their inputs are the batch).
    rank : int
        This process's rank (kept batches are one file per step and rank).
    """

    def __init__(self, keep: Any, directory: Any, max_bytes: int, recorder: ForwardRecorder | None, rank: int) -> None:
        if keep not in KEEP or (isinstance(keep, int) and not isinstance(keep, bool)):
            raise ValueError(f"keep_batches: expected 'auto', True or False, got {keep!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_batch_bytes: expected a positive int, got {max_bytes!r}")
        self.keep, self.directory, self.max_bytes = keep, directory, max_bytes
        self.recorder, self.rank = recorder, rank
        self._store: BatchStore | None = None
        self._refs: dict[int, BatchRef] = {}  # step -> its batch, kept or described once
        self._advised: dict[tuple[str, str], int] = {}  # (kind, module) -> step of its last advice

    def _wants(self, severity: str) -> bool:
        if self.keep is True:
            return True
        return self.keep == "auto" and SEVERITIES.index(severity) >= SEVERITIES.index(AUTO_SEVERITY)

    def _forwards(self) -> list[tuple[tuple, dict]] | None:
        if self.recorder is None or not self.recorder.records:
            return None
        return [(r.args, r.kwargs) for r in self.recorder.records]

    def batch(self, event: Event, step: int) -> BatchRef | None:
        """The batch of ``event`` when it belongs to the step being recorded (``step``)."""
        if event.step != step:
            return None
        ref = self._refs.get(step)
        if ref is not None and (ref.saved or not self._wants(event.severity)):
            return ref
        forwards = self._forwards()
        if forwards is None:
            return None
        if self._wants(event.severity):
            if self._store is None:
                where = self.directory
                if where is None:  # removed with this object (the watch) or at exit
                    where = tempfile.mkdtemp(prefix="llmdbg-batches-")
                    weakref.finalize(self, shutil.rmtree, where, ignore_errors=True)
                self._store = BatchStore(where, self.max_bytes)
            ref = self._store.keep(step, self.rank, forwards)
        else:
            reason = "not kept: keep_batches=False" if self.keep is False else f"not kept: {event.severity} severity"
            ref = describe(step, self.rank, forwards, reason=reason)
        self._refs = {step: ref}  # only the current step's forwards exist
        return ref

    def attach(self, event: Event, state: WatchState, cfg: dict) -> Event:
        """``event`` with its batch (when recorded) and advice."""
        changes: dict[str, Any] = {}
        if event.batch is None:
            ref = self.batch(event, state.step)
            if ref is not None:
                changes["batch"] = ref
        key = (event.kind, event.module)
        last = self._advised.get(key)
        if not event.advice and (last is None or event.step - last > ADVICE_QUIET):
            with_batch = dataclasses.replace(event, **changes) if changes else event
            changes["advice"] = advise(with_batch, state, cfg)
            if changes["advice"]:
                self._advised[key] = event.step
        return dataclasses.replace(event, **changes) if changes else event


def batch_dir(log_dir: Any, batch_dir: Any) -> Path | None:
    """Where kept batches go: ``batch_dir``, else ``<log_dir>/batches``, else None (temporary)."""
    if batch_dir is not None:
        return Path(batch_dir).expanduser()
    if log_dir is not None:
        return Path(log_dir).expanduser() / "batches"
    return None


def rerun(model: nn.Module, event: Any, *, modules: Any = None, backward: bool = True) -> Any:
    """Run ``event``'s kept batch through ``model`` again inside :func:`llmdbg.capture`.

    The forward (and, when it returns a scalar ``loss`` or ``backward`` is asked, the backward by
    :func:`torch.autograd.grad`, so no parameter's ``.grad`` changes) runs with temporary hooks:
    statistics of every module's output and gradient (``trace.stats``, float64 sums, NaN/Inf
    counts), in the order the modules finished. Returns the :class:`~llmdbg.Trace`.
    """
    from ..tracing import capture

    if not isinstance(event, Event):
        raise TypeError(f"event: expected an llmdbg Event (from watch.events), got {type(event).__name__}")
    ref = event.batch
    if not isinstance(ref, BatchRef):
        raise ValueError(
            f"event: the {event.kind} event of step {event.step} has no batch (it was not emitted by "
            "watch.step(), or no forward was recorded); nothing to replay"
        )
    if not ref.saved or ref.path is None:
        raise ValueError(
            f"event: the batch of step {event.step} was not kept ({ref.reason or 'not saved'}); "
            "watch with keep_batches=True (or 'auto' for high-severity events) to replay it"
        )
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    forwards = load_batch(ref.path, device=device)
    pattern = modules if modules is not None else "re:.+"
    params = [p for p in model.parameters() if p.requires_grad]
    with capture(model, pattern, reduce="stats", grads=backward) as trace:
        for args, kwargs in forwards:
            with torch.enable_grad():
                out = model(*args, **kwargs)
            loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
            if backward and isinstance(loss, torch.Tensor) and loss.requires_grad and params:
                torch.autograd.grad(loss, params, allow_unused=True)
    return trace
