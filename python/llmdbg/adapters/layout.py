"""Hugging Face adapters: where the blocks, attention, MLPs, embeddings and heads live.

Everything works on module *names* relative to the model passed in, because hooks are
registered by name. Only stdlib and torch are imported; transformers lazily, so plain
``nn.Module`` users never pay for it. Layouts are found in three tiers, most trusted first:
(1) rules for families verified against transformers 5.24 (``_FAMILIES``); (2) the model's
own ``_can_record_outputs`` table, which transformers uses for ``output_attentions`` and so
names exactly the modules that return weights; (3) name patterns (family ``"generic"``).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import weakref
from collections.abc import Iterable, Sequence
from typing import cast

from torch import nn

from .modules import check_module, closest_names, hf_roots, is_hf_model

__all__ = [
    "ROLES",
    "ModelLayout",
    "check_module",
    "closest_names",
    "find_layout",
    "hf_roots",
    "is_hf_model",
    "resolve_role",
]

# What a layout search finds: stacks, attention, cross-attention, MLPs, final norm, weights index.
_Found = tuple[dict[str, tuple[str, ...]], tuple[str, ...], tuple[str, ...], tuple[str, ...], str | None, int]

ROLES: tuple[str, ...] = ("blocks", "attention", "cross_attention", "mlp", "embeddings", "final_norm", "unembedding")


@dataclasses.dataclass(frozen=True)
class ModelLayout:
    """Qualified module names of the parts of a transformer.

    Attributes
    ----------
    family : str
        ``config.model_type`` for Hugging Face models, ``"generic"`` when found by name patterns.
    blocks : tuple of str
        Transformer blocks in execution order (encoder blocks, then decoder blocks).
    attention : tuple of str
        One self-attention module per block. Under eager attention its forward output is a
        tuple whose element ``attention_index`` is the weights tensor, shape (B, H, T, S).
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


@dataclasses.dataclass(frozen=True)
class _Rule:
    # Names relative to the model's base (stacks) or to each block (the rest). Tuples
    # are alternatives tried in order, e.g. T5's FF sits at layer.1 (encoder) or layer.2.
    stacks: dict[str, str]
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    cross: tuple[str, ...] = ()
    final_norm: str | None = None  # sibling of the last stack's ModuleList
    index: int = 1


