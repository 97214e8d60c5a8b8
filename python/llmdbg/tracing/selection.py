"""Which modules a capture hooks (roles, globs, regexes) and how ``reduce`` is spelled, plus
the main tensor of a module's inputs and outputs."""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import numpy as np
import torch

from ..adapters.layout import ROLES, closest_names, resolve_role

_GLOB_CHARS = frozenset("*?[")
_TOKEN_WORDS = {"last_token": slice(-1, None), "first_token": slice(0, 1)}
_REDUCE_WORDS = ("stats", "head_mean", *_TOKEN_WORDS)


def parse_reduce(reduce: Any) -> tuple[bool, bool, slice | None]:
    """-> (stats_only, head_mean, token slice)."""
    if reduce is None:
        return False, False, None
    items = list(reduce) if isinstance(reduce, (tuple, list)) else [reduce]
    stats_only = head_mean = False
    tokens: slice | None = None
    for item in items:
        if isinstance(item, str) and item in _REDUCE_WORDS:
            if item == "stats":
                stats_only = True
            elif item == "head_mean":
                head_mean = True
            else:
                tokens = _TOKEN_WORDS[item]
        elif isinstance(item, slice):
            if item.step not in (None, 1):
                raise ValueError(f"reduce: token slices must have step 1, got {item}")
            for bound in (item.start, item.stop):
                if bound is not None and (
                    isinstance(bound, bool) or not isinstance(bound, (int, np.integer)) or not -(2**62) < bound < 2**62
                ):
                    raise ValueError(f"reduce: token slice bounds must be integers in (-2**62, 2**62), got {item}")
            tokens = item
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not -(2**62) < item < 2**62:  # the store indexes tokens with int64
                raise ValueError(f"reduce: token position {item} is out of range")
            tokens = slice(int(item), int(item) + 1 if item != -1 else None)
        else:
            raise ValueError(
                f"reduce must be None, one of {_REDUCE_WORDS}, an int or slice of token positions, "
                f"or a tuple of these; got {item!r}"
            )
    return stats_only, head_mean, tokens


def first_tensor(value: Any) -> torch.Tensor | None:
    """The main tensor of a module's output: the tensor itself, the first tensor of a tuple, or
    the first tensor field of a ModelOutput/dict (HF blocks return tensors or tuples)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for v in value:
            if isinstance(v, torch.Tensor):
                return v
    return None


def first_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for v in args:
        if isinstance(v, torch.Tensor):
            return v
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    return first_tensor(list(kwargs.values()))


def select_modules(model: torch.nn.Module, modules: Any, layout: Any = None) -> list[str]:
    """Qualified names selected by roles, globs ('*.mlp') or regexes ('re:...' or re.Pattern)."""
    if modules is None:
        return []
    specs = [modules] if isinstance(modules, (str, re.Pattern)) else list(modules)
    names: list[str] = []
    known: set[str] = set()
    selected: list[str] = []
    chosen: set[str] = set()
    for spec in specs:
        if not (isinstance(spec, str) and spec in ROLES) and not names:
            names = [n for n, _ in model.named_modules() if n]  # only patterns need every name
            known = set(names)
        if isinstance(spec, str) and spec in ROLES:
            found = resolve_role(model, spec, layout)
        elif isinstance(spec, re.Pattern) or (isinstance(spec, str) and spec.startswith("re:")):
            pattern = spec if isinstance(spec, re.Pattern) else re.compile(spec[3:])
            found = [n for n in names if pattern.fullmatch(n)]
        elif isinstance(spec, str) and not _GLOB_CHARS.intersection(spec):
            found = [spec] if spec in known else []  # a plain name: no scan over every module
        elif isinstance(spec, str):
            found = [n for n in names if fnmatch.fnmatchcase(n, spec)]
        else:
            raise TypeError(f"modules entries must be str or re.Pattern, got {type(spec).__name__}")
        if not found:
            label = spec.pattern if isinstance(spec, re.Pattern) else spec
            raise ValueError(
                f"modules pattern {label!r} matches no module of {type(model).__name__}; "
                f"closest names: {closest_names(model, str(label))}. Roles: {list(ROLES)}"
            )
        for n in found:
            if n not in chosen:
                chosen.add(n)
                selected.append(n)
    return selected


def with_sibling_attention(model: torch.nn.Module, names: list[str]) -> list[str]:
    """The layout's attention modules, each followed by the other modules of its class in the same
    ``nn.ModuleList`` when that list belongs to one layer (LongCat-Flash runs two attention
    sublayers, ``self_attn.0`` and ``self_attn.1``, per layer; the layout names one per block)."""
    listed, out = set(names), []
    for name in names:
        out.append(name)
        parent_name = name.rpartition(".")[0]
        parent = model.get_submodule(parent_name) if parent_name else None
        if not isinstance(parent, torch.nn.ModuleList):
            continue
        siblings = [f"{parent_name}.{i}" for i in range(len(parent))]
        if any(s in listed for s in siblings if s != name):  # a list of layers, not of sublayers
            continue
        kind = type(model.get_submodule(name))
        out += [s for s in siblings if s != name and type(model.get_submodule(s)) is kind]
    return out
