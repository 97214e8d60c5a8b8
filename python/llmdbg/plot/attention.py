"""Attention maps: heatmaps, layer grids, per-head diagnostics and token relevance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


from ._common import _CMAP, MAX_LABELED_TOKENS, _as_map, _draw_heatmap, _split_tokens, new_figure


def attention_heatmap(
    attn: Any, tokens: Sequence[str] | None = None, *, title: str | None = None, ax: Axes | None = None
) -> Figure:
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
        fig = new_figure(side + 1.0, side)
        ax = fig.add_subplot()
    vmax = float(np.nanmax(arr)) if arr.size and np.isfinite(arr).any() else 1.0
    assert ax is not None
    image = _draw_heatmap(ax, arr, q, k, 0.0, vmax if vmax > 0 else 1.0)
    if title:
        ax.set_title(title, fontsize=10)
    figure = cast("Figure", ax.figure)
    if own:
        figure.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    return figure


def attention_grid(
    attentions: Sequence[Any],
    tokens: Sequence[str] | None = None,
    *,
    layers: Sequence[int] | None = None,
    head: int | str = "mean",
    ncols: int | None = None,
) -> Figure:
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
    fig = new_figure(side * ncols + 0.8, side * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    used = list(axes.flat[: len(panels)])
    for ax in axes.flat[len(panels) :]:
        fig.delaxes(ax)
    for n, ax in enumerate(used):
        image = _draw_heatmap(ax, panels[n], q, k, 0.0, vmax if vmax > 0 else 1.0)
        ax.set_title(f"layer {shown[n] % len(maps)}", fontsize=10)
    which = "mean over heads" if head == "mean" else f"head {head}"
    fig.suptitle(f"Attention ({which}; rows: queries, columns: keys)", fontsize=11)
    fig.colorbar(image, ax=used, shrink=0.6, label="attention weight")
    return fig


def head_grid(
    attentions: Sequence[Any],
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    cell: float = 1.1,
) -> Figure:
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
        raise ValueError(
            "head_grid expects one (H, T, T) array per layer for one sequence, e.g. [a[0] for a in trace.attentions]"
        )
    layers = list(range(len(maps))) if layers is None else list(layers)
    heads = list(range(maps[0].shape[0])) if heads is None else list(heads)
    fig = new_figure(cell * len(heads) + 0.6, cell * len(layers) + 0.4)
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


def head_heatmap(
    values: Any, *, title: str | None = None, label: str = "value", flags: Any = None, cmap: str = "magma"
) -> Figure:
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
    fig = new_figure(float(np.clip(0.45 * n_h + 2.5, 4.0, 12.0)), float(np.clip(0.38 * n_l + 1.5, 2.5, 10.0)))
    ax = fig.add_subplot()
    image = ax.imshow(arr, cmap=cmap, aspect="auto", interpolation="nearest")
    ax.set_xticks(np.arange(n_h), labels=[str(h) for h in range(n_h)], fontsize=8)
    ax.set_yticks(np.arange(n_l), labels=[str(layer) for layer in range(n_l)], fontsize=8)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if n_l * n_h <= 256:
        mid = np.nanmean(arr) if np.isfinite(arr).any() else 0.0
        for (i, j), v in np.ndenumerate(arr):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="black" if v > mid else "white")
    if flags is not None:
        marks = np.argwhere(np.asarray(flags, dtype=bool))
        if marks.size:
            ax.scatter(marks[:, 1] + 0.35, marks[:, 0] - 0.3, s=12, c="red", marker="o")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=label, shrink=0.9)
    return fig


def token_relevance(scores: Any, tokens: Sequence[str], *, title: str | None = None, cmap: str = "Reds") -> Figure:
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
    fig = new_figure(width, 3.6)
    text_ax, bar_ax = fig.subplots(2, 1, height_ratios=[1, 2])
    text_ax.set_axis_off()
    per_line = max(1, int(width * 1.6))
    for i, (tok, color) in enumerate(zip(tokens, colors)):
        text_ax.text(
            (i % per_line) / per_line,
            1.0 - 0.35 * (i // per_line),
            tok,
            fontsize=8,
            va="top",
            transform=text_ax.transAxes,
            color="white" if level[i] > 0.6 else "black",
            bbox=dict(boxstyle="round,pad=0.15", facecolor=color, edgecolor="none"),
        )
    bar_ax.bar(np.arange(arr.size), arr, color=colors)
    labeled = arr.size <= MAX_LABELED_TOKENS
    bar_ax.set_xticks(np.arange(arr.size) if labeled else [], labels=tokens if labeled else [], rotation=90, fontsize=7)
    bar_ax.set_ylabel("relevance")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
