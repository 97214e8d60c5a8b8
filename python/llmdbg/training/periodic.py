"""The periodic tier of :class:`~llmdbg.training.Watch` (every ``every`` steps): per-layer
gradient and weight numbers, histograms, and the activation probes reduced across ranks."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from . import grads as G
from .detectors import Event
from .distributed import all_reduce_packed
from .probes import N_SUM, packed_stats, unpack_stats

if TYPE_CHECKING:
    from .watch import Watch


def logged_step(w: Watch, step: int, pending: Any, norms: list[float], loss_v: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    idx = pending[0] if pending else []
    if "grads" in w.track:
        wn = G.weight_norms(w._params, idx) if "weights" in w.track else [math.nan] * len(idx)
        for j, i in enumerate(idx):
            name, p = w._names[i], w._params[i]
            rows.append({"step": step, "layer": name, "grad_norm": norms[j],
                         "grad_rms": norms[j] / math.sqrt(max(p.numel(), 1)), "weight_norm": wn[j],
                         "update_ratio": math.nan})
            sums, _ = packed_stats(p.grad)
            w.histograms["grads"].setdefault(name, {})[step] = sums[7:]
            if "weights" in w.track:
                wsums, _ = packed_stats(p)
                w.histograms["weights"].setdefault(name, {})[step] = wsums[7:]
        for i, p in enumerate(w._params):
            if p.grad is None and w._names[i] not in w._warned_no_grad:
                w._warned_no_grad.add(w._names[i])
                w._emit(Event(step, w._names[i], "no_gradient", "info",
                                 "trainable parameter received no gradient (unused in the forward?)"))
        if "weights" in w.track:
            w._snapshot = (idx, G.snapshot(w._params, idx), rows)
    w._layer_rows += rows
    if w.probe is not None:
        activation_step(w, step, loss_v)
    return rows

def activation_step(w: Watch, step: int, loss_v: float) -> None:
    got = w.probe.take()
    blocks = [b for b in w.probe.blocks if b in got["sums"]]
    acts = [a for a in w.probe.activations if a in got["active"]]
    sums = [np.asarray([loss_v if math.isfinite(loss_v) else 0.0])]
    for b in blocks:
        sums += [got["sums"][b], np.ravel(got["outliers"][b]), [got["positions"][b]]]
    for a in acts:
        sums += [np.ravel(got["active"][a]), [got["tokens"][a]]]
    flat, maxima = all_reduce_packed(np.concatenate([np.asarray(s, np.float64) for s in sums]),
                                     np.asarray([got["absmax"][b] for b in blocks], np.float64))
    pos = 1
    outliers = {}
    for k, b in enumerate(blocks):
        d = np.ravel(got["outliers"][b]).size
        s, out_counts, n = flat[pos: pos + N_SUM], flat[pos + N_SUM: pos + N_SUM + d], flat[pos + N_SUM + d]
        pos += N_SUM + d + 1
        frac = out_counts / max(n, 1.0)
        outliers[b] = frac
        st = unpack_stats(s, float(maxima[k]))
        w.histograms["activations"].setdefault(b, {})[step] = s[7:]
        w._act_rows.append({"step": step, "module": b, **st,
                               "outlier_features": int((frac >= 0.06).sum())})
    dead = {}
    for a in acts:
        d = np.ravel(got["active"][a]).size
        active, n = flat[pos: pos + d] > 0, flat[pos + d]
        pos += d + 1
        w._active[a] = np.maximum(w._active.get(a, np.zeros(d, bool)), active)
        w._tokens[a] = w._tokens.get(a, 0.0) + n
        frac = 1.0 - float(w._active[a].mean())
        dead[a] = (frac, w._tokens[a])
        w._act_rows.append({"step": step, "module": a, "dead_fraction": frac, "tokens": int(w._tokens[a])})
    for e in w.detectors.on_activations(step, dead, outliers):
        w._emit(e)
