"""Hugging Face adapters: where the blocks, attention, MLPs, embeddings and heads live.

Everything works on module *names* relative to the model passed in, because hooks are
registered by name. Only stdlib and torch are imported; transformers lazily, so plain
``nn.Module`` users never pay for it. Layouts are found in three tiers (:mod:`.layout_search`),
most trusted first: (1) rules for families verified against transformers 5.24; (2) the model's
own ``_can_record_outputs`` table, which transformers uses for ``output_hidden_states`` and
``output_attentions`` and so names exactly the decoder layers and the modules that return weights;
(3) name patterns (family ``"generic"``).

Hybrid models (Jamba, Bamba, Zamba, Qwen3-Next, Lfm2, ...) interleave attention layers with
state-space, convolution or linear-attention layers: ``blocks`` holds every layer, ``attention`` only
the softmax-attention modules (``attention_blocks`` says which block each sits in). Pure state-space
and recurrent models (Mamba, Mamba2, FalconMamba, RWKV) have blocks and no attention at all.
"""

from __future__ import annotations

import dataclasses
import itertools
import weakref
from collections.abc import Sequence
from typing import Any

from torch import nn

from .layout_search import (
    FAMILIES,
    FINAL_NORMS,
    PARALLEL_LISTS,
    WINDOW_PADDED,
    descendants,
    from_parallel_lists,
    from_patterns,
    from_recorders,
    from_rule,
)
from .modules import check_module, closest_names, hf_model, hf_roots, is_hf_model
from .support import require_support

__all__ = [
    "ROLES",
    "ModelLayout",
    "check_module",
    "closest_names",
    "find_layout",
    "hf_model",
    "hf_roots",
    "is_hf_model",
    "require_attention",
    "require_support",
    "resolve_role",
]

ROLES: tuple[str, ...] = ("blocks", "attention", "cross_attention", "mlp", "embeddings", "final_norm", "unembedding")


