"""Locate the first NaN/Inf by *replaying* the step (the default ``locate="replay"``).

Per-module records every step cost a Python hook and a reduction per module. The default mode
keeps none: a forward pre-hook on the root module keeps *references* to each forward's inputs and
the random-number state it started from, and hooks on the model's outputs keep the gradient that
arrived at them. Only when a step's cheap check (loss, global gradient norm) is non-finite are the
recorded forwards run again with a temporary :class:`~llmdbg.training.hooks.NonFiniteLocator`:
once to read the forward records, and, when the forward was finite, once more with the backward
hooks, back-propagating the recorded output gradients with :func:`torch.autograd.grad` (so the
parameters' ``.grad`` and DDP's reducer are not touched). The temporary hooks are removed
afterwards, also on exceptions, and the caller's random-number streams are left as they were.

The replay sees the same weights, inputs and dropout masks as the original step as long as it
runs before ``optimizer.step()`` (:class:`~llmdbg.training.Watch` checks from an optimizer step
pre-hook when ``watch.step()`` comes later) and the forward is deterministic.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .hooks import NonFiniteLocator, float_tensors

_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device)


def _replayable(obj: Any, depth: int = 3) -> bool:
    """True for tensors, scalars and (nested) tuples/lists/dicts of them: inputs a forward can be
    called with again without side effects (a key/value cache object, say, would be extended)."""
    if isinstance(obj, (torch.Tensor, *_PLAIN)):
        return True
    if depth == 0:
        return False
    if isinstance(obj, dict):
        return all(_replayable(v, depth - 1) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return all(_replayable(v, depth - 1) for v in obj)
    return False


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def _autocast_state() -> list[tuple[str, torch.dtype]]:
    return [(d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]


class ForwardRecord:
    """One root forward: its inputs, random and autocast state, and the gradients that reached
    its outputs."""

    __slots__ = ("amp", "args", "grads", "kwargs", "ok", "rng")

    def __init__(self, args: tuple, kwargs: dict, rng: Any, amp: list | None = None) -> None:
        self.args, self.kwargs, self.rng, self.amp = args, kwargs, rng, amp or []
        self.ok = _replayable(args) and _replayable(kwargs)
        self.grads: dict[int, torch.Tensor] = {}  # index in float_tensors(output) -> gradient

    def output_grad_hook(self, index: int):
        def hook(grad: torch.Tensor) -> None:
            self.grads[index] = grad.detach()

        return hook


class ForwardRecorder:
    """Root forward pre-hook keeping the forwards (with grad enabled) since the last step."""

    def __init__(self, model: nn.Module, cap: int = 16) -> None:
        self.model, self.cap = model, cap
        self.records: list[ForwardRecord] = []
        self.enabled = True
        self.overflow = False
        self.handle = model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self.enabled or not torch.is_grad_enabled():
            return
        if len(self.records) >= self.cap:
            self.overflow = True
            return
        self.records.append(ForwardRecord(args, kwargs, _rng_state(), _autocast_state()))

    def current(self) -> ForwardRecord | None:
        """The record of the forward now finishing (for the root forward hook), if kept."""
        return self.records[-1] if self.records and self.enabled and not self.overflow else None

    def reset(self) -> None:
        self.records = []
        self.overflow = False

    def remove(self) -> None:
        self.handle.remove()
        self.reset()


def _sinks(outs: list[torch.Tensor]) -> list[int]:
    """Indices of ``outs`` not computed from another of them (logits feed the loss: keep the
    loss). Back-propagating from these with their recorded gradients reproduces the backward."""
    fns = {t.grad_fn: i for i, t in enumerate(outs) if t.grad_fn is not None}
    upstream: set[int] = set()
    for i, t in enumerate(outs):
        seen, stack = set(), [t.grad_fn] if t.grad_fn is not None else []
        while stack:
            fn = stack.pop()
            for nxt, _ in fn.next_functions:
                if nxt is None or nxt in seen:
                    continue
                seen.add(nxt)
                j = fns.get(nxt)
                if j is not None and j != i:
                    upstream.add(j)
                stack.append(nxt)
    return [i for i in range(len(outs)) if i not in upstream]


def _forward(model: nn.Module, rec: ForwardRecord) -> Any:
    """``model`` called again on ``rec``'s inputs, random state and autocast settings."""
    _set_rng_state(rec.rng)
    with contextlib.ExitStack() as stack:
        for device, dtype in rec.amp:
            stack.enter_context(torch.autocast(device, dtype=dtype))
        return model(*rec.args, **rec.kwargs)


