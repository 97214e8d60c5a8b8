"""Helpers shared by the plot modules: figure creation, token labels, heatmaps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


#: Sequences longer than this get no token labels (they would be unreadable).
MAX_LABELED_TOKENS = 64
_CMAP = "viridis"


def new_figure(width: float, height: float) -> Figure:
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
            q = k[n_k - n_q :]  # queries are the last positions (e.g. a KV cache)
    if len(q) != n_q or len(k) != n_k:
        raise ValueError(
            f"tokens: got {len(q)} query and {len(k)} key labels for an attention map of shape "
            f"({n_q}, {n_k}); pass one label per position, or a pair (query_tokens, key_tokens)"
        )
    return q, k


def _label_axes(ax: Axes, q: list[str] | None, k: list[str] | None) -> None:
    n = max(len(q or ()), len(k or ()))
    if not q or not k or n > MAX_LABELED_TOKENS:
        ax.set_xticks([])
        ax.set_yticks([])
        return
    size = float(np.clip(200.0 / n, 4.0, 9.0))
    ax.set_xticks(np.arange(len(k)), labels=k, rotation=90, fontsize=size)
    ax.set_yticks(np.arange(len(q)), labels=q, fontsize=size)
    ax.tick_params(length=0, pad=1)


def _draw_heatmap(
    ax: Axes, attn: np.ndarray, q: list[str] | None, k: list[str] | None, vmin: float, vmax: float
) -> Any:
    image = ax.imshow(attn, cmap=_CMAP, vmin=vmin, vmax=vmax, aspect="equal", interpolation="nearest")
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
