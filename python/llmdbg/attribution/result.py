"""The result of every attribution method: scores per token, the tokens, the completeness check,
and views (word-level aggregation, coloured HTML, a figure)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._internal.html import esc

AGGREGATIONS = ("sum", "mean", "absmax")
# Markers of a token that continues the previous word (WordPiece) or starts a new one (BPE, SentencePiece).
_CONTINUES = "##"
_STARTS = ("Ġ", "▁", " ")


@dataclasses.dataclass
class Attribution:
    """Token attributions of one or more inputs.

    Attributes
    ----------
    scores : numpy.ndarray
        float32. ``(B, T)`` for one target per example; ``(B, T_out, T)`` for a continuation (row k:
        the attribution of target token k's log-probability); a trailing ``d`` axis with
        ``reduce="none"``. Positions that are not attributed (padding, kept special tokens, the
        continuation itself) are 0.
    tokens : list of list of str
        ``B`` lists of ``T`` input token strings (ids as strings without a tokenizer).
    mask : numpy.ndarray
        ``(B, T)`` bool, real (non-padding) input tokens.
    delta : numpy.ndarray or None
        Convergence delta Σ scores − (F(x) − F(b)), float32 ``(B,)`` or ``(B, T_out)``, from the
        endpoint evaluations already made (None for methods without a completeness property).
    n_evals : numpy.ndarray
        ``(B,)`` int64, model evaluations per example (path points, plus forward-only endpoints).
    target : numpy.ndarray or None
        Explained class or token ids, ``(B,)`` or ``(B, T_out)``; None for a callable target.
    method : str
        The method and rule, e.g. ``"integrated_gradients/gausslegendre"``.
    target_tokens : list of list of str or None
        Continuation (or predicted token) strings per example.
    value, baseline_value : numpy.ndarray or None
        F(x) and F(b), shaped like ``delta``.
    converged : numpy.ndarray or None
        ``(B,)`` bool, |delta| / |F(x) − F(b)| < tol for every target of the example.
    word_ids : list of list of (int or None) or None
        Word index of every token, from a fast tokenizer's encoding (used by :meth:`words`).
    """

    scores: np.ndarray
    tokens: list[list[str]]
    mask: np.ndarray
    delta: np.ndarray | None
    n_evals: np.ndarray
    target: np.ndarray | None
    method: str
    target_tokens: list[list[str]] | None = None
    value: np.ndarray | None = None
    baseline_value: np.ndarray | None = None
    converged: np.ndarray | None = None
    word_ids: list[list[int | None]] | None = None
    per_target: bool = False  # scores carry a T_out axis (continuations)

    @property
    def relative_delta(self) -> np.ndarray | None:
        """|delta| / |F(x) − F(b)| (float64), the figure ``tol`` is checked against."""
        if self.delta is None or self.value is None or self.baseline_value is None:
            return None
        gap = np.abs(self.value.astype(np.float64) - self.baseline_value.astype(np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.abs(self.delta.astype(np.float64)) / gap

    def token_scores(self, index: int = 0, target: int | None = None) -> np.ndarray:
        """``(T,)`` token scores of example ``index`` (for a continuation: of target ``target``, or
        summed over targets when None, as Captum's ``seq_attr``)."""
        s = self.scores[index]
        if self.per_target:
            s = s.sum(0) if target is None else s[target]
        if s.ndim == 2:  # reduce="none": sum over the embedding axis for display
            s = s.sum(-1)
        return np.asarray(s, dtype=np.float32)

    def words(self, agg: str = "sum", index: int | None = None, target: int | None = None) -> Any:
        """Word-level scores: subword tokens merged into words.

        Word boundaries come from the fast tokenizer's ``word_ids`` when the input was an encoding
        or text, else from the token strings ("##" continues a word; "Ġ", "▁" start one).

        Parameters
        ----------
        agg : {"sum", "mean", "absmax"}
            How subword scores combine: their sum (keeps completeness), mean, or the score of
            largest magnitude (sign kept).
        index : int, optional
            One example; default all.

        Returns
        -------
        list of (str, float) or list of such lists
            (word, score) pairs of the real tokens of each example.
        """
        if agg not in AGGREGATIONS:
            raise ValueError(f"agg must be one of {', '.join(map(repr, AGGREGATIONS))}, got {agg!r}")
        if index is not None:
            return self._words_of(index, agg, target)
        return [self._words_of(i, agg, target) for i in range(len(self.tokens))]

    def _words_of(self, i: int, agg: str, target: int | None) -> list[tuple[str, float]]:
        scores = self.token_scores(i, target)
        groups: list[tuple[list[str], list[float]]] = []
        ids = self.word_ids[i] if self.word_ids is not None else None
        last_word = object()
        for j, tok in enumerate(self.tokens[i]):
            if not self.mask[i, j]:
                continue
            if ids is not None:
                new = ids[j] is None or ids[j] != last_word
                last_word = ids[j]
            else:
                new = not tok.startswith(_CONTINUES) and (
                    not groups or tok.startswith(_STARTS) or not _is_bpe(self.tokens[i])
                )
            piece = tok[2:] if tok.startswith(_CONTINUES) else tok.lstrip("".join(_STARTS))
            if new or not groups:
                groups.append(([piece], [float(scores[j])]))
            else:
                groups[-1][0].append(piece)
                groups[-1][1].append(float(scores[j]))
        out = []
        for pieces, vals in groups:
            arr = np.asarray(vals)
            value = arr.sum() if agg == "sum" else arr.mean() if agg == "mean" else arr[np.argmax(np.abs(arr))]
            out.append(("".join(pieces), float(value)))
        return out

    def to_html(self, index: int | None = None, target: int | None = None) -> str:
        """Self-contained HTML (inline styles, no scripts or external assets): every token on a
        background whose colour encodes its score (red positive, blue negative, scaled per example
        by the largest magnitude); hovering shows the score."""
        rows = range(len(self.tokens)) if index is None else [index]
        parts = [
            f"<div class='llmdbg-attribution' style='font-family:monospace;line-height:1.9'>"
            f"<div style='font-size:80%;color:#555'>{esc(self.method)}</div>"
        ]
        for i in rows:
            s = self.token_scores(i, target)
            real = self.mask[i]
            top = float(np.abs(s[real]).max()) if real.any() else 0.0
            spans = []
            for j, tok in enumerate(self.tokens[i]):
                if not real[j]:
                    continue
                v = float(s[j]) / top if top > 0 else 0.0
                color = f"rgba(214,39,40,{abs(v):.3f})" if v >= 0 else f"rgba(31,119,180,{abs(v):.3f})"
                spans.append(
                    f"<span title='{s[j]:.4g}' style='background:{color};padding:1px 2px;margin:1px;"
                    f"border-radius:3px'>{esc(tok)}</span>"
                )
            label = ""
            if self.delta is not None:
                d = np.asarray(self.delta[i])
                label = f" <span style='font-size:75%;color:#777'>δ={float(np.abs(d).max()):.3g}</span>"
            if self.target_tokens is not None:
                what = self.target_tokens[i] if target is None else [self.target_tokens[i][target]]
                label += f" <span style='font-size:75%;color:#777'>→ {esc(''.join(what))}</span>"
            parts.append(f"<div>{''.join(spans)}{label}</div>")
        parts.append("</div>")
        return "".join(parts)

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
        return self.to_html()

    def plot(self, index: int = 0, *, ax: Any = None, **kwargs: Any) -> Any:
        """Figure of example ``index``: a signed bar per token, or a (T_out × T_in) heatmap for a
        continuation. See :func:`llmdbg.plot.attribution_plot`."""
        from ..plot.attribution import attribution_plot

        return attribution_plot(self, index, ax=ax, **kwargs)

    def __repr__(self) -> str:
        delta = "" if self.delta is None else f", max |delta|={float(np.nanmax(np.abs(self.delta))):.3g}"
        return (
            f"Attribution(method={self.method!r}, scores{tuple(self.scores.shape)}, "
            f"n_evals={self.n_evals.tolist()}{delta})"
        )


def _is_bpe(tokens: list[str]) -> bool:
    return any(t.startswith(_STARTS) for t in tokens)
