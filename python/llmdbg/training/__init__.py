"""Training-run debugging: :func:`watch` for plain loops (and the integrations' callbacks).

A plain loop needs three added lines::

    w = llmdbg.watch(model, optimizer, log_dir="runs/exp1")   # 1
    for batch in loader:
        loss = model(**batch).loss
        loss.backward()
        w.step(loss=loss)                                      # 2: after backward, before step
        optimizer.step(); optimizer.zero_grad()
    w.close()                                                  # 3 (or use `with llmdbg.watch(...)`)
"""

from __future__ import annotations

from typing import Any

import torch

from .advice import advise
from .batches import BatchRef, BatchStore, load_batch
from .detectors import DEFAULTS, DetectorSuite, Event, find_spikes, robust_z
from .monitor import LOCATE, TRACKS, Watch

__all__ = [
    "DEFAULTS",
    "LOCATE",
    "TRACKS",
    "BatchRef",
    "BatchStore",
    "DetectorSuite",
    "Event",
    "Watch",
    "advise",
    "find_spikes",
    "load_batch",
    "robust_z",
    "watch",
]


def watch(
    model: torch.nn.Module,
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
) -> Watch:
    """Watch a training run: loss, gradients, weights and activations, with problem detectors.

    Every step (cheap, one host sync): the loss, the global gradient norm before clipping (equal
    to what :func:`torch.nn.utils.clip_grad_norm_` returns), the learning rate and non-finite
    flags. Every ``every`` steps: per-layer gradient/weight norms and RMS, update/weight ratios,
    fixed log2-bin histograms of gradients, weights and block outputs, activation statistics,
    dead feed-forward units and outlier features. Re-watching a model closes its previous watch,
    so re-running a notebook cell never stacks hooks.

    Parameters
    ----------
    model : torch.nn.Module
        The model (a ``DistributedDataParallel``/``DataParallel`` wrapper is unwrapped). Register
        the watch *before* ``torch.compile``: hooks added to a compiled module never run.
    optimizer : torch.optim.Optimizer, optional
        Gives the learning rate; must own (some of) the model's trainable parameters.
    every : int
        Period of the detailed tier, in optimizer steps (step 0 is always detailed).
    log_dir : str or Path, optional
        TensorBoard event directory (written by rank 0 only). Must be writable.
    detectors : "default", None, list of str or dict
        Which detectors run and their thresholds (:data:`llmdbg.training.DEFAULTS`), e.g.
        ``{"loss_spike": {"z": 8}, "overfitting": {}}``.
    track : tuple of str
        Any of ``"loss"``, ``"grads"``, ``"weights"``, ``"activations"``.
    on_nan : {"warn", "raise", "skip"}
        On a non-finite loss, gradient or activation: warn (``RuntimeWarning``), raise
        ``FloatingPointError``, or drop the gradients so that the following ``optimizer.step()``
        changes nothing. The event naming the first module is logged in every case.
    locate : {"replay", "forward", "always", "after_nan", "off"}
        How the first module that made a NaN/Inf is found. ``"replay"`` (default): no
        per-module hooks while training; when a step's loss or global gradient norm is
        non-finite, its recorded forwards (same inputs, same dropout masks) are run again with
        temporary per-module hooks, and, if the forward was finite, back-propagated with the
        recorded output gradients, naming the first module in the forward or the backward; the
        hooks are removed afterwards. It costs nothing per step (references to the inputs and
        the random state), about two forwards and a backward on a bad step, and sees a NaN/Inf
        only when it reaches the loss or the gradients (an ``inf`` squashed by ``tanh`` is not
        reported). ``"forward"``: per-module forward records every step (any non-finite
        activation, at the cost of a hook and a reduction per module and step), backward records
        armed after the first non-finite step; ``"always"``: both every step; ``"after_nan"``:
        both armed after the first non-finite step; ``"off"``. Without module records a
        non-finite gradient is still reported by parameter name.
    keep_batches : {"auto", True, False}
        Keep the batch of a step with an event, for :meth:`Watch.replay`: ``"auto"`` (default)
        saves it for high and critical events, ``True`` for every event, ``False`` never. A
        kept batch is the step's recorded forward inputs, one safetensors file per step and rank
        (tensors copied to the CPU; non-tensor inputs are described in ``event.batch`` only, with
        a warning). Every event of a step carries ``event.batch`` (ids, shapes, file or reason).
    batch_dir : str or Path, optional
        Where kept batches go; default ``<log_dir>/batches``, or, without ``log_dir``, a
        temporary directory removed when the watch is garbage collected or the process exits.
    max_batch_bytes : int
        Largest batch kept (the sum of its tensors' bytes, default 64 MiB); a larger one is
        described only, with a warning.

    Returns
    -------
    Watch
        Call ``step(loss=...)`` after each backward (before clipping and ``optimizer.step()``),
        ``eval(step, val_loss=..., metrics=...)`` after evaluations, and ``close()`` at the end.

    Notes
    -----
    The replay runs before the weights change: in ``watch.step()``, or, when
    ``optimizer.step()`` comes first, in an optimizer step pre-hook (``on_nan="skip"`` then drops
    the gradients there, ``"raise"`` raises there). Inputs that a forward would change (a
    key/value cache object) are not replayed.

    The gradients are read at the end of each backward pass (an autograd end-of-pass
    callback, after DDP's gradient reduction), so clipping between ``backward()`` and
    ``step()`` does not change the recorded norm. With AMP's ``GradScaler`` the gradients are
    still scaled at that point: divide the recorded norms by ``scaler.get_scale()``.
    """
    return Watch(
        model,
        optimizer,
        every=every,
        log_dir=log_dir,
        detectors=detectors,
        track=track,
        on_nan=on_nan,
        locate=locate,
        keep_batches=keep_batches,
        batch_dir=batch_dir,
        max_batch_bytes=max_batch_bytes,
    )
