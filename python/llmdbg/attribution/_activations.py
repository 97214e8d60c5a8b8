"""Elementwise activations differentiated once per forward instead of once per backward.

Explaining G targets takes G backward passes over one forward's graph. Each pass re-derives the
MLP activation's derivative from its saved input: for GPT-2's tanh-approximated GELU that is a
chain of elementwise pow/tanh/mul kernels over (rows × T × 4d) elements, about a third of a
backward pass on CPU. Here the activation module's output is re-attached to the graph through a
node whose backward is a single multiplication by the derivative, computed once in the forward
(by autograd itself, on the same input, so the values are the ones autograd would use).

Only modules known to be elementwise qualify (torch's and transformers' activation classes, checked
to keep the shape); everything else is left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

_TORCH_ELEMENTWISE = (nn.GELU, nn.SiLU, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Mish, nn.ELU, nn.LeakyReLU, nn.Softplus)


def _elementwise(module: nn.Module) -> bool:
    if isinstance(module, _TORCH_ELEMENTWISE):
        return True
    cls = type(module)
    # transformers.activations: GELU variants, SiLU, QuickGELU, ReLU², ... (not GLU, which halves a dim)
    return cls.__module__ == "transformers.activations" and "GLU" not in cls.__name__


class _TimesDerivative(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor, derivative: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(derivative)
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (derivative,) = ctx.saved_tensors
        return grad * derivative, None, None


def _hook(module: nn.Module, args: tuple, output: Any) -> Any:
    x = args[0] if args else None
    if (
        not isinstance(x, torch.Tensor)
        or not isinstance(output, torch.Tensor)
        or not x.requires_grad
        or not torch.is_grad_enabled()
        or output.shape != x.shape
    ):
        return None
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        yr = type(module).forward(module, xr)  # the module's own function, without re-running hooks
        (derivative,) = torch.autograd.grad(yr, xr, torch.ones_like(yr))
    return _TimesDerivative.apply(x, output.detach(), derivative)


@contextlib.contextmanager
def derivative_once(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """While the block runs, elementwise activation modules of ``model`` store their derivative
    in the forward; yields how many modules were hooked (hooks removed on exit, also on errors)."""
    handles = [m.register_forward_hook(_hook) for m in model.modules() if enabled and _elementwise(m)]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()
