"""Figures for captured activations and attention maps.

Plots never compute: every function here takes numbers that a kernel or a :class:`~llmdbg.Trace`
already produced and only reshapes or slices them for display. Figures are built with
:class:`matplotlib.figure.Figure` directly, never through ``pyplot``, so nothing here touches
global plotting state or needs a display; the caller owns the returned figure (show it in a
notebook, ``fig.savefig(...)`` it, or hand it to :class:`llmdbg.report.Report`).

matplotlib is imported lazily (it is an optional dependency: ``pip install 'llmdbg[plot]'``).

One module per topic (attention, activations, ...); this package re-exports the public figures.
"""

from .activations import activation_stats, histogram
from .attention import attention_grid, attention_heatmap, head_grid, head_heatmap, token_relevance
from .attribution import attribution_plot
from .checks import check_summary
from .compare import plot_comparison
from .data import data_profile, rank_frequency
from .embedding_map import embedding
from .interventions import head_importance, patching_heatmap
from .lens import logit_lens
from .training import classification_figure, training_dashboard

__all__ = [
    "activation_stats",
    "attention_grid",
    "attention_heatmap",
    "attribution_plot",
    "classification_figure",
    "head_grid",
    "head_heatmap",
    "histogram",
    "token_relevance",
    "training_dashboard",
]
__all__ += ["check_summary", "data_profile", "head_importance", "logit_lens", "patching_heatmap", "rank_frequency"]
__all__ += ["embedding", "plot_comparison"]
