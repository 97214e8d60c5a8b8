"""Per layer x head attention diagnostics: entropy, attention sinks, mass on special tokens and
drift between two runs.

These answer "what is each head doing?" at a glance. A head whose rows have near-zero entropy
attends to one token (collapsed); near-maximal entropy means it spreads evenly (uniform); a head
whose attention piles onto one early token regardless of the query is an attention sink
(Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks"). All statistics
come from one fused pass of the C++ core over each (layer, batch, head) map, accumulated in
float64, parallel over maps and bitwise identical for every thread count. This module only
assembles the results.

Conventions shared by every function here:

* Input: whatever :func:`~llmdbg.attention.attention_stack` accepts (a :class:`~llmdbg.Trace`
  captured with ``attentions=True``, a list of per-layer ``(B, H, T, T)`` arrays or tensors, or
  one ``(L, B, H, T, T)`` array), with ``attention_mask`` (``(B, T)``, 1 for real tokens;
  taken from the Trace when not given), ``stack`` (encoder/decoder of an encoder-decoder Trace)
  and ``renormalize`` passed through to it, and ``sinks`` (maps of a model with learned
  attention sinks, e.g. gpt-oss: real rows may sum to less than 1; None detects it from a
  Trace's model family). float32 and float64 maps are read in place.
* Sink maps are read as they are: statistics run over the real keys (the sink, a virtual key
  outside the sequence, is not one of them), as :func:`llmdbg.streaming_rollout` reports them.
* Padding queries are ignored; padding keys are read (a masked model gives them weight 0).
* Averages over queries are pooled over all real queries of all sequences (not a mean of
  per-sequence means).
* ``n_jobs`` defaults to ``torch.get_num_threads()``; -1 means all cores.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .._internal.threads import renamed_num_threads, resolve_n_jobs
from ..tracing.trace import Trace
from ._inputs import AttentionStack, attention_stack
from .summary import AttentionSummary
from .summary_stats import summary_from_stats

__all__ = ["DEFAULT_SPECIAL_TOKENS", "attention_drift", "attention_summary", "head_entropy", "sink_scores"]

#: Token strings treated as special when a Trace knows its tokens but no tokenizer is given.
DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = ("[CLS]", "[SEP]", "<s>", "</s>", "<|endoftext|>", "<pad>")


# -- helpers ---------------------------------------------------------------------------------


def _same_dtype(layers: list[np.ndarray]) -> list[np.ndarray]:
    """The kernels take one dtype per call: widen a float32/float64 mix to float64."""
    if len({a.dtype for a in layers}) == 1:
        return layers
    return [np.ascontiguousarray(a, dtype=np.float64) for a in layers]


def _u8(mask: np.ndarray | None) -> np.ndarray | None:
    return None if mask is None else np.ascontiguousarray(mask, dtype=np.uint8)


def _run(st: AttentionStack, special: np.ndarray | None, n_jobs: int | None) -> dict[str, np.ndarray]:
    from .. import _core

    threads = resolve_n_jobs(n_jobs)
    return _core.attention_head_stats(_same_dtype(st.layers), _u8(st.mask), _u8(special), threads)


def _check_causal(causal: Any) -> None:
    if causal is not None and not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be True, False or None (detect), got {causal!r}")


def _resolve_causal(causal: bool | None, stats: dict[str, np.ndarray]) -> bool:
    """The given flag, or detected: no real query gives a later real key any weight."""
    if causal is None:
        upper = stats["upper_max"]
        return bool((upper[np.isfinite(upper)] == 0).all())
    return bool(causal)


def _check_threshold(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def _stack(
    a: Any, mask: Any, stack: str | None, renorm: bool, sinks: bool | None, name: str = "attentions"
) -> AttentionStack:
    # Negative weights are refused here, in the words rollout and flow use (the kernels check too).
    return attention_stack(a, attention_mask=mask, stack=stack, renormalize=renorm, name=name, sinks=sinks)


# -- public functions ------------------------------------------------------------------------


@renamed_num_threads
def head_entropy(
    attentions: Any,
    *,
    normalize: bool = False,
    causal: bool | None = None,
    attention_mask: Any = None,
    stack: str | None = None,
    renormalize: bool = False,
    sinks: bool | None = None,
    n_jobs: int | None = None,
) -> np.ndarray:
    """Mean attention entropy of every head: how spread out each query's attention is.

    For query ``i`` the row entropy is ``H_i = -sum_j A[i, j] log A[i, j]`` (natural log,
    ``0 log 0 = 0``, summed over all keys); the result is its mean over the real (non-padding)
    queries of all sequences, as in Hugging Face's bertology example (Michel et al. 2019).
    ``0`` means every query attends to a single key.

    With ``normalize=True`` each row is divided by ``log n_i``, the entropy of the uniform
    distribution over the ``n_i`` keys query ``i`` can attend to: the real keys of its sequence,
    and for causal maps only the real keys ``j <= i``. The result lies in ``[0, 1]`` (1 =
    uniform) for well-formed maps. A query with ``n_i = 1`` (the first real query of a causal
    map, or a sequence with one real token) has no meaningful normalised entropy: it is left out
    of that average (its value would be 0/0). A head with no such query gives NaN.

    Parameters
    ----------
    attentions : Trace, sequence of array_like, or array_like
        ``(B, H, T, T)`` maps per layer, or one ``(L, B, H, T, T)`` array; see
        :func:`~llmdbg.attention.attention_stack`.
    normalize : bool, default False
        Divide each row's entropy by ``log n_i`` as described above.
    causal : bool or None, default None
        How ``n_i`` is counted when normalising. None detects it: the maps are causal when every
        weight a real query gives a later real key is exactly 0 (true of every causal eager
        attention; a map with ``T = 1`` or one-hot on earlier keys also counts as causal).
        Sliding-window attention is treated as causal (``n_i`` counts all earlier keys).
    attention_mask : array_like, optional
        ``(B, T)``, 1 for real tokens. Defaults to the Trace's mask; None means all real.
    stack : {"encoder", "decoder"}, optional
        Which stack of an encoder-decoder Trace.
    renormalize : bool, default False
        Divide rows that do not sum to 1 by their sums instead of raising.
    sinks : bool, optional
        Maps of a model with learned attention sinks (see the module notes); None detects it.
    n_jobs : int, optional
        Threads for the C++ kernel: None uses ``torch.get_num_threads()``, -1 all cores.

    Returns
    -------
    numpy.ndarray
        ``(L, H)`` float64 (accumulated in float64), in nats unless normalised. Layers with fewer
        heads than the largest are padded with NaN.

    Raises
    ------
    ValueError
        For anything :func:`~llmdbg.attention.attention_stack` rejects, and for negative weights.

    Examples
    --------
    >>> A = np.full((1, 1, 1, 4, 4), 0.25)            # one uniform head
    >>> head_entropy(A, normalize=True)
    array([[1.]])
    """
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    _check_causal(causal)
    st = _stack(attentions, attention_mask, stack, renormalize, sinks)
    stats = _run(st, None, n_jobs)
    if not normalize:
        return stats["entropy"]
    is_causal = _resolve_causal(causal, stats)
    return stats["entropy_norm_causal" if is_causal else "entropy_norm_bidirectional"]


@renamed_num_threads
def sink_scores(
    attentions: Any,
    *,
    causal: bool | None = None,
    attention_mask: Any = None,
    stack: str | None = None,
    renormalize: bool = False,
    sinks: bool | None = None,
    n_jobs: int | None = None,
) -> np.ndarray:
    """Attention-sink score of every key position, per layer, sequence and head.

    The sink score of key ``k`` is the mean attention it receives from the queries that can
    attend to it. For causal maps this is StreamingLLM's ``alpha(k) = sum_{i >= k} A[i, k] /
    (T - k)`` (Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks";
    reference: sail-sg/Attention-Sink ``eval_sink_open_source.py``, which it equals). For
    bidirectional maps every query can attend to ``k``, so the mean runs over all real queries:
    restricting it to ``i >= k`` there would average late keys over a handful of queries
    (``alpha(T - 1)`` would be the last query's self-attention) and flag almost every head. With
    padding, sums and counts run over real queries only. A head *sinks* on ``k`` when the score
    exceeds 0.3, the reference's threshold.

    Parameters
    ----------
    causal : bool, optional
        Which definition to use; detected from the maps by default (see :func:`head_entropy`).
    attentions, attention_mask, stack, renormalize, sinks, n_jobs
        As in :func:`head_entropy`.

    Returns
    -------
    numpy.ndarray
        ``(L, B, H, T)`` float64 (accumulated in float64), in ``[0, 1]``; NaN at padding keys
        and for heads a layer does not have.

    Examples
    --------
    >>> A = np.zeros((1, 1, 1, 3, 3)); A[..., 0] = 1.0   # every query attends to token 0
    >>> sink_scores(A)[0, 0, 0]
    array([1., 0., 0.])
    """
    _check_causal(causal)
    st = _stack(attentions, attention_mask, stack, renormalize, sinks)
    stats = _run(st, None, n_jobs)
    return stats["sink" if _resolve_causal(causal, stats) else "sink_all"]


def _sink_max(alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """max_k and argmax_k (first on ties) of (L, B, H, T) scores, ignoring NaN (padding)."""
    filled = np.where(np.isnan(alpha), -np.inf, alpha)
    arg = filled.argmax(-1)
    best = np.take_along_axis(filled, arg[..., None], -1)[..., 0]
    missing = ~np.isfinite(best)  # heads a layer does not have
    return np.where(missing, np.nan, best), np.where(missing, -1, arg)


def _tokens_for(attentions: Any, st: AttentionStack, stack: str | None, tokenizer: Any) -> list[list[str]] | None:
    """Token strings per sequence: the Trace's, or its input_ids through the tokenizer."""
    from ..tracing.trace import Trace

    _, b, t = st.shape
    tokens = st.tokens
    if tokens is None and tokenizer is not None and isinstance(attentions, Trace) and stack != "decoder":
        try:
            ids = attentions.input_ids
        except ValueError:  # calls with different lengths
            ids = None
        if ids is not None and ids.shape == (b, t):
            tokens = [list(tokenizer.convert_ids_to_tokens(row)) for row in ids.tolist()]
    if tokens is None or len(tokens) != b or any(len(row) != t for row in tokens):
        return None
    return [list(row) for row in tokens]


def _special_mask(
    special_tokens: Any, tokens: list[list[str]] | None, tokenizer: Any, shape: tuple[int, int]
) -> tuple[np.ndarray | None, str | None]:
    if special_tokens is not None:
        from ._inputs import _to_numpy

        mask = _to_numpy(special_tokens, "special_tokens")
        if mask.shape != shape:
            raise ValueError(f"special_tokens has shape {mask.shape}; expected (B, T) = {shape}")
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise ValueError("special_tokens must be a bool mask (or 0/1), True for special tokens")
        return mask.astype(bool), "special_tokens"
    if tokens is None:
        return None, None
    if tokenizer is not None:
        if not hasattr(tokenizer, "all_special_tokens"):
            raise TypeError("tokenizer must be a Hugging Face tokenizer (with all_special_tokens)")
        names, source = set(tokenizer.all_special_tokens), "tokenizer"
    else:
        names, source = set(DEFAULT_SPECIAL_TOKENS), "default"
    return np.array([[tok in names for tok in row] for row in tokens], dtype=bool), source


@renamed_num_threads
def attention_summary(
    attentions: Any,
    *,
    special_tokens: Any = None,
    tokenizer: Any = None,
    causal: bool | None = None,
    collapse_threshold: float = 0.1,
    uniform_threshold: float = 0.9,
    sink_threshold: float = 0.3,
    attention_mask: Any = None,
    stack: str | None = None,
    renormalize: bool = False,
    sinks: bool | None = None,
    n_jobs: int | None = None,
) -> AttentionSummary:
    """One row per (layer, head) describing what the head does, with flags for the usual
    pathologies: collapsed heads, uniform heads and attention sinks.

    Everything comes from one fused pass of the C++ core over the maps (float64 accumulation).

    Parameters
    ----------
    attentions : Trace, sequence of array_like, or array_like
        As in :func:`head_entropy`, or a Trace captured with ``attentions="stats"`` (no maps:
        the summary then comes from the per-query statistics, with the sink score taken at the
        first real token, causality from the modules' ``is_causal`` and special tokens as the
        capture flagged them).
    special_tokens : array_like, optional
        ``(B, T)`` bool mask, True at special tokens; overrides token-derived ones.
    tokenizer : transformers tokenizer, optional
        Gives ``all_special_tokens`` (and decodes a Trace's input_ids when it has no tokens).
    causal : bool or None, default None
        As in :func:`head_entropy`; None detects it. The value used is in
        ``summary.attrs["causal"]``.
    collapse_threshold, uniform_threshold, sink_threshold : float
        Flag thresholds in ``[0, 1]``; ``collapse_threshold < uniform_threshold``.
    attention_mask, stack, renormalize, sinks, n_jobs
        As in :func:`head_entropy`.

    Returns
    -------
    AttentionSummary
        A :class:`pandas.DataFrame` (with a compact layer × head grid as its notebook display),
        one row per (layer, head) that exists, with ``attrs``: ``causal`` (bool),
        ``special_tokens`` (where they came from: ``"special_tokens"``, ``"tokenizer"``,
        ``"default"`` or None) and ``thresholds``. Columns:

        layer, head : int
            Layer index (in ``attentions`` order) and head index.
        entropy : float
            Mean row entropy in nats over real queries (see :func:`head_entropy`).
        entropy_norm : float
            Mean row entropy divided by ``log`` of the number of attendable keys, in ``[0, 1]``
            (causal or not per ``causal``; the first query of a causal map is left out).
        max_weight : float
            Mean over real queries of ``max_j A[i, j]``: 1 for one-hot rows, ``1/T`` for uniform.
        sink_score : float
            ``max_k`` of :func:`sink_scores` per sequence (causal or bidirectional definition,
            as detected), averaged over the batch.
        sink_token : int
            The position ``k`` that maximises ``alpha(k)``: the most frequent per-sequence argmax
            over the batch (the smallest position on ties; the first on ties within a sequence).
        sink_token_str : str or None
            The token at ``sink_token`` (from the first sequence whose argmax it is) when tokens are
            known, else None.
        special_mass : float
            Mean over real queries of the total weight on special tokens; NaN when special tokens are
            unknown. Special tokens are, in order of precedence: the ``special_tokens`` mask; else,
            when the tokens are known (a Trace captured with a tokenizer, or a Trace's input_ids
            decoded with ``tokenizer``), those in ``tokenizer.all_special_tokens``, or without a
            tokenizer those in :data:`DEFAULT_SPECIAL_TOKENS` (``[CLS]``, ``[SEP]``, ``<s>``,
            ``</s>``, ``<|endoftext|>``, ``<pad>``); else unknown.
        collapsed : bool
            ``entropy_norm < collapse_threshold``: the head attends to (nearly) one key.
        uniform : bool
            ``entropy_norm > uniform_threshold``: the head spreads (nearly) evenly.
        sink : bool
            ``sink_score > sink_threshold`` (0.3 in Xiao et al. 2023).

    Raises
    ------
    ValueError
        Bad thresholds, ``special_tokens`` of the wrong shape, or anything
        :func:`~llmdbg.attention.attention_stack` rejects.
    """

    _check_causal(causal)
    collapse = _check_threshold("collapse_threshold", collapse_threshold)
    uniform = _check_threshold("uniform_threshold", uniform_threshold)
    sink_t = _check_threshold("sink_threshold", sink_threshold)
    if collapse >= uniform:
        raise ValueError(f"collapse_threshold ({collapse}) must be below uniform_threshold ({uniform})")

    if isinstance(attentions, Trace) and attentions.attention_stats and not attentions.attentions:
        return summary_from_stats(
            attentions, tokenizer=tokenizer, collapse=collapse, uniform=uniform, sink_threshold=sink_t
        )
    st = _stack(attentions, attention_mask, stack, renormalize, sinks)
    _, b, t = st.shape
    tokens = _tokens_for(attentions, st, stack, tokenizer)
    special, source = _special_mask(special_tokens, tokens, tokenizer, (b, t))
    stats = _run(st, special, n_jobs)
    is_causal = _resolve_causal(causal, stats)
    norm = stats["entropy_norm_causal" if is_causal else "entropy_norm_bidirectional"]
    sink_max, sink_arg = _sink_max(stats["sink" if is_causal else "sink_all"])  # (L, B, H)

    rows = []
    for layer, maps in enumerate(st.layers):
        for head in range(maps.shape[1]):
            args = sink_arg[layer, :, head]
            positions, counts = np.unique(args, return_counts=True)
            pos = int(positions[np.argmax(counts)])
            token = None
            if tokens is not None:
                first = int(np.flatnonzero(args == pos)[0])
                token = tokens[first][pos]
            e_norm = float(norm[layer, head])
            score = float(sink_max[layer, :, head].mean())
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "entropy": float(stats["entropy"][layer, head]),
                    "entropy_norm": e_norm,
                    "max_weight": float(stats["max_weight"][layer, head]),
                    "sink_score": score,
                    "sink_token": pos,
                    "sink_token_str": token,
                    "special_mass": float(stats["special_mass"][layer, head]),
                    "collapsed": bool(e_norm < collapse),
                    "uniform": bool(e_norm > uniform),
                    "sink": bool(score > sink_t),
                }
            )
    table = AttentionSummary(rows)
    table.attrs["causal"] = is_causal
    table.attrs["special_tokens"] = source
    table.attrs["thresholds"] = {"collapse": collapse, "uniform": uniform, "sink": sink_t}
    return table


