"""Gradient-weighted attention rollout (Chefer, Gur & Wolf 2021, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers").

Plain rollout treats every head alike. The gradient-weighted rule keeps, per layer, only the
attention that *increases* the target: Ā_l = mean_h[(∇_{A_l} y ⊙ A_l)⁺], and accumulates
relevance with the residual, R ← R + Ā_l · R starting from R = I, bottom layer first. The row of
the token that produced the target (the [CLS] token of a classifier, the last position of a
causal LM) is the relevance of every input token; it is not normalised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .._internal.inputs import as_inputs
from .._internal.modes import device_of, gradient_mode
from .._internal.pooling import last_real_index
from ..adapters.attention_calls import (
    AttentionCall,
    kernel_problem,
    recording_attention,
)
from ..adapters.layout import find_layout, hf_model, require_attention
from ..adapters.modules import hooks_fire
from ..tracing.api import capture
from ..tracing.attention_setup import choose_recompute
from ..tracing.recompute import recompute
from ._inputs import stack_attention_modules


@dataclasses.dataclass
class Relevance:
    """Result of :func:`gradient_rollout`.

    Attributes
    ----------
    matrix : numpy.ndarray
        ``(B, T, T)`` float32 relevance matrix R (row i: how much each token feeds position i).
    scores : numpy.ndarray
        ``(B, T)`` float32, the row of R at ``position`` for each sequence: token relevance.
    rows : numpy.ndarray
        ``(B,)`` int64, the position whose row was read (``position``).
    target : numpy.ndarray or None
        ``(B,)`` int64 class or token ids the scalar was built from (None for a callable target).
    value : numpy.ndarray
        ``(B,)`` float64, the target quantity per sequence (logit, log-probability or callable
        output).
    """

    matrix: np.ndarray
    scores: np.ndarray
    rows: np.ndarray
    target: np.ndarray | None
    value: np.ndarray


def _per_example(value: Any, b: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.long).reshape(-1)
    if t.numel() == 1:
        t = t.expand(b)
    if t.numel() != b:
        raise ValueError(f"{what} must be one int or one per sequence ({b}), got {t.numel()} values")
    return t


def _target_value(outputs: Any, target: Any, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The per-sequence scalar to explain and the ids it used; ``rows`` (B,) are the positions of
    the logits' sequence whose prediction is explained (language models)."""
    if callable(target):
        value = target(outputs)
        value = torch.as_tensor(value) if not isinstance(value, torch.Tensor) else value
        if value.dim() > 1:
            raise ValueError(
                f"target callable must return a scalar or one value per sequence, got shape {tuple(value.shape)}"
            )
        return value.reshape(-1).to(torch.float64), None
    logits = getattr(outputs, "logits", None)
    if logits is None:
        raise ValueError(
            "the model returns no logits; pass target=callable(outputs) -> (B,) values "
            "(e.g. lambda out: out.last_hidden_state[:, 0].norm(dim=-1))"
        )
    b = logits.shape[0]
    if logits.dim() == 2:  # sequence classification: the class logit, as in Captum
        ids = logits.argmax(-1).cpu() if target is None else _per_example(target, b, "target")
        return logits.gather(1, ids.to(logits.device)[:, None]).squeeze(1).to(torch.float64), ids
    if logits.dim() == 3:  # language model: the log-probability of the token at each row
        per_row = logits[torch.arange(b, device=logits.device), rows.to(logits.device)]
        logp = torch.log_softmax(per_row.to(torch.float32), dim=-1)
        ids = per_row.argmax(-1).cpu() if target is None else _per_example(target, b, "target")
        return logp.gather(1, ids.to(logp.device)[:, None]).squeeze(1).to(torch.float64), ids
    raise ValueError(f"cannot pick a target from logits of shape {tuple(logits.shape)}; pass a callable")


