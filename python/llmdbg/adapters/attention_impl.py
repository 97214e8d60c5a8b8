"""The attention implementation of a transformers model: switching it to eager for the duration
of a capture (always restored), and whether a module returns its weights only when asked."""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from .layout import hf_roots

__all__ = ["eager_attention", "needs_output_attentions_flag"]


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Switch a transformers model to eager attention for the duration of the block.

    Only eager attention materialises the weights; SDPA and flash kernels never do. On
    exit, also when the body raises, the original implementation of the model and of
    every sub-config (T5 stacks, ``text_config``, ...) is restored exactly. Nested use is
    safe: an inner context sees eager everywhere and does nothing. A plain module that
    wraps transformers models (a custom head, a PEFT wrapper) has those switched.

    Raises
    ------
    TypeError
        If ``model`` neither is nor contains a transformers ``PreTrainedModel``.
    RuntimeError
        If the model refuses the switch (old-style attention classes chosen at load time).
    """
    targets = hf_roots(model)
    if not targets:
        raise TypeError(
            f"{type(model).__name__} is not a Hugging Face transformers model; attention "
            "capture needs a transformers PreTrainedModel whose attention implementation can "
            "be switched to 'eager' (for other models, hook modules that return weights)"
        )
    saved = [(cfg, cfg._attn_implementation_internal) for t in targets for cfg in _attn_configs(t)]
    if all(value == "eager" for _, value in saved):
        yield model
        return
    originals = [(t, t.config._attn_implementation) for t in targets]
    try:
        for target, _ in originals:
            target.set_attn_implementation("eager")
            if target.config._attn_implementation != "eager":  # transformers only logs this
                raise RuntimeError(
                    f"{type(target).__name__} cannot switch attention implementation at run time; "
                    "load it with attn_implementation='eager' to capture attention"
                )
        yield model
    finally:
        # set_attn_implementation(str) spreads one value over every sub-model, so it alone
        # cannot restore a mixed setup; writing back each saved value makes it exact.
        for target, original in originals:
            if isinstance(original, str):
                target.set_attn_implementation(original)
        for cfg, value in saved:
            cfg._attn_implementation_internal = value


_GATED_RE = re.compile(r"\bif\b[^\n]*\boutput_attentions\b|\boutput_attentions\s+else\b")


def _gated(function: Any) -> bool | None:
    """Whether a function's source tests the flag; None without readable source."""
    try:
        return bool(_GATED_RE.search(inspect.getsource(function)))
    except (OSError, TypeError):
        return None


def _returns_weights_only_when_asked(module: nn.Module) -> bool:
    """The module's forward takes ``output_attentions`` and the flag gates the weights, in the
    forward itself or where it hands the flag on: a helper method of the class (OpenAI GPT's
    ``_attn``) or a module inside it (BERT-style ``attention.self``)."""
    if "output_attentions" not in inspect.signature(module.forward).parameters:
        return False
    gated = _gated(module.forward)
    if gated is None:  # no source: trust the parameter
        return True
    if gated:
        return True
    helpers = [
        f
        for klass in type(module).__mro__
        if klass not in (nn.Module, object)
        for name, f in vars(klass).items()
        if inspect.isfunction(f) and name != "forward"
    ]
    inner = [m.forward for m in module.modules() if m is not module]
    return any("output_attentions" in _parameters(f) and _gated(f) for f in helpers + inner)


def _parameters(function: Any) -> Any:
    try:
        return inspect.signature(function).parameters
    except (TypeError, ValueError):
        return {}


def needs_output_attentions_flag(model: nn.Module, attention_modules: Iterable[str]) -> bool:
    """True when an attention module returns its weights only if ``output_attentions=True``
    reaches it (T5 in transformers 5.17, for instance: ``if output_attentions: outputs += ...``).

    Capture then asks the model for ``output_attentions=True``, and the model's output carries the
    maps as well, which costs O(L·H·T²) memory. Most modules in transformers 5.2x return weights
    under eager attention anyway; some still accept the parameter without using it (GPT-2 in
    5.24), so the test reads the forward's source for a condition on the flag, and falls back to
    the parameter's presence when no source is available.
    """
    return any(_returns_weights_only_when_asked(model.get_submodule(n)) for n in attention_modules)


def _attn_configs(model: nn.Module) -> list:
    """Every config whose ``_attn_implementation`` the switch can touch, deduplicated."""
    found, todo = {}, [model.config] + [getattr(m, "config", None) for m in model.modules()]
    while todo:
        cfg = todo.pop()
        if cfg is None or id(cfg) in found or not hasattr(cfg, "_attn_implementation_internal"):
            continue
        found[id(cfg)] = cfg
        todo.extend(getattr(cfg, key, None) for key in getattr(cfg, "sub_configs", {}) or {})
    return list(found.values())
