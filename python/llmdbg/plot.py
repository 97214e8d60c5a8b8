"""Figures for captured activations and attention maps.

Plots never compute: every function here takes numbers that a kernel or a :class:`~llmdbg.Trace`
already produced and only reshapes or slices them for display. Figures are built with
:class:`matplotlib.figure.Figure` directly, never through ``pyplot``, so nothing here touches
global plotting state or needs a display; the caller owns the returned figure (show it in a
notebook, ``fig.savefig(...)`` it, or hand it to :class:`llmdbg.report.Report`).

matplotlib is imported lazily (it is an optional dependency: ``pip install 'llmdbg[plot]'``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .stats import ActivationStats

__all__ = ["activation_stats", "attention_grid", "attention_heatmap", "head_grid", "head_heatmap", "histogram",
           "token_relevance"]

#: Sequences longer than this get no token labels (they would be unreadable).
MAX_LABELED_TOKENS = 64
_CMAP = "viridis"


def _new_figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("llmdbg.plot needs matplotlib: pip install 'llmdbg[plot]'") from exc
    return Figure(figsize=(width, height), layout="constrained")


def _split_tokens(tokens: Any, n_q: int, n_k: int) -> tuple[list[str] | None, list[str] | None]:
    """Query and key labels from ``tokens``: one sequence for both axes, or a pair."""
    if tokens is None:
        return None, None
    tokens = list(tokens)
    if len(tokens) == 2 and all(not isinstance(t, str) and isinstance(t, Sequence) for t in tokens):
        q, k = (list(map(str, t)) for t in tokens)
    else:
        q = k = [str(t) for t in tokens]
        if n_q != n_k and len(k) == n_k:
            q = k[n_k - n_q:]  # queries are the last positions (e.g. a KV cache)
    if len(q) != n_q or len(k) != n_k:
        raise ValueError(
            f"tokens: got {len(q)} query and {len(k)} key labels for an attention map of shape "
            f"({n_q}, {n_k}); pass one label per position, or a pair (query_tokens, key_tokens)")
    return q, k


def _label_axes(ax: Axes, q: list[str] | None, k: list[str] | None) -> None:
    n = max(len(q or ()), len(k or ()))
    if not q or n > MAX_LABELED_TOKENS:
        ax.set_xticks([])
        ax.set_yticks([])
        return
    size = float(np.clip(200.0 / n, 4.0, 9.0))
    ax.set_xticks(np.arange(len(k)), labels=k, rotation=90, fontsize=size)
    ax.set_yticks(np.arange(len(q)), labels=q, fontsize=size)
    ax.tick_params(length=0, pad=1)


def _draw_heatmap(ax: Axes, attn: np.ndarray, q: list[str] | None, k: list[str] | None,
                  vmin: float, vmax: float) -> Any:
    image = ax.imshow(attn, cmap=_CMAP, vmin=vmin, vmax=vmax, aspect="equal",
                      interpolation="nearest")
    _label_axes(ax, q, k)
    if q is None:
        ax.set_xlabel("key position", fontsize=8)
        ax.set_ylabel("query position", fontsize=8)
    return image


def _as_map(attn: Any, what: str = "attn") -> np.ndarray:
    arr = np.asarray(attn.detach().cpu() if hasattr(attn, "detach") else attn)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a (T_q, T_k) attention map, got shape {arr.shape}")
    return arr


def attention_heatmap(attn: Any, tokens: Sequence[str] | None = None, *, title: str | None = None,
                      ax: Axes | None = None) -> Figure:
    """Heatmap of one attention map (rows are queries, columns are keys).

    Parameters
    ----------
    attn : array_like, shape (T_q, T_k)
        Attention weights of one head (or a head mean) of one sequence.
    tokens : sequence of str, or pair of sequences, optional
        Token labels: one per position (used for both axes; when ``T_q < T_k`` the queries are
        labelled with the last ``T_q`` tokens), or ``(query_tokens, key_tokens)``. Labels are
        left out when there are more than ``MAX_LABELED_TOKENS`` (64) positions.
    title : str, optional
        Axes title.
    ax : matplotlib.axes.Axes, optional
        Draw into this axes instead of a new figure (no colorbar is added then).

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the heatmap (``ax.figure`` when ``ax`` is given). The image is an
        ``AxesImage`` whose array is ``attn``.
    """
    arr = _as_map(attn)
    q, k = _split_tokens(tokens, *arr.shape)
    own = ax is None
    if own:
        side = float(np.clip(0.22 * max(arr.shape) + 2.0, 4.0, 10.0))
        fig = _new_figure(side + 1.0, side)
        ax = fig.add_subplot()
    vmax = float(np.nanmax(arr)) if arr.size and np.isfinite(arr).any() else 1.0
    image = _draw_heatmap(ax, arr, q, k, 0.0, vmax if vmax > 0 else 1.0)
    if title:
        ax.set_title(title, fontsize=10)
    if own:
        ax.figure.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    return ax.figure


def attention_grid(attentions: Sequence[Any], tokens: Sequence[str] | None = None, *,
                   layers: Sequence[int] | None = None, head: int | str = "mean",
                   ncols: int | None = None) -> Figure:
    """Per-layer attention heatmaps of one sequence, on one shared colour scale.

    Parameters
    ----------
    attentions : sequence of array_like
        One entry per layer, each ``(H, T, T)`` (all heads) or ``(T, T)`` (already one head or
        a head mean). For a batch from ``trace.attentions`` pass ``[a[i] for a in
        trace.attentions]``.
    tokens : sequence of str, optional
        Token labels, one per position (see :func:`attention_heatmap`).
    layers : sequence of int, optional
        Indices into ``attentions`` to show; all layers by default.
    head : "mean" or int
        ``"mean"`` averages the heads, an int shows that head. Ignored for ``(T, T)`` entries.
    ncols : int, optional
        Panels per row; at most 3 by default.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per shown layer (in ``layers`` order, each holding an ``AxesImage`` with the
        displayed ``(T, T)`` map) plus one colorbar axes.
    """
    maps = list(attentions)
    if not maps:
        raise ValueError("attention_grid: no attention maps given")
    shown = list(range(len(maps))) if layers is None else [int(i) for i in layers]
    if not shown:
        raise ValueError("attention_grid: layers is empty")
    for i in shown:
        if not -len(maps) <= i < len(maps):
            raise ValueError(f"attention_grid: layer {i} out of range for {len(maps)} layers")
    if head != "mean" and (isinstance(head, bool) or not isinstance(head, (int, np.integer))):
        raise ValueError(f"head must be 'mean' or an int, got {head!r}")
    panels = []
    for i in shown:
        arr = np.asarray(maps[i].detach().cpu() if hasattr(maps[i], "detach") else maps[i])
        if arr.ndim == 3:
            if head != "mean" and not -arr.shape[0] <= head < arr.shape[0]:
                raise ValueError(f"head {head} out of range: layer {i} has {arr.shape[0]} heads")
            arr = arr.mean(axis=0) if head == "mean" else arr[head]
        elif arr.ndim != 2:
            hint = " (select one sequence: [a[0] for a in trace.attentions])" if arr.ndim == 4 else ""
            raise ValueError(f"layer {i}: expected an (H, T, T) or (T, T) map, got shape {arr.shape}{hint}")
        panels.append(arr)
    q, k = _split_tokens(tokens, *panels[0].shape)
    finite = [p[np.isfinite(p)] for p in panels]
    vmax = max((float(f.max()) for f in finite if f.size), default=1.0)
    ncols = min(len(panels), 3) if ncols is None else max(1, int(ncols))
    nrows = -(-len(panels) // ncols)
    t = max(panels[0].shape)
    side = float(np.clip(0.16 * t + 1.6, 2.6, 6.0))
    fig = _new_figure(side * ncols + 0.8, side * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    used = list(axes.flat[:len(panels)])
    for ax in axes.flat[len(panels):]:
        fig.delaxes(ax)
    for n, ax in enumerate(used):
        image = _draw_heatmap(ax, panels[n], q, k, 0.0, vmax if vmax > 0 else 1.0)
        ax.set_title(f"layer {shown[n] % len(maps)}", fontsize=10)
    which = "mean over heads" if head == "mean" else f"head {head}"
    fig.suptitle(f"Attention ({which}; rows: queries, columns: keys)", fontsize=11)
    fig.colorbar(image, ax=used, shrink=0.6, label="attention weight")
    return fig


def _stats_items(trace_or_stats: Any, keys: Sequence[str] | None) -> list[tuple[str, ActivationStats]]:
    stats = getattr(trace_or_stats, "stats", trace_or_stats)
    if not isinstance(stats, Mapping):
        raise TypeError("activation_stats expects a Trace or a mapping of key -> ActivationStats, "
                        f"got {type(trace_or_stats).__name__}")
    keys = list(stats) if keys is None else list(keys)
    missing = [k for k in keys if k not in stats]
    if missing:
        raise KeyError(f"no statistics for {missing[:5]}; available: {list(stats)[:8]}")
    if not keys:
        raise ValueError("activation_stats: no statistics to plot")
    return [(k, stats[k]) for k in keys]


def activation_stats(trace_or_stats: Any, keys: Sequence[str] | None = None, *,
                     labels: Sequence[str] | None = None, title: str | None = None) -> Figure:
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
    fig = _new_figure(width, 5.6)
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
                ax.annotate(f"NaN {s.nan_count}\nInf {s.inf_count}", (i, 0.95),
                            xycoords=("data", "axes fraction"), ha="center", va="top",
                            fontsize=7, color="#c0392b")
    step = max(1, -(-len(names) // 40))  # label at most 40 ticks
    long = max(map(len, names)) > 4
    for ax in axes[1]:
        ax.set_xticks(x[::step], labels=names[::step], rotation=45 if long else 0,
                      ha="right" if long else "center", rotation_mode="anchor",
                      fontsize=8 if len(names) <= 16 else 6)
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
    from .stats import hist_edges

    counts = np.asarray(stats.histogram)
    log_edges = np.log2(hist_edges())
    if counts.shape != (log_edges.size - 1,):
        raise ValueError(f"histogram: expected {log_edges.size - 1} bins, got shape {counts.shape}")
    nonzero = np.flatnonzero(counts)
    lo, hi = (int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.size else (0, counts.size)
    fig = _new_figure(6.4, 3.4)
    ax = fig.add_subplot()
    ax.bar(log_edges[lo:hi], counts[lo:hi], width=1.0, align="edge", color="#3b6ea5",
           edgecolor="white", linewidth=0.5)
    ax.set_xlabel("log2 |x|")
    ax.set_ylabel("count")
    ax.set_title(title or "Magnitude histogram", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    note = f"zeros: {stats.zero_count:,}   NaN: {stats.nan_count:,}   Inf: {stats.inf_count:,}"
    ax.text(0.01, 0.97, note, transform=ax.transAxes, ha="left", va="top", fontsize=8,
            color="#c0392b" if stats.has_nonfinite else "#555555")
    return fig


def head_grid(attentions: Sequence[Any], *, layers: Sequence[int] | None = None,
              heads: Sequence[int] | None = None, cell: float = 1.1) -> Figure:
    """A layers × heads grid of small attention heatmaps for one sequence.

    Parameters
    ----------
    attentions : sequence of array_like, each (H, T, T)
        One sequence's maps per layer, e.g. ``[a[0] for a in trace.attentions]``.
    layers, heads : sequence of int, optional
        Which rows (layers) and columns (heads) to draw; all by default.
    cell : float
        Size of one panel in inches.

    Returns
    -------
    matplotlib.figure.Figure
        ``len(layers) × len(heads)`` axes, each with one ``AxesImage`` (colour scale per panel,
        since heads differ in sharpness); rows are labelled ``L<i>``, columns ``H<j>``.
    """
    maps = [np.asarray(a.detach().cpu() if hasattr(a, "detach") else a) for a in attentions]
    if not maps or any(m.ndim != 3 for m in maps):
        raise ValueError("head_grid expects one (H, T, T) array per layer for one sequence, e.g. "
                         "[a[0] for a in trace.attentions]")
    layers = list(range(len(maps))) if layers is None else list(layers)
    heads = list(range(maps[0].shape[0])) if heads is None else list(heads)
    fig = _new_figure(cell * len(heads) + 0.6, cell * len(layers) + 0.4)
    axes = fig.subplots(len(layers), len(heads), squeeze=False)
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            ax.imshow(maps[layer][head], cmap=_CMAP, vmin=0.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"L{layer}", fontsize=8)
            if r == 0:
                ax.set_title(f"H{head}", fontsize=8)
    return fig


def head_heatmap(values: Any, *, title: str | None = None, label: str = "value",
                 flags: Any = None, cmap: str = "magma") -> Figure:
    """A layers × heads table of numbers as a heatmap: entropy, drift, sink scores, ...

    Parameters
    ----------
    values : array_like, shape (L, H)
        For instance ``head_entropy(trace, normalize=True)`` or ``attention_drift(a, b)``.
    title : str, optional
    label : str
        Colorbar label.
    flags : array_like of bool, shape (L, H), optional
        Cells to mark with a dot (e.g. collapsed or sink heads).
    cmap : str
        Matplotlib colormap name.

    Returns
    -------
    matplotlib.figure.Figure
        One axes whose image array equals ``values``; values are written in the cells when the
        table has at most 16 × 16 cells.
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"values must be a (layers, heads) array, got shape {arr.shape}")
    n_l, n_h = arr.shape
    fig = _new_figure(float(np.clip(0.45 * n_h + 2.5, 4.0, 12.0)), float(np.clip(0.38 * n_l + 1.5, 2.5, 10.0)))
    ax = fig.add_subplot()
    image = ax.imshow(arr, cmap=cmap, aspect="auto", interpolation="nearest")
    ax.set_xticks(np.arange(n_h), labels=[str(h) for h in range(n_h)], fontsize=8)
    ax.set_yticks(np.arange(n_l), labels=[str(layer) for layer in range(n_l)], fontsize=8)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if n_l * n_h <= 256:
        mid = np.nanmean(arr) if np.isfinite(arr).any() else 0.0
        for (i, j), v in np.ndenumerate(arr):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if v > mid else "white")
    if flags is not None:
        marks = np.argwhere(np.asarray(flags, dtype=bool))
        if marks.size:
            ax.scatter(marks[:, 1] + 0.35, marks[:, 0] - 0.3, s=12, c="red", marker="o")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=label, shrink=0.9)
    return fig


