"""Head geometry: the attention output projections whose input is the concatenation of the
heads' outputs, the number of heads and the head size.

A projection wrapped by an adapter (PEFT's LoRA, DoRA, IA3, ... layers keep the original as
``base_layer``) is still the projection: its input feeds the base weight and the adapter alike, so
gating heads there gates both. Its width is read from the innermost base layer."""

from __future__ import annotations

import re

import torch
from torch import nn

from .layout import check_module, find_layout, hf_model, require_attention

__all__ = ["head_geometry", "input_width"]


# Attention output projections, relative to the block (first match wins); the fallback searches
# the attention module for a projection back to the hidden size.
_OUT_PROJ = (
    "self_attn.o_proj",
    "attn.c_proj",
    "attention.dense",
    "attention.output.dense",
    "attention.out_lin",
    "self_attention.dense",
    "attn.out_proj",
    "self_attn.out_proj",
    "attn.Wo",  # ModernBERT
)
_OUT_RE = re.compile(r"(^|\.)(o_proj|out_proj|c_proj|out_lin|dense|o|wo|proj)$", re.I)
# Modules inside an adapter-wrapped projection (PEFT): never the projection itself.
_ADAPTER_PART_RE = re.compile(r"\.(base_layer|lora_[A-Za-z_]+|hada_\w+|lokr_\w+|ia3_\w+)(\.|$)")


def config_int(config: object, *keys: str) -> int | None:
    """The first of ``keys`` that ``config`` holds as an int (configs name one value many ways)."""
    return next((getattr(config, k) for k in keys if isinstance(getattr(config, k, None), int)), None)


def config_heads(config: object, owner: str) -> int:
    """The number of (query) attention heads in a transformers config; ``owner`` names the model
    in the error.

    Raises
    ------
    ValueError
        If the config names none.
    """
    heads = config_int(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    if heads is None:
        raise ValueError(f"{owner}: cannot find the number of attention heads in its config")
    return heads


def head_geometry(model: nn.Module) -> tuple[list[str], int, int]:
    """``(out_proj_names, n_heads, head_dim)``: per attention layer, the module whose input is
    the concatenation of head outputs (B, T, H * d), plus H and d.

    Layers count attention layers only: a hybrid's state-space layers have no heads, so layer
    ``i`` is the ``i``-th attention layer (``find_layout(model).attention_blocks[i]``).

    Raises
    ------
    ValueError
        If the model has no attention (a state-space model), or the number of heads or the
        projections cannot be determined.
    """
    check_module(model)
    layout = find_layout(model)
    require_attention(model, layout, "head ablation and head importance")
    hf = hf_model(model)
    heads = config_heads(getattr(hf if hf is not None else model, "config", None), type(model).__name__)
    modules = dict(model.named_modules())
    names = []
    for block, attn in zip(layout.attention_blocks, layout.attention):
        found = next((f"{block}.{s}" for s in _OUT_PROJ if f"{block}.{s}" in modules), None)
        if found is None:
            cands = [
                n
                for n in modules
                if n.startswith(attn + ".")
                and _OUT_RE.search(n)
                and not _ADAPTER_PART_RE.search(n[len(attn) :])
                and hasattr(modules[n], "weight")
            ]
            found = cands[-1] if cands else None
        if found is None:
            raise ValueError(f"{type(model).__name__}: no attention output projection found in block {block!r}")
        names.append(found)
    width = input_width(modules[names[0]])
    if not width or width % heads:
        raise ValueError(
            f"{type(model).__name__}: projection {names[0]!r} input width {width} is not a multiple of {heads} heads"
        )
    return names, heads, width // heads


def input_width(proj: nn.Module) -> int | None:
    """The input width of a linear projection, seen through adapter wrappers (``base_layer``)."""
    while isinstance(inner := getattr(proj, "base_layer", None), nn.Module):
        proj = inner
    width = getattr(proj, "in_features", None)
    if isinstance(width, int):
        return width
    weight = getattr(proj, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    return int(weight.shape[0] if type(proj).__name__ == "Conv1D" else weight.shape[1])  # Conv1D stores (in, out)
