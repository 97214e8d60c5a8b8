"""What llmdbg can hook: whether a module is (or holds) a transformers model, the transformers model
inside a wrapper (``torch.compile``, DDP/FSDP, PEFT, a user's module), running compiled modules
eagerly so that hooks fire, whether weights are materialised, and "did you mean" suggestions for
module names that do not exist."""

from __future__ import annotations

import contextlib
import difflib
import itertools
import re
import sys
from collections.abc import Iterator

from torch import nn

__all__ = [
    "check_module",
    "closest_names",
    "hf_model",
    "hf_roots",
    "hooks_fire",
    "is_compiled",
    "is_hf_model",
    "unwrap",
]

# Wrappers whose only child is the wrapped model, reached through these attributes.
_TRANSPARENT = {
    "OptimizedModule": "_orig_mod",  # torch.compile(model)
    "DistributedDataParallel": "module",
    "DataParallel": "module",
    "FullyShardedDataParallel": "module",  # FSDP1; FSDP2's fully_shard keeps the model's own class
}


def is_hf_model(model: object) -> bool:
    """Whether ``model`` is a ``transformers.PreTrainedModel``.

    Returns False without importing transformers when it has not been imported yet: a
    model built from transformers classes would have imported it already.
    """
    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile``'s ``OptimizedModule`` and DDP/DataParallel/FSDP wrappers
    (nested ones too); ``model`` itself otherwise. Module names inside differ only by the wrapper's
    prefix (``_orig_mod.``, ``module.``)."""
    while True:
        attr = _TRANSPARENT.get(type(model).__name__)
        inner = getattr(model, attr, None) if attr else None
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def hf_model(model: nn.Module) -> nn.Module | None:
    """The transformers ``PreTrainedModel`` that does the work of ``model``, or None.

    ``model`` itself, or the one inside a transparent wrapper (:func:`unwrap`), a PEFT
    ``PeftModel`` (``base_model.model``) or a user's module holding exactly one transformers model
    (a custom head, an ``nn.Module`` that forwards to it). Its config and class tell the task, the
    vocabulary and the special tokens; the wrapper is what the user calls.
    """
    if not isinstance(model, nn.Module):
        return None
    roots = hf_roots(unwrap(model))
    return roots[0] if len(roots) == 1 else None


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` or a module inside it runs through ``torch.compile`` (an
    ``OptimizedModule``, or ``module.compile()`` in place)."""
    return any(
        type(m).__name__ == "OptimizedModule" or getattr(m, "_compiled_call_impl", None) is not None
        for m in model.modules()
    )


@contextlib.contextmanager
def hooks_fire(model: nn.Module) -> Iterator[None]:
    """Within the block, compiled code runs eagerly, so hooks registered now fire.

    A graph compiled by ``torch.compile`` does not guard on module hooks
    (``torch._dynamo.config.skip_nnmodule_hook_guards``): once the model (or another instance of
    its class) has run compiled, hooks added later are silently skipped. Captures, ablations and
    patches therefore run a compiled model eagerly (``torch.compiler.set_stance("force_eager")``,
    which is process-wide while the block lasts); uncompiled models are untouched.
    """
    if not is_compiled(model):
        yield
        return
    import torch

    with torch.compiler.set_stance("force_eager"):
        yield


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
