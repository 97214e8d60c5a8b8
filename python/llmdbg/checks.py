"""Robustness and counterfactual-fairness checks: does the prediction survive harmless edits, and
does it move when only a protected term changes?

Both checks run the model on original and edited texts and compare *scores*:

- classifiers (outputs with ``logits`` of shape (B, C)): class probabilities; a prediction
  "changes" when the arg-max class changes; ``delta`` is the total-variation distance;
- causal LMs (``logits`` of shape (B, T, V)): the next-token distribution after the last real
  token; the same definitions;
- encoders without a head (``last_hidden_state``): the mean-pooled embedding; ``delta`` is
  1 − cosine similarity and ``changed`` is undefined (NaN).

Perturbations are implemented here without downloads or word lists and are deterministic for a
given ``seed`` (each variant is seeded from ``(seed, text index, perturbation, variant)``).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._internal.modes import device_of, eval_mode
from ._internal.pooling import last_real_index, mean_pool
from ._internal.progress import check_progress, progress_iter
from .adapters.layout import check_module

__all__ = ["PERTURBATIONS", "counterfactual_test", "perturb", "perturbation_test", "predict_scores"]

_WORD = re.compile(r"\S+")
_KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


def _neighbours(c: str) -> str:
    lower = c.lower()
    for r, row in enumerate(_KEYBOARD):
        i = row.find(lower)
        if i >= 0:
            near = row[max(i - 1, 0) : i] + row[i + 1 : i + 2]
            near += "".join(_KEYBOARD[r2][i] for r2 in (r - 1, r + 1) if 0 <= r2 < 3 and i < len(_KEYBOARD[r2]))
            return near.upper() if c.isupper() else near
    return ""


def _typo(text: str, rng: random.Random) -> str | None:
    words = [m for m in _WORD.finditer(text) if sum(ch.isalpha() for ch in m.group()) >= 3]
    if not words:
        return None
    m = rng.choice(words)
    w = m.group()
    letters = [i for i, ch in enumerate(w) if ch.isalpha()]
    kind = rng.choice(["swap", "delete", "repeat", "neighbour"])
    i = rng.choice(letters[:-1]) if kind == "swap" else rng.choice(letters)
    if kind == "swap" and w[i] != w[i + 1]:
        new = w[:i] + w[i + 1] + w[i] + w[i + 2 :]
    elif kind == "delete":
        new = w[:i] + w[i + 1 :]
    elif kind == "neighbour" and _neighbours(w[i]):
        new = w[:i] + rng.choice(_neighbours(w[i])) + w[i + 1 :]
    else:
        new = w[:i] + w[i] + w[i:]
    return text[: m.start()] + new + text[m.end() :]


def _drop_word(text: str, rng: random.Random) -> str | None:
    words = list(_WORD.finditer(text))
    if len(words) < 2:
        return None
    m = rng.choice(words)
    left, right = text[: m.start()].rstrip(), text[m.end() :].lstrip()
    return (left + " " + right).strip() if left and right else left + right


def _swap_case(text: str, rng: random.Random) -> str | None:
    words = [m for m in _WORD.finditer(text) if m.group().swapcase() != m.group()]
    if not words:
        return None
    m = rng.choice(words)
    return text[: m.start()] + m.group().swapcase() + text[m.end() :]


_CLAUSE = re.compile(r"\s*(?:[,;:]|\s(?:and|but|or|because|while|so)\s)\s*")


def _shuffle_clause(text: str, rng: random.Random) -> str | None:
    body = text.rstrip(".!? ")
    end = text[len(body) :]
    parts = [p for p in _CLAUSE.split(body) if p]
    seps = _CLAUSE.findall(body)
    if len(parts) < 2 or len(seps) != len(parts) - 1:
        return None
    order = list(range(len(parts)))
    while order == sorted(order):
        rng.shuffle(order)
    out = parts[order[0]]
    for sep, k in zip(seps, order[1:]):
        out += sep + parts[k]
    return out + end


#: Name -> function(text, rng) returning the perturbed text, or None when it does not apply.
PERTURBATIONS: dict[str, Callable[[str, random.Random], str | None]] = {
    "typo": _typo,
    "drop_word": _drop_word,
    "swap_case": _swap_case,
    "shuffle_clause": _shuffle_clause,
}


def perturb(text: str, perturbation: str, *, seed: int = 0, index: int = 0, variant: int = 0) -> str | None:
    """One deterministic perturbation of ``text`` (None when it does not apply, e.g. no clause
    boundary for ``"shuffle_clause"``)."""
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {perturbation!r}; choose from {', '.join(PERTURBATIONS)}")
    rng = random.Random(f"{seed}/{index}/{perturbation}/{variant}")
    return PERTURBATIONS[perturbation](text, rng)


def predict_scores(
    model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False
) -> tuple[np.ndarray, str]:
    """``(scores, kind)``: (N, C) class or next-token probabilities (``kind`` "classifier" or
    "lm"), or (N, D) mean-pooled embeddings (``kind`` "embedding"), float64."""
    check_module(model)
    dev = device_of(model)
    out, kind = [], None
    with eval_mode(model), torch.no_grad():
        for start in progress_iter(range(0, len(texts), batch_size), progress, "predicting", unit="batch"):
            enc = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True)
            enc = {k: v.to(dev) for k, v in enc.items()}
            res = model(**enc)
            mask = enc.get("attention_mask", torch.ones_like(enc["input_ids"]))
            logits = getattr(res, "logits", None)
            if logits is not None and logits.dim() == 2:
                kind, s = "classifier", torch.softmax(logits.double(), -1)
            elif logits is not None and logits.dim() == 3:
                last = last_real_index(mask)
                kind, s = "lm", torch.softmax(logits[torch.arange(len(last)), last].double(), -1)
            else:
                h = res.last_hidden_state if hasattr(res, "last_hidden_state") else res[0]
                kind, s = "embedding", mean_pool(h.double(), mask)
            out.append(s.cpu().numpy())
    return np.concatenate(out), kind or "embedding"


def _compare(a: np.ndarray, b: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(changed, delta) per row."""
    if kind == "embedding":
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return np.full(len(a), np.nan), 1.0 - cos
    return (a.argmax(1) != b.argmax(1)).astype(float), 0.5 * np.abs(a - b).sum(1)


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    return texts


class CheckReport:
    """Per-row table (``rows``) and per-group summary (``summary``) of a check, with a plot."""

    def __init__(self, rows, summary, kind: str, title: str):
        self.rows, self.summary, self.kind, self.title = rows, summary, kind, title

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.title}, kind={self.kind!r})\n{self.summary.to_string()}"

    def plot(self, **kwargs: Any):
        """Bar chart of the summary (see :func:`llmdbg.plot.check_summary`)."""
        from .plot.checks import check_summary

        return check_summary(self, **kwargs)


def perturbation_test(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    perturbations: Sequence[str] = ("typo", "drop_word", "swap_case", "shuffle_clause"),
    *,
    n: int = 3,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> CheckReport:
    """How often, and how much, do harmless edits change the prediction?

    Parameters
    ----------
    texts : sequence of str
    perturbations : names in :data:`PERTURBATIONS`
    n : int
        Variants per text and perturbation (duplicates of one variant are kept: each is a draw).
    seed : int
        Same seed, same variants.
    progress : bool
        Show a progress bar (off when output is not interactive).

    Returns
    -------
    CheckReport
        ``rows``: DataFrame with ``index``, ``perturbation``, ``variant``, ``original``,
        ``perturbed``, ``changed`` (1/0; NaN for embeddings), ``delta``.
        ``summary``: per perturbation ``n`` (variants that applied), ``change_rate``,
        ``mean_delta``, ``max_delta``.
    """
    import pandas as pd

    texts = _check_texts(texts)
    check_progress(progress)
    for p in perturbations:
        if p not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {p!r}; choose from {', '.join(PERTURBATIONS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    records = []
    for i, text in enumerate(texts):
        for p in perturbations:
            for v in range(n):
                new = perturb(text, p, seed=seed, index=i, variant=v)
                if new is not None and new != text:
                    records.append((i, p, v, text, new))
    base, kind = predict_scores(model, tokenizer, texts, batch_size=batch_size, progress=progress)
    cols = ["index", "perturbation", "variant", "original", "perturbed"]
    rows = pd.DataFrame(records, columns=cols)
    if records:
        scores, _ = predict_scores(
            model, tokenizer, rows["perturbed"].tolist(), batch_size=batch_size, progress=progress
        )
        changed, delta = _compare(base[rows["index"].to_numpy()], scores, kind)
    else:
        changed = delta = np.zeros(0)
    rows["changed"], rows["delta"] = changed, delta
    summary = (
        rows.groupby("perturbation", sort=False)
        .agg(
            n=("delta", "size"),
            change_rate=("changed", "mean"),
            mean_delta=("delta", "mean"),
            max_delta=("delta", "max"),
        )
        .reindex(list(perturbations))
    )
    summary["n"] = summary["n"].fillna(0).astype(int)
    return CheckReport(rows, summary, kind, "perturbation test")


def _swap_pattern(swaps: Mapping[str, str], bidirectional: bool) -> dict[str, str]:
    table = {}
    for a, b in swaps.items():
        if not isinstance(a, str) or not isinstance(b, str) or not a or not b:
            raise TypeError("swaps must map non-empty str to non-empty str")
        table[a.lower()] = b.lower()
        if bidirectional:
            table.setdefault(b.lower(), a.lower())
    return table


def _replace_match(rep: str, m: re.Match[str]) -> str:
    return _match_case(m.group(), rep)


def _match_case(word: str, new: str) -> str:
    if word.isupper() and len(word) > 1:
        return new.upper()
    if word[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


def counterfactual_test(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    swaps: Mapping[str, str],
    *,
    target: int | None = None,
    bidirectional: bool = True,
    batch_size: int = 32,
    progress: bool = True,
) -> CheckReport:
    """Swap one term at a time (e.g. ``{"he": "she"}``) and measure the score difference.

    For each text and each swap term it contains (whole words, case-insensitive, every
    occurrence replaced with the case kept), the counterfactual text is scored. The score is the
    probability of class ``target`` (default: the class predicted for the original text) for
    classifiers and LMs, or the cosine similarity to the original embedding for encoders.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier, a language model or an encoder.
    tokenizer : transformers tokenizer
    texts : sequence of str
    swaps : mapping of str to str
        Term -> replacement, e.g. ``{"he": "she"}``.
    target : int, optional
        Class or token id whose probability is compared (default: the original prediction).
    bidirectional : bool
        Also swap each replacement back to its term.
    batch_size : int
        Texts per forward.
    progress : bool
        Show a progress bar (off when output is not interactive).

    Returns
    -------
    CheckReport
        ``rows``: ``index``, ``term``, ``replacement``, ``original``, ``counterfactual``,
        ``score``, ``counterfactual_score``, ``diff`` (counterfactual − original), ``changed``.
        ``summary``: per term ``n``, ``mean_diff``, ``mean_abs_diff``, ``change_rate``.
    """
    import pandas as pd

    texts = _check_texts(texts)
    check_progress(progress)
    table = _swap_pattern(swaps, bidirectional)
    if not table:
        raise ValueError("swaps is empty")
    pattern = re.compile(
        r"\b(" + "|".join(map(re.escape, sorted(table, key=len, reverse=True))) + r")\b", re.IGNORECASE
    )
    records = []
    for i, text in enumerate(texts):
        for term in sorted({m.group().lower() for m in pattern.finditer(text)}):
            one = re.compile(r"\b" + re.escape(term) + r"\b", re.IGNORECASE)
            rep = table[term]
            new = one.sub(functools.partial(_replace_match, rep), text)
            records.append((i, term, table[term], text, new))
    base, kind = predict_scores(model, tokenizer, texts, batch_size=batch_size, progress=progress)
    rows = pd.DataFrame(records, columns=["index", "term", "replacement", "original", "counterfactual"])
    if records:
        cf, _ = predict_scores(
            model, tokenizer, rows["counterfactual"].tolist(), batch_size=batch_size, progress=progress
        )
        orig = base[rows["index"].to_numpy()]
        if kind == "embedding":
            score = np.ones(len(rows))
            cf_score = 1.0 - _compare(orig, cf, kind)[1]
            changed = np.full(len(rows), np.nan)
        else:
            cls = orig.argmax(1) if target is None else np.full(len(rows), target)
            if target is not None and not 0 <= target < orig.shape[1]:
                raise ValueError(f"target {target} is out of range for {orig.shape[1]} classes")
            score = orig[np.arange(len(rows)), cls]
            cf_score = cf[np.arange(len(rows)), cls]
            changed = (orig.argmax(1) != cf.argmax(1)).astype(float)
        rows["score"], rows["counterfactual_score"] = score, cf_score
        rows["diff"], rows["changed"] = cf_score - score, changed
    else:
        for c in ("score", "counterfactual_score", "diff", "changed"):
            rows[c] = np.zeros(0)
    summary = rows.groupby("term", sort=True).agg(
        n=("diff", "size"),
        mean_diff=("diff", "mean"),
        mean_abs_diff=("diff", lambda d: float(np.abs(d).mean())),
        change_rate=("changed", "mean"),
    )
    return CheckReport(rows, summary, kind, "counterfactual test")
