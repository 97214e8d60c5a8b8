"""Compare two traces of the same model: what changed, module by module.

Two captures of one architecture (two checkpoints on the same batch, a batch and a perturbed batch
of the same length, a model before and after a fix) hold the same store keys. :func:`compare`
lines them up and gives one row per captured tensor: how far apart the two tensors are (relative
L2 distance, cosine similarity, largest absolute difference), how their one-pass statistics moved
(``*_delta`` = b − a), and for attention maps how far each query's distribution drifted
(Jensen–Shannon divergence, :func:`llmdbg.attention_drift`). :func:`compare_heads` gives that
drift per head. Either trace may be a path written by ``trace.save``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..attention import SINK_FAMILIES, attention_drift
from ..tracing.stats import ActivationStats
from ..tracing.trace import ATTN_GRAD_SUFFIX, ATTN_SUFFIX, GRAD_SUFFIX, INPUT_SUFFIX, Trace

__all__ = ["COLUMNS", "HEAD_COLUMNS", "STAT_DELTAS", "compare", "compare_heads"]

#: Store-key suffix -> the ``kind`` column (longest suffix first: ":attn_grad" ends like ":grad").
_KINDS = (
    (ATTN_GRAD_SUFFIX, "attention_grad"),
    (ATTN_SUFFIX, "attention"),
    (GRAD_SUFFIX, "grad"),
    (INPUT_SUFFIX, "input"),
)

#: The :class:`~llmdbg.ActivationStats` fields whose change ``b - a`` is a ``<field>_delta`` column.
STAT_DELTAS = ("mean", "std", "absmax", "zero_fraction", "nan_count", "inf_count")

#: Columns of :func:`compare`, in order.
COLUMNS = ("module", "kind", "shape", "rel_l2", "cosine", "max_abs_diff", "js", *(f"{s}_delta" for s in STAT_DELTAS))

#: Columns of :func:`compare_heads`, in order.
HEAD_COLUMNS = ("layer", "module", "head", "js")

# Elements per float64 block: bounds the temporary copies (8 MiB each) whatever the tensor's size.
_CHUNK = 1 << 20


# -- inputs ------------------------------------------------------------------------------------


def _as_trace(x: Any, name: str) -> Trace:
    if isinstance(x, Trace):
        return x
    if isinstance(x, (str, os.PathLike)):
        from .load import load

        loaded = load(x)
        if not isinstance(loaded, Trace):
            raise TypeError(f"{name}: {os.fspath(x)!r} holds a saved {type(loaded).__name__}, not a Trace")
        return loaded
    raise TypeError(f"{name} must be a llmdbg.Trace or the path of a saved trace, got {type(x).__name__}")


def _split(key: str) -> tuple[str, str]:
    """(module, kind) of a store key."""
    for suffix, kind in _KINDS:
        if key.endswith(suffix):
            return key[: -len(suffix)], kind
    return key, "output"


def _mask(trace: Trace) -> np.ndarray | None:
    try:
        mask = trace.attention_mask
    except ValueError:  # forwards of different lengths: no one (B, T) mask
        return None
    return None if mask is None else np.asarray(mask).astype(bool)


def _common_mask(ta: Trace, tb: Trace) -> np.ndarray | None:
    """Positions real in both traces, ``(B, T)`` bool; one trace's mask when only it has one;
    None when neither has one or they differ in shape (then the tensors' shapes differ too, and
    are refused where it matters)."""
    ma, mb = _mask(ta), _mask(tb)
    if ma is None or mb is None:
        return ma if mb is None else mb
    return ma & mb if ma.shape == mb.shape else None


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _decoder_scope(trace: Trace) -> str | None:
    """The module holding an encoder–decoder's decoder (``"decoder"``, ``"model.decoder"``):
    its tensors run on the decoder's tokens, which the recorded (encoder) mask does not describe.
    None for single-stack models."""
    stacks = getattr(trace.layout, "stacks", None) or {}
    encoder, decoder = stacks.get("encoder"), stacks.get("decoder")
    if not encoder or not decoder:
        return None
    parts = [b.split(".") for b in decoder]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    # Widen while the scope still excludes every encoder block ("model.decoder.layers" -> "model.decoder").
    while len(common) > 1 and not any(_within(e, ".".join(common[:-1])) for e in encoder):
        common.pop()
    scope = ".".join(common)
    return scope if scope and not any(_within(e, scope) for e in encoder) else None


def _call_masks(calls: list[np.ndarray], mask: np.ndarray | None) -> list[np.ndarray | None]:
    """The rows of ``mask`` that belong to each call, when the calls' batches add up to the
    mask's (one call per forward); otherwise no mask (a module run several times per forward)."""
    sizes = [c.shape[0] if c.ndim else 0 for c in calls]
    if mask is None or sum(sizes) != mask.shape[0]:
        return [None] * len(calls)
    ends = np.cumsum(sizes)
    return [mask[end - size : end] for size, end in zip(sizes, ends)]


