"""The periodic tier of :class:`~llmdbg.training.Watch` (every ``every`` steps): per-layer
gradient and weight numbers, histograms, and the activation probes, reduced across ranks.

Each part comes in two halves around the step's one collective (:class:`.distributed.Packer`):
``pack_*`` measures this rank's share and adds it to the packer, and, after the reduction,
``record_*`` turns the reduced numbers into rows, histograms and events. Every rank packs on
every logged step, finite or not, so the collective never depends on what a rank found. Under
DDP the gradients are already averaged (replicated), so only the activations are summed; under
FSDP2 the gradient and weight shards are summed too (norms as sums of squares).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import grads as G
from .detectors import DetectorSuite, Event
from .distributed import Packer, local
from .probes import N_SUM, ActivationProbe, packed_stats, unpack_stats
from .state import Pending, WatchState

if TYPE_CHECKING:
    from .sinks import TensorBoardSink

_HEAD = 7  # packed_stats: counts and sums before the histogram


def _add(pk: Packer, x: Any, shared: bool) -> int:
    """Sum ``x`` across ranks when the tensors it measures are sharded, else carry it along."""
    return pk.sum(x) if shared else pk.local(x)


# -- update ratios (the step after a logged step) -------------------------------------------------
def pack_update(state: WatchState, pk: Packer) -> int | None:
    """Add the size of the update that followed the last logged step (``state.snapshot`` vs the
    weights now) to ``pk``; None when there is no snapshot."""
    if state.snapshot is None:
        return None
    idx, before, _ = state.snapshot
    return _add(pk, G.update_sums(state.params, idx, before), state.sharded)


def record_update(state: WatchState, pk: Packer, handle: int | None, sink: TensorBoardSink | None) -> None:
    """Fill the reduced update/weight ratios into the last logged step's layer rows (and
    ``sink``); clears the snapshot."""
    if handle is None or state.snapshot is None:
        return
    rows = state.snapshot[2]
    state.snapshot = None
    sums = pk[handle].reshape(2, -1)
    for r, ratio in zip(rows, G.ratios(sums.tolist())):
        r["update_ratio"] = ratio
        if sink is not None:
            sink.scalars(r["step"], {f"update_ratio/{r['layer']}": ratio})


# -- the logged step ----------------------------------------------------------------------------------
@dataclass
class LoggedPack:
    """Handles into the packer of one logged step's measurements (see :func:`pack_logged`)."""

    idx: list[int]
    weight_norms: int | None = None
    grad_hist: int | None = None
    weight_hist: int | None = None
    blocks: list[str] = field(default_factory=list)
    acts: list[str] = field(default_factory=list)
    widths: dict[str, int] = field(default_factory=dict)
    act_sums: int | None = None
    act_max: int | None = None


def pack_logged(
    state: WatchState, pending: Pending | None, pk: Packer, *, track: tuple[str, ...], probe: ActivationProbe | None
) -> LoggedPack:
    """Measure this rank's share of a logged step and add it to ``pk``."""
    idx = pending[0] if pending else []
    pack = LoggedPack(idx)
    if "grads" in track and idx:
        # A gradient dropped since (on_nan="skip" before optimizer.step()) packs zeros: every rank
        # packs the same sizes; such a step is not finite and its numbers are not recorded.
        grads = [state.params[i].grad for i in idx]
        per_param = [packed_stats(local(g))[0] if g is not None else np.zeros(N_SUM) for g in grads]
        pack.grad_hist = _add(pk, np.stack(per_param), state.sharded)
        if "weights" in track:
            wn = G.weight_norms(state.params, idx)
            pack.weight_norms = _add(pk, wn * wn, state.sharded)
            weights = [local(state.params[i]) for i in idx]
            pack.weight_hist = _add(pk, np.stack([packed_stats(w)[0] for w in weights]), state.sharded)
    if probe is not None:
        got = probe.take()
        pack.blocks = [b for b in probe.blocks if b in got["sums"]]
        pack.acts = [a for a in probe.activations if a in got["active"]]
        sums: list[Any] = []
        for b in pack.blocks:
            pack.widths[b] = np.ravel(got["outliers"][b]).size
            sums += [got["sums"][b], np.ravel(got["outliers"][b]), [got["positions"][b]]]
        for a in pack.acts:
            pack.widths[a] = np.ravel(got["active"][a]).size
            sums += [np.ravel(got["active"][a]), [got["tokens"][a]]]
        flat = np.concatenate([np.asarray(s, np.float64).ravel() for s in sums]) if sums else np.zeros(0)
        pack.act_sums = pk.sum(flat)
        pack.act_max = pk.rows(np.asarray([got["absmax"][b] for b in pack.blocks], np.float64))
    return pack


