"""The periodic tier of :class:`~llmdbg.training.Watch` (every ``every`` steps): per-layer
gradient and weight numbers, histograms, and the activation probes reduced across ranks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from . import grads as G
from .detectors import DetectorSuite, Event
from .distributed import all_reduce_packed
from .probes import N_SUM, ActivationProbe, packed_stats, unpack_stats
from .state import Pending, WatchState

if TYPE_CHECKING:
    from .sinks import TensorBoardSink


def update_ratios(state: WatchState, sink: TensorBoardSink | None) -> None:
    """Size of the optimizer update that followed the last logged step (the weights in
    ``state.snapshot`` vs now), filled into that step's layer rows and written to ``sink``;
    clears the snapshot."""
    if state.snapshot is None:
        return
    s_idx, before, s_rows = state.snapshot
    state.snapshot = None
    for r, ratio in zip(s_rows, G.update_ratios(state.params, s_idx, before)):
        r["update_ratio"] = ratio
        if sink is not None:
            sink.scalars(r["step"], {f"update_ratio/{r['layer']}": ratio})


def logged_step(
    state: WatchState,
    step: int,
    pending: Pending | None,
    norms: list[float],
    loss_v: float,
    *,
    track: tuple[str, ...],
    probe: ActivationProbe | None,
    detectors: DetectorSuite,
    emit: Callable[[Event], None],
) -> list[dict[str, Any]]:
    """The detailed tier of a finite logged step; returns its per-layer rows (also appended to
    ``state.layer_rows``). Fills ``state.histograms``, keeps a weight ``state.snapshot`` for the
    next step's update ratios, and reads and reduces the activation ``probe``."""
    rows: list[dict[str, Any]] = []
    idx = pending[0] if pending else []
    if "grads" in track:
        wn = G.weight_norms(state.params, idx) if "weights" in track else [math.nan] * len(idx)
        for j, i in enumerate(idx):
            name, p = state.names[i], state.params[i]
            rows.append(
                {
                    "step": step,
                    "layer": name,
                    "grad_norm": norms[j],
                    "grad_rms": norms[j] / math.sqrt(max(p.numel(), 1)),
                    "weight_norm": wn[j],
                    "update_ratio": math.nan,
                }
            )
            assert p.grad is not None  # pending lists parameters with gradients
            sums, _ = packed_stats(p.grad)
            state.histograms["grads"].setdefault(name, {})[step] = sums[7:]
            if "weights" in track:
                wsums, _ = packed_stats(p)
                state.histograms["weights"].setdefault(name, {})[step] = wsums[7:]
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
    if probe is not None:
        activation_step(state, step, loss_v, probe=probe, detectors=detectors, emit=emit)
    return rows


def activation_step(
    state: WatchState,
    step: int,
    loss_v: float,
    *,
    probe: ActivationProbe,
    detectors: DetectorSuite,
    emit: Callable[[Event], None],
) -> None:
    """Take the ``probe``'s sums of this step, reduce them across ranks, and record block
    statistics, dead feed-forward units and outlier features (rows, histograms, events)."""
    got = probe.take()
    blocks = [b for b in probe.blocks if b in got["sums"]]
    acts = [a for a in probe.activations if a in got["active"]]
    sums: list[Any] = [np.asarray([loss_v if math.isfinite(loss_v) else 0.0])]
    for b in blocks:
        sums += [got["sums"][b], np.ravel(got["outliers"][b]), [got["positions"][b]]]
    for a in acts:
        sums += [np.ravel(got["active"][a]), [got["tokens"][a]]]
    flat, maxima = all_reduce_packed(
        np.concatenate([np.asarray(s, np.float64) for s in sums]),
        np.asarray([got["absmax"][b] for b in blocks], np.float64),
    )
    pos = 1
    outliers = {}
    for k, b in enumerate(blocks):
        d = np.ravel(got["outliers"][b]).size
        s, out_counts, n = flat[pos : pos + N_SUM], flat[pos + N_SUM : pos + N_SUM + d], flat[pos + N_SUM + d]
        pos += N_SUM + d + 1
        frac = out_counts / max(n, 1.0)
        outliers[b] = frac
        st = unpack_stats(s, float(maxima[k]))
        state.histograms["activations"].setdefault(b, {})[step] = s[7:]
        state.act_rows.append({"step": step, "module": b, **st, "outlier_features": int((frac >= 0.06).sum())})
    dead = {}
    for a in acts:
        d = np.ravel(got["active"][a]).size
        active, n = flat[pos : pos + d] > 0, flat[pos + d]
        pos += d + 1
        state.active[a] = np.maximum(state.active.get(a, np.zeros(d, bool)), active)
        state.tokens[a] = state.tokens.get(a, 0.0) + n
        frac = 1.0 - float(state.active[a].mean())
        dead[a] = (frac, state.tokens[a])
        state.act_rows.append({"step": step, "module": a, "dead_fraction": frac, "tokens": int(state.tokens[a])})
    for e in detectors.on_activations(step, dead, outliers):
        emit(e)
