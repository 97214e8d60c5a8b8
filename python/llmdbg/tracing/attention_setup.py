"""Attention capture decisions made outside the hooks: which path (recompute or eager), which key
tokens are special and where each sequence starts, and whether the estimate fits ``max_bytes``."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from .. import _core
from ..adapters.attention_calls import recording_unsupported_reason
from .attention_recorder import AttentionRecorder
from .query import ATTENTION_IMPLS, MemoryEstimate

__all__ = ["check_budget", "choose_recompute", "record_streams", "special_ids"]


def choose_recompute(
    model: torch.nn.Module,
    impl: str,
    modules: dict[str, torch.nn.Module],
    *,
    eager_because: str | None = None,
    caller: str = "llmdbg.capture",
) -> bool:
    """The one decision between recomputing from recorded calls (True) and eager attention
    (False), for ``capture``, ``streaming_rollout`` and ``gradient_rollout``.

    ``eager_because`` says why this request needs eager attention (e.g. gradients of the maps):
    ``"auto"`` then takes eager silently and ``"recompute"`` is refused. A model whose calls cannot
    be recorded falls back to eager with a warning naming why (``"recompute"`` raises).

    Raises
    ------
    ValueError
        ``impl`` is not one of ``ATTENTION_IMPLS``; ``"recompute"`` with ``eager_because``.
    RuntimeError
        ``"recompute"`` on a model whose attention calls cannot be recorded.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    if impl == "eager":
        return False
    if eager_because is not None:
        if impl == "recompute":
            raise ValueError(f"attention_impl='recompute' is not possible: {eager_because}; use attention_impl='eager'")
        return False
    reason = recording_unsupported_reason(model, modules)
    if reason is None:
        return True
    if impl == "recompute":
        raise RuntimeError(f"attention_impl='recompute' is not possible: {reason}; use attention_impl='eager'")
    warnings.warn(
        f"{caller}: attention comes from eager attention instead of the model's own kernel: {reason}", stacklevel=3
    )
    return False


def special_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    """Token ids counted by the ``special_mass`` statistic: the tokenizer's special tokens, or
    without one the config's bos/eos/pad/cls/sep/unk ids."""
    ids = getattr(tokenizer, "all_special_ids", None) if tokenizer is not None else None
    if ids:
        return {int(i) for i in ids}
    config = getattr(model, "config", None)
    found = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id", "sep_token_id", "unk_token_id"):
        value = getattr(config, key, None)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and not isinstance(v, bool):
                found.add(v)
    return found


def record_streams(
    recorder: AttentionRecorder, bound: dict[str, Any], special: set[int] | None
) -> dict[str, tuple[int, int]]:
    """From the model's call arguments: per input stream (``input_ids``, ``decoder_input_ids``)
    the special-token flags ``(B, T)`` and first real position ``(B,)`` that the statistics use,
    handed to ``recorder``; returns the ``(B, T)`` of each stream."""
    recorder.forwards += 1
    shapes: dict[str, tuple[int, int]] = {}
    for stream, mask_key in (("input_ids", "attention_mask"), ("decoder_input_ids", "decoder_attention_mask")):
        ids, mask = bound.get(stream), bound.get(mask_key)
        embeds = bound.get("inputs_embeds" if stream == "input_ids" else "decoder_inputs_embeds")
        source = ids if isinstance(ids, torch.Tensor) else embeds if isinstance(embeds, torch.Tensor) else None
        if source is None or source.dim() < 2:
            continue
        b, t = int(source.shape[0]), int(source.shape[1])
        shapes[stream] = (b, t)
        flags = None
        if isinstance(ids, torch.Tensor) and special:
            flags = np.isin(ids.detach().cpu().numpy(), list(special))
        if _continues_cache(bound, stream):  # generate()'s decode steps: keys = cached + new tokens
            prev = recorder.streams.get(stream, (None, None))[0]
            ok = flags is not None and prev is not None and prev.shape[0] == b and not recorder.cache_reordered
            flags = np.concatenate([prev, flags], axis=1) if ok and prev is not None and flags is not None else None
        first = None
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == b and mask.shape[1] >= t:
            first = (mask.detach().cpu().numpy() != 0).argmax(axis=1).astype(np.int64)  # over the keys
        recorder.streams[stream] = (flags, first)
    return shapes


def _continues_cache(bound: dict[str, Any], stream: str) -> bool:
    """Whether this forward appends to a non-empty KV cache (the keys then include tokens of
    earlier calls)."""
    extra: dict[str, Any] = bound["kwargs"] if isinstance(bound.get("kwargs"), dict) else {}
    cache = next(
        (c for c in (bound.get("past_key_values"), bound.get("cache"), extra.get("past_key_values")) if c), None
    )
    length = getattr(cache, "get_seq_length", None)
    if cache is None or not callable(length):
        return False
    try:
        return int(length()) > 0 and (stream == "input_ids" or bool(bound.get("decoder_input_ids") is not None))
    except (TypeError, ValueError, RuntimeError):
        return False


def check_budget(est: MemoryEstimate, held: int, max_bytes: int, mode: str) -> None:
    """Raise :class:`llmdbg.CaptureBudgetError` before the forward when the capture would store
    more than ``max_bytes`` (with ``held`` bytes already stored), quoting the estimate."""
    if held + est.stored_bytes <= max_bytes:
        return
    suggestion = (
        "attentions='stats' (per-query statistics only) or an llmdbg.AttentionQuery with fewer layers, heads or rows"
        if mode == "maps"
        else "fewer layers (llmdbg.AttentionQuery(layers=...)) or a larger max_bytes"
    )
    raise _core.CaptureBudgetError(
        f"this forward's attention capture needs {est} on top of {held / 2**30:.3g} GiB already held, "
        f"more than max_bytes={max_bytes:,} bytes; pass {suggestion}. "
        "llmdbg.estimate_memory(model, inputs, attentions=...) gives the figure beforehand."
    )
