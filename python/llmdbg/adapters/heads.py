"""Head geometry: the attention output projections whose input is the concatenation of the
heads' outputs, the number of heads and the head size."""

from __future__ import annotations

import re

from torch import nn

from .layout import check_module, find_layout

__all__ = ["head_geometry"]


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
)
_OUT_RE = re.compile(r"(^|\.)(o_proj|out_proj|c_proj|out_lin|dense|o|wo|proj)$")


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
    """``(out_proj_names, n_heads, head_dim)``: per layer, the module whose input is the
    concatenation of head outputs (B, T, H * d), plus H and d.

    Raises
    ------
    ValueError
        If the number of heads or the projections cannot be determined.
    """
    check_module(model)
    layout = find_layout(model)
    heads = config_heads(getattr(model, "config", None), type(model).__name__)
    modules = dict(model.named_modules())
    names = []
    for block, attn in zip(layout.blocks, layout.attention):
        found = next((f"{block}.{s}" for s in _OUT_PROJ if f"{block}.{s}" in modules), None)
        if found is None:
            cands = [
                n for n in modules if n.startswith(attn + ".") and _OUT_RE.search(n) and hasattr(modules[n], "weight")
            ]
            found = cands[-1] if cands else None
        if found is None:
            raise ValueError(f"{type(model).__name__}: no attention output projection found in block {block!r}")
        names.append(found)
    proj = modules[names[0]]
    width = getattr(proj, "in_features", None)
    if width is None and hasattr(proj, "weight"):  # GPT-2 Conv1D stores (in, out)
        width = proj.weight.shape[0] if type(proj).__name__ == "Conv1D" else proj.weight.shape[1]
    if not width or width % heads:
        raise ValueError(
            f"{type(model).__name__}: projection {names[0]!r} input width {width} is not a multiple of {heads} heads"
        )
    return names, heads, width // heads
