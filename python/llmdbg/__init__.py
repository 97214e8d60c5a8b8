"""llmdbg: a debugger for large language models.

Capture activations and attention maps from any Hugging Face model into numpy, and analyse them
with a C++ core. The user guide lives in docs/.
"""

# torch must be imported before the extension: it loads libtorch, torch_python and the one
# OpenMP runtime that our kernels share with torch.
import torch as _torch  # noqa: F401

from ._core import CaptureBudgetError
from .attention import (
    attention_drift,
    attention_flow,
    attention_rollout,
    attention_summary,
    gradient_rollout,
    head_entropy,
    rollout,
    sink_scores,
)
from .capture import Capture, capture
from .models import ModelLayout, eager_attention, find_layout
from .stats import ActivationStats, hist_edges, summarize
from .trace import Trace

__version__ = "0.1.0"

__all__ = [
    "ActivationStats",
    "Capture",
    "CaptureBudgetError",
    "ModelLayout",
    "Trace",
    "attention_drift",
    "attention_flow",
    "attention_rollout",
    "attention_summary",
    "capture",
    "eager_attention",
    "find_layout",
    "gradient_rollout",
    "head_entropy",
    "hist_edges",
    "rollout",
    "sink_scores",
    "summarize",
]
