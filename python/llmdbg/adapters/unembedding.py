"""From a residual-stream state to vocabulary logits: the final norm and the unembedding.

The logit lens reads every layer's hidden state through the same map the model applies after its
last block. For decoder-only LMs (GPT-2, Llama, Mistral, Qwen2, GPT-NeoX, ...) that map is
``unembedding(final_norm(h))``; for masked-LM encoders (BERT, RoBERTa, DistilBERT) it is the MLM
head, e.g. BERT's ``cls.predictions`` (dense, GELU, LayerNorm, decoder), and there is no final
norm because each post-LN block already ends in a LayerNorm. Both parts are found through
:func:`llmdbg.find_layout`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from .layout import find_layout
from .task import task_type

__all__ = ["Unembedding", "find_unembedding"]


@dataclasses.dataclass(frozen=True)
class Unembedding:
    """How ``model`` turns a final hidden state into logits.

    Attributes
    ----------
    kind : str
        ``"causal"`` (final norm, then unembedding) or ``"masked_lm"`` (an MLM head).
    final_norm : str or None
        Name of the final norm (decoder-only models; None for encoders).
    head : str
        Name of the module producing logits (``lm_head``, ``cls.predictions``, ...).
    apply : callable
        ``apply(h, normed=False) -> logits``: (..., hidden) -> (..., vocab). ``normed=True``
        skips the final norm (for a state the model already normalised).
    """

    kind: str
    final_norm: str | None
    head: str
    apply: Callable[..., torch.Tensor]


def find_unembedding(model: nn.Module) -> Unembedding:
    """Locate the final norm and unembedding (or MLM head) of ``model``.

    Raises
    ------
    ValueError
        The model has no unembedding (a base model such as ``AutoModel`` or a classifier: load
        it with ``AutoModelForCausalLM`` / ``AutoModelForMaskedLM``), or it is an
        encoder-decoder model (not supported by the logit lens).
    """
    layout = find_layout(model)
    name = type(model).__name__
    if layout.unembedding is None:
        raise ValueError(
            f"{name} has no unembedding (get_output_embeddings() is None): the logit lens needs "
            "a language-model head; load it with AutoModelForCausalLM or AutoModelForMaskedLM"
        )
    if len(layout.stacks) != 1:
        raise ValueError(
            f"{name} is an encoder-decoder model; logit lens and patching support decoder-only and encoder-only models"
        )
    head_module = model.get_submodule(layout.unembedding)
    config = getattr(model, "config", None)
    cap = getattr(config, "final_logit_softcapping", None)
    # What transformers' heads do to the head's output, in the order they do it: Cohere multiplies
    # by logit_scale, Granite divides by logits_scaling, Gemma 2/3 soft-cap.
    scale = getattr(model, "logit_scale", None)
    scale = float(scale) if isinstance(scale, (int, float)) and not isinstance(scale, bool) else None
    divisor = getattr(config, "logits_scaling", None)
    divisor = float(divisor) if isinstance(divisor, (int, float)) and not isinstance(divisor, bool) else None

    def unembed(h: torch.Tensor) -> torch.Tensor:
        logits = head_module(h)
        if scale is not None and scale != 1.0:
            logits = logits * scale
        if divisor is not None and divisor != 1.0:
            logits = logits / divisor
        return logits

    def softcap(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / cap) * cap if cap else x

    masked = task_type(model) == "masked-lm"
    if "decoder" in layout.stacks and not masked:
        if layout.final_norm is None:
            raise ValueError(f"{name}: no final norm found after the last block; llmdbg cannot apply the logit lens")
        norm = model.get_submodule(layout.final_norm)

        def apply(h: torch.Tensor, normed: bool = False) -> torch.Tensor:
            return softcap(unembed(h if normed else norm(h)))

        return Unembedding("causal", layout.final_norm, layout.unembedding, apply)

    parent = layout.unembedding.rpartition(".")[0]
    if parent:  # BERT cls.predictions, RoBERTa lm_head: the parent runs transform + decoder
        head = model.get_submodule(parent)
        return Unembedding("masked_lm", None, parent, lambda h, normed=False: head(h))
    # ModernBERT: final norm (inside the base model), then the prediction head, then the decoder.
    top_head = getattr(model, "head", None)
    if masked and isinstance(top_head, nn.Module) and layout.unembedding == "decoder":
        norm_name = layout.final_norm
        final = model.get_submodule(norm_name) if norm_name else None

        def apply_mlm(h: torch.Tensor, normed: bool = False) -> torch.Tensor:
            return unembed(top_head(h if normed or final is None else final(h)))

        return Unembedding("masked_lm", norm_name, layout.unembedding, apply_mlm)
    # DistilBERT keeps its MLM head as siblings on the model itself.
    parts = [getattr(model, n, None) for n in ("vocab_transform", "activation", "vocab_layer_norm")]
    if all(isinstance(p, nn.Module) for p in parts):
        transform, act, ln = cast("list[nn.Module]", parts)
        return Unembedding(
            "masked_lm", None, layout.unembedding, lambda h, normed=False: unembed(ln(act(transform(h))))
        )
    raise ValueError(f"{name}: cannot tell which modules form the masked-LM head around {layout.unembedding!r}")