def _aligned(x: np.ndarray, mask: np.ndarray, attention: bool) -> bool:
    """Whether ``mask`` (B, T) lines up with the batch and token axes of ``x``: ``(B, T, ...)``
    for activations, ``(B, [H,] T, T)`` for attention maps."""
    b, t = mask.shape
    if attention:
        return x.ndim in (3, 4) and x.shape[0] == b and x.shape[-2:] == (t, t)
    return x.ndim >= 3 and x.shape[:2] == (b, t)


def _shape(calls: list[np.ndarray]) -> tuple[Any, ...] | None:
    """What ``trace.activations[...]`` would show: calls concatenated along the batch, or the
    tuple of per-call shapes when they differ; None for statistics only."""
    if not calls:
        return None
    if len(calls) == 1:
        return tuple(calls[0].shape)
    if len({c.shape[1:] for c in calls}) == 1 and calls[0].ndim:
        return (sum(c.shape[0] for c in calls), *calls[0].shape[1:])
    return tuple(tuple(c.shape) for c in calls)


# -- distances ---------------------------------------------------------------------------------


@dataclass
class _Sums:
    """Running float64 sums over the compared values of one pair of tensors."""

    aa: float = 0.0
    bb: float = 0.0
    ab: float = 0.0
    dd: float = 0.0
    max_abs: float = 0.0
    finite: bool = True

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        if not self.finite or x.size == 0:
            return
        x = x.astype(np.float64)
        y = y.astype(np.float64)
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            self.finite = False
            return
        d = x - y  # summed directly: aa + bb - 2ab would cancel for close tensors
        self.aa += float(x @ x)
        self.bb += float(y @ y)
        self.ab += float(x @ y)
        self.dd += float(d @ d)
        self.max_abs = max(self.max_abs, float(np.abs(d).max()))

    def result(self) -> tuple[float, float, float]:
        """(rel_l2, cosine, max_abs_diff); see :func:`compare` for the edge cases."""
        if not self.finite:
            return math.nan, math.nan, math.nan
        if self.aa == 0.0:
            rel = 0.0 if self.dd == 0.0 else math.inf
        else:
            rel = math.sqrt(self.dd / self.aa)
        if self.aa == 0.0 or self.bb == 0.0:
            cos = math.nan
        else:
            norms = math.sqrt(self.aa * self.bb)
            if not 0.0 < norms < math.inf:  # the product under- or overflowed
                norms = math.sqrt(self.aa) * math.sqrt(self.bb)
            cos = min(1.0, max(-1.0, self.ab / norms))
        return rel, cos, self.max_abs


