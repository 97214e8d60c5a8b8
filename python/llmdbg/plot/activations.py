"""Activation statistics: per-module summaries and magnitude histograms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..tracing.stats import ActivationStats

from ._common import new_figure


def _stats_items(trace_or_stats: Any, keys: Sequence[str] | None) -> list[tuple[str, ActivationStats]]:
    stats = getattr(trace_or_stats, "stats", trace_or_stats)
    if not isinstance(stats, Mapping):
        raise TypeError(
            "activation_stats expects a Trace or a mapping of key -> ActivationStats, "
            f"got {type(trace_or_stats).__name__}"
        )
    keys = list(stats) if keys is None else list(keys)
    missing = [k for k in keys if k not in stats]
    if missing:
        raise KeyError(f"no statistics for {missing[:5]}; available: {list(stats)[:8]}")
    if not keys:
        raise ValueError("activation_stats: no statistics to plot")
    return [(k, stats[k]) for k in keys]


def activation_stats(
    trace_or_stats: Any,
    keys: Sequence[str] | None = None,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Mean, standard deviation, absolute maximum and zero fraction per captured tensor.

    Four panels share the x axis, one point per key in order (typically one per layer).
    Tensors with NaN or infinite values are marked in red and annotated with their counts.

    Parameters
    ----------
    trace_or_stats : Trace or Mapping[str, ActivationStats]
        A trace (its ``stats`` are used) or a mapping such as ``trace.stats``.
    keys : sequence of str, optional
        Which keys to show, in this order; every key by default. For the residual stream
        pass ``trace.hidden_state_modules``.
    labels : sequence of str, optional
        Tick labels, one per key (default: the keys).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Four axes: mean, std, absmax (log scale when it spans more than a factor 100),
        zero fraction.
    """
    items = _stats_items(trace_or_stats, keys)
    names = [k for k, _ in items] if labels is None else [str(x) for x in labels]
    if len(names) != len(items):
        raise ValueError(f"labels: got {len(names)} labels for {len(items)} keys")
    x = np.arange(len(items))
    fields = [("mean", "mean"), ("std", "std"), ("absmax", "abs max"), ("zero_fraction", "zero fraction")]
    bad = [(i, s) for i, (_, s) in enumerate(items) if s.nan_count or s.inf_count]
    width = float(np.clip(0.45 * len(items) + 5.0, 9.0, 16.0))
    fig = new_figure(width, 5.6)
    axes = fig.subplots(2, 2, sharex=True)
    for ax, (field, label) in zip(axes.flat, fields):
        y = np.array([getattr(s, field) for _, s in items], dtype=float)
        ax.plot(x, y, marker="o", markersize=4, linewidth=1.5, color="#3b6ea5")
        ax.set_title(label, fontsize=10)
        ax.grid(True, alpha=0.3)
        positive = y[y > 0]
        if field == "absmax" and positive.size and positive.max() > 100 * positive.min():
            ax.set_yscale("log")  # outliers span orders of magnitude
        if field == "zero_fraction":
            top = max(1.05 * np.nanmax(np.append(y, 0.0)), 0.05)
            ax.set_ylim(-0.04 * top, top)
        for i, s in bad:
            ax.axvline(i, color="#c0392b", alpha=0.35, linewidth=3)
            if field == "absmax":
                ax.annotate(
                    f"NaN {s.nan_count}\nInf {s.inf_count}",
                    (i, 0.95),
                    xycoords=("data", "axes fraction"),
                    ha="center",
                    va="top",
                    fontsize=7,
                    color="#c0392b",
                )
    step = max(1, -(-len(names) // 40))  # label at most 40 ticks
    long = max(map(len, names)) > 4
    for ax in axes[1]:
        ax.set_xticks(
            x[::step],
            labels=names[::step],
            rotation=45 if long else 0,
            ha="right" if long else "center",
            rotation_mode="anchor",
            fontsize=8 if len(names) <= 16 else 6,
        )
    fig.suptitle(title or "Activation statistics", fontsize=11)
    return fig


def histogram(stats: ActivationStats, *, title: str | None = None) -> Figure:
    """The magnitude histogram of one :class:`~llmdbg.ActivationStats` on its fixed log2 bins.

    Only the range of non-empty bins is drawn. Exact zeros and non-finite values, which the
    histogram does not count, are given in a note.

    Parameters
    ----------
    stats : ActivationStats
        E.g. ``trace.stats["encoder.layer.5"]``.
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes; its bars are the non-empty range of ``stats.histogram``, bar ``b`` spanning
        ``log2(edges[b])`` to ``log2(edges[b + 1])`` with edges from :func:`llmdbg.hist_edges`.
    """
    from ..tracing.stats import hist_edges

    counts = np.asarray(stats.histogram)
    log_edges = np.log2(hist_edges())
    if counts.shape != (log_edges.size - 1,):
        raise ValueError(f"histogram: expected {log_edges.size - 1} bins, got shape {counts.shape}")
    nonzero = np.flatnonzero(counts)
    lo, hi = (int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.size else (0, counts.size)
    fig = new_figure(6.4, 3.4)
    ax = fig.add_subplot()
    ax.bar(log_edges[lo:hi], counts[lo:hi], width=1.0, align="edge", color="#3b6ea5", edgecolor="white", linewidth=0.5)
    ax.set_xlabel("log2 |x|")
    ax.set_ylabel("count")
    ax.set_title(title or "Magnitude histogram", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    note = f"zeros: {stats.zero_count:,}   NaN: {stats.nan_count:,}   Inf: {stats.inf_count:,}"
    ax.text(
        0.01,
        0.97,
        note,
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=8,
        color="#c0392b" if stats.has_nonfinite else "#555555",
    )
    return fig
