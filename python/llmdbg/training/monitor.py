"""``llmdbg.watch``: debug a training run from inside the loop.

A watch measures in two tiers. Every step: the loss, the global gradient norm *before clipping*
(read at the end of the backward pass), the learning rate and non-finite flags, reduced on the
device and copied to the host once. Every ``every`` steps: per-layer gradient and weight norms,
update/weight ratios, fixed log2-bin histograms (the C++ statistics kernel) and activation
statistics per block (mean, std, absmax, zero fraction, dead units, outlier features).
Detectors turn these numbers into events (:class:`~llmdbg.training.Event`), logged to the
``llmdbg`` logger and kept in :attr:`Watch.events`.
"""

# Long because: Watch is one object whose step() keeps the single host copy of a step and its
# unpacking in one place; its state (state.py), locating (nonfinite.py), logged steps
# (periodic.py), views (views.py) and sinks (sinks.py) already live apart.

from __future__ import annotations

import logging
import math
import weakref
from typing import Any

import numpy as np
import torch
from torch import nn

from . import grads as G
from .detectors import DetectorSuite, Event
from .distributed import Packer, rank_world
from .findings import Findings, rerun
from .findings import batch_dir as batch_dir_for
from .hooks import NonFiniteLocator, float_tensors
from .nonfinite import arm_locator, before_optimizer_step, handle_nan, locate_events
from .periodic import pack_logged, pack_update, record_logged, record_update
from .probes import ActivationProbe, find_blocks
from .replay import ForwardRecorder
from .state import WatchState
from .target import baseline_loss, unwrap

logger = logging.getLogger("llmdbg")

TRACKS = ("loss", "grads", "weights", "activations")
ON_NAN = ("raise", "warn", "skip")
LOCATE = ("replay", "forward", "always", "after_nan", "off")
_LEVEL = {
    "info": logging.INFO,
    "low": logging.WARNING,
    "medium": logging.WARNING,
    "high": logging.WARNING,
    "critical": logging.ERROR,
}

# One watch per model: re-running a notebook cell closes the previous watch instead of stacking hooks.
_REGISTRY: weakref.WeakKeyDictionary[nn.Module, Watch] = weakref.WeakKeyDictionary()


