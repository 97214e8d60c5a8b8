"""Figures for :mod:`llmdbg.checks`: one bar per perturbation or swapped term."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["check_summary"]


def check_summary(report: Any) -> Figure:
    """Perturbation test: change rate and mean delta per perturbation. Counterfactual test: mean
    score difference per swapped term, with the spread (std) of the individual differences."""
    s = report.summary
    names = [str(x) for x in s.index]
    x = np.arange(len(names))
    fig = new_figure(max(4.0, 0.8 * len(names) + 2.5), 3.2)
    ax = fig.subplots()
    if "mean_diff" in s:
        spread = report.rows.groupby("term")["diff"].std().reindex(s.index).fillna(0.0).to_numpy()
        colors = ["C3" if v < 0 else "C0" for v in s["mean_diff"]]
        ax.bar(x, s["mean_diff"], yerr=spread, color=colors, capsize=3)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel("score difference (counterfactual − original)")
        ax.set_title(f"counterfactual test ({report.kind})")
    else:
        width = 0.4
        if report.kind != "embedding":
            ax.bar(x - width / 2, s["change_rate"], width, label="change rate")
        ax.bar(x + width / 2, s["mean_delta"], width, label="mean delta")
        ax.legend(fontsize=8)
        ax.set_title(f"perturbation test ({report.kind})")
    ax.set_xticks(x, labels=names, rotation=30 if len(names) > 4 else 0, fontsize=8)
    return fig
