"""From a residual-stream state to vocabulary logits: the final norm and the unembedding.

The logit lens reads every layer's hidden state through the same map the model applies after its
last block. For decoder-only LMs (GPT-2, Llama, Mistral, Qwen2, GPT-NeoX, ...) that map is
``unembedding(final_norm(h))``; for masked-LM encoders (BERT, RoBERTa, DistilBERT, ELECTRA,
ModernBERT) it is the MLM head, e.g. BERT's ``cls.predictions`` (dense, GELU, LayerNorm, decoder),
and there is no final norm because each post-LN block already ends in a LayerNorm. Post-LN
decoders (OPT-350m, GPT-1) have no final norm either; OPT-350m also projects down to its
embedding width (``project_out``) before the unembedding. Several families post-process the
head's output (:func:`_logit_transform`): those steps are applied here exactly as the model does.
Both parts are found through :func:`llmdbg.find_layout`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from .layout import find_layout
from .task import task_type

__all__ = ["Unembedding", "find_unembedding"]

# Decoder families built post-LN: every block ends in a LayerNorm, so the model has no final norm
# (OPT only when ``do_layer_norm_before=False``, as in OPT-350m; its final norm is then None).
_POST_LN_DECODERS = ("opt", "openai-gpt", "trocr")
# MLM heads kept as one module beside the unembedding: ELECTRA and ConvBERT's generator
# (dense, activation, LayerNorm), then ``generator_lm_head``.
_MLM_TRANSFORMS = ("generator_predictions",)
# Final norms that sit beside the encoder rather than beside its block list, by family: the norm's
# name relative to the base model (RoBERTa-PreLayerNorm normalises the encoder's output there).
_BASE_FINAL_NORMS = {"roberta-prelayernorm": "LayerNorm"}


@dataclasses.dataclass(frozen=True)
class Unembedding:
    """How ``model`` turns a final hidden state into logits.

    Attributes
    ----------
    kind : str
        ``"causal"`` (final norm, then unembedding) or ``"masked_lm"`` (an MLM head).
    final_norm : str or None
        Name of the final norm (None for encoders and post-LN decoders, which have none).
    head : str
        Name of the module producing logits (``lm_head``, ``cls.predictions``, ...).
    apply : callable
        ``apply(h, normed=False) -> logits``: (..., hidden) -> (..., vocab), in the model's
        dtype, with the family's logit scaling, vocabulary truncation and soft-capping applied.
        ``normed=True`` skips the final norm (for a state the model already normalised).
    """

    kind: str
    final_norm: str | None
    head: str
    apply: Callable[..., torch.Tensor]


def _number(config: Any, name: str) -> float | None:
    """``config.<name>`` (or the text config's) as a float, None where unset or not a number."""
    for cfg in (config, getattr(config, "get_text_config", lambda: None)()):
        value = getattr(cfg, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _logit_transform(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[..., torch.Tensor]]:
    """What transformers' heads do around the unembedding, in the order they do it.

    Returns ``(before, after)``: ``before`` maps the (normed) hidden state fed to the head
    (NeoMME multiplies it by ``unembedding_projection.weight``, Inkling divides it by
    ``logits_mup_width_multiplier``); ``after`` post-processes the logits:
    Cohere multiplies by ``logit_scale``, Falcon-H1 by ``lm_head_multiplier``, Granite divides by
    ``logits_scaling``, Inkling drops the padded vocabulary rows past ``unpadded_vocab_size``, and
    Gemma 2/3/4, Inkling 2 (``final_logit_softcapping``), RecurrentGemma (``logits_soft_cap``) and
    xLSTM (``output_logit_soft_cap``) soft-cap: ``c · tanh(x / c)``. The lens checks the result against the model's own logits, so
    a step missing here is refused rather than silently skipped.
    """
    config = getattr(model, "config", None)
    scale = getattr(model, "logit_scale", None)  # Cohere keeps it on the model (None -> 1 in Compass)
    multipliers = [float(scale)] if isinstance(scale, (int, float)) and not isinstance(scale, bool) else []
    falcon = _number(config, "lm_head_multiplier")
    if falcon is not None:
        multipliers.append(falcon)
    divisor = _number(config, "logits_scaling")
    mup = _number(config, "logits_mup_width_multiplier")
    vocab = _number(config, "unpadded_vocab_size")
    cap = (
        _number(config, "final_logit_softcapping")
        or _number(config, "logits_soft_cap")
        or _number(config, "output_logit_soft_cap")  # xLSTM
    )
    # NeoMME maps the hidden state to its embedding rank with the tied projection's weight.
    projection = getattr(getattr(model, "unembedding_projection", None), "weight", None)

    def before(h: torch.Tensor) -> torch.Tensor:
        if isinstance(projection, torch.Tensor):
            h = h @ projection
        return h / mup if mup is not None and mup != 1.0 else h

    def after(logits: torch.Tensor) -> torch.Tensor:
        for m in multipliers:
            if m != 1.0:
                logits = logits * m
        if divisor is not None and divisor != 1.0:
            logits = logits / divisor
        if vocab is not None and int(vocab) < logits.shape[-1]:
            logits = logits[..., : int(vocab)]
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return before, after


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
    if len(layout.stacks) != 1 or task_type(model) == "seq2seq":
        raise ValueError(
            f"{name} is an encoder-decoder model; logit lens and patching support decoder-only and encoder-only models"
        )
    head_module = model.get_submodule(layout.unembedding)
    before, after = _logit_transform(model)

    def unembed(h: torch.Tensor) -> torch.Tensor:
        return after(head_module(before(h)))

    masked = task_type(model) == "masked-lm"
    norm_name = layout.final_norm or _base_final_norm(model)
    prediction = _prediction_head(model, layout.unembedding)
    if "decoder" in layout.stacks and not masked:
        return _causal(model, norm_name, layout.blocks[-1], layout.unembedding, unembed, prediction)

    final = model.get_submodule(norm_name) if norm_name else None

    def normed(h: torch.Tensor, skip: bool) -> torch.Tensor:
        return h if skip or final is None else final(h)

    parent = layout.unembedding.rpartition(".")[0]
    if parent:  # BERT cls.predictions, RoBERTa lm_head: the parent runs transform + decoder
        head = model.get_submodule(parent)
        return Unembedding("masked_lm", norm_name, parent, lambda h, normed_=False: _scores(head(normed(h, normed_))))
    if prediction is not None:  # ModernBERT, ELECTRA / ConvBERT generators
        transform = prediction
        return Unembedding(
            "masked_lm", norm_name, layout.unembedding, lambda h, normed_=False: unembed(transform(normed(h, normed_)))
        )
    # DistilBERT keeps its MLM head as siblings on the model itself.
    parts = [getattr(model, n, None) for n in ("vocab_transform", "activation", "vocab_layer_norm")]
    if all(isinstance(p, nn.Module) for p in parts):
        dense, act, ln = cast("list[nn.Module]", parts)
        return Unembedding("masked_lm", None, layout.unembedding, lambda h, normed=False: unembed(ln(act(dense(h)))))
    if final is not None:  # EuroBERT (masked), CpmAnt (causal, its stack is an "encoder"): norm, then head
        return Unembedding(
            "masked_lm" if masked else "causal",
            norm_name,
            layout.unembedding,
            lambda h, normed_=False: unembed(normed(h, normed_)),
        )
    raise ValueError(f"{name}: cannot tell which modules form the masked-LM head around {layout.unembedding!r}")


def _scores(out: Any) -> torch.Tensor:
    """A head's logits: XLM's ``pred_layer`` returns them in a tuple ``(scores,)``."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _base_final_norm(model: nn.Module) -> str | None:
    """A final norm beside the encoder (:data:`_BASE_FINAL_NORMS`), which the layout does not see."""
    relative = _BASE_FINAL_NORMS.get(getattr(getattr(model, "config", None), "model_type", None) or "")
    prefix = getattr(model, "base_model_prefix", "")
    name = f"{prefix}.{relative}" if relative and prefix else None
    try:
        return name if name and isinstance(model.get_submodule(name), nn.Module) else None
    except AttributeError:
        return None


def _prediction_head(model: nn.Module, unembedding: str) -> nn.Module | None:
    """The module run between the final norm and the unembedding, where there is one: ModernBERT's
    ``head`` (masked LM) or ``lm_head`` (decoder), dense + activation + norm before ``decoder``;
    ELECTRA / ConvBERT's ``generator_predictions`` before ``generator_lm_head``."""
    names = ("head", "lm_head") if unembedding == "decoder" else _MLM_TRANSFORMS
    for attr in names:
        module = getattr(model, attr, None)
        if isinstance(module, nn.Module) and module is not getattr(model, unembedding, None):
            return module
    return None


def _causal(
    model: nn.Module,
    norm_name: str | None,
    last_block: str,
    head: str,
    unembed: Callable[[torch.Tensor], torch.Tensor],
    prediction: nn.Module | None,
) -> Unembedding:
    """Final norm (identity for a post-LN decoder), OPT's ``project_out`` or a prediction head
    (ModernBERT decoder), then the head."""
    name = type(model).__name__
    family = getattr(getattr(model, "config", None), "model_type", None)
    if norm_name is None and family not in _POST_LN_DECODERS:
        raise ValueError(f"{name}: no final norm found after the last block; llmdbg cannot apply the logit lens")
    norm = model.get_submodule(norm_name) if norm_name else nn.Identity()
    project: Any = None
    if family == "opt":  # OPTDecoder, the owner of the block list, keeps project_out (or None)
        project = getattr(model.get_submodule(last_block.rpartition(".")[0].rpartition(".")[0]), "project_out", None)
    project = project if isinstance(project, nn.Module) else (prediction or nn.Identity())

    def apply(h: torch.Tensor, normed: bool = False) -> torch.Tensor:
        return unembed(project(h if normed else norm(h)))

    return Unembedding("causal", norm_name, head, apply)
