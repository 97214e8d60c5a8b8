"""What :class:`~llmdbg.training.Watch` does on a non-finite step: name the first module that made
the NaN/Inf (from the always-on records or by replaying the step), apply ``on_nan``, and check
before ``optimizer.step()`` when ``watch.step()`` was not called first.

Under ``torch.distributed`` every rank knows that *some* rank's step was not finite (the step's
collective carries each rank's flags), so every rank replays together (FSDP2's forward gathers
parameters with collectives, so a replay on one rank alone would hang), and one more collective
(:func:`exchange`) tells every rank what each rank located: all ranks then report the same
events, naming the rank where the NaN/Inf appeared first.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .detectors import DetectorSuite, Event
from .distributed import Packer
from .hooks import NonFiniteLocator
from .probes import ActivationProbe
from .replay import ForwardRecorder, replay_locate
from .state import Pending, WatchState

logger = logging.getLogger("llmdbg")


def _bad_params(pending: Pending | None, norms: list[float]) -> list[int]:
    return [pending[0][j] for j, v in enumerate(norms) if not math.isfinite(v)] if pending else []


def _events(step: int, first_f: dict | None, first_b: dict | None, rank: int | None = None) -> list[Event]:
    ev: list[Event] = []
    on = f" on rank {rank}" if rank is not None else ""
    if first_f:
        ev.append(
            Event(
                step,
                first_f["module"],
                "nonfinite_forward",
                "critical",
                f"first non-finite output in the forward pass{on}: input abs-max "
                f"{first_f['input_absmax']:.4g}, output abs-max {first_f['output_absmax']}",
                rank=rank,
            )
        )
    if first_b:
        how = (
            "gradient of its parameters"
            if first_b.get("parameter")
            else f"incoming gradient abs-max {first_b['grad_output_absmax']:.4g}, outgoing "
            f"{first_b['grad_input_absmax']:.4g}"
        )
        if "seen_at" in first_b:
            how += f" (first seen entering {first_b['seen_at']})"
        ev.append(
            Event(
                step,
                first_b["module"],
                "nonfinite_backward",
                "critical",
                f"first non-finite gradient in the backward pass{on}: {how}",
                rank=rank,
            )
        )
    return ev


_LOSS = -1  # module code of "(loss)": the gradient was already non-finite where the backward began
_ROW = 8  # per rank: fwd module, input absmax, output absmax, bwd module, parameter, grad out, grad in, seen at


def _code(names: dict[str, int], module: str | None) -> float:
    if module is None:
        return 0.0
    return float(_LOSS) if module == "(loss)" else float(names.get(module, -2) + 1)


def _name(modules: list[tuple[str, nn.Module]], code: float) -> str:
    c = int(code)
    return "(loss)" if c == _LOSS else modules[c - 1][0] or "model"


def exchange(
    state: WatchState, first_f: dict | None, first_b: dict | None, pk: Packer | None = None
) -> tuple[dict | None, dict | None, int | None]:
    """Share what each rank located (one collective, entered by every rank) and pick the rank
    where the NaN/Inf appeared first: the lowest rank with a non-finite forward, else the lowest
    whose backward saw a gradient turn non-finite in a module, else the lowest that found one in
    a parameter's gradient. Returns that rank's (forward, backward) records and the rank
    (None in a single process)."""
    pk = pk if pk is not None else Packer()
    if pk.world == 1:
        return first_f, first_b, None
    names = {n: i for i, (n, _) in enumerate(state.modules)}
    f, b = first_f or {}, first_b or {}
    row = [
        _code(names, f.get("module")),
        float(f.get("input_absmax", 0.0)),
        float(f.get("output_absmax", 0.0)),
        _code(names, b.get("module")),
        1.0 if b.get("parameter") else 0.0,
        float(b.get("grad_output_absmax", 0.0)),
        float(b.get("grad_input_absmax", 0.0)),
        _code(names, b.get("seen_at")),
    ]
    handle = pk.rows(row)
    pk.reduce()
    rows = pk[handle]
    for r in range(pk.world):
        if rows[r, 0] != 0:
            return _decode(state, rows[r], forward=True), None, r
    # A gradient seen turning non-finite in a module beats one only read off the parameters
    # (under FSDP2 every rank's shards hold the reduced NaN, whichever rank made it).
    for by_parameter in (0.0, 1.0):
        for r in range(pk.world):
            if rows[r, 3] != 0 and rows[r, 4] == by_parameter:
                return None, _decode(state, rows[r], forward=False), r
    return None, None, None


def _decode(state: WatchState, row: np.ndarray, *, forward: bool) -> dict | None:
    if forward:
        if row[0] == 0:
            return None
        return {"module": _name(state.modules, row[0]), "input_absmax": row[1], "output_absmax": row[2]}
    if row[0] != 0 or row[3] == 0:  # a rank with a forward finding reports only that
        return None
    out: dict = {"module": _name(state.modules, row[3]), "grad_output_absmax": row[5], "grad_input_absmax": row[6]}
    if row[4]:
        out["parameter"] = True
    if row[7] != 0:
        out["seen_at"] = _name(state.modules, row[7])
    return out


def replay(
    state: WatchState,
    bad_params: list[int],
    *,
    model: nn.Module,
    recorder: ForwardRecorder,
    probe: ActivationProbe | None,
) -> list[Event]:
    """Replay the step's recorded forwards/backwards with temporary per-module hooks, on every
    rank together, and share the findings (:func:`exchange`).

    ``bad_params`` indexes ``state.params``; ``state.replaying`` is set while the replay runs, and
    the recorder and the activation probe are paused.
    """
    first_f, first_b = _replay_local(state, bad_params, model=model, recorder=recorder, probe=probe)
    first_f, first_b, rank = exchange(state, first_f, first_b)
    return _events(state.step, first_f, first_b, rank)


def _any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (a collective every rank enters)."""
    pk = Packer()
    h = pk.rows([1.0 if flag else 0.0])
    pk.reduce()
    return bool(pk[h].any())


