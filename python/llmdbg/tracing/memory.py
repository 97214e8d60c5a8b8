""":func:`estimate_memory`: what an attention capture will need, before running it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._internal.inputs import as_inputs
from .._internal.threads import resolve_n_jobs
from ..adapters.attention_calls import recording_unsupported_reason
from ..adapters.layout import find_layout, hf_model, require_attention
from .query import ATTENTION_IMPLS, LayerShape, MemoryEstimate, estimate, resolve_attentions

__all__ = ["decoder_self_attention", "estimate_memory", "layer_shapes"]


def decoder_self_attention(layout: Any) -> set[str]:
    """Self-attention modules of an encoder-decoder's decoder: their queries and keys are the
    decoder sequence. (Every other module reads ``input_ids``, and cross-attention reads decoder
    queries against encoder keys.)"""
    if layout is None or not {"encoder", "decoder"} <= set(layout.stacks):
        return set()
    decoder_blocks = set(layout.stacks["decoder"])
    cross = set(layout.cross_attention)
    return {a for b, a in zip(layout.attention_blocks, layout.attention) if b in decoder_blocks and a not in cross}


def layer_shapes(
    layout: Any, names: list[str], encoder: tuple[int, int], decoder: tuple[int, int] | None
) -> list[LayerShape]:
    """One :class:`LayerShape` per attention module in ``names`` from the ``(B, T)`` of the input
    and, for encoder-decoders, of the decoder input."""
    dec = decoder or encoder
    own = decoder_self_attention(layout)
    cross = set(layout.cross_attention) if layout is not None else set()
    shapes = []
    for name in names:
        if name in cross:
            shapes.append(LayerShape(dec[0], dec[1], encoder[1]))
        elif name in own:
            shapes.append(LayerShape(dec[0], dec[1], dec[1]))
        else:
            shapes.append(LayerShape(encoder[0], encoder[1], encoder[1]))
    return shapes


def estimate_memory(
    model: torch.nn.Module,
    inputs: Any,
    *,
    attentions: Any = True,
    attention_impl: str = "auto",
    reduce: Any = None,
    dtype: Any = np.float32,
    tokenizer: Any = None,
) -> MemoryEstimate:
    """What ``llmdbg.capture(model, attentions=..., attention_impl=...)`` will need for a forward
    on ``inputs``, without running the model.

    The formula, per selected layer with batch ``B``, ``H_q`` query heads, ``H_kv`` key heads,
    head size ``d`` and lengths ``T_q``, ``T_k``:

    - stored: maps ``B · heads · rows · T_k · itemsize`` (heads = 1 when fused), or statistics
      ``4 · B · H_q · T_q · 4`` bytes;
    - working (recompute): ``B · (H_q·T_q + H_kv·T_k) · d · 4`` for one layer's float32 queries
      and keys, plus ``threads · 64 · T_k · 4`` for the kernels' row blocks, plus one layer's
      maps before they are stored;
    - working (eager): one layer's ``B · H_q · T_q · T_k · 4`` map.

    Parameters
    ----------
    model : transformers model
    inputs : str, list of str, dict, torch.Tensor or numpy.ndarray
        As for the model (text needs ``tokenizer``); only the shapes are used.
    attentions, attention_impl, reduce, dtype
        As in :func:`llmdbg.capture`.

    Returns
    -------
    MemoryEstimate
        ``stored_bytes``, ``working_bytes``, ``eager_bytes`` (one full eager map, for comparison),
        the path (``"recompute"`` or ``"eager"``) and the number of layers.
    """
    if attention_impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {attention_impl!r}")
    from .selection import parse_reduce

    _, head_mean, tokens = parse_reduce(reduce)
    mode, query = resolve_attentions(attentions, head_mean)
    if mode == "off":
        raise ValueError("estimate_memory needs attentions=True, 'stats' or an AttentionQuery")
    layout = find_layout(model)
    require_attention(model, layout, "estimate_memory")
    hf = hf_model(model) or model  # a wrapper's config is its transformers model's
    names = list(layout.attention) + list(layout.cross_attention)
    batch = as_inputs(inputs, tokenizer)
    ids = batch.get("input_ids", batch.get("inputs_embeds"))
    if not isinstance(ids, torch.Tensor) or ids.dim() < 2:
        raise ValueError("inputs: expected input_ids or inputs_embeds with a batch and a sequence axis")
    dec = batch.get("decoder_input_ids")
    decoder = (int(dec.shape[0]), int(dec.shape[1])) if isinstance(dec, torch.Tensor) and dec.dim() >= 2 else None
    shapes = layer_shapes(layout, names, (int(ids.shape[0]), int(ids.shape[1])), decoder)
    recompute = attention_impl != "eager" and (
        attention_impl == "recompute"
        or recording_unsupported_reason(hf, {n: model.get_submodule(n) for n in names}) is None
    )
    return estimate(
        hf,
        mode,
        query,
        shapes,
        recompute=recompute,
        itemsize=np.dtype(dtype).itemsize,
        threads=resolve_n_jobs(None),
        row_slice=tokens,
    )
