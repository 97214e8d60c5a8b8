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

_BLT = (
    "a byte-level local encoder and decoder around a patch-level global transformer: the global blocks see "
    "one state per patch, not per input token"
)
_CPMANT = (
    "it prepends its learned prompt tokens inside the model, so its blocks and attention maps cover "
    "prompt_length + T positions, and it drops the prefix only before the head"
)
_DORY = (
    "a looped middle stage: its recurrent blocks run n_recurrent_loops times per forward, so one block "
    "module has several outputs and patching would overwrite every loop with the last one"
)
_HRM = (
    "hierarchical H and L modules, each run for several cycles per forward on two states that feed each "
    "other: no single pass of one residual stream through a list of blocks"
)
_INKLING2 = (
    "attention residuals: every layer and the final norm read a learned mix of earlier block outputs, so "
    "the state the head reads is not the last block's output"
)
_REFORMER = (
    "reversible residual layers carry two streams per token (attention output and hidden states), "
    "concatenated only before the final norm"
)
_TIME_MAJOR = "blocks run time-major: they see (T, B, D) states, transposed only at the ends of the stack"
_FUNNEL = "pooling shortens the sequence between stages, so later blocks do not see one state per input token"
_PROPHETNET = (
    "its decoder layers carry the main stream and the n-gram predict streams concatenated along the "
    "sequence ((1 + ngram) * T positions)"
)

_ALBERT = (
    "one shared layer group runs num_hidden_layers times per forward, so one block module has several "
    "outputs and patching would restore every call with the last one"
)
_SQUEEZEBERT = "its blocks run channels-first: they pass dicts holding (B, D, T) feature maps, transposed at the ends"
_PERCEIVER = "its blocks process a learned latent array (B, num_latents, D), not one state per input token"
_PEGASUS_X = (
    "its encoder layers carry two streams, the token states padded to the block size and the global tokens, "
    "and its own hidden_states mix padded states with a (tokens, globals) pair"
)
_ALTUP = "AltUp: its layers carry altup_num_inputs predicted states per token ((N, B, T, D) outputs)"
_HYPER = "hyper-connections: its layers carry several residual streams per token, merged only before the head"

# model_type -> feature -> why the feature cannot follow that family's computation.
UNSUPPORTED: dict[str, dict[str, str]] = {
    "blt": dict.fromkeys(("blocks", "maps", "lens", "patch"), _BLT),
    "cpmant": dict.fromkeys(("blocks", "maps", "lens", "patch"), _CPMANT),
    "dory": dict.fromkeys(("blocks", "maps", "patch"), _DORY),
    "hrm_text": dict.fromkeys(("blocks", "maps", "lens", "patch"), _HRM),
    "inkling2_text": dict.fromkeys(("blocks", "lens", "patch"), _INKLING2),
    "inkling2_loop_text": dict.fromkeys(("blocks", "lens", "patch"), _INKLING2 + ", and a looped stage"),
    "reformer": dict.fromkeys(("lens", "patch"), _REFORMER),
    "fsmt": dict.fromkeys(("blocks", "patch"), "its " + _TIME_MAJOR),
    "xlnet": {
        **dict.fromkeys(("blocks", "lens", "patch"), "its two-stream relative-attention " + _TIME_MAJOR),
        "maps": "its two-stream relative attention computes time-major (T, T, B, H) probabilities, not a "
        "(B, H, T, T) map",
    },
    "funnel": dict.fromkeys(("blocks", "patch"), _FUNNEL),
    "prophetnet": dict.fromkeys(("blocks", "patch"), _PROPHETNET),
    "albert": dict.fromkeys(("blocks", "patch"), _ALBERT),
    "squeezebert": dict.fromkeys(("blocks", "lens", "patch"), _SQUEEZEBERT),
    "perceiver": dict.fromkeys(("blocks", "lens", "patch"), _PERCEIVER),
    "pegasus_x": dict.fromkeys(("blocks", "patch"), _PEGASUS_X),
    "gemma3n_text": {"patch": _ALTUP},
    "qwen4_exp_text": {"lens": _HYPER},
}

# Attention that is not a (B, H, T, T) softmax map over the input tokens: capture(attentions=...)
# would report whatever the layout's modules return (banded or bucketed scores) as if it were one.
_NOT_A_MAP = {
    "longformer": "sliding-window plus global attention computed in banded form ((B, T, H, 2w + 1) scores)",
    "led": "its encoder runs Longformer's sliding-window plus global attention, computed in banded form",
    "longt5": "local and transient-global attention over blocks of tokens",
    "pegasus_x": "block-local encoder attention with global tokens",
    "mra": "multi-resolution approximate attention (block-sparse low-resolution approximation)",
    "reformer": "LSH attention over hashed buckets and chunked local attention",
    "yoso": "LSH-sampled (Bernoulli) attention with no softmax",
}
for _name, _why in _NOT_A_MAP.items():
    UNSUPPORTED.setdefault(_name, {})["maps"] = "its attention is not a (B, H, T, T) softmax map: " + _why
UNSUPPORTED["squeezebert"]["maps"] = (
    "its attention modules return dicts of channels-first tensors holding the scores before the softmax "
    "(what the model reports as its attentions), not the (B, H, T, T) probabilities"
)


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

    Raises
    ------
    ValueError
        The model's family is listed for ``feature`` (the message names its class, model_type and
        the reason), or ``feature`` is not one of the four names.
    TypeError
        ``feature`` is not a str.
    """
    if not isinstance(feature, str):  # before the dict lookup: a list would fail as "unhashable"
        raise TypeError(f"feature must be a str, one of {sorted(FEATURE_NAMES)}; got {type(feature).__name__}")
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