def _pairs(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None, attention: bool) -> Iterator[tuple[Any, Any]]:
    """Flat float blocks of the compared values: every element, or, when ``mask`` lines up, the
    real tokens of each sequence (real queries and real keys of an attention map)."""
    if mask is None or not _aligned(x, mask, attention):
        pieces: Iterator[tuple[np.ndarray, np.ndarray]] = iter([(x, y)])
    elif attention:
        pieces = ((x[i][..., r, :][..., r], y[i][..., r, :][..., r]) for i, r in enumerate(mask))
    else:
        pieces = ((x[i][r], y[i][r]) for i, r in enumerate(mask))
    for px, py in pieces:
        fx, fy = px.reshape(-1), py.reshape(-1)
        for start in range(0, fx.size, _CHUNK):
            yield fx[start : start + _CHUNK], fy[start : start + _CHUNK]


def _distances(
    calls_a: list[np.ndarray], calls_b: list[np.ndarray], masks: list[np.ndarray | None], attention: bool
) -> _Sums:
    sums = _Sums()
    for x, y, m in zip(calls_a, calls_b, masks):
        for bx, by in _pairs(x, y, m, attention):
            sums.add(bx, by)
    return sums


def _stat_deltas(sa: ActivationStats | None, sb: ActivationStats | None) -> dict[str, Any]:
    if sa is None or sb is None:
        return {f"{s}_delta": None for s in STAT_DELTAS}
    return {f"{s}_delta": getattr(sb, s) - getattr(sa, s) for s in STAT_DELTAS}


@dataclass
class _Pair:
    """One store key present in both traces, with what each captured under it."""

    key: str
    module: str
    kind: str
    calls_a: list[np.ndarray]
    calls_b: list[np.ndarray]
    masks: list[np.ndarray | None]

    @property
    def has_arrays(self) -> bool:
        return bool(self.calls_a) and bool(self.calls_b)


# -- attention ---------------------------------------------------------------------------------


def _has_sinks(*traces: Trace) -> bool:
    return any(getattr(t.layout, "family", None) in SINK_FAMILIES for t in traces)


def _head_js(pair: _Pair, finite: bool, sinks: bool, n_jobs: int | None) -> np.ndarray | None:
    """``(H,)`` Jensen–Shannon divergence (bits) per head, pooled over the real queries of every
    call; NaN when the compared maps are not ``finite``; None for maps that are not square
    self-attention (cross-attention, chosen query rows)."""
    calls = pair.calls_a
    if any(x.ndim not in (3, 4) or x.shape[-1] != x.shape[-2] for x in calls):
        return None
    if not finite:  # the kernels refuse NaN and infinity; the count deltas show them
        return np.full(calls[0].shape[1] if calls[0].ndim == 4 else 1, np.nan)
    total, queries = None, 0
    for x, y, m in zip(calls, pair.calls_b, pair.masks):
        if x.ndim == 3:  # reduce="head_mean": one head
            x, y = x[:, None], y[:, None]
        if x.dtype == np.float16:  # the attention kernels read float32 and float64
            x, y = x.astype(np.float32), y.astype(np.float32)
        mask = m if m is not None and _aligned(x, m, True) else None
        n = int(mask.sum()) if mask is not None else x.shape[0] * x.shape[2]
        js = attention_drift([x], [y], attention_mask=mask, sinks=sinks, n_jobs=n_jobs)[0] * n
        total, queries = (js if total is None else total + js), queries + n
    return None if total is None else total / queries


# -- the comparison ----------------------------------------------------------------------------


def _pairs_of(ta: Trace, tb: Trace) -> tuple[list[_Pair], list[str], list[str]]:
    keys_a, keys_b = ta.keys(), tb.keys()
    in_b = set(keys_b)
    mask = _common_mask(ta, tb)
    decoder = _decoder_scope(ta) or _decoder_scope(tb)
    pairs = []
    for key in (k for k in keys_a if k in in_b):
        module, kind = _split(key)
        calls_a, calls_b = ta.calls(key), tb.calls(key)
        if calls_a and calls_b:
            shape_a, shape_b = _shape(calls_a), _shape(calls_b)
            if [c.shape for c in calls_a] != [c.shape for c in calls_b]:
                raise ValueError(
                    f"compare: {module!r} ({kind}) has shape {shape_a} in a but {shape_b} in b; compare traces of "
                    "inputs of the same shape (pad both batches to the same length)"
                )
        own = None if decoder is not None and _within(module, decoder) else mask
        pairs.append(_Pair(key, module, kind, calls_a, calls_b, _call_masks(calls_a, own)))
    only_a = [k for k in keys_a if k not in in_b]
    only_b = [k for k in keys_b if k not in set(keys_a)]
    return pairs, only_a, only_b