def _backward(outs: list[torch.Tensor], params: list[nn.Parameter], grads: list[torch.Tensor]) -> None:
    """Back-propagate ``grads`` from ``outs`` without changing any parameter's ``.grad``.

    Plain parameters: :func:`torch.autograd.grad` (nothing is accumulated). FSDP2's sharded
    parameters are not in the graph (the forward uses gathered copies), so ``autograd.grad``
    would prune the whole backward; a real ``backward`` runs instead (every rank replays, so its
    reduce-scatters match), with each ``.grad`` set aside first and put back afterwards.
    """
    from .distributed import is_sharded

    if not is_sharded(params):
        torch.autograd.grad(outs, params, grads, allow_unused=True)
        return
    saved = [p.grad for p in params]
    try:
        for p in params:
            p.grad = None  # FSDP2 accumulates in place: keep the step's gradients out of reach
        torch.autograd.backward(outs, grads)
    finally:
        for p, g in zip(params, saved):
            p.grad = g


def replay_locate(
    model: nn.Module,
    modules: list[tuple[str, nn.Module]],
    records: list[ForwardRecord],
    params: list[nn.Parameter],
    owners: list[int],
    agree: Callable[[bool], bool] | None = None,
) -> tuple[dict | None, dict | None, bool]:
    """Run the recorded forwards (and backwards) again with per-module records.

    Parameters
    ----------
    model : nn.Module
        The root module the records belong to.
    modules : list of (name, module)
        ``model.named_modules()``, the order the locator's names follow.
    records : list of ForwardRecord
        The step's forwards, in order.
    params : list of nn.Parameter
        Trainable parameters (the ``inputs`` of :func:`torch.autograd.grad`).
    owners : list of int
        Module indices owning the parameters whose *original* gradient was non-finite, in the
        order the backward reaches them (the fallback when no module record is non-finite).
    agree : callable, optional
        Under ``torch.distributed``: given whether this rank's forward was non-finite, whether
        any rank's was. All ranks then skip or run the backward pass together (FSDP2's forward
        and backward enter collectives, so ranks must replay the same passes).

    Returns
    -------
    (first_forward, first_backward, replayed)
        The records of :meth:`NonFiniteLocator.first_forward` / ``first_backward`` (or None),
        and whether anything could be replayed.
    """
    records = [r for r in records if r.ok]
    if not records:
        return None, None, False
    loc = NonFiniteLocator(modules, forward=True, backward=True)
    devices = list(range(len(records[0].rng[1]))) if records[0].rng[1] is not None else []
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            for rec in records:  # pass 1: the forward records (and the modules' output kinds)
                loc.forward_done(_forward(model, rec))
            fwd, _ = loc.packed(torch.device("cpu"))
            first_f = loc.first_forward(fwd.tolist())
            found = first_f is not None if agree is None else agree(first_f is not None)
            if found:
                return first_f, None, True
            loc.reset()
            trainable = [p for p in params if p.requires_grad]
            for rec in records:  # pass 2: forward again with the backward hooks, then backward
                if not rec.grads:
                    continue
                outs = [t for t in float_tensors(_forward(model, rec)) if t.requires_grad]
                got = [i for i in sorted(rec.grads) if i < len(outs)]
                keep = [got[k] for k in _sinks([outs[i] for i in got])]
                if keep:
                    _backward([outs[i] for i in keep], trainable, [rec.grads[i] for i in keep])
            _, bwd = loc.packed(torch.device("cpu"))
            first_b = loc.first_backward(bwd.tolist(), owners)
    finally:
        loc.remove()
    if first_b is None and any(not bool(torch.isfinite(g).all()) for r in records for g in r.grads.values()):
        first_b = {"module": "(loss)", "grad_output_absmax": math.inf, "grad_input_absmax": math.nan}
    return None, first_b, True
