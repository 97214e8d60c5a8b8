"""Streaming attention rollout for long contexts.

Storing every attention map costs O(L·B·H·T²) memory: about 2.4 GB for a 12-layer, 12-head
model at T = 2048, and tens of GB for larger models. Rollout only needs a running product, so
:func:`streaming_rollout` never stores the maps. Where the model's attention calls can be recorded
(:mod:`.streaming_recompute`) it recomputes what it needs from their queries and keys: the rows
asked for top down with O(rows·T) state, or the full product bottom up. Otherwise each layer's
eager map is consumed inside its forward hook (on the map's own device), folded into the product,
and let go: O(B·T²) for the product plus one layer's fused map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._internal.inputs import as_inputs
from .._internal.modes import device_of
from .._internal.progress import check_progress, progress_bar
from ..adapters.layout import find_layout, require_attention
from ..tracing.api import capture
from ..tracing.attention_setup import choose_recompute
from . import streaming_recompute
from ._inputs import query_rows, stack_attention_modules
from .rollout import HEAD_FUSIONS


@dataclasses.dataclass
class StreamingRollout:
    """Result of :func:`streaming_rollout`.

    Attributes
    ----------
    rollout : numpy.ndarray
        ``(B, T, T)`` float32 rollout (or ``(B, len(rows), T)`` with ``rows``), zero on padding.
    entropy : numpy.ndarray
        ``(L, B, H)`` float64 mean row entropy (natural log) over real queries, per head.
    max_weight : numpy.ndarray
        ``(L, B, H)`` float64 mean over real queries of the largest weight in the row.
    first_token_mass : numpy.ndarray
        ``(L, B, H)`` float64 mean over real queries of the weight on the first real token,
        StreamingLLM's sink score α(0) for the first position.
    modules : list of str
        The attention modules folded in, bottom layer first.
    """

    rollout: np.ndarray
    entropy: np.ndarray
    max_weight: np.ndarray
    first_token_mass: np.ndarray
    modules: list[str]


class _RunningRollout:
    """The attention consumer: R ← Â_l R, bottom layer first, in float64 on the maps' device."""

    def __init__(
        self,
        modules: list[str],
        mask: torch.Tensor | None,
        head_fusion: str,
        residual: bool,
        on_layer: Callable[[], Any] = lambda: None,
    ):
        self.on_layer = on_layer
        self.modules = set(modules)
        self.mask = mask
        self.head_fusion = head_fusion
        self.residual = residual
        self.product: torch.Tensor | None = None
        self.seen: list[str] = []
        self.entropy: list[torch.Tensor] = []
        self.max_weight: list[torch.Tensor] = []
        self.first_mass: list[torch.Tensor] = []

    def __call__(self, layer: int, name: str, weights: torch.Tensor) -> None:
        if name not in self.modules:
            return
        if weights.shape[-1] != weights.shape[-2]:
            raise ValueError(f"{name} returned non-square attention {tuple(weights.shape)}")
        w = weights.detach()
        b, n_heads, t, _ = w.shape
        real = (
            torch.ones(b, t, dtype=torch.bool, device=w.device) if self.mask is None else self.mask.to(w.device).bool()
        )
        q = real.to(torch.float64)  # (B, T) weight of each query in the averages
        n_real = q.sum(-1).clamp_min(1)  # (B,)
        first = real.to(torch.int64).argmax(-1)  # first real position per sequence
        entropy = torch.empty(b, n_heads, dtype=torch.float64, device=w.device)
        top, first_mass = torch.empty_like(entropy), torch.empty_like(entropy)
        fused: torch.Tensor | None = None
        # One head at a time, so the float64 temporaries stay at a few (B, T, T) arrays rather
        # than (B, H, T, T) ones: at T = 2048 that is 32 MB per array instead of 400 MB.
        for h in range(n_heads):
            a = w[:, h].to(torch.float64, copy=True)  # (B, T, T); never a view of the model's tensor
            entropy[:, h] = (-torch.special.xlogy(a, a).sum(-1) * q).sum(-1) / n_real
            top[:, h] = (a.amax(-1) * q).sum(-1) / n_real
            first_mass[:, h] = (a.gather(-1, first.view(b, 1, 1).expand(b, t, 1)).squeeze(-1) * q).sum(-1) / n_real
            if fused is None:
                fused = a
            elif self.head_fusion == "mean":
                fused += a
            elif self.head_fusion == "max":
                torch.maximum(fused, a, out=fused)
            else:
                torch.minimum(fused, a, out=fused)
            del a
        assert fused is not None  # n_heads >= 1: the weights tensor has a head dimension
        if self.head_fusion == "mean":
            fused /= n_heads
        self.entropy.append(entropy)
        self.max_weight.append(top)
        self.first_mass.append(first_mass)
        if self.residual:
            fused.diagonal(dim1=-2, dim2=-1).add_(1.0)
            fused /= fused.sum(-1, keepdim=True)
        self.product = fused if self.product is None else torch.matmul(fused, self.product)
        self.seen.append(name)
        self.on_layer()