def _replay_local(
    state: WatchState,
    bad_params: list[int],
    *,
    model: nn.Module,
    recorder: ForwardRecorder,
    probe: ActivationProbe | None,
) -> tuple[dict | None, dict | None]:
    owners = state.owners(bad_params)
    armed = probe.armed if probe is not None else False
    state.replaying, recorder.enabled = True, False
    if probe is not None:
        probe.armed = False
    try:
        first_f, first_b, _ = replay_locate(
            model,
            state.modules,
            recorder.records,
            state.params,
            owners,
            agree=_any_rank if Packer().world > 1 else None,
        )
    except Exception as exc:
        logger.warning(
            "llmdbg.watch: replaying step %d to locate the NaN/Inf failed (%s: %s); reporting parameter names only",
            state.step,
            type(exc).__name__,
            exc,
        )
        return None, None
    finally:
        state.replaying, recorder.enabled = False, True
        if probe is not None:
            probe.armed = armed
    return first_f, first_b


def locate_events(
    state: WatchState,
    step: int,
    pending: Pending | None,
    norms: list[float],
    fwd_vals: list,
    bwd_vals: list,
    *,
    model: nn.Module,
    detectors: DetectorSuite,
    locator: NonFiniteLocator | None,
    recorder: ForwardRecorder | None,
    probe: ActivationProbe | None,
) -> list[Event]:
    """Events naming where the first NaN/Inf appeared in this step.

    From the check made before ``optimizer.step()`` (``state.early``), else a replay (with a
    ``recorder``), else the ``locator``'s always-on records (``fwd_vals``/``bwd_vals``, its packed
    host values); a non-finite gradient is always reported by parameter name at least.
    """
    ev: list[Event] = []
    bad_params = _bad_params(pending, norms)
    if "nonfinite" in detectors.cfg:
        if state.early is not None:  # already located before the optimizer step
            ev += state.early
        elif recorder is not None:
            ev += replay(state, bad_params, model=model, recorder=recorder, probe=probe)
        elif locator is not None:
            first_f = locator.first_forward(fwd_vals)
            first_b = None
            if locator.backward and bwd_vals:
                first_b = locator.first_backward(bwd_vals, state.owners(bad_params))
            ev += _events(step, *exchange(state, first_f, first_b))
    if bad_params and not any(e.kind == "nonfinite_backward" for e in ev):
        names = [state.names[i] for i in reversed(bad_params)]  # in the order the backward reaches them
        ev.append(
            Event(
                step,
                names[0],
                "nonfinite_gradients",
                "critical",
                f"{len(names)} parameters have non-finite gradients: {', '.join(names[:5])}"
                f"{' ...' if len(names) > 5 else ''}",
            )
        )
    return ev


