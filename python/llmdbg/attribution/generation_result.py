"""The result of :func:`llmdbg.attribute_generation`: one row of source scores per generated
token, the step scores, and views (a DataFrame, a heatmap, coloured HTML)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._internal.html import esc


@dataclasses.dataclass
class GenerationAttribution:
    """Why the model generated each token.

    Let n be the number of generated (or forced) tokens, P the prompt length and S the number of
    sources: P + n − 1 with ``source="prompt+generated"`` (the prompt, then the generated tokens
    that later steps see), P with ``source="prompt"``.

    Attributes
    ----------
    scores : numpy.ndarray
        ``(n, S)`` float32. Row k attributes the target of step k (the log-probability of generated
        token k, or with ``contrast`` its log-probability minus the foil's) to the sources. Step k
        sees sources ``0 .. P − 1 + k`` only, so the generated part is lower-triangular: every
        entry right of ``P − 1 + k`` is exactly 0.
    source_tokens, target_tokens : list of str
        The S source and n target token strings (ids as strings without a tokenizer).
    source_ids, target_ids : numpy.ndarray
        int64 ``(S,)`` and ``(n,)``.
    prompt_length : int
        P.
    step_scores : dict of str to numpy.ndarray
        ``probability``, ``surprisal`` (−log p, nats) and ``entropy`` (nats) of each step's
        distribution, ``(n,)`` float32, from the model's logits (softmax in float32).
    delta, value, baseline_value : numpy.ndarray or None
        Integrated gradients: per target, the convergence delta Σ_j scores[k, j] − (F_k(x) −
        F_k(b)) and the endpoint values F_k(x), F_k(b), ``(n,)`` float32.
    converged : numpy.ndarray or None
        ``(n,)`` bool: |delta| / |F(x) − F(b)| < tol (integrated gradients).
    contrast_ids : numpy.ndarray or None
        ``(n,)`` int64 foil tokens of a contrastive attribution.
    method : str
        E.g. ``"integrated_gradients/gausslegendre"``.
    source : str
        ``"prompt+generated"`` or ``"prompt"``.
    n_evals : int
        Model evaluations in total: path points (endpoints included) or occluded copies, summed
        over the target groups the memory plan made.
    """

    scores: np.ndarray
    source_tokens: list[str]
    target_tokens: list[str]
    source_ids: np.ndarray
    target_ids: np.ndarray
    prompt_length: int
    step_scores: dict[str, np.ndarray]
    method: str
    source: str
    n_evals: int
    delta: np.ndarray | None = None
    value: np.ndarray | None = None
    baseline_value: np.ndarray | None = None
    converged: np.ndarray | None = None
    contrast_ids: np.ndarray | None = None

    @property
    def sequence_scores(self) -> np.ndarray:
        """``(S,)`` float32: each source's scores summed over the targets (Captum's ``seq_attr``)."""
        return self.scores.sum(0)

    def to_frame(self) -> Any:
        """Long format, one row per (target step, visible source): ``step``, ``target``,
        ``position``, ``source``, ``score``, plus the step's ``probability``, ``surprisal`` and
        ``entropy``, as a pandas DataFrame."""
        import pandas as pd

        rows = []
        n, s = self.scores.shape
        for k in range(n):
            visible = min(s, self.prompt_length + k)
            for j in range(visible):
                rows.append((k, self.target_tokens[k], j, self.source_tokens[j], float(self.scores[k, j])))
        frame = pd.DataFrame(rows, columns=["step", "target", "position", "source", "score"])
        for name, values in self.step_scores.items():
            frame[name] = values[frame["step"].to_numpy()]
        return frame

    def plot(self, *, ax: Any = None, cmap: str = "RdBu_r", **kwargs: Any) -> Any:
        """Heatmap of ``scores`` (targets down, sources across), symmetric colour scale; cells a
        step cannot see are blank. Returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            n, s = self.scores.shape
            _, ax = plt.subplots(figsize=(min(20, 2 + 0.35 * s), min(14, 1.5 + 0.35 * n)))
        shown = self.scores.astype(np.float64).copy()
        n, s = shown.shape
        for k in range(n):
            shown[k, self.prompt_length + k :] = np.nan
        vmax = float(np.nanmax(np.abs(shown))) if np.isfinite(shown).any() else 1.0
        image = ax.imshow(shown, cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto", **kwargs)
        ax.set_xticks(range(s), self.source_tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(n), self.target_tokens, fontsize=7)
        ax.axvline(self.prompt_length - 0.5, color="k", lw=0.8)
        ax.set_xlabel("source (prompt | generated)")
        ax.set_ylabel("generated token")
        ax.set_title(self.method)
        ax.figure.colorbar(image, ax=ax, fraction=0.03)
        return ax

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save this result to the directory ``path``, for :func:`llmdbg.load`.

        Every field is kept exactly, in an open pickle-free format (``docs/saving.md``): arrays
        in ``arrays.safetensors``, tokens and the other plain fields in ``meta.json``.

        Parameters
        ----------
        path : str or os.PathLike
            A directory to create (an existing empty one is filled); written next to its place
            and renamed into it.
        overwrite : bool
            Replace an existing saved llmdbg object at ``path``, once the new one is complete.

        Returns
        -------
        pathlib.Path
            ``path``.
        """
        from .persist import save_result

        return save_result(self, path, overwrite=overwrite)

    def _repr_html_(self) -> str:
        from .._internal import html as h

        n, s = self.scores.shape
        vmax = float(np.abs(self.scores).max()) or 1.0
        head = "".join(f"<th style='writing-mode:vertical-rl'>{esc(t)}</th>" for t in self.source_tokens)
        body = []
        for k in range(min(n, 64)):
            cells = []
            for j in range(s):
                if j >= self.prompt_length + k:
                    cells.append("<td></td>")
                    continue
                v = float(self.scores[k, j]) / vmax
                color = f"rgba(220,50,47,{v:.2f})" if v > 0 else f"rgba(38,139,210,{-v:.2f})"
                cells.append(f"<td title='{self.scores[k, j]:.3g}' style='background:{color}'></td>")
            p = float(self.step_scores["probability"][k])
            body.append(f"<tr><th>{esc(self.target_tokens[k])} <small>p={p:.2g}</small></th>{''.join(cells)}</tr>")
        table = (
            f"<table style='border-collapse:collapse;font-size:11px'><tr><th></th>{head}</tr>{''.join(body)}</table>"
        )
        summary = f"{n} generated tokens × {s} sources ({self.source}); red raises the target, blue lowers it"
        return h.box("llmdbg.GenerationAttribution", esc(f"{self.method}: {summary}"), table, "")

    def __repr__(self) -> str:
        n, s = self.scores.shape
        return f"<llmdbg.GenerationAttribution {self.method}: {n} targets × {s} sources ({self.source})>"
