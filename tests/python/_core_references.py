"""Plain numpy/networkx references for the compiled core's kernels (test_properties_core.py).

Each one follows the definition in the kernel's header (cpp/core/...), written for clarity, in
float64, with no shortcuts the kernel takes (padding removal, causal skipping, blocking).
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

FUSE = {"mean": np.mean, "max": np.max, "min": np.min}


def real_index(mask: np.ndarray | None, b: int, t: int) -> np.ndarray:
    return np.arange(t) if mask is None else np.flatnonzero(mask[b])


def fused_layer(maps: np.ndarray, b: int, idx: np.ndarray, fusion: str, residual: bool, discard: float) -> np.ndarray:
    """Â of one (layer, batch) on the real tokens idx (rollout.hpp): fuse heads, zero the
    floor(n² · discard) smallest entries in (value, position) order except [0, 0], add I and
    normalise rows."""
    a = FUSE[fusion](maps[b][:, idx][:, :, idx].astype(np.float64), axis=0)
    n = len(idx)
    k = int(float(n * n) * discard)
    if k > 0:
        flat = a.reshape(-1).copy()
        order = np.lexsort((np.arange(n * n), flat))[:k]
        flat[order[order != 0]] = 0.0
        a = flat.reshape(n, n)
    if residual:
        a = a + np.eye(n)
        a = a / a.sum(-1, keepdims=True)
    return a


def rollout(layers, mask=None, rows=None, fusion="mean", residual=True, discard=0.0) -> np.ndarray:
    """(B, T or len(rows), T) rollout R_L = Â_L ... Â_1 per sequence; padding rows/columns 0."""
    b_size, _, t, _ = layers[0].shape
    out_rows = t if rows is None else len(rows)
    out = np.zeros((b_size, out_rows, t))
    for b in range(b_size):
        idx = real_index(mask, b, t)
        r = fused_layer(layers[-1], b, idx, fusion, residual, discard)
        for layer in reversed(layers[:-1]):
            r = r @ fused_layer(layer, b, idx, fusion, residual, discard)
        full = np.zeros((t, t))
        full[np.ix_(idx, idx)] = r
        out[b] = full if rows is None else full[np.asarray(rows)]
    return out


def flow(layers, mask=None, rows=None, fusion="mean", residual=True) -> np.ndarray:
    """Attention flow by networkx's Edmonds–Karp on the layered graph (flow.hpp), rows normalised
    (all-zero rows stay 0)."""
    b_size, _, t, _ = layers[0].shape
    out_rows = t if rows is None else len(rows)
    out = np.zeros((b_size, out_rows, t))
    for b in range(b_size):
        idx = real_index(mask, b, t)
        n, n_layers = len(idx), len(layers)
        graph = nx.DiGraph()
        for level, layer in enumerate(layers, start=1):
            a = fused_layer(layer, b, idx, fusion, residual, 0.0)
            for i in range(n):
                for j in range(n):
                    graph.add_edge((level, i), (level - 1, j), capacity=float(a[i, j]))
        full = np.zeros((t, t))
        for u in range(n):
            values = np.array([nx.maximum_flow_value(graph, (n_layers, u), (0, v)) for v in range(n)])
            if values.sum() > 0:
                full[idx[u], idx] = values / values.sum()
        out[b] = full if rows is None else full[np.asarray(rows)]
    return out


def head_stats(layers, mask=None, special=None) -> dict[str, np.ndarray]:
    """The pooled per-(layer, head) statistics of head_stats.hpp that do not depend on causality
    conventions: entropy, max_weight, upper_max, special_mass, sink_all and queries."""
    b_size, _, t, _ = layers[0].shape
    heads = max(a.shape[1] for a in layers)
    n_layers = len(layers)
    real = np.ones((b_size, t), bool) if mask is None else mask.astype(bool)
    q_all = int(real.sum())
    ent = np.full((n_layers, heads), np.nan)
    top, upper, sp = ent.copy(), ent.copy(), ent.copy()
    sink_all = np.full((n_layers, b_size, heads, t), np.nan)
    for li, a in enumerate(layers):
        a = a.astype(np.float64)
        for h in range(a.shape[1]):
            e = m = s = 0.0
            u = 0.0
            for b in range(b_size):
                rows = a[b, h][real[b]]  # real queries, every key
                with np.errstate(divide="ignore", invalid="ignore"):
                    e += float(-np.where(rows > 0, rows * np.log(rows), 0.0).sum())
                m += float(rows.max(-1).sum())
                if special is not None:
                    s += float(rows[:, special[b].astype(bool)].sum())
                qi = np.flatnonzero(real[b])
                for i in qi:
                    later = qi[qi > i]
                    if len(later):
                        u = max(u, float(a[b, h, i, later].max()))
                col = rows.sum(0) / real[b].sum()
                sink_all[li, b, h] = np.where(real[b], col, np.nan)
            ent[li, h], top[li, h], upper[li, h] = e / q_all, m / q_all, u
            sp[li, h] = s / q_all if special is not None else np.nan
    return {
        "entropy": ent,
        "max_weight": top,
        "upper_max": upper,
        "special_mass": sp,
        "sink_all": sink_all,
        "queries": real.sum(1),
    }


def js_divergence(a_layers, b_layers, mask=None) -> np.ndarray:
    """Mean Jensen–Shannon divergence (nats) per (layer, head) over real queries."""
    b_size, _, t, _ = a_layers[0].shape
    heads = max(a.shape[1] for a in a_layers)
    real = np.ones((b_size, t), bool) if mask is None else mask.astype(bool)
    out = np.full((len(a_layers), heads), np.nan)
    for li, (pa, pb) in enumerate(zip(a_layers, b_layers)):
        p, q = pa.astype(np.float64), pb.astype(np.float64)
        m = 0.5 * (p + q)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(p > 0, p * np.log(p / m), 0.0).sum(-1) + np.where(q > 0, q * np.log(q / m), 0.0).sum(-1)
        js = np.maximum(0.5 * kl, 0.0)  # (B, H, T)
        for h in range(p.shape[1]):
            out[li, h] = js[:, h][real].sum() / real.sum()
    return out


def summary(x: np.ndarray) -> dict[str, object]:
    """summarize()'s counts, moments and log2 histogram (stats.hpp) of any float array."""
    flat = x.reshape(-1)
    finite = flat[np.isfinite(flat)].astype(np.float64)
    hist = np.zeros(64, np.int64)
    nz = finite[finite != 0]
    if nz.size:
        exponent = np.frexp(nz)[1].astype(np.int64) - 1  # floor(log2 |x|)
        np.add.at(hist, np.clip(exponent + 32, 0, 63), 1)
    return {
        "count": flat.size,
        "finite_count": finite.size,
        "nan_count": int(np.isnan(flat).sum()),
        "inf_count": int(np.isinf(flat).sum()),
        "zero_count": int((flat == 0).sum()),
        "mean": float(finite.mean()) if finite.size else math.nan,
        "var": float(finite.var()) if finite.size else math.nan,
        "min": float(finite.min()) if finite.size else math.nan,
        "max": float(finite.max()) if finite.size else math.nan,
        "histogram": hist,
    }


