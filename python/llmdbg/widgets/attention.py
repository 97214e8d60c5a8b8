"""The attention view: a layer × head grid coloured by entropy or sink score; click a head to
open its map, hover a token to see where it looks (its row) and who looks at it (its column);
switch to rollout or flow.

Data comes from a :class:`~llmdbg.Trace` captured with ``attentions=True`` (maps), one captured
with ``attentions="stats"`` (the long-context path: per-query entropy, max weight and sink mass
instead of maps; the panel then plots those along the sequence) or an
:class:`~llmdbg.AttentionSummary` (per-head figures only). The view draws; the numbers come from
:func:`llmdbg.attention_summary`, :func:`llmdbg.attention_rollout` and :func:`llmdbg.attention_flow`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._base import View
from ._payload import check_size, encode_array, encoded_size, quantize_rows

PRECISIONS = ("auto", "float32", "float16", "uint8")
# Maps travel as float32 up to this many raw bytes, float16 up to the next, uint8 with a scale
# per row beyond (a 4,096 x 4,096 head: 16 MiB as uint8, 32 as float16, 64 as float32).
_FLOAT32_UP_TO = 4 * 2**20
_FLOAT16_UP_TO = 16 * 2**20
# Rollout is cheap up to this length (one T x T product per layer); flow only when asked.
_AUTO_ROLLOUT_MAX_T = 1024


def _select(values: Any, n: int, name: str) -> list[int]:
    if values is None:
        return list(range(n))
    if isinstance(values, (int, np.integer)):
        values = [values]
    out = []
    for v in values:
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise TypeError(f"{name} must be integers, got {v!r}")
        if not -n <= int(v) < n:
            raise ValueError(f"{name} must be in [-{n}, {n}), got {v}")
        out.append(int(v) % n)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} holds a repeated index: {list(values)}")
    return out


def _precision(raw_bytes: int, precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "float32" if raw_bytes <= _FLOAT32_UP_TO else "float16" if raw_bytes <= _FLOAT16_UP_TO else "uint8"


def _encode_map(a: np.ndarray, precision: str) -> dict[str, Any]:
    return quantize_rows(np.clip(a, 0, None)) if precision == "uint8" else encode_array(a, precision)


def _tokens(trace: Any, batch: int, t: int, tokens: Sequence[str] | None) -> list[str]:
    if tokens is not None:
        out = [str(x) for x in tokens]
        if len(out) != t:
            raise ValueError(f"tokens must hold one string per position ({t}), got {len(out)}")
        return out
    if trace is not None and trace.tokens is not None and len(trace.tokens) > batch:
        return [str(x) for x in trace.tokens[batch]][:t]
    ids = trace.input_ids if trace is not None and trace._input_ids else None
    if ids is not None and ids.shape[1] == t:
        return [str(int(x)) for x in ids[batch]]
    return [str(i) for i in range(t)]


def _grid(summary: Any) -> dict[str, Any]:
    """Per-head figures of an attention summary as (L, H) float32 arrays (NaN where absent)."""
    n_layers = int(summary["layer"].max()) + 1
    n_heads = int(summary["head"].max()) + 1
    entropy = np.full((n_layers, n_heads), np.nan, np.float32)
    sink = np.full((n_layers, n_heads), np.nan, np.float32)
    sink_token: list[list[str | None]] = [[None] * n_heads for _ in range(n_layers)]
    flags: list[list[str]] = [[""] * n_heads for _ in range(n_layers)]
    for r in summary.to_dict(orient="records"):
        layer, head = int(r["layer"]), int(r["head"])
        entropy[layer, head] = r["entropy_norm"]
        sink[layer, head] = r.get("sink_score", np.nan)
        tok = r.get("sink_token_str")
        sink_token[layer][head] = None if tok is None else str(tok)
        flags[layer][head] = "".join(m for m, k in (("S", "sink"), ("C", "collapsed"), ("U", "uniform")) if r.get(k))
    return {
        "layers": n_layers,
        "heads": n_heads,
        "entropy": encode_array(entropy),
        "sink": encode_array(sink),
        "sink_token": sink_token,
        "flags": flags,
    }


def _from_summary(summary: Any) -> dict[str, Any]:
    if summary.empty:
        return {"empty": "This attention summary has no rows."}
    return {
        "grid": _grid(summary),
        "maps": [],
        "note": "Attention maps are not in this object (an AttentionSummary holds per-head figures only); "
        "pass a Trace captured with attentions=True to open a head's map.",
    }


def _from_stats(trace: Any, batch: int, tokens: Sequence[str] | None, max_bytes: int | None) -> dict[str, Any]:
    from ..attention import attention_summary

    stats = trace.attention_stats
    layers = sorted(stats)
    b, n_heads, t = stats[layers[0]]["entropy"].shape
    if not 0 <= batch < b:
        raise ValueError(f"batch must be in [0, {b}), got {batch}")
    names = ("entropy", "max_prob", "sink_mass")
    check_size(
        len(names) * encoded_size((len(layers), n_heads, t), "float32"),
        f"per-query statistics of {len(layers)} layers x {n_heads} heads x {t} queries",
        "a shorter input or max_bytes=",
        max_bytes,
    )
    per_query = {
        name: encode_array(np.stack([stats[layer][name][batch] for layer in layers]).astype(np.float32))
        for name in names
    }
    return {
        "grid": _grid(attention_summary(trace)),
        "tokens": _tokens(trace, batch, t, tokens),
        "maps": [],
        "per_query": per_query,
        "note": "Attention maps are not in this trace (captured with attentions='stats'): the panel shows "
        "each query's entropy, largest weight and sink mass along the sequence instead.",
    }


def _query_labels(query: Any, trace: Any, n_layers: int, n_heads: int, t_q: int, t_k: int) -> dict[str, Any]:
    """The model's layer and head numbers and the query positions of maps captured with an
    ``AttentionQuery`` (the maps hold only the selected ones, numbered from 0)."""
    if query is None:
        return {"layers": None, "heads": None, "rows": None}
    from ..tracing.query import AttentionQuery

    if not isinstance(query, AttentionQuery):
        raise TypeError(f"query must be the AttentionQuery the trace was captured with, got {type(query).__name__}")
    total = len(trace.attention_modules) if trace is not None else n_layers
    layers = query.layer_indices(total) if query.layers is not None else list(range(n_layers))
    heads = list(query.heads) if query.heads is not None and query.reduce is None else None
    rows = [r % t_k for r in query.rows] if query.rows is not None else None
    if len(layers) != n_layers or (heads is not None and len(heads) != n_heads):
        raise ValueError(
            f"query selects {len(layers)} layers and {heads} heads, the trace holds {n_layers} x {n_heads}"
        )
    if rows is not None and len(rows) != t_q:
        raise ValueError(f"query selects {len(rows)} rows, the trace's maps hold {t_q}")
    return {"layers": layers, "heads": heads, "rows": rows}


def _from_maps(
    trace: Any,
    maps: list[np.ndarray],
    *,
    batch: int,
    layers: Any,
    heads: Any,
    rows: Any,
    tokens: Sequence[str] | None,
    rollout: bool | None,
    flow: bool,
    precision: str,
    max_bytes: int | None,
    query: Any = None,
) -> dict[str, Any]:
    from ..attention import attention_flow, attention_rollout, attention_summary

    maps = [m[:, None] if m.ndim == 3 else m for m in maps]  # head-mean maps: one head
    b, _, t_q, t_k = maps[0].shape
    if not 0 <= batch < b:
        raise ValueError(f"batch must be in [0, {b}), got {batch}")
    mask = trace.attention_mask if trace is not None else None
    mask_b = mask[batch : batch + 1] if mask is not None and mask.shape == (b, t_k) else None
    one = [np.asarray(m[batch : batch + 1], dtype=np.float32) for m in maps]
    square = all(m.shape[-2:] == (t_k, t_k) for m in one)
    n_heads = max(m.shape[1] for m in one)
    sel_layers = _select(layers, len(one), "layers")
    sel_heads = _select(heads, n_heads, "heads")
    sel_rows = _select(rows, t_q, "rows")
    n_rows = len(sel_rows)
    n_maps = sum(1 for li in sel_layers for h in sel_heads if h < one[li].shape[1])
    raw = n_maps * n_rows * t_k * 4
    kind = _precision(raw, precision)
    size = n_maps * encoded_size((n_rows, t_k), kind) + (n_maps * n_rows * 4 * 4 // 3 if kind == "uint8" else 0)
    check_size(
        size,
        f"{n_maps} attention maps of {n_rows} x {t_k} as {kind}",
        "layers=[...], heads=[...] (one map per layer and head) or rows=range(a, b) (query rows)",
        max_bytes,
    )
    labels = _query_labels(query, trace, len(one), n_heads, t_q, t_k)
    positions = [labels["rows"][r] for r in sel_rows] if labels["rows"] is not None else sel_rows
    # rows of a query-selected self-attention are positions among the keys; other T_q != T_k maps
    # are cross-attention, whose queries are positions of another sequence
    cross = t_q != t_k and labels["rows"] is None
    summary = attention_summary(one, attention_mask=mask_b) if square else None
    payload: dict[str, Any] = {
        "tokens": _tokens(trace, batch, t_k, tokens),
        "query_tokens": [str(i) for i in range(t_q)] if cross else None,
        "rows": encode_array(np.asarray(positions, np.int32), "int32"),
        "precision": kind,
        "maps": [
            {"layer": li, "head": h, "map": _encode_map(one[li][0, h][sel_rows], kind)}
            for li in sel_layers
            for h in sel_heads
            if h < one[li].shape[1]
        ],
    }
    if summary is not None:
        payload["grid"] = _grid(summary)
    else:  # query rows or cross-attention: no whole map to normalise entropy or find sinks in
        payload["grid"] = {"layers": len(one), "heads": n_heads, "entropy": None, "sink": None}
    payload["grid"]["layer_ids"] = labels["layers"]
    payload["grid"]["head_ids"] = labels["heads"]
    want_rollout = square and (rollout if rollout is not None else t_k <= _AUTO_ROLLOUT_MAX_T)
    if rollout and not square:
        raise ValueError("rollout=True needs square self-attention maps (T_q = T_k) in every layer")
    if flow and not square:
        raise ValueError("flow=True needs square self-attention maps (T_q = T_k) in every layer")
    if want_rollout:
        payload["rollout"] = _encode_map(attention_rollout(one, rows=sel_rows, attention_mask=mask_b)[0], kind)
    if flow:
        payload["flow"] = _encode_map(attention_flow(one, rows=sel_rows, attention_mask=mask_b)[0], kind)
    return payload


def attention_view(
    obj: Any,
    *,
    batch: int = 0,
    layers: Sequence[int] | int | None = None,
    heads: Sequence[int] | int | None = None,
    rows: Sequence[int] | None = None,
    tokens: Sequence[str] | None = None,
    rollout: bool | None = None,
    flow: bool = False,
    precision: str = "auto",
    query: Any = None,
    max_bytes: int | None = None,
    title: str = "Attention",
) -> View:
    """The interactive attention view of a trace or an attention summary.

    Parameters
    ----------
    obj : Trace or AttentionSummary
        A :class:`~llmdbg.Trace` captured with ``attentions=True`` (per layer ``(B, H, T_q, T_k)``
        maps; ``(B, T_q, T_k)`` head-mean maps count as one head), a Trace captured with
        ``attentions="stats"`` (per-query ``(B, H, T)`` statistics, the long-context path), or an
        :class:`~llmdbg.AttentionSummary` (per-head figures only). A trace with neither shows a
        message saying how to capture attention.
    batch : int
        Which sequence of the batch to show.
    layers, heads : int or sequence of int, optional
        Maps to include (default all): the grid always shows every head; a head left out shows a
        note when clicked. The payload holds ``len(layers) * len(heads)`` maps of
        ``len(rows) x T_k``.
    rows : sequence of int, optional
        Query rows of the maps (default all), e.g. ``range(0, 512)`` of a 4,096-token input.
    tokens : sequence of str, optional
        Token strings for the positions (default: the trace's tokens, else its input ids).
    rollout : bool, optional
        Include attention rollout (:func:`llmdbg.attention_rollout` of the chosen example over all
        layers, at ``rows``). Default: when the maps are square and ``T <= 1024``.
    flow : bool
        Include attention flow (:func:`llmdbg.attention_flow`; exact max-flow, slow on long inputs).
    precision : {"auto", "float32", "float16", "uint8"}
        How maps travel. ``"auto"``: float32 up to 4 MiB of maps, float16 up to 16 MiB, beyond that
        uint8 with one float32 scale per row (``value = q * row_max / 255``: each row's largest
        weight exact, every weight within half a step of that row's range).
    query : AttentionQuery, optional
        The query the trace was captured with (``capture(model, attentions=AttentionQuery(...))``):
        its layers, heads and rows label the maps with the model's layer and head numbers and the
        rows' positions. ``layers=``, ``heads=`` and ``rows=`` then index the captured maps.
    max_bytes : int, optional
        Payload limit (default :data:`~llmdbg.widgets.MAX_PAYLOAD_BYTES`, 64 MiB).
    title : str
        Heading of the view.

    Returns
    -------
    View

    Raises
    ------
    PayloadTooLargeError
        The selected maps are over ``max_bytes``; the message names ``layers=``, ``heads=`` and
        ``rows=``.
    ValueError, TypeError
        A selection out of range, a ``batch`` the trace lacks, ``tokens`` of the wrong length.
    """
    from ..attention import AttentionSummary
    from ..tracing.trace import Trace

    if isinstance(obj, AttentionSummary):
        return View("attention", _from_summary(obj), title=title, max_bytes=max_bytes)
    if not isinstance(obj, Trace):
        raise TypeError(f"attention_view takes a Trace or an AttentionSummary, got {type(obj).__name__}")
    maps = obj.attentions
    if maps:
        payload = _from_maps(
            obj,
            list(maps),
            batch=batch,
            layers=layers,
            heads=heads,
            rows=rows,
            tokens=tokens,
            rollout=rollout,
            flow=flow,
            precision=precision,
            max_bytes=max_bytes,
            query=query,
        )
    elif obj.attention_stats:
        payload = _from_stats(obj, batch, tokens, max_bytes)
    else:
        payload = {
            "empty": "This trace holds no attention: capture with llmdbg.capture(model, attentions=True) for maps, "
            "or attentions='stats' for per-query statistics of long inputs."
        }
    return View("attention", payload, title=title, max_bytes=max_bytes, instead="layers=, heads= or rows=")
