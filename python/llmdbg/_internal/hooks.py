"""Temporary forward hooks by module name, and reading or replacing the hidden-state tensor of
a module's output."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["first_tensor", "forward", "hooks", "replace_first"]


@contextlib.contextmanager
def hooks(
    model: nn.Module, forward: Mapping[str, Any] | None = None, pre: Mapping[str, Any] | None = None
) -> Iterator[None]:
    """Register forward hooks (``hook(module, args, output)``) and forward pre-hooks
    (``hook(module, args)``) by module name; all removed on exit, also on exceptions."""
    handles = []
    try:
        for name, fn in (forward or {}).items():
            handles.append(model.get_submodule(name).register_forward_hook(fn))
        for name, fn in (pre or {}).items():
            handles.append(model.get_submodule(name).register_forward_pre_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def forward(model: nn.Module, inputs: Mapping[str, Any]) -> Any:
    return model(**inputs)


def first_tensor(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (a tensor, or the first element of a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find a hidden-state tensor in a module output of type {type(output).__name__}")


def replace_first(output: Any, new: torch.Tensor) -> Any:
    """``output`` with its hidden-state tensor replaced by ``new`` (same container type)."""
    if isinstance(output, torch.Tensor):
        return new
    return type(output)((new, *output[1:])) if isinstance(output, tuple) else [new, *output[1:]]