class Watch:
    """Training-run monitor returned by :func:`llmdbg.watch`; see there for the parameters.

    Attributes
    ----------
    events : list of Event
        Detected problems in order.
    histograms : dict
        ``{"grads"|"weights"|"activations": {name: {step: counts (HIST_BINS,) float64}}}`` on the
        fixed log2 bins of :func:`llmdbg.hist_edges`.
    frozen : list of str
        Parameters without ``requires_grad`` (reported, never touched).
    state : WatchState
        The parameter bookkeeping and the recorded run, shared with the helper modules.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
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
        inner = unwrap(model)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every: expected a positive int, got {every!r}")
        track = (track,) if isinstance(track, str) else tuple(track)
        bad = [t for t in track if t not in TRACKS]
        if bad:
            raise ValueError(f"track: unknown {bad}; choose from {TRACKS}")
        if on_nan not in ON_NAN:
            raise ValueError(f"on_nan: expected one of {ON_NAN}, got {on_nan!r}")
        if locate not in LOCATE:
            raise ValueError(f"locate: expected one of {LOCATE}, got {locate!r}")
        self.model, self.optimizer, self.every, self.track = inner, optimizer, every, track
        self.on_nan, self.locate = on_nan, locate
        self.rank, self.world = rank_world()
        self.frozen = [n for n, p in inner.named_parameters() if not p.requires_grad]
        self.state = WatchState.for_model(inner)
        if optimizer is not None:
            self._check_optimizer(optimizer)
        self.detectors = DetectorSuite(detectors)
        base = baseline_loss(inner)
        if "underfitting" in self.detectors.cfg and self.detectors.cfg["underfitting"]["baseline"] is None:
            self.detectors.cfg["underfitting"]["baseline"] = base
        self.sink = None
        if log_dir is not None and self.rank == 0:
            from .sinks import TensorBoardSink, check_writable

            check_writable(log_dir)  # ValueError naming log_dir before any hook is registered
            self.sink = TensorBoardSink(log_dir)
        self.closed = False
        self.findings = Findings(keep_batches, batch_dir_for(log_dir, batch_dir), max_batch_bytes, None, self.rank)
        previous = _REGISTRY.get(inner)
        if previous is not None and not previous.closed:
            logger.info("llmdbg.watch: closing the previous watch of this model (no hooks are stacked)")
            previous.close()
        modules = self.state.modules
        self.locator = None
        self.probe = None
        self.recorder = None
        self._batch_recorder: ForwardRecorder | None = None
        self._opt_handle = None
        try:
            if locate in ("forward", "always"):
                self.locator = NonFiniteLocator(modules, forward=True, backward=locate == "always")
            elif locate == "replay":
                self.recorder = ForwardRecorder(inner)
                opt = optimizer  # wrappers (accelerate's AcceleratedOptimizer) step the inner one
                while opt is not None and not hasattr(opt, "_optimizer_step_pre_hooks") and hasattr(opt, "optimizer"):
                    opt = opt.optimizer
                if opt is not None and hasattr(opt, "_optimizer_step_pre_hooks"):
                    self._opt_handle = opt.register_step_pre_hook(self._before_optimizer_step)
            batches = self.recorder
            if batches is None and keep_batches is not False:  # the batch is the recorded forwards' inputs
                batches = self._batch_recorder = ForwardRecorder(inner)
            self.findings.recorder = batches
            if "activations" in track:
                blocks, acts = find_blocks(inner)
                self.probe = ActivationProbe(inner, blocks, acts)
                self.probe.armed = True  # step 0 is a logged step
        except BaseException:  # never leave half the hooks behind
            for part in (self.locator, self.probe, self.recorder, self._batch_recorder, self._opt_handle):
                if part is not None:
                    part.remove()
            if self.sink is not None:
                self.sink.close()
            raise
        self._root_handle = inner.register_forward_hook(self._root_hook)
        _REGISTRY[inner] = self
        if self.frozen:
            self._emit(
                Event(
                    0,
                    self.frozen[0],
                    "frozen_parameters",
                    "info",
                    f"{len(self.frozen)} parameters are frozen (requires_grad=False) and not "
                    f"watched: {', '.join(self.frozen[:5])}{' ...' if len(self.frozen) > 5 else ''}",
                )
            )

    # -- construction checks ------------------------------------------------------------------------
    def _check_optimizer(self, optimizer: Any) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        mine = {id(p) for p in self.state.params}
        if mine and not owned & mine:
            raise ValueError(
                "optimizer: it owns none of the model's trainable parameters (was it built for "
                "another model, or before the model was re-created?)"
            )
        missing = [n for n, p in zip(self.state.names, self.state.params) if id(p) not in owned]
        if missing:
            logger.warning(
                "llmdbg.watch: %d trainable parameters are not in the optimizer: %s",
                len(missing),
                ", ".join(missing[:5]),
            )

    # -- hooks ----------------------------------------------------------------------------------------
    def _root_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.state.replaying:
            return
        if self.locator is not None and not self.locator.backward:
            self.locator.forward_done(output)
        if not torch.is_grad_enabled():
            return
        loss = output.get("loss") if isinstance(output, dict) else None
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self.state.model_losses.append(loss.detach())
        rec = self.recorder.current() if self.recorder is not None else None
        if "grads" in self.track or rec is not None:
            k = 0
            for t in float_tensors(output):
                if t.requires_grad:
                    t.register_hook(self._output_grad_hook(rec, k))
                    k += 1

    def _output_grad_hook(self, rec: Any, k: int):
        def hook(grad: torch.Tensor) -> None:
            if rec is not None:  # kept for a replay of this step's backward
                rec.grads[k] = grad.detach()
            # Queue one callback for the end of this backward pass (the DDP reducer queues its own
            # finalisation later in the pass, so ours re-queues itself to run after it).
            if not self.state.queued and "grads" in self.track:
                self.state.queued = True
                torch.autograd.Variable._execution_engine.queue_callback(self._after_backward_outer)

        return hook

    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        s = self.state
        if not self.closed and not s.replaying and s.pending is not None and s.early is None:
            before_optimizer_step(
                s,
                s.pending,
                model=self.model,
                detectors=self.detectors,
                recorder=self.recorder,
                probe=self.probe,
                on_nan=self.on_nan,
                emit=self._emit,
            )

    def _after_backward_outer(self) -> None:
        torch.autograd.Variable._execution_engine.queue_callback(self._after_backward)

    def _after_backward(self) -> None:
        self.state.queued = False
        if not self.closed:
            self.state.pending = G.grad_norms(self.state.params)

    # -- the step -------------------------------------------------------------------------------------
    def _loss_value(self, loss: Any) -> torch.Tensor | float | None:
        if loss is None:
            if not self.state.model_losses:
                return None
            return torch.stack(self.state.model_losses).float().mean()
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(
                    f"loss: expected a scalar tensor or a float, got a tensor of shape {tuple(loss.shape)}"
                )
            if loss.is_complex():
                raise TypeError("loss: complex tensors are not supported")
            return loss.detach().reshape(()).float()
        if isinstance(loss, (int, float)) and not isinstance(loss, bool):
            return float(loss)
        raise TypeError(f"loss: expected a scalar tensor or a float, got {type(loss).__name__}")

    def _lr(self) -> float | None:
        if self.optimizer is None or not self.optimizer.param_groups:
            return None
        lr = self.optimizer.param_groups[0].get("lr")
        return float(lr) if lr is not None else None

    def step(self, loss: Any = None, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        """Record one optimizer step; call it after ``loss.backward()`` and before ``optimizer.step()``.

        Parameters
        ----------
        loss : scalar torch.Tensor or float, optional
            The step's loss. By default, the mean of the ``loss`` fields of the model outputs seen
            since the last step (Hugging Face models called with ``labels``).
        metrics : dict of str to float, optional
            Extra training metrics for :attr:`history` (and TensorBoard ``metrics/<name>``).

        Returns
        -------
        dict
            This step's row of :attr:`history`.

        Raises
        ------
        RuntimeError
            No backward pass has produced gradients yet, or the watch is closed.
        FloatingPointError
            ``on_nan="raise"`` and the step was not finite.
        """
        if self.closed:
            raise RuntimeError("watch.step(): this watch is closed; create a new one with llmdbg.watch()")
        lv = self._loss_value(loss)
        if "loss" in self.track and lv is None:
            raise ValueError("loss: no loss given and the model returned none; pass watch.step(loss=loss)")
        s = self.state
        step = s.step
        logged = step % self.every == 0
        pk = Packer(self.rank, self.world)
        upd = pack_update(s, pk)
        pending = s.pending
        if "grads" in self.track and pending is None:
            pending = G.grad_norms(s.params)
            if pending is None:
                raise RuntimeError(
                    "watch.step() was called before any backward pass: no parameter has a "
                    "gradient. Call it after loss.backward() and before optimizer.step()."
                )
        dev = pending[1].device if pending else (lv.device if isinstance(lv, torch.Tensor) else torch.device("cpu"))
        # This rank's row (every rank reads every rank's): its loss, its gradient norm (of its
        # shards under FSDP2), whether its forward records saw a NaN/Inf.
        nan = torch.full((1,), math.nan, dtype=torch.float64, device=dev)
        fwd = bwd = None
        bad_fwd = torch.zeros(1, dtype=torch.float64, device=dev)
        if self.locator is not None:
            fwd, bwd = self.locator.packed(dev)
            if fwd.numel():
                bad_fwd = (~torch.isfinite(fwd[:, 2:])).any().reshape(1).double()
        loss_t = (
            lv.to(dev).reshape(1)
            if isinstance(lv, torch.Tensor)
            else torch.full_like(nan, lv if lv is not None else 0.0)
        )
        row_h = pk.rows(torch.cat([loss_t.double(), pending[2].reshape(1).double() if pending else nan, bad_fwd]))
        norms_h = None
        if pending:  # global per-parameter norms: replicated under DDP, squares summed under FSDP2
            norms_h = pk.sum(pending[1].double() ** 2) if s.sharded else pk.local(pending[1])
        fwd_h = pk.local(fwd) if fwd is not None else None
        bwd_h = pk.local(bwd) if bwd is not None else None
        pack = pack_logged(s, pending, pk, track=self.track, probe=self.probe) if logged else None
        pk.reduce(dev)  # the step's one collective (every rank, finite or not) and one host copy
        ranks = pk[row_h]
        record_update(s, pk, upd, self.sink)
        loss_v = float(ranks[:, 0].mean()) if lv is not None else math.nan
        norms: list[float] = []
        gnorm = None
        if pending and norms_h is not None:
            nv = pk[norms_h]
            norms = (np.sqrt(nv) if s.sharded else nv).tolist()
            gnorm = float(math.sqrt(float(np.sum(nv)))) if s.sharded else float(ranks[self.rank, 1])
        fwd_vals = pk[fwd_h].reshape(-1, 4).tolist() if fwd_h is not None else []
        bwd_vals = pk[bwd_h].reshape(-1, 2).tolist() if bwd_h is not None else []
        bad_ranks = [
            r
            for r in range(ranks.shape[0])
            if (lv is not None and not math.isfinite(ranks[r, 0]))
            or ranks[r, 2] > 0
            or (pending and not math.isfinite(ranks[r, 1]))
        ]
        nonfinite = bool(bad_ranks) or (gnorm is not None and not math.isfinite(gnorm))
        row = {"step": step, "loss": loss_v, "grad_norm": gnorm, "lr": self._lr(), "nonfinite": nonfinite}
        if metrics:
            row.update({str(k): float(v) for k, v in metrics.items()})
        s.rows.append(row)
        new: list[Event] = self.detectors.on_step(step, loss_v, gnorm) if self.detectors.cfg else []
        if nonfinite:
            new += locate_events(
                s,
                step,
                pending,
                norms,
                fwd_vals,
                bwd_vals,
                model=self.model,
                detectors=self.detectors,
                locator=self.locator,
                recorder=self.recorder,
                probe=self.probe,
            )
            self.locator = arm_locator(self.locator, s.modules, self.locate)  # for the next steps
        layers = []
        if pack is not None and not nonfinite:
            layers = record_logged(
                s, step, pack, pk, norms, track=self.track, detectors=self.detectors, emit=self._emit
            )
            new += self.detectors.on_layers(step, layers)
        for e in new:
            self._emit(e)
        if self.sink is not None:
            self.sink.write_step(row, layers, s.histograms, s.act_rows)
        self._finish_step(step)
        if nonfinite:
            handle_nan(s, step, new, on_nan=self.on_nan)
        return row

    def _finish_step(self, step: int) -> None:
        s = self.state
        s.pending = None
        s.model_losses.clear()
        s.early = None
        if self.locator is not None:
            self.locator.reset()
        for rec in (self.recorder, self._batch_recorder):
            if rec is not None:
                rec.reset()
        s.step = step + 1
        if self.probe is not None:
            self.probe.armed = s.step % self.every == 0

    # -- evaluation -----------------------------------------------------------------------------------
    def eval(
        self, step: int | None = None, val_loss: float | None = None, metrics: dict[str, float] | None = None
    ) -> dict[str, Any]:
        """Record an evaluation: validation loss and metrics; runs the over/underfitting detectors.

        ``step`` defaults to the last recorded step. The training loss it is compared with is the
        mean loss over the steps since the previous evaluation.
        """
        s = self.state
        if step is None:
            step = max(s.step - 1, 0)
        if isinstance(val_loss, torch.Tensor):
            val_loss = float(self._loss_value(val_loss))
        row: dict[str, Any] = {"step": int(step)}
        if val_loss is not None:
            row["val_loss"] = float(val_loss)
        for k, v in (metrics or {}).items():
            row[f"val_{k}"] = float(v)
        last_eval = s.eval_rows[-1]["step"] if s.eval_rows else -1
        recent = [r["loss"] for r in s.rows if last_eval < r["step"] <= step and math.isfinite(r["loss"])]
        train = float(np.mean(recent)) if recent else math.nan
        row["train_loss"] = train
        s.eval_rows.append(row)
        if val_loss is not None and math.isfinite(train):
            for e in self.detectors.on_eval(int(step), train, float(val_loss)):
                self._emit(e)
        if self.sink is not None:
            self.sink.scalars(
                int(step),
                {"loss/val": row.get("val_loss"), **{f"metrics/{k}": float(v) for k, v in (metrics or {}).items()}},
            )
        return row

    # -- output ---------------------------------------------------------------------------------------
    def _emit(self, e: Event) -> None:
        e = self.findings.attach(e, self.state, self.detectors.cfg)
        self.state.events.append(e)
        if self.rank == 0:
            # Under torch.distributed: the rank that found it, or "all ranks" for numbers reduced
            # across ranks (the loss, the global gradient norm, the merged statistics).
            rank = f" rank {e.rank}" if e.rank is not None else (" all ranks" if self.world > 1 else "")
            logger.log(
                _LEVEL.get(e.severity, logging.WARNING),
                "[step %d] %s (%s) %s%s: %s%s",
                e.step,
                e.kind,
                e.severity,
                e.module or "model",
                rank,
                e.message,
                "".join(f" | try: {a}" for a in e.advice),
            )
            if self.sink is not None:
                advice = "".join(f"\n\n*try:* {a}" for a in e.advice)
                self.sink.text(
                    "events", e.step, f"**{e.kind}** ({e.severity}) `{e.module or 'model'}`{rank}: {e.message}{advice}"
                )

    def replay(self, event: Event, *, modules: Any = None, backward: bool = True) -> Any:
        """Run ``event``'s kept batch through the model again, forward and backward, with
        temporary hooks, and return the :class:`~llmdbg.Trace`.

        ``trace.stats`` holds every module's output (and gradient, ``name + ":grad"``)
        statistics in the order the modules finished, NaN/Inf counts included, so the first
        non-finite module of the original step is the first key whose statistics are not
        finite. The weights are today's: replay before ``optimizer.step()`` changes them, or
        with ``on_nan="skip"``, to see the same numbers. Dropout draws new masks unless the
        model is in eval mode. No ``.grad`` changes and the watch records nothing meanwhile.

        Parameters
        ----------
        event : Event
            One of :attr:`events` whose ``batch`` was kept (``keep_batches``).
        modules : str or list, optional
            What to capture (as :func:`llmdbg.capture`'s ``modules``); default: every module.
        backward : bool
            Also back-propagate the model's ``loss`` output (when it returns one).

        Raises
        ------
        ValueError
            The event's batch was not kept (its ``batch.reason`` says why).
        """
        s = self.state
        armed = self.probe.armed if self.probe is not None else False
        s.replaying = True
        recorders = [r for r in (self.recorder, self._batch_recorder) if r is not None]
        for r in recorders:
            r.enabled = False
        if self.probe is not None:
            self.probe.armed = False
        try:
            return rerun(self.model, event, modules=modules, backward=backward)
        finally:
            s.replaying = False
            for r in recorders:
                r.enabled = True
            if self.probe is not None:
                self.probe.armed = armed

    def add_embedding(self, mat: Any, metadata: Any = None, tag: str = "default") -> None:
        """Write vectors to TensorBoard's embedding projector (needs ``log_dir``)."""
        if self.sink is None:
            raise ValueError("add_embedding: this watch has no log_dir (TensorBoard sink)")
        self.sink.embedding(mat, metadata=metadata, tag=tag, step=self.state.step)

    @property
    def events(self) -> list[Event]:
        """Detected problems in order (:class:`~llmdbg.training.Event`)."""
        return self.state.events

    @property
    def histograms(self) -> dict[str, dict[str, dict[int, np.ndarray]]]:
        """``{"grads"|"weights"|"activations": {name: {step: counts (HIST_BINS,) float64}}}`` on the
        fixed log2 bins of :func:`llmdbg.hist_edges`."""
        return self.state.histograms

    @property
    def history(self):
        """Per-step pandas DataFrame indexed by step: loss, grad_norm, lr, nonfinite, metrics,
        and the evaluation columns (val_loss, val_<metric>, train_loss) on evaluated steps."""
        from .views import history_frame

        return history_frame(self.state.rows, self.state.eval_rows)

    @property
    def layers(self):
        """Per-layer DataFrame of the logged steps: step, layer, grad_norm, grad_rms, weight_norm,
        update_ratio (the size of the optimizer update that followed that step)."""
        import pandas as pd

        return pd.DataFrame(
            self.state.layer_rows, columns=["step", "layer", "grad_norm", "grad_rms", "weight_norm", "update_ratio"]
        )

    @property
    def activations(self):
        """Per-module DataFrame of the logged steps: block statistics (mean, std, absmax,
        zero_fraction, nan/inf counts, outlier_features) and dead_fraction of FFN activations."""
        import pandas as pd

        return pd.DataFrame(self.state.act_rows)

    def events_frame(self):
        """:attr:`events` as a DataFrame (step, module, kind, severity, message)."""
        from .views import events_frame

        return events_frame(self.state.events)

    def plot(self, **kwargs: Any):
        """The training dashboard; see :func:`llmdbg.plot.training_dashboard`."""
        from ..plot.training import training_dashboard

        return training_dashboard(self, **kwargs)

    def add_to_report(self, report: Any, title: str = "Training run") -> Any:
        """Append a section (dashboard figure, events and last-step table) to a :class:`~llmdbg.report.Report`."""
        from .views import add_report_section

        return add_report_section(
            self.state,
            report,
            title,
            model_name=type(self.model).__name__,
            every=self.every,
            figure=self.plot() if self.state.rows else None,
            source=self,
        )

    def save(self, path: Any, *, overwrite: bool = False) -> Any:
        """Save what this watch recorded (events, histograms, the per-step, evaluation, layer and
        activation tables) to the directory ``path``; :func:`llmdbg.load` reads it back as a
        read-only :class:`~llmdbg.training.persist.WatchHistory` with the same tables, figure and
        views. Open pickle-free format (``docs/saving.md``); ``overwrite=True`` replaces an
        existing saved llmdbg object once the new one is complete. Returns the ``pathlib.Path``."""
        from .persist import save_watch

        return save_watch(self, path, overwrite=overwrite)

    def _repr_html_(self) -> str:
        from .views import repr_html

        return repr_html(self.state, model_name=type(self.model).__name__, every=self.every, closed=self.closed)

    def __repr__(self) -> str:
        return (
            f"Watch({type(self.model).__name__}, steps={self.state.step}, every={self.every}, "
            f"events={len(self.events)}{', closed' if self.closed else ''})"
        )

    # -- lifetime ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove every hook and close the TensorBoard writer; the recorded data stay readable."""
        if self.closed:
            return
        self.closed = True
        self._root_handle.remove()
        if self.locator is not None:
            self.locator.remove()
        if self.probe is not None:
            self.probe.remove()
        for part in (self.recorder, self._batch_recorder, self._opt_handle):
            if part is not None:
                part.remove()
        self.state.snapshot = None
        self.state.pending = None
        self.state.model_losses.clear()
        if self.sink is not None:
            self.sink.close()
        if _REGISTRY.get(self.model) is self:
            del _REGISTRY[self.model]

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