def token_relevance(scores: Any, tokens: Sequence[str], *, title: str | None = None,
                    cmap: str = "Reds") -> Figure:
    """Token relevance (a rollout, flow or gradient-rollout row) as highlighted text and bars.

    Parameters
    ----------
    scores : array_like, shape (T,)
        Relevance per token, e.g. ``attention_rollout(trace, rows=[0])[0, 0]`` or
        ``gradient_rollout(...).scores[0]``.
    tokens : sequence of str, length T
    title : str, optional
    cmap : str
        Colormap for the highlight (scores are scaled to their maximum).

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: the text highlight (one coloured box per token) and a bar chart whose bar
        heights equal ``scores``.
    """
    import matplotlib

    arr = np.asarray(scores, dtype=float).reshape(-1)
    tokens = [str(t) for t in tokens]
    if len(tokens) != arr.size:
        raise ValueError(f"got {arr.size} scores for {len(tokens)} tokens")
    top = float(np.nanmax(np.abs(arr))) if arr.size and np.isfinite(arr).any() else 1.0
    level = np.clip(arr / (top or 1.0), 0.0, 1.0)
    colors = matplotlib.colormaps[cmap](level)
    width = float(np.clip(0.3 * arr.size + 2.0, 5.0, 14.0))
    fig = _new_figure(width, 3.6)
    text_ax, bar_ax = fig.subplots(2, 1, height_ratios=[1, 2])
    text_ax.set_axis_off()
    per_line = max(1, int(width * 1.6))
    for i, (tok, color) in enumerate(zip(tokens, colors)):
        text_ax.text((i % per_line) / per_line, 1.0 - 0.35 * (i // per_line), tok, fontsize=8,
                     va="top", transform=text_ax.transAxes, color="white" if level[i] > 0.6 else "black",
                     bbox=dict(boxstyle="round,pad=0.15", facecolor=color, edgecolor="none"))
    bar_ax.bar(np.arange(arr.size), arr, color=colors)
    labeled = arr.size <= MAX_LABELED_TOKENS
    bar_ax.set_xticks(np.arange(arr.size) if labeled else [], labels=tokens if labeled else [],
                      rotation=90, fontsize=7)
    bar_ax.set_ylabel("relevance")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