def whitespace_counts(texts) -> tuple[list[str], list[int], list[int]]:
    """Tokens of str.split() in first-occurrence order, their counts, tokens per text."""
    counts: dict[str, int] = {}
    lengths = []
    for text in texts:
        words = text.split()
        lengths.append(len(words))
        for w in words:
            counts[w] = counts.get(w, 0) + 1
    return list(counts), list(counts.values()), lengths


def duplicate_groups(texts) -> list[int]:
    first: dict[str, int] = {}
    return [first.setdefault(t, i) for i, t in enumerate(texts)]


def duplicate_summary(groups, codes=None) -> tuple[list[int], list[int], list[int]]:
    """Groups of two or more, most frequent first (ties: smaller first index)."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(int(g), []).append(i)
    rows = [(g, len(m), 0 if codes is None else len({int(codes[i]) for i in m})) for g, m in members.items()]
    rows = sorted((r for r in rows if r[1] > 1), key=lambda r: (-r[1], r[0]))
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def quadrature(method: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1] (quadrature.hpp); numpy's leggauss for Gauss–Legendre."""
    k = np.arange(n, dtype=np.float64)
    if method in ("riemann_left", "riemann_right", "riemann_middle"):
        shift = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
        return (k + shift) / n, np.full(n, 1.0 / n)
    if method in ("trapezoid", "captum_trapezoid"):
        w = np.full(n, 1.0 / n if method == "captum_trapezoid" else 1.0 / (n - 1))
        w[[0, -1]] *= 0.5
        return k / (n - 1), w
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return (x + 1) / 2, w / 2
    raise ValueError(method)