def arm_locator(
    locator: NonFiniteLocator | None, modules: list[tuple[str, nn.Module]], locate: str
) -> NonFiniteLocator | None:
    """After a non-finite step: the locator for the next steps. With ``locate`` "forward" or
    "after_nan" the forensic hooks that were not on are armed (a new locator with forward and
    backward records over ``modules``, or backward records added to ``locator``)."""
    if locate in ("forward", "after_nan"):
        if locator is None:
            return NonFiniteLocator(modules, forward=True, backward=True)
        if not locator.backward:
            locator.attach_backward()
    return locator


def nan_message(step: int, events: list[Event]) -> str:
    where = "; ".join(f"{e.kind} at {e.module or 'model'}" for e in events if e.severity == "critical")
    return f"llmdbg.watch: step {step} is not finite ({where or 'loss or gradient norm'})"


def handle_nan(state: WatchState, step: int, events: list[Event], *, on_nan: str) -> None:
    """Apply ``on_nan`` to a non-finite step: raise, warn, or drop the gradients (``"skip"``)."""
    msg = nan_message(step, events)
    if on_nan == "raise":
        raise FloatingPointError(msg)
    if on_nan == "warn":
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    else:  # skip: the optimizer ignores parameters without gradients
        state.drop_grads()
        logger.warning("%s; gradients dropped, the optimizer step is skipped", msg)


def before_optimizer_step(
    state: WatchState,
    pending: Pending,
    *,
    model: nn.Module,
    detectors: DetectorSuite,
    recorder: ForwardRecorder | None,
    probe: ActivationProbe | None,
    on_nan: str,
    emit: Callable[[Event], None],
) -> None:
    """``optimizer.step()`` is about to run and ``watch.step()`` has not seen this backward yet
    (``pending``: ``state.pending``): check the global gradient norm (and the model's loss) now, and
    locate a NaN/Inf while the weights are still those that produced it. The events are kept in
    ``state.early`` and emitted by the next ``watch.step()`` (immediately through ``emit`` with
    ``on_nan="raise"``, which raises here); ``"skip"`` drops the gradients."""
    parts = [pending[2].reshape(1), pending[1]]
    if state.model_losses:
        parts.append(torch.stack(state.model_losses).float().reshape(-1).to(pending[1].device))
    host = torch.cat(parts).tolist()
    pk = Packer()
    flag = pk.rows([0.0 if all(math.isfinite(v) for v in host) else 1.0])
    pk.reduce()  # every rank learns whether any rank's step is non-finite, and all replay together
    if not pk[flag].any():
        state.early = []
        return
    norms = host[1 : 1 + len(pending[0])]
    bad = _bad_params(pending, norms)
    ev = (
        replay(state, bad, model=model, recorder=recorder, probe=probe)
        if "nonfinite" in detectors.cfg and recorder is not None
        else []
    )
    state.early = ev
    if on_nan == "raise":
        for e in ev:
            emit(e)
        state.early = None
        raise FloatingPointError(nan_message(state.step, ev) + " (checked before optimizer.step())")
    if on_nan == "skip":
        state.drop_grads()