@dataclasses.dataclass(frozen=True)
class ModelLayout:
    """Qualified module names of the parts of a transformer.

    Attributes
    ----------
    family : str
        ``config.model_type`` for Hugging Face models, ``"generic"`` when found by name patterns.
    blocks : tuple of str
        Every layer in execution order (encoder blocks, then decoder blocks), attention and
        state-space layers alike: the modules whose outputs are ``output_hidden_states``.
    attention : tuple of str
        The softmax self-attention modules, bottom first: one per block for transformers, only
        those of the attention layers for hybrids, none for state-space models. Under eager
        attention a module's forward output is a tuple whose element ``attention_index`` is the
        weights tensor, shape (B, H, T, S).
    cross_attention : tuple of str
        Decoder cross-attention modules (same output convention), empty if there are none.
    mlp : tuple of str
        One feed-forward module per block, empty if none could be identified.
    embeddings : str or None
        The input word embedding (``nn.Embedding``) that is actually called on ``input_ids``.
    final_norm : str or None
        The norm applied after the last block, before the unembedding.
    unembedding : str or None
        Projection to the vocabulary (``get_output_embeddings()``).
    stacks : dict of str to tuple of str
        Block names per stack: ``{"encoder": ...}``, ``{"decoder": ...}`` or both.
    attention_index : int
        Position of the weights in the attention modules' output tuples: 1 for most
        families, 2 for T5, whose attention returns ``(hidden, position_bias, weights)``.
    attention_blocks : tuple of str
        The block of each ``attention`` module (equal to ``blocks`` when every block has one).
    stack_inputs : dict of str to str
        Stack -> the module whose first input is the stack's input (the embedding output), where
        that is not the stack's first block: XLM and Flaubert have no block module, their block i
        is ``layer_norm2[i]`` and the stack's input goes to ``attentions[0]``. See :meth:`stack_input`.
    window_padded : tuple of str
        Stacks whose blocks run on the input right-padded to a multiple of the attention window
        (Longformer, LED's encoder): their outputs are (B, T_padded, D) and the model keeps the
        first T positions, as :meth:`unpad` does.
    masked_outputs : tuple of str
        Stacks whose model multiplies each block's output by the attention mask in place after the
        block (XLM, Flaubert): hooks see the output before that, :meth:`as_hidden_state` after.
    """

    family: str
    blocks: tuple[str, ...]
    attention: tuple[str, ...]
    cross_attention: tuple[str, ...]
    mlp: tuple[str, ...]
    embeddings: str | None
    final_norm: str | None
    unembedding: str | None
    stacks: dict[str, tuple[str, ...]] = dataclasses.field(hash=False)  # keeps layouts hashable
    attention_index: int = 1
    attention_blocks: tuple[str, ...] = ()
    stack_inputs: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)
    window_padded: tuple[str, ...] = ()
    masked_outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.attention_blocks and len(self.attention) == len(self.blocks):
            object.__setattr__(self, "attention_blocks", self.blocks)

    def stack_input(self, stack: str) -> str:
        """The module whose first input (positional, or ``hidden_states``) is ``stack``'s input:
        Hugging Face's ``hidden_states[0]`` of that stack. Usually the stack's first block."""
        return self.stack_inputs.get(stack, self.stacks[stack][0])

    def padded(self, name: str) -> bool:
        """Whether module ``name`` (or ``name + ":input"``) runs inside a window-padded stack."""
        return self._inside(name, self.window_padded)

    def _inside(self, name: str, stacks: tuple[str, ...]) -> bool:
        name = name.removesuffix(":input")
        inside = tuple(b for s in stacks for b in self.stacks[s])
        return name in inside or name.startswith(tuple(b + "." for b in inside))

    def as_hidden_state(self, name: str, array: Any, length: int | None, mask: Any) -> Any:
        """The state the model passes on, from module ``name``'s captured output ``array`` (B, T', D):
        cut to the input's ``length`` tokens in a window-padded stack (:meth:`unpad`), zero where the
        (B, T) attention ``mask`` is 0 in a stack in ``masked_outputs``."""
        array = self.unpad(name, array, length)
        masked = mask is not None and self._inside(name, self.masked_outputs) and array.ndim == 3
        if masked and tuple(array.shape[:2]) == tuple(mask.shape):
            array = array * (mask[..., None] != 0).astype(array.dtype)
        return array

    def unpad(self, name: str, tensor: Any, length: int | None) -> Any:
        """``tensor[:, :length]`` where module ``name`` runs on the window-padded sequence and its
        output is longer than the input's ``length`` tokens (as the model cuts it), else ``tensor``."""
        if length is None or not self.padded(name) or getattr(tensor, "ndim", 0) < 2:
            return tensor
        return tensor[:, :length] if tensor.shape[1] > length else tensor