def gradient_rollout(
    model: torch.nn.Module,
    inputs: Any,
    *,
    tokenizer: Any = None,
    target: int | Sequence[int] | Callable[[Any], Any] | None = None,
    position: int | Sequence[int] | None = None,
    stack: str | None = None,
    attention_impl: str = "auto",
) -> Relevance:
    """Gradient-weighted attention rollout (Chefer et al. 2021b) for a Hugging Face model.

    One forward records every layer's attention, one ``torch.autograd.grad`` call gives the
    gradients with respect to the target (parameter ``.grad`` fields are not touched), then
    Ā_l = mean_h[(∇A_l ⊙ A_l)⁺] and R ← R + Ā_l R from R = I, in float64.

    With the recompute path (``attention_impl="auto"`` on a recordable model) the model keeps its
    own SDPA/flash kernel: the maps are recomputed from the recorded queries and keys, and since
    each head's output is ``O = A V``, the gradient of the target with respect to ``A`` is
    ``∇O · Vᵀ``, from the gradient at the kernel's output. Otherwise (``"eager"``) the model runs
    eager attention and the maps' own gradients are read.

    Parameters
    ----------
    model : transformers model
        Run in eval mode (a model in train mode is warned about); every module's mode and every
        parameter's ``requires_grad`` are restored afterwards.
    inputs : str, list of str, dict, torch.Tensor or numpy.ndarray
        Text (with ``tokenizer``), a tokenizer encoding / dict of tensors, or ``input_ids``
        (B, T) or (T,).
    tokenizer : transformers tokenizer, optional
        Encodes text ``inputs`` (one padded batch).
    target : int, sequence of int, callable or None
        Sequence classifiers (logits ``(B, C)``): the class whose logit is explained (default:
        the predicted class). Language models (logits ``(B, T, V)``): the token id whose
        log-probability at ``position`` is explained (default: the most likely token). A
        callable ``f(outputs) -> (B,)`` explains any scalar (required for models without logits,
        e.g. a sentence encoder).
    position : int or sequence of int, optional
        Position (one for all sequences, or one per sequence) whose relevance row is read and,
        for language models, whose prediction is explained. Default: 0 ([CLS]) for encoder
        classifiers, the last real token otherwise. With ``stack="encoder"`` on an
        encoder-decoder language model the row is an encoder position while the prediction
        explained is the decoder's at its last real token (the encoder predicts nothing itself).
    stack : {"encoder", "decoder"}, optional
        Encoder-decoder models: which stack's self-attention to use (cross-attention is not
        propagated). Required for them. Hybrid models (Jamba, ...) roll out over their attention
        layers only; state-space models (Mamba) have no attention and raise.
    attention_impl : {"auto", "recompute", "eager"}
        As in :func:`llmdbg.capture`.

    Returns
    -------
    Relevance
    """
    batch = as_inputs(inputs, tokenizer, device=device_of(model))
    layout = find_layout(model)
    require_attention(model, layout, "gradient_rollout")
    names = stack_attention_modules(layout, stack)
    ids = batch.get("decoder_input_ids" if stack == "decoder" else "input_ids")
    if not isinstance(ids, torch.Tensor):
        raise ValueError("inputs must contain input_ids (and decoder_input_ids for stack='decoder')")
    b, t = ids.shape
    mask = batch.get("decoder_attention_mask" if stack == "decoder" else "attention_mask")
    if position is None:
        encoder_only = list(layout.stacks) == ["encoder"]
        row_ids = (
            torch.zeros(b, dtype=torch.long)
            if encoder_only and getattr(model, "num_labels", None) and not callable(target)
            else (torch.full((b,), t - 1, dtype=torch.long) if mask is None else last_real_index(mask.cpu()))
        )
    else:
        row_ids = _per_example(position, b, "position")
        if ((row_ids < -t) | (row_ids >= t)).any():
            raise ValueError(f"position must lie in [-{t}, {t}), got {row_ids.tolist()}")
        row_ids = row_ids % t
    predicted = _prediction_rows(batch, stack, row_ids)

    # Every embedding that feeds a stack (an encoder-decoder's decoder has its own module).
    handles = [model.get_submodule(n).register_forward_hook(_needs_grad) for n in _input_embeddings(model, layout)]
    try:
        with gradient_mode(model), hooks_fire(model):
            named = {n: model.get_submodule(n) for n in names}
            if choose_recompute(hf_model(model) or model, attention_impl, named, caller="llmdbg.gradient_rollout"):
                value, used, cams = _recomputed_cams(model, batch, names, target, predicted)
            else:
                value, used, cams = _eager_cams(model, batch, names, target, predicted)
    finally:
        for handle in handles:
            handle.remove()

    relevance = np.broadcast_to(np.eye(t), (b, t, t)).copy()
    for cam in cams:
        relevance = relevance + cam @ relevance
    matrix = relevance.astype(np.float32)
    picked = matrix[np.arange(b), row_ids.numpy()]
    return Relevance(
        matrix, picked, row_ids.numpy(), None if used is None else used.numpy(), value.detach().cpu().numpy()
    )


