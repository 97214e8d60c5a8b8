"""Figures for :func:`llmdbg.data.profile`: rank-frequency, lengths, labels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["data_profile", "rank_frequency"]


def rank_frequency(ax: Any, counts: np.ndarray, *, annotate: Any = None, n_annotate: int = 5) -> None:
    """Log-log rank-frequency curve of ``counts`` (sorted descending) on ``ax``; a straight line
    of slope about -1 is Zipf's law. ``annotate`` (tokens, same order) labels the top ranks."""
    counts = np.asarray(counts)
    ranks = np.arange(1, len(counts) + 1)
    if len(counts):
        ax.loglog(ranks, counts, lw=1.2)
        if annotate is not None:
            for r in range(min(n_annotate, len(counts))):
                ax.annotate(
                    repr(str(annotate[r])), (ranks[r], counts[r]), fontsize=7, xytext=(4, 0), textcoords="offset points"
                )
    ax.set_xlabel("rank")
    ax.set_ylabel("count")
    ax.set_title("token rank-frequency")


def data_profile(profile: Any, *, bins: int = 50) -> Figure:
    """Three panels for a :class:`~llmdbg.data.DataProfile`: token rank-frequency (log-log), the
    length histogram with ``max_length`` marked, and label counts (when labels were given)."""
    has_labels = profile.label_counts is not None
    fig = new_figure(4.2 * (2 + has_labels), 3.4)
    axes = fig.subplots(1, 2 + has_labels)
    rank_frequency(axes[0], profile.token_counts, annotate=profile.tokens)
    ax = axes[1]
    ax.hist(profile.lengths, bins=bins, color="C0")
    if profile.max_length is not None:
        ax.axvline(
            profile.max_length,
            color="C3",
            ls="--",
            label=f"max_length={profile.max_length} ({100 * profile.truncated_share:.1f}% cut)",
        )
        ax.legend(fontsize=8)
    ax.set_xlabel(f"tokens per text ({profile.tokenizer})")
    ax.set_ylabel("texts")
    ax.set_title("length distribution")
    if has_labels:
        ax = axes[2]
        names = [str(x) for x in profile.labels]
        ax.bar(np.arange(len(names)), profile.label_counts, color="C2")
        ax.set_xticks(np.arange(len(names)), labels=names, rotation=45 if len(names) > 6 else 0, fontsize=8)
        ax.set_ylabel("texts")
        ax.set_title(f"labels (normalised entropy {profile.label_entropy:.2f})")
    return fig
