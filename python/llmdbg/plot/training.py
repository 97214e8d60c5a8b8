"""Training-run figures: the watch dashboard and the classification-report figure."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_SPIKES = ("loss_spike", "divergence")
_OVERFIT = ("overfitting",)


def training_dashboard(watch: Any, *, max_layers: int = 8, title: str | None = None) -> Figure:
    """Four panels from a :class:`~llmdbg.training.Watch`.

    (1) training and validation loss, loss spikes as red dots and the first overfitting
    evaluation as a dashed line; (2) gradient norm per layer over the logged steps (the
    ``max_layers`` with the largest last norm) and the global norm; (3) update/weight ratio per
    layer with the healthy 1e-3 band; (4) gradient magnitude histograms over time (all layers
    merged, log2 bins, one column per logged step).
    """
    hist = watch.history
    layers = watch.layers
    fig = new_figure(11, 7.5)
    axes = fig.subplots(2, 2)
    ax = axes[0, 0]
    if "loss" in hist and hist["loss"].notna().any():
        ax.plot(hist.index, hist["loss"], lw=1, color="#3b6ea5", label="train")
    if "val_loss" in hist and hist["val_loss"].notna().any():
        v = hist["val_loss"].dropna()
        ax.plot(v.index, v.values, "o-", ms=3, color="#e67e22", label="validation")
    spikes = sorted({e.step for e in watch.events if e.kind in _SPIKES})
    if spikes and "loss" in hist:
        ys = hist["loss"].reindex(spikes)
        ax.scatter(spikes, ys, color="#c0392b", zorder=3, s=18, label="spike / divergence")
    over = [e.step for e in watch.events if e.kind in _OVERFIT]
    for i, s in enumerate(over[:3]):
        ax.axvline(s, ls="--", color="#7f8c8d", lw=1, label="overfitting" if i == 0 else None)
    nonfinite = hist.index[hist["nonfinite"].fillna(False).astype(bool)] if "nonfinite" in hist else []
    for i, s in enumerate(nonfinite[:20]):
        ax.axvline(s, color="#c0392b", lw=0.8, alpha=0.5, label="non-finite" if i == 0 else None)
    _log_if_positive(ax, hist.get("loss"))
    ax.set_title("loss", fontsize=10)
    ax.set_xlabel("step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)

    ax = axes[0, 1]
    if len(layers):
        last = layers[layers["step"] == layers["step"].max()].nlargest(max_layers, "grad_norm")["layer"]
        for name in last:
            d = layers[layers["layer"] == name]
            ax.plot(d["step"], d["grad_norm"], lw=1, label=_short(name))
    if "grad_norm" in hist and hist["grad_norm"].notna().any():
        ax.plot(hist.index, hist["grad_norm"], color="black", lw=0.8, alpha=0.6, label="global")
    _log_if_positive(ax, hist.get("grad_norm"))
    ax.set_title("gradient norm per layer", fontsize=10)
    ax.set_xlabel("step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=2)

    ax = axes[1, 0]
    ratios = layers.dropna(subset=["update_ratio"]) if len(layers) else layers
    if len(ratios):
        for _name, d in list(ratios.groupby("layer", sort=False))[: max_layers * 4]:
            ax.plot(d["step"], d["update_ratio"].clip(lower=1e-12), lw=0.8, alpha=0.7)
        ax.axhspan(1e-4, 1e-2, color="#2ecc71", alpha=0.12, label="healthy ≈ 1e-3")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    else:
        ax.text(
            0.5,
            0.5,
            "no update ratios yet\n(need two logged steps\nwith weights tracked)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=8,
            color="#5b6472",
        )
    ax.set_title("update / weight ratio per layer", fontsize=10)
    ax.set_xlabel("step")

    ax = axes[1, 1]
    grads = watch.histograms.get("grads", {})
    steps = sorted({s for d in grads.values() for s in d})
    if steps:
        from ..tracing.stats import hist_edges

        mat = np.stack([np.sum([d[s] for d in grads.values() if s in d], axis=0) for s in steps], axis=1)
        rows = np.flatnonzero(mat.sum(1))
        lo, hi = rows[0], rows[-1] + 1
        edges = np.log2(hist_edges())
        ax.imshow(
            np.log1p(mat[lo:hi]),
            aspect="auto",
            origin="lower",
            cmap="viridis",
            interpolation="nearest",
            extent=(-0.5, len(steps) - 0.5, edges[lo], edges[hi]),
        )
        ticks = np.linspace(0, len(steps) - 1, min(len(steps), 6)).round().astype(int)
        ax.set_xticks(ticks, labels=[str(steps[t]) for t in ticks])
        ax.set_ylabel("log2 |grad|")
    ax.set_title("gradient histograms over time (log counts)", fontsize=10)
    ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    return fig


def _short(name: str, n: int = 28) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1) :]


def _log_if_positive(ax: Any, series: Any) -> None:
    if series is None:
        return
    v = np.asarray(series, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size and v.min() > 0 and v.max() / v.min() > 20:
        ax.set_yscale("log")


def classification_figure(report: Any, *, normalize: bool = True, title: str | None = None) -> Figure:
    """Confusion matrix (row-normalised by default) and per-class precision/recall/F1 bars."""
    cm = np.asarray(report.confusion, dtype=np.float64)
    labels = [str(x) for x in report.labels]
    k = len(labels)
    fig = new_figure(min(4 + 0.9 * k, 14), 3.8)
    ax_cm, ax_bar = fig.subplots(1, 2, width_ratios=[1, 1.2])
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    im = ax_cm.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax_cm.text(
                    j,
                    i,
                    f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if shown[i, j] > 0.5 * (shown.max() or 1) else "black",
                )
        ax_cm.set_xticks(range(k), labels=labels, rotation=45, fontsize=8)
        ax_cm.set_yticks(range(k), labels=labels, fontsize=8)
    ax_cm.set_xlabel("predicted")
    ax_cm.set_ylabel("true")
    ax_cm.set_title(f"confusion matrix (accuracy {report.accuracy:.3f})", fontsize=10)
    fig.colorbar(im, ax=ax_cm, shrink=0.8)
    x = np.arange(k)
    per = report.per_class
    for off, col, color in ((-0.27, "precision", "#3b6ea5"), (0.0, "recall", "#e67e22"), (0.27, "f1", "#27ae60")):
        ax_bar.bar(x + off, per[col].to_numpy(), width=0.27, label=col, color=color)
    ax_bar.set_xticks(x, labels=labels, rotation=45 if k > 6 else 0, fontsize=8)
    ax_bar.set_ylim(0, 1.05)
    ax_bar.axhline(report.macro["f1"], ls="--", color="#27ae60", lw=1, label=f"macro F1 {report.macro['f1']:.3f}")
    ax_bar.legend(fontsize=7)
    ax_bar.set_title("per-class metrics", fontsize=10)
    if title:
        fig.suptitle(title)
    if math.isnan(report.accuracy):  # pragma: no cover - defensive
        ax_cm.set_title("confusion matrix")
    return fig