def compare(a: Any, b: Any, *, n_jobs: int | None = None) -> Any:
    """What changed between two traces of the same model, one row per captured tensor.

    Every store key captured in both traces gives a row, in the order of ``a``'s hooks: module
    outputs (``kind="output"``), inputs (``"input"``), gradients (``"grad"``), attention maps
    (``"attention"``) and their gradients (``"attention_grad"``). Draw it with
    :func:`llmdbg.plot_comparison`; per-head attention drift is :func:`compare_heads`.

    Distances are computed in float64 over the compared values ``x`` (from ``a``) and ``y``
    (from ``b``), flattened:

    - ``rel_l2 = ‖x − y‖₂ / ‖x‖₂``: 0 when both are zero, ``inf`` when only ``x`` is;
    - ``cosine = x·y / (‖x‖₂ ‖y‖₂)``, in [−1, 1]: NaN when either norm is 0;
    - ``max_abs_diff = max |x − y|``.

    All three are NaN when a NaN or an infinity is among the compared values (the
    ``nan_count_delta`` and ``inf_count_delta`` columns say on which side).

    **Padding.** When the traces carry attention masks, only positions real in both are compared
    (one trace's mask when only it has one): the real tokens of each sequence for ``(B, T, ...)``
    tensors, real queries and real keys for ``(B, H, T, T)`` maps. Tensors whose leading axes are
    not the mask's ``(B, T)`` (pooled outputs, a token selection made by ``reduce``, a module run
    several times per forward) are compared over all their elements, and so are the tensors of an
    encoder–decoder's decoder (the recorded mask is the encoder's). The statistic deltas describe
    the whole tensors as captured, padding included.

    Parameters
    ----------
    a, b : Trace, str or PathLike
        Two captures (or directories written by ``trace.save``) of the same model on inputs of
        the same shape. ``a`` is the reference: distances are relative to it and deltas are
        ``b − a``.
    n_jobs : int, optional
        Threads for the attention divergence (None: ``torch.get_num_threads()``, -1: all cores).

    Returns
    -------
    pandas.DataFrame
        One row per key in both traces, columns :data:`COLUMNS`:

        - ``module`` (str), ``kind`` (str), ``shape`` (tuple as ``trace.activations`` shows it;
          the tuple of per-call shapes when calls differ; None when only statistics were kept);
        - ``rel_l2``, ``cosine``, ``max_abs_diff`` (float64; NaN when either trace kept only
          statistics, ``reduce="stats"``);
        - ``js`` (float64): for attention maps, the Jensen–Shannon divergence in bits (in [0, 1])
          between each real query's rows, averaged over real queries, then over heads: the mean
          over heads of :func:`llmdbg.attention_drift`. NaN for other kinds, for maps that are not
          square (cross-attention, chosen query rows) and for maps holding NaN or infinity;
        - ``mean_delta``, ``std_delta``, ``absmax_delta``, ``zero_fraction_delta`` (float64) and
          ``nan_count_delta``, ``inf_count_delta`` (nullable ``Int64``): ``b − a`` of the
          :class:`~llmdbg.ActivationStats` of the key, also for statistics-only captures; missing
          when a trace was captured with ``stats=False``.

        ``df.attrs["only_in_a"]`` and ``df.attrs["only_in_b"]`` list the store keys captured in
        one trace only (they have no row).

    Raises
    ------
    TypeError
        ``a`` or ``b`` is neither a Trace nor a path, or the path holds another saved object.
    ValueError
        A key holds arrays of different shapes in the two traces (the message names the module
        and both shapes: compare inputs of the same length), or the masks share no real token in
        some sequence.

    Examples
    --------
    >>> with llmdbg.capture(model, "blocks", attentions=True) as before:  # doctest: +SKIP
    ...     model(**batch)
    >>> # ... fine-tune, or patch a weight, then capture again as `after`
    >>> df = llmdbg.compare(before, after)  # doctest: +SKIP
    >>> df.sort_values("rel_l2", ascending=False).head()  # doctest: +SKIP
    """
    import pandas as pd

    ta, tb = _as_trace(a, "a"), _as_trace(b, "b")
    pairs, only_a, only_b = _pairs_of(ta, tb)
    stats_a, stats_b = set(ta.stats), set(tb.stats)
    sinks = _has_sinks(ta, tb)
    rows = []
    for p in pairs:
        rel = cos = diff = js = math.nan
        attention = p.kind in ("attention", "attention_grad")
        if p.has_arrays:
            sums = _distances(p.calls_a, p.calls_b, p.masks, attention)
            rel, cos, diff = sums.result()
            if p.kind == "attention":
                heads = _head_js(p, sums.finite, sinks, n_jobs)
                js = math.nan if heads is None else float(heads.mean())
        sa = ta.stats[p.key] if p.key in stats_a else None
        sb = tb.stats[p.key] if p.key in stats_b else None
        shape = _shape(p.calls_a) or _shape(p.calls_b)
        rows.append(
            {
                "module": p.module,
                "kind": p.kind,
                "shape": shape,
                "rel_l2": rel,
                "cosine": cos,
                "max_abs_diff": diff,
                "js": js,
                **_stat_deltas(sa, sb),
            }
        )
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in COLUMNS[3:]:
        counts = column in ("nan_count_delta", "inf_count_delta")
        df[column] = df[column].astype("Int64" if counts else "float64")
    df.attrs["only_in_a"] = only_a
    df.attrs["only_in_b"] = only_b
    return df


