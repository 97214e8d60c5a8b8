"""Classification metrics and error analysis for fine-tuned models.

:func:`classification_report` wraps scikit-learn's metrics (accuracy, per-class and macro/weighted
precision, recall, F1 and the confusion matrix) in one object with a table and a plot.
:func:`error_analysis` groups the misclassified examples by (true, predicted) label pair and by
length bucket, and lists the tokens that are over-represented among errors (log-odds ratio with a
+0.5 prior against the correctly classified examples).

scikit-learn is imported lazily: ``pip install scikit-learn``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ClassificationReport", "ErrorAnalysis", "classification_report", "error_analysis"]


def _labels_1d(y: Any, name: str) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of labels, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: no labels")
    return arr


def _sklearn():
    try:
        from sklearn import metrics as skm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("llmdbg.metrics needs scikit-learn: pip install scikit-learn") from exc
    return skm


@dataclasses.dataclass
class ClassificationReport:
    """Metrics of one set of predictions.

    Attributes
    ----------
    accuracy : float
    labels : list
        Class labels in the order of every per-class array and the confusion matrix.
    per_class : pandas.DataFrame
        Index ``labels``; columns precision, recall, f1, support.
    macro, weighted : dict
        precision, recall, f1 averaged over classes (unweighted / weighted by support).
    confusion : numpy.ndarray
        ``(K, K)`` int64; row = true label, column = predicted label.
    """

    accuracy: float
    labels: list
    per_class: Any
    macro: dict[str, float]
    weighted: dict[str, float]
    confusion: np.ndarray

    def to_frame(self):
        """Per-class rows plus ``macro avg`` and ``weighted avg`` rows (sklearn's layout)."""
        import pandas as pd

        extra = pd.DataFrame(
            [
                {**self.macro, "support": int(self.per_class["support"].sum())},
                {**self.weighted, "support": int(self.per_class["support"].sum())},
            ],
            index=["macro avg", "weighted avg"],
        )
        return pd.concat([self.per_class, extra])

    def plot(self, normalize: bool = True, title: str | None = None):
        """Confusion matrix (row-normalised by default) next to per-class P/R/F1 bars."""
        from .plot.training import classification_figure

        return classification_figure(self, normalize=normalize, title=title)

    def _repr_html_(self) -> str:
        return f"<p><b>accuracy</b> {self.accuracy:.4f}</p>" + self.to_frame().to_html(float_format="%.4f")


def classification_report(y_true: Any, y_pred: Any, labels: Sequence | None = None) -> ClassificationReport:
    """Accuracy, per-class and averaged precision/recall/F1, and the confusion matrix.

    Parameters
    ----------
    y_true, y_pred : array_like, shape (n,)
        True and predicted labels (ints or strings; tensors accepted).
    labels : sequence, optional
        Classes to report, in this order (default: the sorted union of both arrays). Classes
        never predicted get precision 0 (scikit-learn's ``zero_division=0``).

    Returns
    -------
    ClassificationReport
    """
    skm = _sklearn()
    yt, yp = _labels_1d(y_true, "y_true"), _labels_1d(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"y_pred: expected {yt.shape[0]} predictions (one per y_true), got {yp.shape[0]}")
    labels = list(np.unique(np.concatenate([yt, yp]))) if labels is None else list(labels)
    if not labels:
        raise ValueError("labels: empty")
    p, r, f, s = skm.precision_recall_fscore_support(yt, yp, labels=labels, zero_division=0)
    import pandas as pd

    per = pd.DataFrame(
        {"precision": p, "recall": r, "f1": f, "support": s.astype(np.int64)},
        index=pd.Index([x.item() if hasattr(x, "item") else x for x in labels], name="label"),
    )
    avg = {}
    for kind in ("macro", "weighted"):
        pa, ra, fa, _ = skm.precision_recall_fscore_support(yt, yp, labels=labels, average=kind, zero_division=0)
        avg[kind] = {"precision": float(pa), "recall": float(ra), "f1": float(fa)}
    cm = skm.confusion_matrix(yt, yp, labels=labels).astype(np.int64)
    return ClassificationReport(
        float(skm.accuracy_score(yt, yp)), list(per.index), per, avg["macro"], avg["weighted"], cm
    )


@dataclasses.dataclass
class ErrorAnalysis:
    """Where a classifier goes wrong.

    Attributes
    ----------
    errors : pandas.DataFrame
        One row per misclassified example: index, text, true, pred, length, bucket.
    by_pair : pandas.DataFrame
        Error counts per (true, pred) pair, most frequent first, with the share of all errors.
    by_length : pandas.DataFrame
        Per length bucket: n, errors, error_rate.
    tokens : pandas.DataFrame
        Tokens over-represented among errors: token, in_errors, in_correct, log_odds (sorted).
    """

    errors: Any
    by_pair: Any
    by_length: Any
    tokens: Any


def _tokenize(texts: list[str], tokenizer: Any) -> list[list[str]]:
    if tokenizer is None:
        return [re.findall(r"\w+|[^\w\s]", t.lower()) for t in texts]
    if hasattr(tokenizer, "tokenize"):
        return [list(tokenizer.tokenize(t)) for t in texts]
    if callable(tokenizer):
        return [list(tokenizer(t)) for t in texts]
    raise TypeError(f"tokenizer: expected a Hugging Face tokenizer, a callable or None, got {type(tokenizer).__name__}")


def error_analysis(
    texts: Sequence[str],
    y_true: Any,
    y_pred: Any,
    tokenizer: Any = None,
    *,
    n_buckets: int = 4,
    top_tokens: int = 20,
    min_count: int = 2,
) -> ErrorAnalysis:
    """Group the errors of a text classifier by label pair, length and over-represented tokens.

    Parameters
    ----------
    texts : sequence of str, length n
    y_true, y_pred : array_like, shape (n,)
    tokenizer : Hugging Face tokenizer or callable, optional
        Splits texts into tokens (lengths are counted in these tokens); default: lower-cased
        words and punctuation.
    n_buckets : int
        Length buckets (quantiles of the token counts).
    top_tokens : int
        Number of over-represented tokens to list.
    min_count : int
        Tokens seen in fewer error examples than this are ignored.

    Returns
    -------
    ErrorAnalysis
    """
    import pandas as pd

    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError("texts: expected a sequence of strings")
    texts = [str(t) for t in texts]
    yt, yp = _labels_1d(y_true, "y_true"), _labels_1d(y_pred, "y_pred")
    if not len(texts) == yt.size == yp.size:
        raise ValueError(f"texts, y_true, y_pred: lengths differ ({len(texts)}, {yt.size}, {yp.size})")
    toks = _tokenize(texts, tokenizer)
    lengths = np.array([len(t) for t in toks])
    wrong = yt != yp
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, max(n_buckets, 1) + 1)))
    if edges.size < 2:
        edges = np.array([lengths.min(), lengths.max() + 1])
    bucket_idx = np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, edges.size - 2)
    names = [f"{math.ceil(edges[i])}-{int(edges[i + 1])}" for i in range(edges.size - 1)]
    df = pd.DataFrame(
        {"text": texts, "true": yt, "pred": yp, "length": lengths, "bucket": [names[i] for i in bucket_idx]}
    )
    errors = df[wrong]
    by_pair = (
        errors.groupby(["true", "pred"])
        .size()
        .rename("errors")
        .reset_index()
        .sort_values("errors", ascending=False, kind="stable")
        .reset_index(drop=True)
    )
    by_pair["share"] = by_pair["errors"] / max(int(wrong.sum()), 1)
    by_length = df.assign(error=wrong).groupby("bucket", sort=False).agg(n=("error", "size"), errors=("error", "sum"))
    by_length = by_length.reindex([n for n in names if n in by_length.index])
    by_length["error_rate"] = by_length["errors"] / by_length["n"]
    in_err = Counter(t for i in np.flatnonzero(wrong) for t in set(toks[i]))
    in_ok = Counter(t for i in np.flatnonzero(~wrong) for t in set(toks[i]))
    n_err, n_ok = int(wrong.sum()), int((~wrong).sum())
    rows = []
    for tok, c in in_err.items():
        if c < min_count:
            continue
        o = in_ok.get(tok, 0)
        lo = math.log((c + 0.5) / (n_err - c + 0.5)) - math.log((o + 0.5) / (n_ok - o + 0.5))
        rows.append({"token": tok, "in_errors": c, "in_correct": o, "log_odds": lo})
    tokens = pd.DataFrame(rows, columns=["token", "in_errors", "in_correct", "log_odds"])
    tokens = tokens[tokens["log_odds"] > 0].sort_values(["log_odds", "in_errors"], ascending=False, kind="stable")
    return ErrorAnalysis(errors, by_pair, by_length, tokens.head(top_tokens).reset_index(drop=True))
