"""The figure for :func:`llmdbg.compare`: one bar per compared tensor, in module order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["plot_comparison"]

# One colour per kind of tensor, stable across figures.
_KIND_COLORS = {"output": "C0", "input": "C1", "grad": "C2", "attention": "C3", "attention_grad": "C4"}
# Beyond this many bars the module names are unreadable: only every k-th is labelled.
_MAX_LABELS = 60


def plot_comparison(
    df: Any, column: str = "rel_l2", *, ax: Axes | None = None, log: bool = False, title: str | None = None
) -> Axes:
    """Bars of one column of a :func:`llmdbg.compare` frame, one per row, in the frame's order.

    The rows come in the order the hooks fired (input, attention, output of each block, bottom
    to top), so the bars read like a walk up the network: where a distance first jumps is where
    the two runs first part. Bars are coloured by ``kind`` (with a legend when there are several).
    A NaN or infinite value (statistics-only rows, non-finite tensors, ``rel_l2`` of a zero
    reference) is drawn as an empty bar labelled ``nan`` or ``inf``. The plot only draws the
    frame's numbers; it computes nothing.

    Parameters
    ----------
    df : pandas.DataFrame
        The result of :func:`llmdbg.compare` (columns ``module``, ``kind`` and ``column``),
        possibly filtered or sorted: e.g. ``df[df.kind == "output"]``.
    column : str, default "rel_l2"
        What to draw: ``"rel_l2"``, ``"cosine"``, ``"max_abs_diff"``, ``"js"`` or a
        ``*_delta`` column.
    ax : matplotlib.axes.Axes, optional
        Draw here; a new figure (no pyplot state) is made by default.
    log : bool, default False
        Logarithmic y axis (distances between close runs span orders of magnitude); kept linear
        when no value is positive.
    title : str, optional
        Axes title (default: the column's name).

    Returns
    -------
    matplotlib.axes.Axes
        ``ax.patches`` holds one bar per row of ``df``; ``ax.figure`` is the figure.

    Raises
    ------
    TypeError
        ``df`` is not a DataFrame.
    ValueError
        ``df`` lacks ``module`` or ``column``.
    """
    if not (hasattr(df, "columns") and hasattr(df, "to_numpy")):
        raise TypeError(f"df must be the pandas DataFrame of llmdbg.compare, got {type(df).__name__}")
    missing = [c for c in ("module", column) if c not in df.columns]
    if missing:
        raise ValueError(f"df has no column {missing[0]!r}; columns: {list(df.columns)}")
    values = np.asarray(df[column].to_numpy(dtype=np.float64, na_value=np.nan))
    kinds = [str(k) for k in df["kind"]] if "kind" in df.columns else ["output"] * len(df)
    several = len(set(kinds)) > 1
    labels = [f"{m} ({k})" if several else str(m) for m, k in zip(df["module"], kinds)]
    n = len(values)
    if ax is None:
        ax = new_figure(min(24.0, max(5.0, 1.5 + 0.28 * n)), 4.2).subplots()
    finite = np.isfinite(values)
    x = np.arange(n)
    colors = [_KIND_COLORS.get(k, "C7") for k in kinds]
    ax.bar(x, np.where(finite, values, 0.0), color=colors, width=0.8)
    for i in np.flatnonzero(~finite):
        ax.annotate(str(values[i]), (i, 0), ha="center", va="bottom", fontsize=6, rotation=90, color="C7")
    if several:
        from matplotlib.patches import Patch

        present = list(dict.fromkeys(kinds))
        ax.legend(handles=[Patch(color=_KIND_COLORS.get(k, "C7"), label=k) for k in present], fontsize=7)
    step = max(1, -(-n // _MAX_LABELS))
    ax.set_xticks(x[::step], labels=labels[::step], rotation=90, fontsize=6 if n > 20 else 8)
    ax.set_xlim(-0.6, n - 0.4)
    if log and (values[finite] > 0).any():  # a log axis of nothing positive only warns
        ax.set_yscale("log")
    ax.set_ylabel(column)
    ax.set_title(title if title is not None else f"{column} per module")
    return ax
