"""Figure for :func:`llmdbg.logit_lens`: layers × positions, top token per cell."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["logit_lens"]


def logit_lens(result: Any, *, batch: int = 0, max_chars: int = 8, cmap: str = "Blues") -> Figure:
    """Grid of ``result.top_probs[:, batch, :, 0]`` (rows: layers, bottom = embeddings; columns:
    positions) with the top-1 token (or id) written in each cell; colour = its probability."""
    probs = result.top_probs[:, batch, :, 0]
    r, t = probs.shape
    fig = new_figure(max(4.0, 0.75 * t + 2.0), max(2.5, 0.38 * r + 1.2))
    ax = fig.subplots()
    image = ax.imshow(probs, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
    labels = result.top_tokens[:, batch, :, 0] if result.top_tokens is not None else result.top_ids[:, batch, :, 0]
    size = float(np.clip(90.0 / max(t, 1), 5.0, 8.0))
    for i in range(r):
        for j in range(t):
            text = str(labels[i, j])[:max_chars]
            ax.text(
                j, i, text, ha="center", va="center", fontsize=size, color="white" if probs[i, j] > 0.55 else "black"
            )
    ax.set_yticks(np.arange(r), labels=["emb" if x == 0 else str(x) for x in result.layers], fontsize=8)
    if result.input_tokens is not None:
        ax.set_xticks(np.arange(t), labels=result.input_tokens[batch], rotation=90, fontsize=8)
    else:
        ax.set_xlabel("position")
    ax.set_ylabel("layer")
    ax.set_title(f"logit lens ({result.kind}): top-1 token, colour = probability")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig
