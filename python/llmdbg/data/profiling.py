"""``profile(texts, labels, tokenizer, max_length)``: one pass of counting over a text dataset.

Debugging a model often ends at its data: a label that is 95% of the set, texts cut off at
``max_length``, the same sentence twice with two labels, a tokenizer that maps a tenth of the
words to ``[UNK]``. :func:`profile` measures all of these at once. Tokenisation is the
tokenizer's own fast batch call (or, without a tokenizer, ``str.split()`` done in C++); hashing
and counting of tokens, ids and texts run in the C++ core (``cpp/core/data``) without the GIL.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _core
from .._internal.threads import renamed_num_threads, resolve_n_jobs

__all__ = ["DataProfile", "profile"]

_CHUNK = 20_000  # texts per tokenizer call (a progress step)
_MAX_ID = 2**32  # count_ids keeps an int64 count per id up to the largest one


@dataclasses.dataclass
class DataProfile:
    """What :func:`profile` found. Arrays are numpy; tables are pandas DataFrames.

    Attributes
    ----------
    n_texts : int
    tokenizer : str
        ``"whitespace"`` (``str.split()``) or the tokenizer's class name.
    tokens : numpy.ndarray of str, shape (V,)
        Distinct tokens, most frequent first (ties: first occurrence first).
    token_counts : numpy.ndarray of int64, shape (V,)
        Occurrences of ``tokens``.
    lengths : numpy.ndarray of int64, shape (n_texts,)
        Tokens per text; with a tokenizer this includes the special tokens it adds
        (what truncation at ``max_length`` counts).
    max_length : int or None
    truncated_share : float or None
        Share of texts longer than ``max_length`` (None without ``max_length``).
    labels : numpy.ndarray, shape (K,) or None
        Distinct labels, sorted.
    label_counts : numpy.ndarray of int64, shape (K,) or None
    label_entropy : float or None
        Entropy of the label distribution divided by log K: 1 is perfectly balanced, 0 a single
        label (0 also when K = 1).
    groups : numpy.ndarray of int64, shape (n_texts,)
        For each text the index of the first identical text (itself when it is the first).
    duplicates : pandas.DataFrame
        One row per text occurring more than once: ``first`` (index), ``count``, ``text``,
        ``n_labels`` (distinct labels in the group; 0 without labels), most frequent first.
    n_duplicates : int
        Texts that repeat an earlier text (``count - 1`` summed over groups).
    n_conflicting : int
        Duplicate groups whose texts carry more than one label.
    unk_rate : float or None
        Share of tokens equal to the tokenizer's ``unk_token_id`` (None without one).
    """

    n_texts: int
    tokenizer: str
    tokens: np.ndarray
    token_counts: np.ndarray
    lengths: np.ndarray
    max_length: int | None
    truncated_share: float | None
    labels: np.ndarray | None
    label_counts: np.ndarray | None
    label_entropy: float | None
    groups: np.ndarray
    duplicates: Any
    n_duplicates: int
    n_conflicting: int
    unk_rate: float | None

    @property
    def n_tokens(self) -> int:
        """Total number of tokens (special tokens excluded)."""
        return int(self.token_counts.sum())

    @property
    def token_frequency(self):
        """pandas DataFrame: ``token``, ``count``, ``rank`` (1 = most frequent), ``share``."""
        import pandas as pd

        total = max(self.n_tokens, 1)
        return pd.DataFrame(
            {
                "token": self.tokens,
                "count": self.token_counts,
                "rank": np.arange(1, len(self.tokens) + 1),
                "share": self.token_counts / total,
            }
        )

    @property
    def conflicting(self):
        """The rows of :attr:`duplicates` whose texts carry more than one label."""
        return self.duplicates[self.duplicates["n_labels"] > 1]

    def summary(self) -> dict[str, Any]:
        """Headline numbers as a flat dict (for logs and reports)."""
        q = np.percentile(self.lengths, [50, 95]) if self.n_texts else [math.nan, math.nan]
        return {
            "n_texts": self.n_texts,
            "n_tokens": self.n_tokens,
            "distinct_tokens": len(self.tokens),
            "length_mean": float(self.lengths.mean()) if self.n_texts else math.nan,
            "length_median": float(q[0]),
            "length_p95": float(q[1]),
            "length_max": int(self.lengths.max()) if self.n_texts else 0,
            "truncated_share": self.truncated_share,
            "n_labels": None if self.labels is None else len(self.labels),
            "label_entropy": self.label_entropy,
            "n_duplicates": self.n_duplicates,
            "n_conflicting": self.n_conflicting,
            "unk_rate": self.unk_rate,
        }

    def plot(self, **kwargs):
        """Rank-frequency (log-log), length histogram and label counts; see :func:`llmdbg.plot.data_profile`."""
        from ..plot.data import data_profile

        return data_profile(self, **kwargs)


@renamed_num_threads
def profile(
    texts: Sequence[str],
    labels: Sequence[Any] | None = None,
    tokenizer: Any = None,
    max_length: int | None = None,
    *,
    n_jobs: int | None = None,
    progress: bool = True,
) -> DataProfile:
    """Profile a text dataset: token frequency, lengths, truncation, labels, duplicates, unknowns.

    Parameters
    ----------
    texts : sequence of str, length N
        The dataset; must not be empty.
    labels : sequence, length N, optional
        One hashable label per text (class ids, strings, ...).
    tokenizer : transformers tokenizer, optional
        Counted with its fast batch call (``add_special_tokens=False``); lengths add
        ``num_special_tokens_to_add()``. Without one, texts are split with ``str.split()``
        semantics in C++ and the unknown-token rate is None.
    max_length : int, optional
        Report the share of texts longer than this many tokens (what truncation would cut).
    n_jobs : int, optional
        Threads for the C++ kernel: None uses ``torch.get_num_threads()``, -1 all cores.
        depend on it.
    progress : bool
        tqdm bar over tokenizer batches (auto-disabled when not interactive).

    Returns
    -------
    DataProfile

    Raises
    ------
    TypeError
        ``texts`` is a single str or holds non-str items; ``tokenizer`` is not a tokenizer.
    ValueError
        ``texts`` is empty, ``labels`` has a different length, ``max_length`` is not a positive int.

    Examples
    --------
    >>> p = llmdbg.data.profile(["a b", "a b", "c"], labels=[0, 1, 0])
    >>> p.n_duplicates, p.n_conflicting
    (1, 1)
    """

    texts = _check_texts(texts)
    n = len(texts)
    if labels is not None:
        labels = list(labels) if not isinstance(labels, np.ndarray) else labels
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} entries but texts has {n}; give one label per text")
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1
    ):
        raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
    threads = resolve_n_jobs(n_jobs)

    unk_rate = None
    if tokenizer is None:  # one C++ pass: split, count, hash texts, group duplicates
        tokens_list, counts, lengths, groups = _core.profile_whitespace(texts, threads)
        tokens = np.array(tokens_list, dtype=object)
        name = "whitespace"
    else:
        tokens, counts, lengths, unk_rate = _count_with_tokenizer(tokenizer, texts, threads, progress)
        groups = _core.duplicate_groups(texts, threads)
        name = type(tokenizer).__name__
    order = np.argsort(-counts, kind="stable")  # ties keep first-occurrence (or id) order
    tokens, counts = tokens[order], counts[order]

    codes, uniq, label_counts, entropy = _labels(labels)
    duplicates, n_duplicates, n_conflicting = _duplicates(texts, groups, codes)
    truncated = None if max_length is None else float(np.mean(lengths > max_length))
    return DataProfile(
        n_texts=n,
        tokenizer=name,
        tokens=tokens,
        token_counts=counts,
        lengths=lengths,
        max_length=None if max_length is None else int(max_length),
        truncated_share=truncated,
        labels=uniq,
        label_counts=label_counts,
        label_entropy=entropy,
        groups=groups,
        duplicates=duplicates,
        n_duplicates=n_duplicates,
        n_conflicting=n_conflicting,
        unk_rate=unk_rate,
    )


def _check_texts(texts: Any) -> list[str] | tuple[str, ...]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of str, got a single string; wrap it in a list")
    if not isinstance(texts, (list, tuple)):
        try:
            texts = list(texts)
        except TypeError:
            raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}") from None
    if len(texts) == 0:
        raise ValueError("texts is empty; profile needs at least one text")
    return texts  # item types are checked by the C++ binding (TypeError naming texts[i])


def _count_with_tokenizer(tokenizer: Any, texts, threads: int, progress: bool):
    if not callable(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
        raise TypeError(f"tokenizer must be a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    from tqdm.auto import tqdm

    ids: list[list[int]] = []
    with tqdm(total=len(texts), desc="tokenizing", unit="text", disable=None if progress else True, leave=False) as bar:
        for start in range(0, len(texts), _CHUNK):
            chunk = list(texts[start : start + _CHUNK])
            ids.extend(
                tokenizer(chunk, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)[
                    "input_ids"
                ]
            )
            bar.update(len(chunk))
    per = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(per, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(offsets[-1]))
    if flat.size and (flat.min() < 0 or flat.max() >= _MAX_ID):
        bad = int(flat.min()) if flat.min() < 0 else int(flat.max())
        raise ValueError(
            f"tokenizer returned the token id {bad}; ids must lie in [0, 2**32) "
            f"(one count per id is kept), so this is not a token id of {type(tokenizer).__name__}"
        )
    vocab = max(len(tokenizer), int(flat.max()) + 1 if flat.size else 1)
    counts, lengths = _core.count_ids(flat, offsets, vocab, threads)
    seen = np.flatnonzero(counts)
    tokens = np.array(tokenizer.convert_ids_to_tokens(seen.tolist()), dtype=object)
    try:
        extra = int(tokenizer.num_special_tokens_to_add(pair=False))
    except (AttributeError, TypeError, NotImplementedError):
        extra = 0
    unk = getattr(tokenizer, "unk_token_id", None)
    total = int(counts.sum())
    unk_rate = None if unk is None else (float(counts[unk]) / total if total else 0.0)
    return tokens, counts[seen], lengths + extra, unk_rate


def _labels(labels):
    """(codes (N,) int64, distinct labels (K,), counts (K,), normalised entropy) or Nones.

    Distinct labels are sorted (``np.unique``); integer labels over a small range are counted
    with ``np.bincount`` instead of sorting, with the same result.
    """
    if labels is None:
        return None, None, None, None
    arr = labels if isinstance(labels, np.ndarray) else _core.int64_array(labels)
    if arr is None or arr.dtype.kind not in "iu" or arr.ndim != 1 or (arr.dtype.kind == "u" and arr.itemsize == 8):
        uniq, codes, counts = _unique(labels)
    else:
        uniq, codes, counts = _unique_small_ints(arr)
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    k = len(uniq)
    p = counts / counts.sum()
    entropy = 0.0 if k < 2 else float(-(p * np.log(p)).sum() / math.log(k))
    return codes, np.asarray(uniq), counts.astype(np.int64), entropy


def _unique(labels):
    try:
        return np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    except TypeError:  # unorderable mix: order by first occurrence instead
        import pandas as pd

        codes, uniq = pd.factorize(pd.Series(list(labels), dtype=object))
        return uniq, codes, np.bincount(codes, minlength=len(uniq))


def _unique_small_ints(arr: np.ndarray):
    """``np.unique(arr, return_inverse=True, return_counts=True)`` for 1-D integer arrays, by
    counting when the values span a small range (falls back to ``np.unique`` otherwise)."""
    lo, hi = int(arr.min()), int(arr.max())
    if hi - lo > 4 * len(arr) + 1024:
        return np.unique(arr, return_inverse=True, return_counts=True)
    shifted = arr.astype(np.int64, copy=False) - lo
    all_counts = np.bincount(shifted, minlength=hi - lo + 1)
    present = np.flatnonzero(all_counts)
    code_of = np.cumsum(all_counts > 0) - 1
    return (present + lo).astype(arr.dtype), code_of[shifted], all_counts[present]


def _duplicates(texts, groups: np.ndarray, codes: np.ndarray | None):
    """(table, n_duplicates, n_conflicting): groups of identical texts counted in C++."""
    import pandas as pd

    first, count, n_labels = _core.duplicate_summary(groups, codes)
    table = pd.DataFrame(
        {"first": first, "count": count, "text": [texts[i] for i in first.tolist()], "n_labels": n_labels}
    )
    return table, int((count - 1).sum()), int(np.count_nonzero(n_labels > 1))
