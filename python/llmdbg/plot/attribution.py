"""Attribution figures: signed token bars for one target, a (T_out × T_in) heatmap for a
continuation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import MAX_LABELED_TOKENS, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def attribution_plot(attr: Any, index: int = 0, *, ax: Any = None, title: str | None = None) -> Figure:
    """Figure of one example of an :class:`llmdbg.Attribution`.

    One target: a bar per real token (red positive, blue negative). A continuation (scores
    ``(B, T_out, T)``): a heatmap whose row k shows the attribution of target token k over the
    input tokens, on a symmetric diverging scale.

    Parameters
    ----------
    attr : Attribution
    index : int
        The example.
    ax : matplotlib.axes.Axes, optional
        Draw into this axes (no colorbar then).
    title : str, optional
        Axes title (default: the method and, for IG, max |delta|).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not 0 <= index < len(attr.tokens):
        raise ValueError(f"index must be in [0, {len(attr.tokens)}), got {index}")
    real = np.asarray(attr.mask[index], dtype=bool)
    tokens = [t for t, ok in zip(attr.tokens[index], real) if ok]
    if title is None:
        title = attr.method
        if attr.delta is not None:
            title += f"  (max |δ| = {float(np.nanmax(np.abs(np.asarray(attr.delta[index])))):.3g})"
    labels = len(tokens) <= MAX_LABELED_TOKENS
    if attr.per_target:
        s = np.asarray(attr.scores[index])
        if s.ndim == 3:
            s = s.sum(-1)
        s = s[:, real]
        outs = attr.target_tokens[index] if attr.target_tokens else [str(k) for k in range(s.shape[0])]
        s = s[: len(outs)]
        own = ax is None
        if own:
            fig = new_figure(min(14.0, 2.5 + 0.28 * len(tokens)), min(10.0, 1.8 + 0.3 * len(outs)))
            ax = fig.add_subplot()
        vmax = float(np.abs(s).max()) or 1.0
        image = ax.imshow(s, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
        if labels:
            ax.set_xticks(np.arange(len(tokens)), labels=tokens, rotation=90, fontsize=8)
            ax.set_yticks(np.arange(len(outs)), labels=outs, fontsize=8)
        ax.set_xlabel("input token", fontsize=8)
        ax.set_ylabel("target token", fontsize=8)
        ax.set_title(title, fontsize=9)
        if own:
            ax.figure.colorbar(image, ax=ax, shrink=0.8, label="attribution")
        return ax.figure
    s = attr.token_scores(index)[real]
    own = ax is None
    if own:
        fig = new_figure(min(14.0, 2.0 + 0.3 * len(tokens)), 3.2)
        ax = fig.add_subplot()
    colors = np.where(s >= 0, "#d62728", "#1f77b4")
    ax.bar(np.arange(len(s)), s, color=colors)
    ax.axhline(0.0, color="#444", linewidth=0.6)
    if labels:
        ax.set_xticks(np.arange(len(tokens)), labels=tokens, rotation=90, fontsize=8)
    ax.set_ylabel("attribution", fontsize=8)
    ax.set_title(title, fontsize=9)
    return ax.figure