def _prediction_rows(batch: dict[str, Any], stack: str | None, rows: torch.Tensor) -> torch.Tensor:
    """(B,) positions of the logits' sequence whose prediction is explained: the relevance rows,
    except for an encoder-decoder's encoder stack, whose logits are the decoder's (its last real
    token)."""
    dec = batch.get("decoder_input_ids")
    if stack != "encoder" or not isinstance(dec, torch.Tensor):
        return rows
    b, t = dec.shape
    mask = batch.get("decoder_attention_mask")
    return torch.full((b,), t - 1, dtype=torch.long) if mask is None else last_real_index(mask.cpu())


def _input_embeddings(model: torch.nn.Module, layout: Any) -> list[str]:
    """The word embedding of the layout and every embedding sharing its weight (T5's and BART's
    decoder embed the decoder tokens with their own module)."""
    if not layout.embeddings:
        return []
    weight = getattr(model.get_submodule(layout.embeddings), "weight", None)
    shared = [
        n
        for n, m in model.named_modules()
        if n != layout.embeddings and isinstance(m, torch.nn.Embedding) and weight is not None and m.weight is weight
    ]
    return [layout.embeddings, *shared]


def _needs_grad(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    # Frozen models: make the graph start at the embeddings so the attention gets gradients.
    return output if output.requires_grad else output.detach().requires_grad_(True)


def _cam(grad: torch.Tensor, a: torch.Tensor) -> np.ndarray:
    """mean_h[(∇A ⊙ A)⁺], (B, T, T) float64."""
    return (grad.detach().to(torch.float64) * a.detach().to(torch.float64)).clamp_min(0).mean(1).cpu().numpy()


def _eager_cams(model, batch, names, target, row_ids):
    maps: dict[str, torch.Tensor] = {}
    wanted = set(names)

    def keep(layer: int, name: str, weights: torch.Tensor) -> None:
        if name in wanted:
            maps[name] = weights

    with capture(model, attentions=True, attention_consumer=keep):
        outputs = model(**batch)
        value, used = _target_value(outputs, target, row_ids)
        missing = [n for n in names if n not in maps or not maps[n].requires_grad]
        if missing:
            raise RuntimeError(f"no differentiable attention maps from {missing[:3]}")
        grads = torch.autograd.grad(value.sum(), [maps[n] for n in names])
    return value, used, [_cam(g, maps[n]) for n, g in zip(names, grads)]


def _recomputed_cams(model, batch, names, target, row_ids):
    calls: dict[str, tuple[AttentionCall, Any]] = {}

    def record(call: AttentionCall) -> Any:
        def after(output: Any) -> None:
            calls[call.name] = (call, output[0] if isinstance(output, (tuple, list)) else output)

        return after

    with recording_attention(hf_model(model) or model, {n: model.get_submodule(n) for n in names}, record):
        outputs = model(**batch)
    value, used = _target_value(outputs, target, row_ids)
    missing = [n for n in names if n not in calls or not calls[n][1].requires_grad]
    if missing:
        raise RuntimeError(f"no differentiable attention output from {missing[:3]}")
    grads = torch.autograd.grad(value.sum(), [calls[n][1] for n in names])
    cams = []
    for name, grad_out in zip(names, grads):  # one layer's (B, H, T, T) at a time
        call, _ = calls[name]
        problem = kernel_problem(call)
        probs = torch.from_numpy(recompute(problem, maps=True)["maps"]).to(torch.float64)  # (B, H, Tq, Tk)
        hq = probs.shape[1]
        v = call.value.detach().to(torch.float64)[:, :, : problem.shape[3]].cpu()  # SDPA's key crop
        v = v.repeat_interleave(hq // v.shape[1], dim=1)  # (B, H, Tk, dv)
        g = grad_out.detach().to(torch.float64).cpu().transpose(1, 2)  # (B, T, H, dv) -> (B, H, T, dv)
        cams.append(_cam(g @ v.transpose(-1, -2), probs))
    return value, used, cams
