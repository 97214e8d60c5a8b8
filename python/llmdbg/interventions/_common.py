"""Plumbing shared by the logit lens, patching, ablation and the checks: input preparation,
eval mode that is always restored, per-module hooks, and head geometry."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..models import check_module, find_layout

__all__ = ["as_inputs", "eval_mode", "first_tensor", "forward", "head_geometry", "hooks", "replace_first"]


def as_inputs(inputs: Any, tokenizer: Any = None, *, name: str = "inputs",
              device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """A dict of tensors for ``model(**inputs)``.

    Accepts a mapping (``BatchEncoding``) of tensors, an ``input_ids`` tensor (B, T) or (T,), or
    text (str or list of str) together with ``tokenizer`` (padded batch).
    """
    if isinstance(inputs, (str, list, tuple)) and (isinstance(inputs, str) or all(isinstance(t, str) for t in inputs)):
        if tokenizer is None:
            raise TypeError(f"{name} is text; pass tokenizer= to encode it, or pass encoded inputs")
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts:
            raise ValueError(f"{name} is empty")
        inputs = dict(tokenizer(texts, return_tensors="pt", padding=True))
    elif isinstance(inputs, torch.Tensor):
        if inputs.dtype not in (torch.int64, torch.int32) or inputs.dim() not in (1, 2):
            raise TypeError(f"{name} as a tensor must be integer input_ids of shape (B, T) or (T,)")
        inputs = {"input_ids": inputs if inputs.dim() == 2 else inputs[None]}
    elif isinstance(inputs, Mapping):
        inputs = dict(inputs)
    else:
        raise TypeError(f"{name} must be a dict of tensors, an input_ids tensor, or text with a tokenizer; "
                        f"got {type(inputs).__name__}")
    if "input_ids" not in inputs and "inputs_embeds" not in inputs:
        raise ValueError(f"{name} needs 'input_ids' (or 'inputs_embeds'); got keys {sorted(inputs)}")
    if device is not None:
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return inputs


def token_shape(inputs: Mapping[str, Any]) -> tuple[int, int]:
    x = inputs["input_ids"] if "input_ids" in inputs else inputs["inputs_embeds"]
    return int(x.shape[0]), int(x.shape[1])


def device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` for the block; every module's ``training`` flag restored afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


@contextlib.contextmanager
def hooks(model: nn.Module, forward: Mapping[str, Any] | None = None,
          pre: Mapping[str, Any] | None = None) -> Iterator[None]:
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


# Attention output projections, relative to the block (first match wins); the fallback searches
# the attention module for a projection back to the hidden size.
_OUT_PROJ = ("self_attn.o_proj", "attn.c_proj", "attention.dense", "attention.output.dense",
             "attention.out_lin", "self_attention.dense", "attn.out_proj", "self_attn.out_proj")
_OUT_RE = re.compile(r"(^|\.)(o_proj|out_proj|c_proj|out_lin|dense|o|wo|proj)$")


def head_geometry(model: nn.Module) -> tuple[list[str], int, int]:
    """``(out_proj_names, n_heads, head_dim)``: per layer, the module whose input is the
    concatenation of head outputs (B, T, H * d), plus H and d.

    Raises
    ------
    ValueError
        If the number of heads or the projections cannot be determined.
    """
    check_module(model)
    layout = find_layout(model)
    config = getattr(model, "config", None)
    heads = next((getattr(config, k) for k in ("num_attention_heads", "n_head", "num_heads", "n_heads")
                  if isinstance(getattr(config, k, None), int)), None)
    if heads is None:
        raise ValueError(f"{type(model).__name__}: cannot find the number of attention heads in its config")
    modules = dict(model.named_modules())
    names = []
    for block, attn in zip(layout.blocks, layout.attention):
        found = next((f"{block}.{s}" for s in _OUT_PROJ if f"{block}.{s}" in modules), None)
        if found is None:
            cands = [n for n in modules if n.startswith(attn + ".") and _OUT_RE.search(n)
                     and hasattr(modules[n], "weight")]
            found = cands[-1] if cands else None
        if found is None:
            raise ValueError(f"{type(model).__name__}: no attention output projection found in block {block!r}")
        names.append(found)
    proj = modules[names[0]]
    width = getattr(proj, "in_features", None)
    if width is None and hasattr(proj, "weight"):  # GPT-2 Conv1D stores (in, out)
        width = proj.weight.shape[0] if type(proj).__name__ == "Conv1D" else proj.weight.shape[1]
    if not width or width % heads:
        raise ValueError(f"{type(model).__name__}: projection {names[0]!r} input width {width} is not a multiple "
                         f"of {heads} heads")
    return names, heads, width // heads
