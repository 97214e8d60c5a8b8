"""Interactive views (anywidget in Jupyter, the same JavaScript inline in HTML pages and the report).

Every builder returns a :class:`View`; :func:`show` picks the builder for an object. The drawing
code is one small file per view under ``_static/``; nothing is fetched from the network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import View
from ._payload import MAX_PAYLOAD_BYTES, PayloadTooLargeError
from .dispatch import show

if TYPE_CHECKING:  # the names the lazy loader below provides, for type checkers
    from .attention import attention_view
    from .attribution import attribution_view
    from .embedding import embedding_view
    from .lens import lens_view
    from .training import training_view

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "PayloadTooLargeError",
    "View",
    "attention_view",
    "attribution_view",
    "embedding_view",
    "lens_view",
    "show",
    "training_view",
]

# Builders load on first use: importing llmdbg.widgets stays cheap, and each builder imports only
# the feature it draws.
_LAZY = {
    "attention_view": "attention",
    "attribution_view": "attribution",
    "embedding_view": "embedding",
    "lens_view": "lens",
    "training_view": "training",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
