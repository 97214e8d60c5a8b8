"""Maps of what a model represents: its token embeddings and pooled hidden states, in 2-D.

A map is a t-SNE of vectors the model already holds: rows of the input-embedding matrix
(:func:`embed_tokens`) or one pooled hidden state per sequence from a capture
(:func:`embed_hidden_states`). Both return an :class:`EmbeddingMap` holding the 2-D coordinates,
the labels and the vectors that were embedded, ready for :func:`llmdbg.plot.embedding`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._internal.pooling import last_real_index, mean_pool
from .._internal.progress import check_progress

__all__ = ["EmbeddingMap", "embed_hidden_states", "embed_tokens", "pool_hidden_states"]

POOLINGS = ("mean", "cls", "last")


@dataclass
class EmbeddingMap:
    """2-D coordinates of embedded points with their labels.

    Attributes
    ----------
    coords : numpy.ndarray of shape (N, 2), float32
        The map (t-SNE coordinates, or PCA with ``projection="pca"``).
    labels : list of str
        One label per point: the token string, or the sequence's label.
    ids : numpy.ndarray of shape (N,), int64
        Token ids (:func:`embed_tokens`) or sequence indices (:func:`embed_hidden_states`).
    vectors : numpy.ndarray of shape (N, D), float32
        What was embedded: embedding-matrix rows or pooled hidden states.
    info : dict
        How the map was made (projection, perplexity, KL divergence, layer, pooling ...).
    """

    coords: np.ndarray
    labels: list[str]
    ids: np.ndarray
    vectors: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.coords)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.coords if dtype is None else self.coords.astype(dtype)

    def plot(self, labels: Sequence[Any] | None = None, texts: Sequence[Any] | None = None, **kwargs: Any):
        """:func:`llmdbg.plot.embedding` of this map; texts default to the point labels."""
        from ..plot.embedding_map import embedding

        if texts is None:
            texts = self.labels
        return embedding(self.coords, labels=labels, texts=texts, **kwargs)


def _project(
    X: np.ndarray, projection: str, tsne: Any, random_state: int | None, progress: bool = True
) -> tuple[np.ndarray, dict]:
    """(N, D) -> (N, 2) float32 by t-SNE (default perplexity min(30, (N - 1) / 3)) or PCA."""
    n = len(X)
    if projection == "pca":
        if n < 2:
            raise ValueError(f"need at least 2 points for a PCA map, got {n}")
        Xc = X.astype(np.float64) - X.mean(axis=0, dtype=np.float64)
        _, s, vt = np.linalg.svd(Xc, full_matrices=False)
        Y = Xc @ vt[:2].T
        if Y.shape[1] < 2:
            Y = np.pad(Y, ((0, 0), (0, 2 - Y.shape[1])))
        if np.abs(Y).max(initial=0.0) > np.finfo(np.float32).max:
            raise ValueError("vectors: PCA coordinates exceed the float32 range of the map; rescale the vectors")
        ratio = (s[:2] ** 2 / max(float((s**2).sum()), 1e-300)).tolist()
        return Y.astype(np.float32), {"projection": "pca", "explained_variance_ratio": ratio}
    if projection != "tsne":
        raise ValueError(f"projection: expected 'tsne' or 'pca', got {projection!r}")
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}; use projection='pca'")
    if tsne is None or isinstance(tsne, dict):
        from .tsne import TSNE

        params: dict[str, Any] = {
            # below N / 3 (no clamp warning), and at least 1 (4 points allow exactly 1)
            "perplexity": max(1.0, min(30.0, math.floor((n - 1) / 3 * 100) / 100 - 0.01)),
            "random_state": random_state,
            "progress": progress,
        }
        params.update(tsne or {})
        est = TSNE(**params)
    elif hasattr(tsne, "fit_transform"):
        est = tsne
    else:
        raise TypeError(
            f"tsne: expected None, a dict of TSNE parameters or an estimator with "
            f"fit_transform, got {type(tsne).__name__}"
        )
    Y = np.asarray(est.fit_transform(X), dtype=np.float32)
    info = {
        "projection": "tsne",
        "perplexity": getattr(est, "perplexity_", getattr(est, "perplexity", None)),
        "kl_divergence": getattr(est, "kl_divergence_", None),
    }
    return Y, info


def _as_numpy(w: Any) -> np.ndarray:
    if hasattr(w, "detach"):
        w = w.detach().to("cpu")
        if str(w.dtype) in ("torch.bfloat16", "torch.float16"):
            w = w.float()
        w = w.numpy()
    return np.asarray(w)


def _token_ids(tokenizer: Any, tokens: Sequence[Any], vocab_size: int) -> np.ndarray:
    """Ids of token strings (vocabulary entries, or words that tokenise to one piece) or ints."""
    ids = []
    unk = getattr(tokenizer, "unk_token", None)
    for t in tokens:
        if isinstance(t, (bool, np.bool_)):
            raise TypeError(f"tokens: expected token strings or integer ids, got {t!r}")
        if isinstance(t, (int, np.integer)):
            if not 0 <= int(t) < vocab_size:
                raise ValueError(f"tokens: id {int(t)} is outside the vocabulary [0, {vocab_size})")
            ids.append(int(t))
            continue
        if not isinstance(t, str):
            raise TypeError(f"tokens: expected token strings or integer ids, got {type(t).__name__}")
        if tokenizer is None:
            raise ValueError("tokens: token strings need a tokenizer")
        i = tokenizer.convert_tokens_to_ids(t)
        if i is None or (unk is not None and i == tokenizer.convert_tokens_to_ids(unk) and t != unk):
            pieces = tokenizer(t, add_special_tokens=False)["input_ids"]
            if len(pieces) != 1:
                raise ValueError(
                    f"tokens: {t!r} is not one token of the vocabulary (it splits into "
                    f"{tokenizer.convert_ids_to_tokens(pieces)}); pass vocabulary "
                    f"entries or ids"
                )
            i = pieces[0]
        if not 0 <= int(i) < vocab_size:
            raise ValueError(f"tokens: {t!r} maps to id {i}, outside the embedding matrix [0, {vocab_size})")
        ids.append(int(i))
    return np.asarray(ids, dtype=np.int64)


def embed_tokens(
    model: Any,
    tokenizer: Any = None,
    tokens: Sequence[str | int] | None = None,
    *,
    max_tokens: int | None = 5000,
    tsne: Any = None,
    projection: str = "tsne",
    random_state: int | None = 0,
    progress: bool = True,
) -> EmbeddingMap:
    """t-SNE map of a model's input-embedding matrix (the vocabulary), or of some of its rows.

    Parameters
    ----------
    model : torch.nn.Module
        A model with ``get_input_embeddings()`` (every Hugging Face model) or an embedding
        module / (V, D) array-like of weights.
    tokenizer : transformers tokenizer, optional
        Turns ids into labels and token strings into ids. Without it, labels are the ids.
    tokens : sequence of str or int, optional
        Which rows: vocabulary entries (``"##ing"``, ``"Ġthe"``), words that tokenise to a
        single piece, or ids. Default: every row, or ``max_tokens`` of them drawn at random
        (seeded by ``random_state``) when the vocabulary is larger.
    max_tokens : int or None
        Cap on the number of rows when ``tokens`` is None (default 5000; None: all of them,
        ~30k rows for BERT-sized vocabularies, about a minute of t-SNE on 2 cores).
    tsne : None, dict or estimator
        t-SNE settings: None for :class:`llmdbg.TSNE` with ``perplexity=min(30, (N-1)/3)``,
        a dict of :class:`llmdbg.TSNE` parameters, or any object with ``fit_transform``.
    projection : {"tsne", "pca"}
        ``"pca"`` gives the first two principal components instead (instant, linear).
    random_state : int or None
        Seeds the token sample and the t-SNE.
    progress : bool
        Show the t-SNE progress bar (off when output is not interactive).

    Returns
    -------
    EmbeddingMap
        ``coords`` (N, 2) float32, ``labels`` the token strings, ``ids`` the token ids and
        ``vectors`` the (N, D) embedding rows (float32 copies of the weights).

    Examples
    --------
    >>> from llmdbg.demo import load_minilm
    >>> model, tok = load_minilm()
    >>> m = llmdbg.embed_tokens(model, tok, max_tokens=2000)
    >>> m.plot(title="MiniLM vocabulary")
    """
    if hasattr(model, "get_input_embeddings"):
        emb = model.get_input_embeddings()
        if emb is None or not hasattr(emb, "weight"):
            raise ValueError("model: get_input_embeddings() returned no embedding with weights")
        weights = emb.weight
    elif hasattr(model, "weight"):
        weights = model.weight
    else:
        weights = model
    W = _as_numpy(weights)
    if W.ndim != 2 or not np.issubdtype(W.dtype, np.floating):
        raise TypeError(
            f"model: expected a model with input embeddings or a (V, D) float matrix, "
            f"got {type(model).__name__} with shape {getattr(W, 'shape', None)}"
        )
    V = W.shape[0]
    if W.shape[1] == 0:
        raise ValueError(f"model: the embedding matrix {W.shape} has no columns")
    if tokens is None:
        if max_tokens is not None and (not isinstance(max_tokens, (int, np.integer)) or max_tokens < 4):
            raise ValueError(f"max_tokens: expected an int >= 4 or None, got {max_tokens!r}")
        if max_tokens is None or V <= max_tokens:
            ids = np.arange(V, dtype=np.int64)
        else:
            rng = np.random.default_rng(random_state)
            ids = np.sort(rng.choice(V, int(max_tokens), replace=False)).astype(np.int64)
    else:
        if isinstance(tokens, str):
            raise TypeError("tokens: expected a sequence of tokens, got a single string")
        ids = _token_ids(tokenizer, list(tokens), V)
        if len(ids) == 0:
            raise ValueError("tokens: empty")
    rows = W[ids]
    if not np.isfinite(rows).all():
        raise ValueError("model: the selected embedding rows contain NaN or infinite values")
    if np.abs(rows).max(initial=0.0) > np.finfo(np.float32).max:
        raise ValueError("model: the selected embedding rows exceed the float32 range (|w| > 3.4e38)")
    X = np.ascontiguousarray(rows, dtype=np.float32)
    if tokenizer is not None:
        labels = [str(t) for t in tokenizer.convert_ids_to_tokens(ids.tolist())]
    else:
        labels = [str(i) for i in ids.tolist()]
    coords, info = _project(X, projection, tsne, random_state, check_progress(progress))
    info.update(source="input embeddings", vocab_size=V)
    return EmbeddingMap(coords=coords, labels=labels, ids=ids, vectors=X, info=info)


def _hidden(trace: Any, layer: int | str) -> np.ndarray:
    if isinstance(layer, str):
        if layer not in trace.activations:
            raise KeyError(f"layer: no activations captured for {layer!r}; captured: {list(trace.activations)[:8]}")
        return np.asarray(trace.activations[layer])
    if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)):
        raise TypeError(
            f"layer: expected an int (index into trace.hidden_states) or a module name, got {type(layer).__name__}"
        )
    states = trace.hidden_states
    if not states:
        raise ValueError(
            "trace has no hidden states: capture with llmdbg.capture(model, "
            "hidden_states=True), or pass a captured module name as layer"
        )
    if not -len(states) <= layer < len(states):
        raise IndexError(
            f"layer: {layer} out of range for {len(states)} hidden states "
            f"(0 = embeddings, {len(states) - 1} = last block)"
        )
    return np.asarray(states[layer])


def pool_hidden_states(
    hidden: np.ndarray, attention_mask: np.ndarray | None = None, pooling: str = "mean"
) -> np.ndarray:
    """One vector per sequence from (B, T, D) hidden states.

    ``"mean"``: average over the real tokens (``attention_mask`` nonzero; all tokens without a
    mask), accumulated in float64; ``"cls"``: the first position; ``"last"``: the last real
    token (right or left padding both handled through the mask). Returns (B, D) float32;
    NaN/Inf pass through (embedding functions refuse them); finite values beyond the float32
    range in the pooled positions raise ValueError. ``hidden`` may be a numpy array or a CPU torch tensor of any real
    dtype (bfloat16 included); others raise TypeError.
    """
    h = _as_numpy(hidden)
    if h.dtype.kind not in "fiu":
        raise TypeError(f"hidden states: expected real numbers, got dtype {h.dtype}")
    if h.ndim != 3:
        raise ValueError(f"hidden states: expected (B, T, D), got shape {h.shape}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
    B, T, _ = h.shape
    if T == 0:
        raise ValueError(f"hidden states: no positions to pool, shape {h.shape}")
    if attention_mask is None:
        mask = np.ones((B, T), dtype=bool)
    else:
        mask = np.asarray(attention_mask) != 0
        if mask.shape != (B, T):
            raise ValueError(f"attention_mask: shape {mask.shape} does not match hidden states {h.shape[:2]}")
    if not mask.any(axis=1).all():
        raise ValueError("attention_mask: some sequences have no real token")
    if pooling == "cls":
        used = h[:, 0]
    elif pooling == "last":
        used = h[np.arange(B), last_real_index(mask)]
    else:
        used = h[mask]  # the mean of these is within their range
    # Finite values the float32 result cannot hold (NaN/Inf pass through as they are).
    with np.errstate(invalid="ignore"):
        if (np.abs(used[np.isfinite(used)]) > np.finfo(np.float32).max).any():
            raise ValueError("hidden states: values beyond the float32 range (|h| > 3.4e38) in the pooled positions")
    if pooling == "mean" and not np.isfinite(h[~mask]).all():
        h = np.where(mask[..., None], h, 0)  # padding's NaN/Inf would poison the sums (0 * inf)
    out = mean_pool(h, mask) if pooling == "mean" else used
    return np.ascontiguousarray(out, dtype=np.float32)


def embed_hidden_states(
    trace: Any,
    layer: int | str = -1,
    pooling: str = "mean",
    *,
    labels: Sequence[Any] | None = None,
    tsne: Any = None,
    projection: str = "tsne",
    random_state: int | None = 0,
    progress: bool = True,
) -> EmbeddingMap:
    """Map of sequences by their pooled hidden state at one layer of a capture.

    Parameters
    ----------
    trace : llmdbg.Trace
        From ``with llmdbg.capture(model, hidden_states=True) as trace: model(**batch)``
        (one or several forward calls of equal sequence length).
    layer : int or str
        Index into ``trace.hidden_states`` (0 = embedding output, -1 = last block, the
        default) or the name of a captured module whose output is (B, T, D).
    pooling : {"mean", "cls", "last"}
        Mean over the real tokens (the trace's attention mask is honoured, so padding never
        counts), the first token, or the last real token. See :func:`pool_hidden_states`.
    labels : sequence of length B, optional
        One label per sequence (default: the sequence's tokens joined, when the capture had a
        tokenizer, else its index).
    tsne : None, dict or estimator
        As in :func:`embed_tokens`; the default perplexity is min(30, (B-1)/3), so small batches
        work (t-SNE needs B >= 4; use ``projection="pca"`` below that).
    projection : {"tsne", "pca"}
    random_state : int or None
    progress : bool
        Show the t-SNE progress bar (off when output is not interactive).

    Returns
    -------
    EmbeddingMap
        ``coords`` (B, 2) float32, ``labels``, ``ids`` = sequence indices and ``vectors`` the
        (B, D) pooled states (float32, mean accumulated in float64).
    """
    h = _hidden(trace, layer)
    mask = trace.attention_mask
    if mask is not None and mask.shape != h.shape[:2]:
        warnings.warn(
            f"the trace's attention mask {mask.shape} does not match the hidden states "
            f"{h.shape[:2]}; pooling over every position",
            RuntimeWarning,
            stacklevel=2,
        )
        mask = None
    X = pool_hidden_states(h, mask, pooling)
    B = len(X)
    if labels is None:
        toks = trace.tokens
        if toks is not None and len(toks) == B:
            keep = [np.asarray(m) != 0 for m in mask] if mask is not None else [None] * B
            labels = [" ".join(t for j, t in enumerate(seq) if k is None or k[j]) for seq, k in zip(toks, keep)]
        else:
            labels = [str(i) for i in range(B)]
    else:
        if isinstance(labels, str) or len(labels) != B:
            raise ValueError(
                f"labels: expected {B} labels (one per sequence), got {1 if isinstance(labels, str) else len(labels)}"
            )
        labels = [str(v) for v in labels]
    if not np.isfinite(X).all():
        raise ValueError("the pooled hidden states contain NaN or infinite values")
    coords, info = _project(X, projection, tsne, random_state, check_progress(progress))
    info.update(source="hidden states", layer=layer, pooling=pooling)
    return EmbeddingMap(coords=coords, labels=labels, ids=np.arange(B, dtype=np.int64), vectors=X, info=info)
