"""What llmdbg can hook: whether a module is (or holds) a transformers model, whether its weights
are materialised, and "did you mean" suggestions for module names that do not exist."""

from __future__ import annotations

import difflib
import itertools
import re
import sys

from torch import nn

__all__ = ["check_module", "closest_names", "hf_roots", "is_hf_model"]


def is_hf_model(model: object) -> bool:
    """Whether ``model`` is a ``transformers.PreTrainedModel``.

    Returns False without importing transformers when it has not been imported yet: a
    model built from transformers classes would have imported it already.
    """
    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def check_module(model: object) -> nn.Module:
    """Return ``model`` if llmdbg can hook it, raise otherwise.

    Raises
    ------
    TypeError
        If ``model`` is not a ``torch.nn.Module``.
    ValueError
        If the model is offloaded by accelerate or has parameters/buffers on the meta
        device: hooks would see placeholders instead of activations.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    cls = type(model).__name__
    device_map = getattr(model, "hf_device_map", None)
    if isinstance(device_map, dict):
        places = {str(v) for v in device_map.values()}
        if "disk" in places or ("cpu" in places and len(places) > 1):
            off = [k for k, v in device_map.items() if str(v) in ("cpu", "disk")]
            raise ValueError(
                f"{cls} is offloaded (hf_device_map puts {off[:3]} on cpu/disk); llmdbg "
                "needs materialised weights: use a device_map without offload"
            )
    # One traversal for both checks: this runs on every capture, so it must stay cheap.
    for name, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        if hook is not None:
            for h in getattr(hook, "hooks", (hook,)):  # accelerate's SequentialHook nests hooks
                if getattr(h, "offload", False) or getattr(h, "weights_map", None) is not None:
                    raise ValueError(
                        f"module {name or cls!r} is offloaded by accelerate; llmdbg needs "
                        "materialised weights: load the model without offloading"
                    )
        for local, tensor in itertools.chain(module._parameters.items(), module._buffers.items()):
            if tensor is not None and tensor.is_meta:
                raise ValueError(
                    f"{_join(name, local)!r} of {cls} is on the meta device; llmdbg needs "
                    "materialised weights (load real weights, not init_empty_weights)"
                )
    return model


def hf_roots(model: nn.Module) -> list:
    """``[model]`` for a transformers model, else the outermost ones inside it."""
    if is_hf_model(model) or not isinstance(model, nn.Module):
        return [model] if is_hf_model(model) else []
    roots: list[str] = []
    for name, module in model.named_modules():
        if is_hf_model(module) and not any(name.startswith(r + ".") for r in roots):
            roots.append(name)
    return [model.get_submodule(r) for r in roots]


def closest_names(model: nn.Module, pattern: str, n: int = 5) -> list[str]:
    """Up to ``n`` module names resembling ``pattern``, for "did you mean" messages.

    Names differing only in layer numbers are collapsed to their first occurrence, so
    suggestions are not ``layers.0.mlp``, ``layers.1.mlp``, ...
    """
    seen, names = set(), []
    for name, _ in model.named_modules():
        key = re.sub(r"\d+", "#", name)
        if name and key not in seen:
            seen.add(key)
            names.append(name)
    plain = pattern.replace("*", "").replace("?", "").strip(".")
    tail = plain.rsplit(".", 1)[-1]

    def score(name: str) -> float:
        # Patterns are often a suffix ("mlpp") of a long qualified name, so also compare tails.
        full = difflib.SequenceMatcher(None, plain, name).ratio()
        end = difflib.SequenceMatcher(None, tail, name.rsplit(".", 1)[-1]).ratio()
        return max(full, 0.9 * end)

    ranked = sorted(((score(m), i, m) for i, m in enumerate(names)), key=lambda t: (-t[0], t[1]))
    return [m for s, _, m in ranked[:n] if s >= 0.5]


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)
