"""What :class:`~llmdbg.training.Watch` does on a non-finite step: name the first module that made
the NaN/Inf (from the always-on records or by replaying the step), apply ``on_nan``, and check
before ``optimizer.step()`` when ``watch.step()`` was not called first."""

from __future__ import annotations

import logging
import math
import warnings
from typing import TYPE_CHECKING, Any

import torch

from .detectors import Event
from .hooks import NonFiniteLocator
from .replay import replay_locate

if TYPE_CHECKING:
    from .watch import Watch

logger = logging.getLogger("llmdbg")


def _bad_params(pending: Any, norms: list[float]) -> list[int]:
    return [pending[0][j] for j, v in enumerate(norms) if not math.isfinite(v)] if pending else []


def _events(step: int, first_f: dict | None, first_b: dict | None) -> list[Event]:
    ev: list[Event] = []
    if first_f:
        ev.append(Event(step, first_f["module"], "nonfinite_forward", "critical",
                        f"first non-finite output in the forward pass: input abs-max "
                        f"{first_f['input_absmax']:.4g}, output abs-max {first_f['output_absmax']}"))
    if first_b:
        how = ("gradient of its parameters" if first_b.get("parameter") else
               f"incoming gradient abs-max {first_b['grad_output_absmax']:.4g}, outgoing "
               f"{first_b['grad_input_absmax']:.4g}")
        if "seen_at" in first_b:
            how += f" (first seen entering {first_b['seen_at']})"
        ev.append(Event(step, first_b["module"], "nonfinite_backward", "critical",
                        f"first non-finite gradient in the backward pass: {how}"))
    return ev


def replay(w: Watch, bad_params: list[int]) -> list[Event]:
    """Replay the step's recorded forwards/backwards with temporary per-module hooks."""
    owners = list(dict.fromkeys(w._owner[i] for i in reversed(bad_params)))
    armed = w.probe.armed if w.probe is not None else False
    w._replaying, w.recorder.enabled = True, False
    if w.probe is not None:
        w.probe.armed = False
    try:
        first_f, first_b, _ = replay_locate(w.model, w._modules, w.recorder.records, w._params, owners)
    except Exception as exc:  # noqa: BLE001 - a failed replay must not end the training run
        logger.warning("llmdbg.watch: replaying step %d to locate the NaN/Inf failed (%s: %s); reporting "
                       "parameter names only", w._step, type(exc).__name__, exc)
        return []
    finally:
        w._replaying, w.recorder.enabled = False, True
        if w.probe is not None:
            w.probe.armed = armed
    return _events(w._step, first_f, first_b)


def locate_events(w: Watch, step: int, pending: Any, norms: list[float], fwd_vals: list,
                  bwd_vals: list) -> list[Event]:
    """Events naming where the first NaN/Inf appeared in this step."""
    ev: list[Event] = []
    bad_params = _bad_params(pending, norms)
    if "nonfinite" in w.detectors.cfg:
        if w._early is not None:  # already located before the optimizer step
            ev += w._early
        elif w.recorder is not None:
            ev += replay(w, bad_params)
        elif w.locator is not None:
            first_f = w.locator.first_forward(fwd_vals)
            first_b = None
            if w.locator.backward and bwd_vals:
                owners = list(dict.fromkeys(w._owner[i] for i in reversed(bad_params)))
                first_b = w.locator.first_backward(bwd_vals, owners)
            ev += _events(step, first_f, first_b)
    if bad_params and not any(e.kind == "nonfinite_backward" for e in ev):
        names = [w._names[i] for i in reversed(bad_params)]  # in the order the backward reaches them
        ev.append(Event(step, names[0], "nonfinite_gradients", "critical",
                        f"{len(names)} parameters have non-finite gradients: {', '.join(names[:5])}"
                        f"{' ...' if len(names) > 5 else ''}"))
    # Arm the forensic hooks for the next steps when they were not on.
    if w.locate in ("forward", "after_nan"):
        if w.locator is None:
            w.locator = NonFiniteLocator(w._modules, forward=True, backward=True)
        elif not w.locator.backward:
            w.locator.attach_backward()
    return ev


def nan_message(step: int, events: list[Event]) -> str:
    where = "; ".join(f"{e.kind} at {e.module or 'model'}" for e in events if e.severity == "critical")
    return f"llmdbg.watch: step {step} is not finite ({where or 'loss or gradient norm'})"


def handle_nan(w: Watch, step: int, events: list[Event]) -> None:
    msg = nan_message(step, events)
    if w.on_nan == "raise":
        raise FloatingPointError(msg)
    if w.on_nan == "warn":
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    else:  # skip: the optimizer ignores parameters without gradients
        for p in w._params:
            p.grad = None
        logger.warning("%s; gradients dropped, the optimizer step is skipped", msg)


def before_optimizer_step(w: Watch) -> None:
    """``optimizer.step()`` is about to run and ``watch.step()`` has not seen this backward yet:
    check the global gradient norm (and the model's loss) now, and locate a NaN/Inf while the
    weights are still those that produced it. The events are emitted by the next ``watch.step()``
    (immediately with ``on_nan="raise"``, which raises here); ``"skip"`` drops the gradients."""
    pending = w._pending
    parts = [pending[2].reshape(1), pending[1]]
    if w._model_losses:
        parts.append(torch.stack(w._model_losses).float().reshape(-1).to(pending[1].device))
    host = torch.cat(parts).tolist()
    if all(math.isfinite(v) for v in host):
        w._early = []
        return
    norms = host[1: 1 + len(pending[0])]
    bad = _bad_params(pending, norms)
    ev = replay(w, bad) if "nonfinite" in w.detectors.cfg and w.recorder is not None else []
    w._early = ev
    if w.on_nan == "raise":
        for e in ev:
            w._emit(e)
        w._early = None
        raise FloatingPointError(nan_message(w._step, ev) + " (checked before optimizer.step())")
    if w.on_nan == "skip":
        for p in w._params:
            p.grad = None
