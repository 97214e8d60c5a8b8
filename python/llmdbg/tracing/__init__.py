"""Inspect path: :func:`capture` hooks a model and hands every tensor to the C++ capture store;
:class:`Trace` reads the result as numpy; :mod:`.stats` holds the one-pass statistics.

The package is called ``tracing`` rather than ``capture`` so that the function
``llmdbg.capture`` never shadows a package of the same name.
"""

from .api import capture
from .attention_recorder import VerificationError
from .generation import Generation
from .memory import estimate_memory
from .query import AttentionQuery, MemoryEstimate
from .session import Capture
from .stats import ActivationStats, hist_edges, summarize
from .trace import Trace

__all__ = [
    "ActivationStats",
    "AttentionQuery",
    "Capture",
    "Generation",
    "MemoryEstimate",
    "Trace",
    "VerificationError",
    "capture",
    "estimate_memory",
    "hist_edges",
    "summarize",
]
