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
from .attribution import (
    Attribution,
    input_x_gradient,
    integrated_gradients,
    occlusion,
    saliency,
    similarity_target,
    smoothgrad,
)
from .capture import Capture, capture
from .models import ModelLayout, eager_attention, find_layout
from .stats import ActivationStats, hist_edges, summarize
from .trace import Trace
from .embedding import TSNE, EmbeddingMap, embed_hidden_states, embed_tokens
from .training import Watch, watch
from . import metrics  # noqa: E402  (a submodule: llmdbg.metrics.classification_report)
from .lens import LensResult, logit_lens
from .interventions import ablate, head_importance, patch
from . import data  # a submodule: llmdbg.data.profile
from . import checks  # a submodule: llmdbg.checks.perturbation_test
from .edits import suggest_edits

__version__ = "0.1.0"

__all__ = [
    "ActivationStats",
    "Attribution",
    "Capture",
    "CaptureBudgetError",
    "ModelLayout",
    "TSNE",
    "Trace",
    "Watch",
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
    "input_x_gradient",
    "integrated_gradients",
    "occlusion",
    "rollout",
    "saliency",
    "similarity_target",
    "sink_scores",
    "smoothgrad",
    "summarize",
    "watch",
    "metrics",
    "EmbeddingMap",
    "embed_hidden_states",
    "embed_tokens",
    "LensResult",
    "logit_lens",
    "ablate",
    "head_importance",
    "patch",
    "data",
    "checks",
    "suggest_edits",
]