def _describe(st: AttentionStack) -> str:
    shapes = [a.shape for a in st.layers]
    if len(set(shapes)) == 1:
        return str((len(shapes), *shapes[0]))
    return str(shapes)


@renamed_num_threads
def attention_drift(
    a: Any,
    b: Any,
    *,
    attention_mask: Any = None,
    base: float = 2,
    stack: str | None = None,
    renormalize: bool = False,
    sinks: bool | None = None,
    n_jobs: int | None = None,
) -> np.ndarray:
    """How much each head's attention changed between two runs: the Jensen-Shannon divergence
    between corresponding rows, averaged over real queries.

    ``JS(p, q) = (KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2`` (Lin 1991), for every
    query row ``p`` of ``a`` and the same row ``q`` of ``b``. Symmetric, finite even when one row
    puts zero weight where the other does not, and in base 2 it lies in ``[0, 1]``: 0 for
    identical rows, 1 for rows with disjoint support. Use it to compare two checkpoints on the
    same input, or an input and a perturbed input of the same length. (scipy's
    ``jensenshannon`` returns the distance, the square root of this divergence.)

    Parameters
    ----------
    a, b : Trace, sequence of array_like, or array_like
        Two runs with the same shapes (L layers of ``(B, H, T, T)``).
    attention_mask : array_like, optional
        ``(B, T)``, applied to both. Without it, a query counts when it is real in both runs'
        masks (those of the Traces).
    base : float, default 2
        Logarithm base: 2 gives bits in ``[0, 1]``, ``math.e`` gives nats in ``[0, log 2]``.
    stack, renormalize, sinks, n_jobs
        As in :func:`head_entropy` (``stack`` applies to both).

    Returns
    -------
    numpy.ndarray
        ``(L, H)`` float64 (accumulated in float64); NaN for heads a layer does not have.

    Raises
    ------
    ValueError
        When the shapes differ (naming both), for a bad ``base``, or for anything
        :func:`~llmdbg.attention.attention_stack` rejects.
    """
    from .. import _core

    if (
        isinstance(base, bool)
        or not isinstance(base, numbers.Real)
        or not (base > 0 and base != 1)
        or not math.isfinite(base)
    ):
        raise ValueError(f"base must be a positive number other than 1, got {base!r}")
    sa = _stack(a, attention_mask, stack, renormalize, sinks, name="a")
    sb = _stack(b, attention_mask, stack, renormalize, sinks, name="b")
    if [x.shape for x in sa.layers] != [x.shape for x in sb.layers]:
        raise ValueError(
            f"attention_drift needs two runs with the same shapes: a has shape "
            f"{_describe(sa)} but b has shape {_describe(sb)}"
        )
    masks = [m for m in (sa.mask, sb.mask) if m is not None]
    mask = None
    if masks:
        mask = np.logical_and.reduce(masks)
        if not mask.any(axis=1).all():
            raise ValueError("the attention masks of a and b share no real token in some sequence")
    layers_a, layers_b = sa.layers, sb.layers
    if len({x.dtype for x in (*layers_a, *layers_b)}) > 1:
        layers_a = [np.ascontiguousarray(x, dtype=np.float64) for x in layers_a]
        layers_b = [np.ascontiguousarray(x, dtype=np.float64) for x in layers_b]
    nats = _core.attention_js_divergence(layers_a, layers_b, _u8(mask), resolve_n_jobs(n_jobs))
    return nats / math.log(base)
