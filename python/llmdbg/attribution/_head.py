"""Closed-form gradients of token log-probabilities at the input of the LM head.

For logits z = W h + c at one position and the target value F = log softmax(z)[y],
∂F/∂h = W[y] − Σ_v p_v W[v] with p = softmax(z); for a contrast F = z_y − z_f it is W[y] − W[f]. Autograd instead builds the full (V,)
gradient of every logit at every kept position and multiplies it back through W, once per target:
for a G-token continuation that is G backward passes through a (V × d) matrix per kept position,
which dominates the cost on language models whose vocabulary dwarfs their hidden size. Here the
G cotangents at the head input cost one (N, G, V) × (V, d) product, and only the transformer body
is differentiated by autograd.

Used only when it is exact: the head is a plain ``nn.Linear`` and the model returns its output
tensor itself as ``logits`` (no scaling, soft-capping or dtype cast after it); otherwise the
caller falls back to autograd through the head.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ._targets import Target


def output_head(model: nn.Module, target: Target) -> nn.Linear | None:
    """The model's LM head if the closed form applies to ``target``, else None."""
    if target.kind != "token" or not hasattr(model, "get_output_embeddings"):
        return None
    try:
        head = model.get_output_embeddings()  # type: ignore[operator]
    except (AttributeError, NotImplementedError):
        return None
    return head if type(head) is nn.Linear else None


@contextmanager
def tap(head: nn.Linear | None) -> Iterator[dict[str, Any]]:
    """Record the input and output of ``head``'s last call while the block runs."""
    seen: dict[str, Any] = {}
    if head is None:
        yield seen
        return

    def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        seen["input"], seen["output"] = args[0], output

    handle = head.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def cotangents(
    target: Target, outputs: Any, rows: torch.Tensor, head: nn.Linear, seen: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(h, C)``: the head input h (N, T_keep, d) and C (G, N, T_keep, d) with C[g] = ∂F_g/∂h,
    computed in float32 and cast to h's dtype; None when the model post-processes the head output."""
    logits = getattr(outputs, "logits", None)
    h = seen.get("input")
    if logits is None or h is None or seen.get("output") is not logits or not h.requires_grad:
        return None
    assert logits is not None and target.ids is not None and target.positions is not None  # token targets have both
    picked = target._picked(logits.detach(), rows).float()  # (N, G, V)
    ids = target.ids.to(logits.device)[rows.to(logits.device)]  # (N, G)
    weight = head.weight.detach()
    if target.foil is not None:  # ∂(z_y − z_f)/∂h = W[y] − W[f]
        grad = weight[ids].float() - weight[target.foil.to(logits.device)[rows.to(logits.device)]].float()
    else:
        probs = torch.softmax(picked, dim=-1)
        expected = torch.matmul(probs.to(weight.dtype), weight).float()  # (N, G, d): Σ_v p_v W[v]
        grad = weight[ids].float() - expected  # (N, G, d)
    n, g, _ = grad.shape
    pos = target.positions[rows.cpu()].to(h.device)
    if target.keep is not None and target.length is not None and h.shape[1] == target.keep:
        pos = pos - (target.length - target.keep)
    out = torch.zeros((g, *h.shape), dtype=h.dtype, device=h.device)
    out[torch.arange(g, device=h.device)[:, None], torch.arange(n, device=h.device)[None, :], pos.T] = grad.transpose(
        0, 1
    ).to(h.dtype)
    return h, out
