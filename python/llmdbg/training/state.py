"""The shared state of one :class:`~llmdbg.training.Watch`.

A watch's helpers (:mod:`.nonfinite`, :mod:`.periodic`, :mod:`.views`) receive this object, plus
the collaborators they use (detectors, locator, recorder, probe, an ``emit`` callable), as
explicit arguments; none of them reads or writes the watch itself.

Two kinds of fields live here: the fixed bookkeeping of the watched parameters and modules, set
once from the model, and the mutable record of the run, which grows with every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .detectors import Event

#: ``(indices into WatchState.params with a dense gradient, their 2-norms (n,) float32, the global
#: 2-norm 0-d float32)``, all on the device: what :func:`~llmdbg.training.grads.grad_norms` returns.
Pending = tuple[list[int], torch.Tensor, torch.Tensor]


def _histograms() -> dict[str, dict[str, dict[int, np.ndarray]]]:
    return {"grads": {}, "weights": {}, "activations": {}}


@dataclass(eq=False)
class WatchState:
    """Parameter bookkeeping and the recorded run of one watch (see the module docstring)."""

    # -- fixed bookkeeping (set once from the model) ------------------------------------------------
    names: list[str]
    """Qualified names of the trainable parameters (``requires_grad``), in ``named_parameters`` order."""
    params: list[nn.Parameter]
    """The trainable parameters themselves, aligned with :attr:`names`; a parameter's index here is
    the index used by :attr:`pending`, :attr:`snapshot` and the non-finite helpers."""
    modules: list[tuple[str, nn.Module]]
    """``model.named_modules()`` as a list (index 0 is the root, named ``""``): the modules the
    non-finite locator and the replay hook, in that order."""
    owner: list[int]
    """Per trainable parameter (aligned with :attr:`params`), the index in :attr:`modules` of the
    module that holds it directly (0, the root, when the holder is not found)."""
    sharded: bool = False
    """Some parameters are DTensors sharded across ranks (FSDP2): gradient and weight numbers are
    measured per shard and summed across ranks."""

    # -- the recorded run (public through Watch's properties and tables) ---------------------------
    events: list[Event] = field(default_factory=list)
    """Detected problems in the order they were emitted (:attr:`Watch.events`)."""
    histograms: dict[str, dict[str, dict[int, np.ndarray]]] = field(default_factory=_histograms)
    """``{"grads"|"weights"|"activations": {name: {step: counts (HIST_BINS,) float64}}}`` on the
    fixed log2 bins (:attr:`Watch.histograms`)."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """One dict per step: ``step, loss, grad_norm, lr, nonfinite`` and the step's extra metrics
    (the rows of :attr:`Watch.history`)."""
    eval_rows: list[dict[str, Any]] = field(default_factory=list)
    """One dict per :meth:`Watch.eval` call: ``step, train_loss`` and ``val_loss``/``val_<metric>``."""
    layer_rows: list[dict[str, Any]] = field(default_factory=list)
    """One dict per parameter and logged step: ``step, layer, grad_norm, grad_rms, weight_norm,
    update_ratio`` (the rows of :attr:`Watch.layers`; ``update_ratio`` is filled in one step later)."""
    act_rows: list[dict[str, Any]] = field(default_factory=list)
    """One dict per probed module and logged step: block statistics or ``dead_fraction, tokens``
    (the rows of :attr:`Watch.activations`)."""

    # -- the step in progress -------------------------------------------------------------------------
    step: int = 0
    """Index of the next step ``Watch.step()`` records (so also the number of steps recorded)."""
    pending: Pending | None = None
    """Gradient norms read at the end of the latest backward pass and not yet recorded, or None."""
    queued: bool = False
    """An end-of-backward callback is queued for the backward pass now running."""
    model_losses: list[torch.Tensor] = field(default_factory=list)
    """Detached scalar ``loss`` outputs of the model's forwards since the last step."""
    early: list[Event] | None = None
    """Events of a check made before ``optimizer.step()`` for this step (``[]``: it was finite),
    emitted by the next ``Watch.step()``; None when no such check ran."""
    replaying: bool = False
    """A replay of the step is running: the watch's own forward hook ignores those forwards."""

    # -- carried between logged steps -----------------------------------------------------------------
    snapshot: tuple[list[int], list[torch.Tensor], list[dict[str, Any]]] | None = None
    """After a logged step: ``(parameter indices, copies of those weights, their layer_rows)``,
    used by the next step to fill in ``update_ratio``; None otherwise."""
    active: dict[str, np.ndarray] = field(default_factory=dict)
    """Per feed-forward activation module: bool ``(units,)``, which units have ever been non-zero."""
    tokens: dict[str, float] = field(default_factory=dict)
    """Per feed-forward activation module: how many token positions its probe has seen in total."""
    warned_no_grad: set[str] = field(default_factory=set)
    """Parameters already reported by a ``no_gradient`` event (reported once each)."""

    @classmethod
    def for_model(cls, model: nn.Module) -> WatchState:
        """The state of a new watch of ``model`` (the unwrapped module): its bookkeeping, no steps."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        modules = list(model.named_modules())
        index = {n: i for i, (n, _) in enumerate(modules)}
        from .distributed import is_sharded

        return cls(
            sharded=is_sharded([p for _, p in named]),
            names=[n for n, _ in named],
            params=[p for _, p in named],
            modules=modules,
            owner=[index.get(n.rpartition(".")[0], 0) for n, _ in named],
        )

    def owners(self, indices: list[int]) -> list[int]:
        """Distinct owning-module indices of the parameters at ``indices``, in reverse order of
        ``indices`` (the order the backward pass reaches them)."""
        return list(dict.fromkeys(self.owner[i] for i in reversed(indices)))

    def drop_grads(self) -> None:
        """Set every watched parameter's ``.grad`` to None (the optimizer then skips them)."""
        for p in self.params:
            p.grad = None