def compare_heads(a: Any, b: Any, *, n_jobs: int | None = None) -> Any:
    """Attention drift per head between two traces: one row per attention layer and head.

    The per-head numbers behind :func:`compare`'s ``js`` column (which is their mean over heads):
    the Jensen–Shannon divergence in bits between the attention rows of each real query (real in
    both traces' masks), averaged over real queries (:func:`llmdbg.attention_drift`).

    Parameters
    ----------
    a, b : Trace, str or PathLike
        As for :func:`compare`, captured with ``attentions=True``.
    n_jobs : int, optional
        Threads (None: ``torch.get_num_threads()``, -1: all cores).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`HEAD_COLUMNS`: ``layer`` (int, the module's index in
        ``a.attention_modules``, as in ``trace.attention_stats``), ``module`` (str), ``head``
        (int; 0 for ``reduce="head_mean"`` maps), ``js`` (float64, in [0, 1]; NaN for maps
        holding NaN or infinity). Attention modules whose maps are in one trace only, or are not
        square self-attention, have no rows. Pivot it for a heatmap:
        ``df.pivot(index="layer", columns="head", values="js")``.

    Raises
    ------
    TypeError, ValueError
        As for :func:`compare`.
    """
    import pandas as pd

    ta, tb = _as_trace(a, "a"), _as_trace(b, "b")
    pairs, _, _ = _pairs_of(ta, tb)
    order = {m: i for i, m in enumerate(dict.fromkeys(ta.attention_modules))}
    sinks = _has_sinks(ta, tb)
    rows: list[dict[str, Any]] = []
    for p in (p for p in pairs if p.kind == "attention" and p.has_arrays):
        finite = _distances(p.calls_a, p.calls_b, p.masks, True).finite
        heads = _head_js(p, finite, sinks, n_jobs)
        if heads is None:
            continue
        layer = order.get(p.module, -1)
        rows.extend({"layer": layer, "module": p.module, "head": h, "js": float(v)} for h, v in enumerate(heads))
    df = pd.DataFrame(rows, columns=list(HEAD_COLUMNS))
    return df.astype({"layer": "int64", "head": "int64", "js": "float64"})