def record_logged(
    state: WatchState,
    step: int,
    pack: LoggedPack,
    pk: Packer,
    norms: list[float],
    *,
    track: tuple[str, ...],
    detectors: DetectorSuite,
    emit: Callable[[Event], None],
) -> list[dict[str, Any]]:
    """The detailed tier of a finite logged step from the reduced numbers; returns its per-layer
    rows (also appended to ``state.layer_rows``). ``norms``: the global per-parameter gradient
    norms of ``pack.idx``. Keeps a weight snapshot for the next step's update ratios."""
    rows: list[dict[str, Any]] = []
    idx = pack.idx
    if "grads" in track:
        wn = np.sqrt(pk[pack.weight_norms]) if pack.weight_norms is not None else np.full(len(idx), math.nan)
        ghist = pk[pack.grad_hist].reshape(len(idx), N_SUM) if pack.grad_hist is not None else None
        whist = pk[pack.weight_hist].reshape(len(idx), N_SUM) if pack.weight_hist is not None else None
        for j, i in enumerate(idx):
            name, p = state.names[i], state.params[i]
            rows.append(
                {
                    "step": step,
                    "layer": name,
                    "grad_norm": norms[j],
                    "grad_rms": norms[j] / math.sqrt(max(p.numel(), 1)),
                    "weight_norm": float(wn[j]),
                    "update_ratio": math.nan,
                }
            )
            if ghist is not None:
                state.histograms["grads"].setdefault(name, {})[step] = ghist[j, _HEAD:].copy()
            if whist is not None:
                state.histograms["weights"].setdefault(name, {})[step] = whist[j, _HEAD:].copy()
        for i, p in enumerate(state.params):
            if p.grad is None and state.names[i] not in state.warned_no_grad:
                state.warned_no_grad.add(state.names[i])
                emit(
                    Event(
                        step,
                        state.names[i],
                        "no_gradient",
                        "info",
                        "trainable parameter received no gradient (unused in the forward?)",
                    )
                )
        if "weights" in track:
            state.snapshot = (idx, G.snapshot(state.params, idx), rows)
    state.layer_rows += rows
    if pack.act_sums is not None:
        _record_activations(state, step, pack, pk, detectors=detectors, emit=emit)
    return rows


def _record_activations(
    state: WatchState,
    step: int,
    pack: LoggedPack,
    pk: Packer,
    *,
    detectors: DetectorSuite,
    emit: Callable[[Event], None],
) -> None:
    """Block statistics, dead feed-forward units and outlier features from the reduced sums."""
    flat = pk[pack.act_sums]  # type: ignore[index]  # set with act_sums
    maxima = pk[pack.act_max].max(0) if pack.blocks else np.zeros(0)  # type: ignore[index]
    pos = 0
    outliers = {}
    for k, b in enumerate(pack.blocks):
        d = pack.widths[b]
        s, out_counts, n = flat[pos : pos + N_SUM], flat[pos + N_SUM : pos + N_SUM + d], flat[pos + N_SUM + d]
        pos += N_SUM + d + 1
        frac = out_counts / max(n, 1.0)
        outliers[b] = frac
        st = unpack_stats(s, float(maxima[k]))
        state.histograms["activations"].setdefault(b, {})[step] = s[_HEAD:].copy()
        state.act_rows.append({"step": step, "module": b, **st, "outlier_features": int((frac >= 0.06).sum())})
    dead = {}
    for a in pack.acts:
        d = pack.widths[a]
        active, n = flat[pos : pos + d] > 0, flat[pos + d]
        pos += d + 1
        state.active[a] = np.maximum(state.active.get(a, np.zeros(d, bool)), active)
        state.tokens[a] = state.tokens.get(a, 0.0) + n
        frac = 1.0 - float(state.active[a].mean())
        dead[a] = (frac, state.tokens[a])
        state.act_rows.append({"step": step, "module": a, "dead_fraction": frac, "tokens": int(state.tokens[a])})
    for e in detectors.on_activations(step, dead, outliers):
        emit(e)