_LLAMA_LIKE = _Rule({"decoder": "layers"}, ("self_attn",), ("mlp",), final_norm="norm")
_BERT_LIKE = _Rule({"encoder": "encoder.layer"}, ("attention.self",), ("intermediate",))
_FAMILIES: dict[str, _Rule] = {
    # BERT has no single MLP module: "intermediate" (dense + activation) holds the neuron
    # activations; "output" would mix in the residual and LayerNorm.
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "distilbert": _Rule({"encoder": "transformer.layer"}, ("attention",), ("ffn",)),
    "gpt2": _Rule({"decoder": "h"}, ("attn",), ("mlp",), ("crossattention",), "ln_f"),
    "gpt_neox": _Rule({"decoder": "layers"}, ("attention",), ("mlp",), final_norm="final_layer_norm"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    # The inner T5Attention modules, not the T5Layer* wrappers that add the residual.
    "t5": _Rule(
        {"encoder": "encoder.block", "decoder": "decoder.block"},
        ("layer.0.SelfAttention",),
        ("layer.2.DenseReluDense", "layer.1.DenseReluDense"),
        ("layer.1.EncDecAttention",),
        "final_layer_norm",
        index=2,
    ),
}

_ATTN_RE = re.compile(r"attn|attention", re.I)
_CROSS_RE = re.compile(r"cross|enc_?dec|encoder_attn", re.I)
_MLP_RE = re.compile(r"mlp|ffn|feed_?forward|intermediate|dense_?relu|moe", re.I)
_NOT_PART_RE = re.compile(r"norm|drop|^ln", re.I)  # "post_attention_layernorm", "attn_dropout"
# Leaves such as GPT-2's c_attn (Conv1D) or T5's relative_attention_bias match the name
# patterns but are projections, not attention modules (a LinearAttention with children is kept).
_LEAF_CLASS_RE = re.compile(r"norm|dropout|linear|conv|embedding|identity|activation", re.I)


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
    return [*layout.blocks, *layout.attention, *layout.cross_attention, *layout.mlp, *(n for n in singles if n)]


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _find_layout_uncached(model: nn.Module) -> ModelLayout:
    modules = dict(model.named_modules())
    below = _descendants(modules)
    # A custom module wrapping one transformers model (a classifier head, PEFT) is laid out
    # like that model: generic patterns would miss e.g. T5's weights index.
    roots = hf_roots(model)
    hf = roots[0] if len(roots) == 1 else model
    model_type = getattr(getattr(hf, "config", None), "model_type", None)
    found = None
    if model_type in _FAMILIES:
        found = _from_rule(modules, _FAMILIES[model_type])
    if found is None and roots:
        found = _from_recorders(modules, below)
    family = model_type if found is not None and model_type else "generic"
    if found is None:
        found = _from_patterns(model, modules, below)
    stacks, attention, cross, mlp, final_norm, index = found
    blocks = tuple(itertools.chain.from_iterable(stacks.values()))
    embeddings = _embeddings(model, hf, modules, blocks)
    unembedding = _name_of(model, _get(hf, "get_output_embeddings"))
    return ModelLayout(family, blocks, attention, cross, mlp, embeddings, final_norm, unembedding, stacks, index)


def resolve_role(model: nn.Module, role: str, layout: ModelLayout | None = None) -> list[str]:
    """Module names playing ``role`` (one of ``ROLES``) in ``model``.

    Raises
    ------
    ValueError
        If ``role`` is unknown, or the model has no module in that role.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; valid roles are {', '.join(ROLES)}")
    layout = layout or find_layout(model)
    value = getattr(layout, role)
    names = [value] if isinstance(value, str) else list(value or ())
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no {role!r} module (llmdbg layout family "
            f"{layout.family!r}); pass module names or patterns explicitly"
        )
    return names


# --------------------------------------------------------------------------- helpers


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _last(name: str) -> str:
    return name.rpartition(".")[2]


def _descendants(modules: dict) -> dict[str, list[str]]:
    """Module name -> names strictly below it, in module order (one pass, not one per block)."""
    below: dict[str, list[str]] = {name: [] for name in modules}
    for name in modules:
        parts = name.split(".") if name else []
        for i in range(len(parts)):
            below[".".join(parts[:i])].append(name)
    return below


def _per_block(modules: dict, blocks: Iterable[str], alternatives: Iterable[str]) -> tuple[str, ...] | None:
    """For every block the first existing ``block.alt``; None unless all blocks have one."""
    out = [next((n for n in (_join(b, a) for a in alternatives) if n in modules), None) for b in blocks]
    return None if None in out else tuple(n for n in out if n is not None)


def _from_rule(modules: dict, rule: _Rule) -> _Found | None:
    stacks = {}
    for key, suffix in rule.stacks.items():
        lst = next(
            (
                n
                for n, m in modules.items()
                if isinstance(m, nn.ModuleList) and (n == suffix or n.endswith("." + suffix))
            ),
            None,
        )
        if lst is not None and len(modules[lst]):
            stacks[key] = tuple(f"{lst}.{i}" for i in range(len(modules[lst])))
    blocks = tuple(itertools.chain.from_iterable(stacks.values()))
    attention = _per_block(modules, blocks, rule.attention) if blocks else None
    if attention is None:
        return None  # a model_type whose code changed shape: let the generic tiers try
    # Cross-attention is optional per block: only T5's decoder blocks and GPT-2 built
    # with add_cross_attention have it.
    cross = tuple(n for b in blocks for n in (_join(b, c) for c in rule.cross) if n in modules)
    norm = _join(_parent(_parent(blocks[-1])), rule.final_norm) if rule.final_norm else None
    return (
        stacks,
        attention,
        cross,
        _per_block(modules, blocks, rule.mlp) or (),
        norm if norm in modules else None,
        rule.index,
    )


def _specs(table: dict, key: str) -> list[tuple]:
    """Normalise a ``_can_record_outputs`` entry to ``[(class, class_name, index, layer)]``."""
    value = table.get(key) or []
    out = []
    for spec in value if isinstance(value, list) else [value]:
        if isinstance(spec, (type, str)):  # bare class or class name: index 1 by convention
            out.append((spec, None, 1, None) if isinstance(spec, type) else (None, spec, 1, None))
        else:  # transformers.utils.output_capturing.OutputRecorder
            out.append((spec.target_class, spec.class_name, spec.index, spec.layer_name))
    return out


def _matches(name: str, module: nn.Module, specs: list[tuple]) -> int | None:
    """The recorded output index if ``module`` matches one of ``specs``, else None."""
    for cls, cls_name, index, layer in specs:
        hit = (cls is not None and isinstance(module, cls)) or (
            cls_name is not None and (type(module).__name__ == cls_name or name.endswith(cls_name))
        )
        if hit and (layer is None or f".{layer.strip('.')}." in f".{name}."):
            return index
    return None


def _from_recorders(modules: dict, below: dict) -> _Found | None:
    """Use the ``_can_record_outputs`` tables transformers itself hooks for outputs.

    Composite models keep them on sub-models (BART: encoder and decoder), so every
    ``PreTrainedModel`` in the tree is consulted, each for its own subtree.
    """
    found: dict[str, tuple] = {}  # block -> (attention, index, cross)
    for root, sub in modules.items():
        table = getattr(sub, "_can_record_outputs", None) if is_hf_model(sub) else None
        if not table or "attentions" not in table:
            continue
        hidden, attn, cross = (_specs(table, k) for k in ("hidden_states", "attentions", "cross_attentions"))
        for name in below[root]:
            if name in found or _matches(name, modules[name], hidden) is None:
                continue
            hits = [(n, i) for n in below[name] if (i := _matches(n, modules[n], attn)) is not None]
            if hits:
                c = next((n for n in below[name] if _matches(n, modules[n], cross) is not None), None)
                found[name] = (*hits[0], c)
    if not found:
        return None
    order = {name: i for i, name in enumerate(modules)}
    stacks = _group(sorted(found, key=order.__getitem__))  # roots may be visited out of module order
    blocks = tuple(itertools.chain.from_iterable(stacks.values()))
    crosses = tuple(found[b][2] for b in blocks if found[b][2] is not None)
    return (
        stacks,
        tuple(found[b][0] for b in blocks),
        crosses,
        _mlps(modules, below, blocks),
        _norm_after(modules, blocks),
        found[blocks[0]][1],
    )


def _group(blocks: list[str]) -> dict[str, tuple[str, ...]]:
    """Group blocks by their parent list; name stacks "encoder"/"decoder" where we can."""
    lists: dict[str, list[str]] = {}
    for b in blocks:
        lists.setdefault(_parent(b), []).append(b)
    stacks: dict[str, tuple[str, ...]] = {}
    for lst, members in lists.items():
        key = "encoder" if "encoder" in lst.lower() else "decoder"  # most unnamed stacks are LMs
        stacks[lst if key in stacks else key] = tuple(members)
    return stacks


def _attention_like(block: str, modules: dict, below: dict, cross: bool) -> list[str]:
    return [
        n
        for n in below[block]
        if _ATTN_RE.search(_last(n))
        and not _NOT_PART_RE.search(_last(n))
        and not (_LEAF_CLASS_RE.search(type(modules[n]).__name__) and not below[n])
        and bool(_CROSS_RE.search(n[len(block) :])) == cross
    ]


def _mlps(modules: dict, below: dict, blocks: Iterable[str]) -> tuple[str, ...]:
    out = []
    for block in blocks:
        hits = [n for n in below[block] if _MLP_RE.search(_last(n)) and not _NOT_PART_RE.search(_last(n))]
        if not hits:
            return ()
        out.append(min(hits, key=lambda n: n.count(".")))  # shallowest: the whole MLP
    return tuple(out)


def _from_patterns(model: nn.Module, modules: dict, below: dict) -> _Found:
    lists = [
        n
        for n, m in modules.items()
        if isinstance(m, (nn.ModuleList, nn.Sequential))
        and len(m)
        and len({type(c) for c in m.children()}) == 1
        and all(_attention_like(f"{n}.{i}", modules, below, False) for i in range(len(m)))
    ]
    lists = [n for n in lists if not any(n.startswith(o + ".") for o in lists)]
    if not lists:
        raise ValueError(
            f"llmdbg could not find transformer blocks in {type(model).__name__}: no nn.ModuleList of "
            "identical blocks with attention submodules (top-level modules: "
            f"{', '.join(n for n, _ in itertools.islice(model.named_children(), 8)) or 'none'}); "
            "pass module names or patterns explicitly"
        )
    size = lambda n: len(modules[n])
    enc = [n for n in lists if "encoder" in n.lower()]
    dec = [n for n in lists if "decoder" in n.lower()]
    chosen = [max(enc, key=size), max(dec, key=size)] if enc and dec else [max(lists, key=size)]
    stacks = _group([f"{n}.{i}" for n in chosen for i in range(size(n))])
    blocks = tuple(itertools.chain.from_iterable(stacks.values()))
    # Deepest wins: BERT-style wrappers (output projection + residual) contain the module
    # that computes the weights; ties keep module order.
    deepest = lambda names: max(names, key=lambda n: n.count("."), default=None)
    attention = tuple(deepest(_attention_like(b, modules, below, False)) for b in blocks)
    cross = tuple(c for b in blocks if (c := deepest(_attention_like(b, modules, below, True))))
    # A block without an attention-like child keeps None in its place (the tuples stay aligned).
    return cast(_Found, (stacks, attention, cross, _mlps(modules, below, blocks), _norm_after(modules, blocks), 1))


def _norm_after(modules: dict, blocks: Sequence[str]) -> str | None:
    """The norm beside the last stack's list (ln_f, norm, final_layer_norm), or None.

    Registration order is only a hint: OPT registers final_layer_norm before its layers,
    while BART's layernorm_embedding (applied before the blocks) comes after them.
    """
    stack_list, order = _parent(blocks[-1]), list(modules)
    norms = [
        n
        for n in order
        if n
        and _parent(n) == _parent(stack_list)
        and n != stack_list
        and "embed" not in n.lower()
        and ("norm" in type(modules[n]).__name__.lower() or re.search(r"norm|^ln", _last(n), re.I))
    ]
    after = [n for n in norms if order.index(n) > order.index(stack_list)]
    return (after or norms or [None])[0]


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
