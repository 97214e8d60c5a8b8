"""What an attention capture asks for (:class:`AttentionQuery`), and what it will cost
(:func:`estimate_memory`), decided before the forward runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..adapters.heads import config_heads, config_int

__all__ = ["ATTENTION_IMPLS", "AttentionQuery", "MemoryEstimate", "resolve_attentions"]

ATTENTION_IMPLS = ("auto", "recompute", "eager")
_FUSIONS = (None, "mean", "max")
_STATS = ("entropy", "max_prob", "sink_mass", "special_mass")


def _indices(name: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray, range)):
        raise TypeError(f"AttentionQuery: {name} must be None or a sequence of ints, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"AttentionQuery: {name} must hold ints, got {v!r}")
        out.append(int(v))
    if not out:
        raise ValueError(f"AttentionQuery: {name} is empty; pass None for all")
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class AttentionQuery:
    """Attention maps restricted to some layers, heads and query rows.

    Maps hold the probabilities the model's own attention call used, recomputed from its
    queries and keys (see :func:`llmdbg.capture`).

    Parameters
    ----------
    layers : sequence of int, optional
        Attention layers in layout order (``trace.attention_modules``; negative counts from the
        end). None: every layer.
    heads : sequence of int, optional
        Query heads (``0 <= h < H_q``; negative counts from the end). None: every head.
    rows : sequence of int, optional
        Query positions (negative counts from the end, ``-1`` the last token). None: every row.
    reduce : {None, "mean", "max"}
        Fuse the selected heads: maps are ``(B, rows, T_k)`` instead of ``(B, heads, rows, T_k)``.
    """

    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    rows: tuple[int, ...] | None = None
    reduce: str | None = None

    def __post_init__(self) -> None:
        for name in ("layers", "heads", "rows"):
            object.__setattr__(self, name, _indices(name, getattr(self, name)))
        if self.reduce not in _FUSIONS:
            raise ValueError(f"AttentionQuery: reduce must be one of {_FUSIONS}, got {self.reduce!r}")

    # -- resolution against a model and a sequence ---------------------------------------------
    def layer_indices(self, n_layers: int) -> list[int]:
        """The selected layers as indices in ``[0, n_layers)``; raises for ones that do not exist."""
        if self.layers is None:
            return list(range(n_layers))
        out = []
        for v in self.layers:
            if not -n_layers <= v < n_layers:
                raise ValueError(
                    f"AttentionQuery: layer {v} does not exist; the model has {n_layers} attention layers "
                    f"(0..{n_layers - 1})"
                )
            out.append(v % n_layers)
        return out

    def head_indices(self, n_heads: int, layer: str) -> np.ndarray | None:
        if self.heads is None:
            return None
        for v in self.heads:
            if not -n_heads <= v < n_heads:
                raise ValueError(
                    f"AttentionQuery: head {v} is beyond the {n_heads} query heads of {layer} (0..{n_heads - 1})"
                )
        return np.array([v % n_heads for v in self.heads], dtype=np.int64)

    def row_indices(self, n_rows: int, layer: str) -> np.ndarray | None:
        if self.rows is None:
            return None
        for v in self.rows:
            if not -n_rows <= v < n_rows:
                raise ValueError(f"AttentionQuery: row {v} is out of range for {n_rows} query positions in {layer}")
        return np.array([v % n_rows for v in self.rows], dtype=np.int64)


def resolve_attentions(attentions: Any, reduce_head_mean: bool) -> tuple[str, Any]:
    """capture()'s ``attentions`` argument as ``(mode, query)``: mode is ``"off"``, ``"stats"`` or
    ``"maps"``; for maps, the :class:`AttentionQuery` (``attentions=True`` with
    ``reduce="head_mean"`` folded in). Token selections in ``reduce`` apply to activations, and to
    the query rows of ``attentions=True`` maps."""
    if attentions is False or attentions is None:
        return "off", None
    if isinstance(attentions, str):
        if attentions != "stats":
            raise ValueError(f"attentions must be True, False, 'stats' or an AttentionQuery, got {attentions!r}")
        if reduce_head_mean:
            raise ValueError(
                "attentions='stats' keeps per-query statistics only, so reduce='head_mean' has no map to "
                "average; use attentions=llmdbg.AttentionQuery(reduce='mean') for head-averaged maps"
            )
        return "stats", None
    if isinstance(attentions, AttentionQuery):
        if reduce_head_mean:
            raise ValueError(
                "pass the head fusion inside the AttentionQuery (reduce='mean'), not as capture's reduce='head_mean'"
            )
        return "maps", attentions
    if attentions is True:
        return "maps", AttentionQuery(reduce="mean" if reduce_head_mean else None)
    raise TypeError(f"attentions must be True, False, 'stats' or an AttentionQuery, got {attentions!r}")


@dataclasses.dataclass
class MemoryEstimate:
    """What an attention capture will need, from :func:`llmdbg.estimate_memory`.

    Attributes
    ----------
    stored_bytes : int
        Host bytes the trace keeps: the maps asked for (``B · heads · rows · T_k · itemsize`` per
        selected layer, heads fused to 1 with ``reduce``) or the statistics
        (``4 arrays · B · H_q · T_q · 4`` bytes per layer).
    working_bytes : int
        Transient bytes on top of the model's own forward: one layer's queries and keys in
        float32, plus the recompute kernels' row blocks (never a ``T_q × T_k`` map per head).
    eager_bytes : int
        For comparison: one layer's full ``(B, H_q, T_q, T_k)`` map, which eager attention holds
        (and ``attentions=True`` under ``attention_impl="eager"`` keeps for every layer).
    implementation : str
        ``"recompute"`` or ``"eager"``: the path the capture would take.
    layers : int
        Attention layers involved.
    """

    stored_bytes: int
    working_bytes: int
    eager_bytes: int
    implementation: str
    layers: int

    @property
    def total_bytes(self) -> int:
        return self.stored_bytes + self.working_bytes

    def __str__(self) -> str:
        gib = 2**30
        return (
            f"{self.stored_bytes / gib:.3g} GiB stored + {self.working_bytes / gib:.3g} GiB working "
            f"({self.implementation}, {self.layers} layers; one eager map: {self.eager_bytes / gib:.3g} GiB)"
        )

    def _repr_html_(self) -> str:
        from .._internal import html as h

        return h.box("llmdbg memory estimate", h.esc(str(self)), "", "")


# -- the estimate ------------------------------------------------------------------------------

_ROW_BLOCK = 64  # query rows per kernel block and thread (an upper bound for the estimate)


def model_geometry(model: Any) -> tuple[int, int, int]:
    """``(H_q, H_kv, head_dim)`` from a transformers config (the text config of multimodal ones)."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    heads = config_heads(config, type(model).__name__)
    kv = config_int(config, "num_key_value_heads", "num_kv_heads") or heads
    width = config_int(config, "hidden_size", "d_model", "n_embd", "dim")
    dim = config_int(config, "head_dim", "d_kv") or (width // heads if width else 64)
    return heads, kv, dim


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """One attention layer's call: batch, query and key lengths."""

    batch: int
    t_q: int
    t_k: int


def estimate(
    model: Any,
    mode: str,
    query: AttentionQuery | None,
    layers: list[LayerShape],
    *,
    recompute: bool,
    itemsize: int,
    threads: int,
    row_slice: slice | None = None,
) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of an attention capture with one :class:`LayerShape` per
    attention layer (in layout order)."""
    hq, hkv, dim = model_geometry(model)
    selected = query.layer_indices(len(layers)) if query is not None else list(range(len(layers)))
    stored = working = eager = 0
    for index in selected:
        s = layers[index]
        one_map = s.batch * hq * s.t_q * s.t_k
        eager = max(eager, one_map * 4)
        if mode == "stats":
            stored += 4 * s.batch * hq * s.t_q * 4
            layer_out = 0
        else:
            heads = hq if query is None or query.heads is None else len(query.heads)
            rows = s.t_q if query is None or query.rows is None else len(query.rows)
            if row_slice is not None:
                rows = len(range(s.t_q)[row_slice])
            fused = query is not None and query.reduce is not None
            layer_out = s.batch * (1 if fused else heads) * rows * s.t_k
            stored += layer_out * itemsize
        if recompute:
            qk = s.batch * (hq * s.t_q + hkv * s.t_k) * dim * 4
            blocks = threads * _ROW_BLOCK * s.t_k * 4
            working = max(working, qk + blocks + layer_out * 4)
        else:
            working = max(working, one_map * 4)
    return MemoryEstimate(stored, working, eager, "recompute" if recompute else "eager", len(selected))