def streaming_rollout(
    model: torch.nn.Module,
    inputs: Any,
    *,
    tokenizer: Any = None,
    head_fusion: str = "mean",
    residual: bool = True,
    rows: Any = None,
    stack: str | None = None,
    progress: bool = True,
    attention_impl: str = "auto",
) -> StreamingRollout:
    """Attention rollout computed while the model runs, without storing the attention maps.

    Runs ``model(**inputs)`` once under ``torch.no_grad()``. Each layer's map is fused over
    heads (``head_fusion``), mixed with the residual (``(Ā + I)`` with rows renormalised, Abnar &
    Zuidema 2020) and multiplied into the product, in float64. The result equals
    :func:`llmdbg.attention_rollout` on the stored maps (up to float64 rounding) at a fraction of
    the memory:

    - recompute path (``head_fusion="mean"`` on a model whose attention calls can be recorded; the
      model keeps its own SDPA/flash kernel): with ``rows``, the rows are rolled out top down,
      ``r ← r·Â_l`` for l = L … 1, from the recorded float32 queries and keys, in
      O(L·(H_q + H_kv)·T·d + rows·T) extra memory and no T×T array; without ``rows``, each
      layer's head-mean map is recomputed and folded in, O(B·T²);
    - eager path (otherwise): the model runs with eager attention and each layer's map is folded
      into R ← Â_l R inside its forward hook, on the map's device, O(B·T²) extra.

    Parameters
    ----------
    model : transformers model
        Any model :func:`llmdbg.find_layout` understands.
    inputs : str, list of str, dict, torch.Tensor or numpy.ndarray
        Text (with ``tokenizer``), a tokenizer encoding / dict of tensors (``attention_mask`` is
        honoured: padded rows and columns are zero in the result), or ``input_ids`` (B, T) or (T,).
    tokenizer : transformers tokenizer, optional
        Encodes text ``inputs`` (one padded batch).
    head_fusion : {"mean", "max", "min"}
    residual : bool
        Add the identity for the residual stream (default True).
    rows : sequence of int, optional
        Keep only these query rows of the final product, ``(B, len(rows), T)`` (negative ones
        count from the end). On the recompute path only these rows are ever computed.
    stack : {"encoder", "decoder"}, optional
        For encoder-decoder models: which stack's self-attention to roll out (required there).
    progress : bool
        Show a progress bar over the layers (off when output is not interactive).
    attention_impl : {"auto", "recompute", "eager"}
        As in :func:`llmdbg.capture`: ``"auto"`` recomputes where possible (``head_fusion="mean"``
        and a recordable model), else runs eager attention.

    Returns
    -------
    StreamingRollout
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    check_progress(progress)
    batch = as_inputs(inputs, tokenizer, device=device_of(model))
    layout = find_layout(model)
    require_attention(model, layout, "streaming_rollout")  # a state-space model: say so, naming it
    modules = stack_attention_modules(layout, stack)
    ids = batch.get("decoder_input_ids" if stack == "decoder" else "input_ids")
    if isinstance(ids, torch.Tensor):
        query_rows(rows, ids.shape[-1])  # bad rows fail before the forward, not after it
    mask = batch.get("decoder_attention_mask" if stack == "decoder" else "attention_mask")
    because = (
        f"head_fusion={head_fusion!r} (the recompute path fuses heads by their mean)" if head_fusion != "mean" else None
    )
    named = {n: model.get_submodule(n) for n in modules}
    if choose_recompute(model, attention_impl, named, eager_because=because, caller="llmdbg.streaming_rollout"):
        picked = None if rows is None else query_rows(rows, ids.shape[-1] if isinstance(ids, torch.Tensor) else 0)
        np_mask = None if mask is None else mask.detach().cpu().numpy()
        with progress_bar(progress, len(modules), "streaming rollout", unit="layer") as bar:
            rec = streaming_recompute.run(
                model, batch, modules, np_mask, picked, residual, on_layer=lambda: bar.update(1)
            )
        result = rec.top_down() if picked is not None else rec.product
        assert result is not None  # run() checked that every layer was recorded
        if np_mask is not None:
            real = np_mask.astype(bool)
            result = result * (real[:, picked, None] if picked is not None else real[:, :, None]) * real[:, None, :]
        return StreamingRollout(
            np.ascontiguousarray(result, dtype=np.float32),
            np.stack(rec.entropy),
            np.stack(rec.max_weight),
            np.stack(rec.first_mass),
            rec.seen,
        )
    with progress_bar(progress, len(modules), "streaming rollout", unit="layer") as bar:
        consumer = _RunningRollout(modules, mask, head_fusion, residual, on_layer=lambda: bar.update(1))
        with capture(model, attentions=True, attention_consumer=consumer), torch.no_grad():
            model(**batch)
    if consumer.product is None:
        raise RuntimeError("no attention map reached the rollout; did the forward run the attention modules?")
    product = consumer.product
    if mask is not None:
        real = mask.to(product.device).bool()
        product = product * real[:, :, None] * real[:, None, :]
    result = product.to(torch.float32).cpu().numpy()
    if rows is not None:
        picked = query_rows(rows, result.shape[-1])
        result = np.ascontiguousarray(result[:, picked])
    stack_np = lambda xs: torch.stack(xs).cpu().numpy()
    return StreamingRollout(
        result, stack_np(consumer.entropy), stack_np(consumer.max_weight), stack_np(consumer.first_mass), consumer.seen
    )
