"""Families whose computation a feature cannot follow, refused by name instead of answered wrongly.

Some architectures do not have one residual stream of one state per input token passing through a
list of blocks: they loop a stage several times, keep a prompt prefix, run time-major, pool the
sequence, or compute attention that is not a (B, H, T, T) softmax map. The layout search finds
*some* modules in them, and features built on those modules would return plausible numbers that
do not match the model. ``UNSUPPORTED`` lists such (family, feature) pairs with the reason; every
entry is checked by the model-zoo suite (``tests/python/zoo``), which also renders the support
matrix in ``docs/support.md``.

Features: ``"blocks"`` (the ``"blocks"`` role and ``hidden_states=True``, hence everything that
reads the residual stream per block), ``"maps"`` (``capture(attentions=...)``), ``"lens"``
(:func:`llmdbg.logit_lens`) and ``"patch"`` (:func:`llmdbg.patch`).
"""

from __future__ import annotations

from torch import nn

from .modules import hf_model

__all__ = ["UNSUPPORTED", "require_support"]

FEATURE_NAMES = {
    "blocks": "per-block hidden states (the 'blocks' role, hidden_states=True)",
    "maps": "attention maps (capture(attentions=...))",
    "lens": "the logit lens",
    "patch": "activation patching",
}

# model_type -> feature -> why the feature cannot follow that family's computation.
UNSUPPORTED: dict[str, dict[str, str]] = {}


def _family(model: nn.Module) -> tuple[str, str | None]:
    hf = hf_model(model)
    target = hf if hf is not None else model
    return type(target).__name__, getattr(getattr(target, "config", None), "model_type", None)


def require_support(model: nn.Module, feature: str) -> None:
    """Raise a ValueError naming the model class and family if ``feature`` is listed as unsupported.

    Parameters
    ----------
    model : torch.nn.Module
        A transformers model, or a module wrapping one.
    feature : str
        One of ``"blocks"``, ``"maps"``, ``"lens"``, ``"patch"``.
    """
    if feature not in FEATURE_NAMES:
        raise ValueError(f"feature must be one of {sorted(FEATURE_NAMES)}, got {feature!r}")
    name, family = _family(model)
    reason = UNSUPPORTED.get(str(family), {}).get(feature)
    if reason is not None:
        raise ValueError(
            f"{name} (model_type {family!r}) is not supported by {FEATURE_NAMES[feature]}: {reason}. "
            "Module names or patterns passed explicitly to llmdbg.capture still record what those "
            "modules compute."
        )
