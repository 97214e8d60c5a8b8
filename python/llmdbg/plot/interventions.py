"""Figures for activation patching and head importance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["head_importance", "patching_heatmap"]


def patching_heatmap(result: Any, *, recovered: bool = False, cmap: str = "RdBu_r") -> Figure:
    """Modules × positions heatmap of ``result.effects`` (or ``result.recovered``), centred at 0."""
    data = result.recovered if recovered else result.effects
    m, p = data.shape
    fig = new_figure(max(4.0, 0.5 * p + 2.5), max(2.5, 0.3 * m + 1.2))
    ax = fig.subplots()
    lim = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0
    image = ax.imshow(data, cmap=cmap, vmin=-lim or -1, vmax=lim or 1, aspect="auto")
    short = [n if len(n) <= 24 else "…" + n[-23:] for n in result.modules]
    ax.set_yticks(np.arange(m), labels=short, fontsize=7)
    if result.tokens is not None and p == len(result.tokens):
        ax.set_xticks(np.arange(p), labels=result.tokens, rotation=90, fontsize=8)
    else:
        ax.set_xticks(np.arange(p), labels=["all" if x < 0 else str(x) for x in result.positions], fontsize=8)
    ax.set_title("share of clean metric recovered" if recovered else "patching effect (metric − corrupted)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def head_importance(result: Any, *, cmap: str = "viridis") -> Figure:
    """Layers × heads heatmap of ``result.scores``."""
    s = result.scores
    fig = new_figure(max(3.5, 0.35 * s.shape[1] + 2.0), max(2.5, 0.3 * s.shape[0] + 1.2))
    ax = fig.subplots()
    image = ax.imshow(s, cmap=cmap, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("head importance (Michel et al. 2019)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig
