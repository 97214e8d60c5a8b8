""":func:`llmdbg.attention_summary` of a trace captured with ``attentions="stats"``: the same
table from per-query statistics, without any attention map.

Differences from the map-based summary, both forced by what per-query statistics hold: the sink
score is StreamingLLM's α at the first real token only (the attention sink of causal LMs; other
positions' column sums are not kept), and causality is read from the attention modules'
``is_causal`` flags instead of from the maps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tracing.trace import Trace
from .summary import AttentionSummary

__all__ = ["summary_from_stats"]


def _attendable(mask: np.ndarray, causal: bool) -> np.ndarray:
    """(B, T) number of real keys each query can attend to (real keys j <= i when causal)."""
    return np.cumsum(mask, axis=1) if causal else np.broadcast_to(mask.sum(1, keepdims=True), mask.shape)


def summary_from_stats(
    trace: Trace, *, tokenizer: Any, collapse: float, uniform: float, sink_threshold: float
) -> AttentionSummary:
    """The summary rows of :func:`llmdbg.attention_summary` from ``trace.attention_stats``."""
    stats = trace.attention_stats
    causal_flags = getattr(trace, "_attention_causal", {})
    rows = []
    tokens = trace.tokens
    if tokens is None and tokenizer is not None and trace._input_ids:
        try:
            ids = trace.input_ids
        except ValueError:  # calls of different lengths
            ids = None
        if ids is not None:
            tokens = [list(tokenizer.convert_ids_to_tokens(r)) for r in ids.tolist()]
    any_causal = False
    for layer, s in stats.items():
        entropy = s["entropy"].astype(np.float64)  # (B, H, T)
        b, n_heads, t = entropy.shape
        mask = trace.attention_mask
        mask = mask.astype(bool) if mask is not None and mask.shape == (b, t) else np.ones((b, t), bool)
        real = mask[:, None, :] & ~np.isnan(entropy)  # (B, H, T)
        causal = bool(causal_flags.get(layer, False))
        any_causal |= causal
        n_keys = _attendable(mask.astype(np.int64), causal)[:, None, :]
        usable = real & (n_keys > 1)
        first = mask.argmax(1)
        positions, counts = np.unique(first, return_counts=True)
        pos = int(positions[np.argmax(counts)])  # the most frequent first real position
        token = tokens[int(np.flatnonzero(first == pos)[0])][pos] if tokens else None
        for head in range(n_heads):
            r, u = real[:, head], usable[:, head]
            mean = lambda x, w=r: float(x[w].mean()) if w.any() else float("nan")
            e_norm = mean((entropy[:, head] / np.log(np.maximum(n_keys[:, 0], 2))), u)
            per_seq = [s["sink_mass"][i, head][r[i]].mean() if r[i].any() else np.nan for i in range(b)]
            score = float(np.nanmean(per_seq)) if not np.isnan(per_seq).all() else float("nan")
            special = s["special_mass"][:, head].astype(np.float64)
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "entropy": mean(entropy[:, head]),
                    "entropy_norm": e_norm,
                    "max_weight": mean(s["max_prob"][:, head].astype(np.float64)),
                    "sink_score": score,
                    "sink_token": pos,
                    "sink_token_str": token,
                    "special_mass": mean(special) if not np.isnan(special[r]).all() else float("nan"),
                    "collapsed": bool(e_norm < collapse),
                    "uniform": bool(e_norm > uniform),
                    "sink": bool(score > sink_threshold),
                }
            )
    table = AttentionSummary(rows)
    table.attrs["causal"] = any_causal
    table.attrs["special_tokens"] = "capture"
    table.attrs["source"] = "attention_stats (sink score at the first real token)"
    table.attrs["thresholds"] = {"collapse": collapse, "uniform": uniform, "sink": sink_threshold}
    return table
