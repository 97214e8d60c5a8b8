"""How :func:`~llmdbg.adapters.layout.find_layout` finds a model's parts, in three tiers, most
trusted first: (1) rules for families verified against transformers 5.24 (``FAMILIES``); (2) the
model's own ``_can_record_outputs`` tables (:func:`from_recorders`); (3) name patterns
(:func:`from_patterns`, family ``"generic"``). Each tier returns a :class:`Found` or None.

Hybrids (Jamba, Bamba, Zamba, Qwen3-Next, Lfm2, ...) keep every layer as a block and only their
softmax-attention modules as attention; pure state-space and recurrent families (Mamba, Mamba2,
FalconMamba, RWKV) have blocks and no attention.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import re
from collections.abc import Iterable, Sequence
from typing import cast

from torch import nn

from .modules import is_hf_model

__all__ = [
    "FAMILIES",
    "FINAL_NORMS",
    "PARALLEL_LISTS",
    "WINDOW_PADDED",
    "Found",
    "descendants",
    "from_parallel_lists",
    "from_patterns",
    "from_recorders",
    "from_rule",
]


@dataclasses.dataclass
class Found:
    """What one layout search found (names relative to the model)."""

    stacks: dict[str, tuple[str, ...]]
    attention: tuple[str, ...]
    cross: tuple[str, ...]
    mlp: tuple[str, ...]
    final_norm: str | None
    index: int
    attention_blocks: tuple[str, ...]
    # Stack -> the module whose first input is the stack's input, where that is not the first block.
    stack_inputs: dict[str, str] = dataclasses.field(default_factory=dict)


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
    stateful: bool = False  # state-space/recurrent layers: no softmax attention to find


# Pure state-space and recurrent families: their blocks mix tokens without softmax attention
# (RWKV's "attention" is its time-mixing recurrence).
_SSM = _Rule({"decoder": "layers"}, (), (), final_norm="norm_f", stateful=True)


_LLAMA_LIKE = _Rule({"decoder": "layers"}, ("self_attn",), ("mlp",), final_norm="norm")
_BERT_LIKE = _Rule({"encoder": "encoder.layer"}, ("attention.self",), ("intermediate",))
FAMILIES: dict[str, _Rule] = {
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
    "mamba": _SSM,
    "mamba2": _SSM,
    "falcon_mamba": _SSM,
    "rwkv": _Rule({"decoder": "blocks"}, (), ("feed_forward",), final_norm="ln_out", stateful=True),
    # FNet mixes tokens with a Fourier transform: no attention module at all.
    "fnet": _Rule({"encoder": "encoder.layer"}, (), ("intermediate",), stateful=True),
}
# Final norms the name search cannot tell from an embedding norm: Lfm2 applies "embedding_norm"
# after its last layer.
FINAL_NORMS = dict.fromkeys(("lfm2", "lfm2_moe", "lfm2_vl", "lfm3", "lfm3_vl"), "embedding_norm")

_ATTN_RE = re.compile(r"attn|attention", re.I)
_CROSS_RE = re.compile(r"cross|enc_?dec|encoder_attn", re.I)
_MLP_RE = re.compile(r"mlp|ffn|feed_?forward|intermediate|dense_?relu|moe", re.I)
_NOT_PART_RE = re.compile(r"norm|drop|^ln", re.I)  # "post_attention_layernorm", "attn_dropout"
# Leaves such as GPT-2's c_attn (Conv1D) or T5's relative_attention_bias match the name
# patterns but are projections, not attention modules (a LinearAttention with children is kept).
_LEAF_CLASS_RE = re.compile(r"norm|dropout|linear|conv|embedding|identity|activation", re.I)
# How a forward computes softmax attention: transformers' dispatch, or a softmax of its own.
_SOFTMAX_SOURCE_RE = re.compile(r"ALL_ATTENTION_FUNCTIONS|attention_interface|eager_attention_forward|softmax")


# Stacks whose blocks run on the input right-padded to a multiple of the attention window; the
# model cuts its outputs (and hidden_states) back to the input length: Longformer, LED's encoder.
WINDOW_PADDED = {"longformer": ("encoder",), "led": ("encoder",)}

# Families without a block module: layer i is spread over parallel ModuleLists attentions[i],
# layer_norm1[i], ffns[i], layer_norm2[i] (XLM, Flaubert). Post-norm, layer_norm2[i] computes the
# layer's output; the model then zeroes padded positions (mask * output).
PARALLEL_LISTS = frozenset({"xlm", "flaubert"})


# --------------------------------------------------------------------------- tiers and helpers


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _last(name: str) -> str:
    return name.rpartition(".")[2]


def descendants(modules: dict) -> dict[str, list[str]]:
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


def from_rule(modules: dict, rule: _Rule) -> Found | None:
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
    attention = () if rule.stateful and blocks else _per_block(modules, blocks, rule.attention) if blocks else None
    if attention is None:
        return None  # a model_type whose code changed shape: let the generic tiers try
    # Cross-attention is optional per block: only T5's decoder blocks and GPT-2 built
    # with add_cross_attention have it.
    cross = tuple(n for b in blocks for n in (_join(b, c) for c in rule.cross) if n in modules)
    norm = _join(_parent(_parent(blocks[-1])), rule.final_norm) if rule.final_norm else None
    return Found(
        stacks,
        attention,
        cross,
        _per_block(modules, blocks, rule.mlp) or (),
        norm if norm in modules else None,
        rule.index,
        () if rule.stateful else blocks,
    )


def from_parallel_lists(modules: dict) -> Found | None:
    """XLM-style layers: ``layer_norm2[i]`` is block i, ``attentions[i]`` its attention, ``ffns[i]``
    its MLP, and ``attentions[0]``'s first input the embedding output (the stack's input).

    Raises
    ------
    ValueError
        For a pre-norm model (Flaubert's ``pre_norm``): its layer output ``x + ffn(norm(x))`` is a sum
        no module returns, so there is no module whose output is the residual stream.
    """
    for name, m in modules.items():
        base = _parent(name)
        att, ffn = _join(base, "attentions"), _join(base, "ffns")
        if not (isinstance(m, nn.ModuleList) and _last(name) == "layer_norm2" and len(m)):
            continue
        if not (att in modules and ffn in modules and len(modules[att]) == len(m) == len(modules[ffn])):
            continue
        config = getattr(modules[base], "config", None)
        if getattr(config, "pre_norm", False):
            raise ValueError(
                f"{type(modules[base]).__name__} (model_type {getattr(config, 'model_type', None)!r}) with "
                "pre_norm=True has no module whose output is a layer's residual stream (x + ffn(norm(x)) is "
                "computed inline); llmdbg cannot find its blocks. Pass module names or patterns explicitly"
            )
        blocks = tuple(f"{name}.{i}" for i in range(len(m)))
        stack = "decoder" if getattr(config, "causal", False) else "encoder"
        return Found(
            {stack: blocks},
            tuple(f"{att}.{i}" for i in range(len(m))),
            (),
            tuple(f"{ffn}.{i}" for i in range(len(m))),
            None,
            1,
            blocks,
            {stack: f"{att}.0"},
        )
    return None


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


def from_recorders(modules: dict, below: dict) -> Found | None:
    """Use the ``_can_record_outputs`` tables transformers itself hooks for outputs.

    The ``hidden_states`` entry names the decoder layers, every one of them (a hybrid's Mamba
    layers too); the ``attentions`` entry names the modules that return attention weights, kept
    when their forward computes a softmax (MiniMax also lists its linear "lightning" attention).
    Composite models keep tables on sub-models (BART: encoder and decoder), so every
    ``PreTrainedModel`` in the tree is consulted, each for its own subtree.
    """
    found: dict[str, tuple] = {}  # block -> (attention or None, index, cross or None)
    for root, sub in modules.items():
        table = getattr(sub, "_can_record_outputs", None) if is_hf_model(sub) else None
        if not table or "hidden_states" not in table:
            continue
        hidden, attn, cross = (_specs(table, k) for k in ("hidden_states", "attentions", "cross_attentions"))
        for name in below[root]:
            if _matches(name, modules[name], hidden) is None:
                continue
            block = _layer_of(name, modules)  # Zamba records a module inside each hybrid layer
            if block in found:
                continue
            hits = [
                (n, i)
                for n in below[block]
                if (i := _matches(n, modules[n], attn)) is not None and _computes_softmax(modules[n])
            ]
            c = next((n for n in below[block] if _matches(n, modules[n], cross) is not None), None)
            found[block] = (*(hits[0] if hits else (None, None)), c)
    if not found:
        return None
    order = {name: i for i, name in enumerate(modules)}
    stacks = _group(sorted(found, key=order.__getitem__))  # roots may be visited out of module order
    blocks = tuple(itertools.chain.from_iterable(stacks.values()))
    with_attention = tuple(b for b in blocks if found[b][0] is not None)
    crosses = tuple(found[b][2] for b in blocks if found[b][2] is not None)
    return Found(
        stacks,
        tuple(found[b][0] for b in with_attention),
        crosses,
        _mlps(modules, below, blocks),
        _norm_after(modules, blocks),
        found[with_attention[0]][1] if with_attention else 1,
        with_attention,
    )


def _layer_of(name: str, modules: dict) -> str:
    """``name`` or its closest ancestor that is an item of an ``nn.ModuleList``: the layer."""
    probe = name
    while probe:
        if isinstance(modules.get(_parent(probe)), nn.ModuleList):
            return probe
        probe = _parent(probe)
    return name


def _computes_softmax(module: nn.Module) -> bool:
    """Whether the module computes softmax attention (transformers' attention dispatch or a softmax
    of its own), read from its forward's source or that of a module inside it (T5's
    ``T5LayerSelfAttention`` delegates to ``SelfAttention``); unreadable source counts as yes."""
    return any(_softmax_in_source(type(m)) for m in module.modules())


_SOFTMAX_IN_SOURCE: dict[type, bool] = {}  # per class: reading source is slow


def _softmax_in_source(cls: type) -> bool:
    if cls not in _SOFTMAX_IN_SOURCE:
        try:
            source = inspect.getsource(cls.forward)  # type: ignore[attr-defined]
        except (OSError, TypeError, AttributeError):
            source = "softmax"  # unreadable: counts as yes
        _SOFTMAX_IN_SOURCE[cls] = bool(_SOFTMAX_SOURCE_RE.search(source))
    return _SOFTMAX_IN_SOURCE[cls]


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


def from_patterns(model: nn.Module, modules: dict, below: dict) -> Found:
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
    return Found(
        stacks,
        cast(tuple[str, ...], attention),
        cross,
        _mlps(modules, below, blocks),
        _norm_after(modules, blocks),
        1,
        blocks,
    )


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