def find_layout(model: nn.Module) -> ModelLayout:
    """Locate blocks, attention, MLPs, embeddings, final norm and unembedding.

    Works for base models and task-head wrappers; names are relative to ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        A transformers model or any module holding an ``nn.ModuleList`` of blocks.

    Returns
    -------
    ModelLayout

    Raises
    ------
    ValueError
        If no transformer blocks can be found.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    cached = _LAYOUT_CACHE.get(model)
    if cached is not None and all(ref() is _submodule(model, name) for name, ref in cached[1]):
        return cached[0]
    layout = _find_layout_uncached(model)
    _LAYOUT_CACHE[model] = (layout, tuple((n, weakref.ref(model.get_submodule(n))) for n in _layout_names(layout)))
    return layout


# The search walks every module; capture() runs it on each use, so results are cached per model
# and reused only while every module they name is still the same object.
_LAYOUT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layout_names(layout: ModelLayout) -> list[str]:
    singles = [layout.embeddings, layout.final_norm, layout.unembedding]
    inputs = layout.stack_inputs.values()
    return [
        *layout.blocks,
        *layout.attention,
        *layout.cross_attention,
        *layout.mlp,
        *inputs,
        *(n for n in singles if n),
    ]


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _find_layout_uncached(model: nn.Module) -> ModelLayout:
    modules = dict(model.named_modules())
    below = descendants(modules)
    # A custom module wrapping one transformers model (a classifier head, PEFT) is laid out
    # like that model: generic patterns would miss e.g. T5's weights index.
    roots = hf_roots(model)
    hf = roots[0] if len(roots) == 1 else model
    model_type = getattr(getattr(hf, "config", None), "model_type", None)
    found = None
    if model_type in FAMILIES:
        found = from_rule(modules, FAMILIES[model_type])
    if found is None and model_type in PARALLEL_LISTS:
        found = from_parallel_lists(modules)
    if found is None and roots:
        found = from_recorders(modules, below)
    family = model_type if found is not None and model_type else "generic"
    if found is None:
        found = from_patterns(model, modules, below)
    blocks = tuple(itertools.chain.from_iterable(found.stacks.values()))
    override = FINAL_NORMS.get(str(model_type))
    if override and _join(_parent(_parent(blocks[-1])), override) in modules:
        found.final_norm = _join(_parent(_parent(blocks[-1])), override)
    embeddings = _embeddings(model, hf, modules, blocks)
    unembedding = _name_of(model, _get(hf, "get_output_embeddings"))
    return ModelLayout(
        family,
        blocks,
        found.attention,
        found.cross,
        found.mlp,
        embeddings,
        found.final_norm,
        unembedding,
        found.stacks,
        found.index,
        found.attention_blocks,
        found.stack_inputs,
        tuple(s for s in WINDOW_PADDED.get(str(model_type), ()) if s in found.stacks),
        tuple(found.stacks) if model_type in PARALLEL_LISTS else (),
    )


def resolve_role(model: nn.Module, role: str, layout: ModelLayout | None = None) -> list[str]:
    """Module names playing ``role`` (one of ``ROLES``) in ``model``.

    Raises
    ------
    ValueError
        If ``role`` is unknown, or the model has no module in that role.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; valid roles are {', '.join(ROLES)}")
    if role == "blocks":
        require_support(model, "blocks")
    layout = layout or find_layout(model)
    value = getattr(layout, role)
    names = [value] if isinstance(value, str) else list(value or ())
    if not names and role == "attention":
        require_attention(model, layout, "the 'attention' role")
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no {role!r} module (llmdbg layout family "
            f"{layout.family!r}); pass module names or patterns explicitly"
        )
    return names


def require_attention(model: nn.Module, layout: ModelLayout, what: str) -> None:
    """Raise a ValueError naming the family when ``model`` has no softmax attention for ``what``.

    State-space and recurrent models (Mamba, RWKV, ...) mix tokens without attention weights, so
    there are no maps, heads or rollout to compute. Hybrids pass: their attention features address
    the attention layers only.
    """
    if layout.attention:
        return
    hf = hf_model(model)
    name = type(hf if hf is not None else model).__name__
    raise ValueError(
        f"{name} has no attention (layout family {layout.family!r}: its {len(layout.blocks)} blocks are "
        f"state-space, recurrent or Fourier-mixing layers without softmax attention weights); {what} needs attention "
        "layers. Activations, hidden states, the logit lens and patching work on its blocks."
    )


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _name_of(model: nn.Module, target: nn.Module | None) -> str | None:
    # Deduplicated names only: callers index dict(model.named_modules()) with them.
    return next((n for n, m in model.named_modules() if m is target), None)


def _get(model: nn.Module, method: str) -> nn.Module | None:
    """``model.<method>()`` if it exists and returns a module (many heads raise or return None)."""
    try:
        found = getattr(model, method)()
    except (AttributeError, NotImplementedError, TypeError):
        return None
    return found if isinstance(found, nn.Module) else None


def _embeddings(model: nn.Module, hf: nn.Module, modules: dict, blocks: Sequence[str]) -> str | None:
    """The word embedding that really runs on ``input_ids``.

    In transformers 5 T5's ``get_input_embeddings()`` is ``shared``, a separate module that
    only shares its weight with ``encoder.embed_tokens`` and is never called, so a hook on it
    never fires. Among embeddings sharing that weight, prefer the one beside the first stack.
    """
    emb = _get(hf, "get_input_embeddings")
    if emb is None:  # plain modules: the first embedding outside the blocks
        return next(
            (
                n
                for n, m in modules.items()
                if isinstance(m, nn.Embedding) and not any(n.startswith(b + ".") for b in blocks)
            ),
            None,
        )
    base, weight = _parent(_parent(blocks[0])), getattr(emb, "weight", None)
    shared = [
        n
        for n, m in modules.items()
        if m is emb or (weight is not None and isinstance(m, nn.Embedding) and m.weight is weight)
    ]
    return next((n for n in shared if base and n.startswith(base + ".")), _name_of(model, emb))
