"""Inspect path: :func:`capture` hooks a model and hands every tensor to the C++ capture store;
:class:`Trace` reads the result as numpy; :mod:`.stats` holds the one-pass statistics.

The package is called ``tracing`` rather than ``capture`` so that the function
``llmdbg.capture`` never shadows a package of the same name.
"""

from .session import Capture, capture
from .stats import ActivationStats, hist_edges, summarize
from .trace import Trace

__all__ = ["ActivationStats", "Capture", "Trace", "capture", "hist_edges", "summarize"]
