"""2-D embedding maps: a scatter of t-SNE (or any 2-D) coordinates with labels and annotations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

from ._common import new_figure

#: Above this many distinct labels the legend is dropped (colours still differ).
MAX_LEGEND_LABELS = 20


def _coords(Y: Any) -> np.ndarray:
    coords = getattr(Y, "coords", Y)  # an EmbeddingMap or anything array-like
    if hasattr(coords, "detach"):
        coords = coords.detach().cpu().numpy()
    try:
        arr = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"Y: expected an (N, 2) array or an EmbeddingMap, got {type(Y).__name__}") from exc
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"Y: expected shape (N, 2), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("Y: contains NaN or infinite coordinates")
    return arr


def _per_point(values: Any, n: int, name: str) -> list | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise TypeError(f"{name}: expected one value per point, got a single string")
    out = list(values)
    if len(out) != n:
        raise ValueError(f"{name}: got {len(out)} values for {n} points")
    return out


def embedding(
    Y: Any,
    labels: Sequence[Any] | None = None,
    texts: Sequence[Any] | None = None,
    *,
    ax: Axes | None = None,
    max_texts: int = 60,
    point_size: float | None = None,
    palette: str | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (6.5, 5.5),
) -> Figure:
    """Scatter plot of a 2-D embedding, coloured by label, with optional text annotations.

    Parameters
    ----------
    Y : array_like of shape (N, 2) or EmbeddingMap
        Coordinates, e.g. ``llmdbg.TSNE().fit_transform(X)`` or the result of
        :func:`llmdbg.embed_tokens` / :func:`llmdbg.embed_hidden_states` (then ``texts``
        defaults to its labels).
    labels : sequence of length N, optional
        A category per point (class, cluster, layer ...): points are coloured by it (seaborn's
        ``hue``), with a legend when there are at most 20 distinct labels.
    texts : sequence of length N, optional
        A string per point (a token, a sentence); ``None`` entries are skipped. At most
        ``max_texts`` are drawn, evenly spread over the points, so large maps stay readable.
    ax : matplotlib.axes.Axes, optional
        Draw into this axes instead of a new figure.
    max_texts : int
        Cap on the number of annotations (default 60; 0 draws none).
    point_size : float, optional
        Marker area; default scales from 40 (small N) down to 2 (100k points).
    palette : str, optional
        A seaborn / matplotlib palette name.
    title : str, optional
        Axes title.
    figsize : (float, float)
        Size of a new figure in inches.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the scatter (``ax.figure`` when ``ax`` was given).
    """
    coords = _coords(Y)
    n = len(coords)
    labels = _per_point(labels, n, "labels")
    if texts is None and labels is None and getattr(Y, "labels", None) is not None:
        texts = Y.labels
    texts = _per_point(texts, n, "texts")
    if max_texts < 0:
        raise ValueError(f"max_texts: expected >= 0, got {max_texts}")
    try:
        import seaborn as sns
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("llmdbg.plot.embedding needs seaborn: pip install 'llmdbg[plot]'") from exc

    if ax is None:
        fig = new_figure(*figsize)
        ax = fig.add_subplot()
    else:
        fig = cast("Figure", ax.figure)
    size = point_size if point_size is not None else float(np.clip(4000.0 / max(n, 1), 2.0, 40.0))
    hue = None if labels is None else [str(v) for v in labels]
    n_labels = 0 if hue is None else len(set(hue))
    sns.scatterplot(
        x=coords[:, 0],
        y=coords[:, 1],
        hue=hue,
        palette=palette if hue else None,
        s=size,
        linewidth=0,
        alpha=0.85 if n > 1000 else 1.0,
        ax=ax,
        legend="auto" if 0 < n_labels <= MAX_LEGEND_LABELS else False,
    )
    if texts is not None and max_texts > 0:
        idx = [i for i in range(n) if texts[i] is not None]
        if len(idx) > max_texts:
            idx = [idx[j] for j in np.linspace(0, len(idx) - 1, max_texts).round().astype(int)]
        fontsize = 8 if len(idx) <= 30 else 6
        for i in idx:
            ax.annotate(
                str(texts[i]),
                (coords[i, 0], coords[i, 1]),
                xytext=(2, 2),
                textcoords="offset points",
                fontsize=fontsize,
                alpha=0.9,
            )
    if n_labels and n_labels <= MAX_LEGEND_LABELS and ax.get_legend() is not None:
        ax.legend(fontsize=7, markerscale=1.0, frameon=False, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title)
    return fig
