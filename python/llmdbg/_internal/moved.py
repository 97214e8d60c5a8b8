"""Old module paths kept importable after the layout change (``llmdbg.models`` ->
``llmdbg.adapters.layout``, ...).

A finder on ``sys.meta_path`` answers only for the names in :data:`MOVED`. Each old path becomes a
small module that looks names up in its new homes, so ``from llmdbg.models import find_layout``
keeps working. Old paths warn with a DeprecationWarning when imported; ``llmdbg.demo`` is a
short public name for :mod:`llmdbg.report.demo` and does not warn. The new modules are imported by
name (``importlib``), so this file depends on nothing in the package.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["MOVED", "install"]

#: old module path -> (new module paths searched in order, whether importing the old path warns).
#: Old paths whose last part is also a public function of the parent (``llmdbg.capture``,
#: ``llmdbg.data.profile``, ``llmdbg.training.watch``, ...) are left out on purpose: importing a
#: module by that name would replace the function on the parent package.
MOVED: dict[str, tuple[tuple[str, ...], bool]] = {
    "llmdbg.demo": (("llmdbg.report.demo",), False),
    "llmdbg.models": (("llmdbg.adapters.layout", "llmdbg.adapters.attention_impl"), True),
    "llmdbg.unembed": (("llmdbg.adapters.unembedding",), True),
    "llmdbg.trace": (("llmdbg.tracing.trace",), True),
    "llmdbg.stats": (("llmdbg.tracing.stats",), True),
    "llmdbg.report_job": (("llmdbg.report.job", "llmdbg.report"), True),
    "llmdbg.report_inputs": (("llmdbg.report.inputs",), True),
    "llmdbg.report_sections": (("llmdbg.report.sections",), True),
}


class _Forward(types.ModuleType):
    """A module whose attributes are those of its new homes, looked up in order."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        super().__init__(name, f"Moved: use {targets[0]}.")
        self.__llmdbg_targets__ = tuple(targets)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self.__llmdbg_targets__:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(
            f"module {self.__name__!r} (moved to {self.__llmdbg_targets__[0]}) has no attribute {attr!r}"
        )

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for target in self.__llmdbg_targets__:
            names.update(dir(importlib.import_module(target)))
        return sorted(names)


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        targets, deprecated = MOVED[spec.name]
        if deprecated:
            warnings.warn(
                f"{spec.name} moved to {targets[0]}; the old path will be removed in a later release",
                DeprecationWarning,
                stacklevel=2,
            )
        return _Forward(spec.name, targets)

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader())


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (ahead of the path finder, which would otherwise
    find nothing and fail)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
