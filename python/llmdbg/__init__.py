"""llmdbg: a debugger for large language models.

Capture activations and attention maps from any Hugging Face model into numpy, and analyse them
with a C++ core. This module only re-exports the public surface; the user guide lives in docs/
and ``docs/architecture.md`` maps the folders.
"""

# torch must be imported before the extension: it loads libtorch, torch_python and the one
# OpenMP runtime that our kernels share with torch.
import torch as _torch  # noqa: F401

# Before anything imports _core: a torch of another minor version raises an ImportError naming both
# versions and the rebuild command, instead of an undefined-symbol error from the loader.
from ._internal.build_check import check_torch_build as _check_torch_build

_check_torch_build()

# isort: split

# Submodules that are part of the public surface by name: llmdbg.metrics.classification_report,
# llmdbg.data.profile, llmdbg.checks.perturbation_test.
from . import checks, data, metrics, widgets
from ._core import CaptureBudgetError
from ._internal import moved as _moved
from .adapters.attention_impl import eager_attention
from .adapters.layout import ModelLayout, find_layout
from .adapters.unembedding import Unembedding, find_unembedding
from .attention import (
    AttentionSummary,
    Relevance,
    StreamingRollout,
    attention_drift,
    attention_flow,
    attention_rollout,
    attention_summary,
    gradient_rollout,
    head_entropy,
    sink_scores,
    streaming_rollout,
)
from .attribution import (
    Attribution,
    GenerationAttribution,
    attribute_generation,
    input_x_gradient,
    integrated_gradients,
    occlusion,
    saliency,
    similarity_target,
    smoothgrad,
)
from .checks import CheckReport
from .data import DataProfile
from .edits import suggest_edits
from .embedding import TSNE, EmbeddingMap, embed_hidden_states, embed_tokens
from .interventions import AblationResult, HeadImportance, PatchResult, ablate, head_importance, patch
from .lens import LensResult, logit_lens
from .metrics import ClassificationReport, ErrorAnalysis
from .runs import RunResult, open_run, run
from .saved import compare, compare_heads
from .saved.load import load
from .tracing import (
    ActivationStats,
    AttentionQuery,
    Capture,
    Generation,
    MemoryEstimate,
    Trace,
    VerificationError,
    capture,
    estimate_memory,
    hist_edges,
    summarize,
)
from .training import Event, Watch, watch
from .training.persist import WatchHistory
from .widgets import show

__version__ = "0.2.0"

_moved.install()  # old module paths (llmdbg.models, llmdbg.report_job, ...) stay importable


def __getattr__(name: str) -> object:
    if name == "rollout":  # the streaming rollout's old name, which shadowed attention/rollout.py
        import warnings

        warnings.warn(
            "llmdbg.rollout is deprecated; use llmdbg.streaming_rollout (same arguments)",
            DeprecationWarning,
            stacklevel=2,
        )
        return streaming_rollout
    raise AttributeError(f"module 'llmdbg' has no attribute {name!r}")


__all__ = [
    "TSNE",
    "AblationResult",
    "ActivationStats",
    "AttentionQuery",
    "AttentionSummary",
    "Attribution",
    "Capture",
    "CaptureBudgetError",
    "CheckReport",
    "ClassificationReport",
    "DataProfile",
    "EmbeddingMap",
    "ErrorAnalysis",
    "Event",
    "Generation",
    "GenerationAttribution",
    "HeadImportance",
    "LensResult",
    "MemoryEstimate",
    "ModelLayout",
    "PatchResult",
    "Relevance",
    "RunResult",
    "StreamingRollout",
    "Trace",
    "Unembedding",
    "VerificationError",
    "Watch",
    "WatchHistory",
    "ablate",
    "attention_drift",
    "attention_flow",
    "attention_rollout",
    "attention_summary",
    "attribute_generation",
    "capture",
    "checks",
    "compare",
    "compare_heads",
    "data",
    "eager_attention",
    "embed_hidden_states",
    "embed_tokens",
    "estimate_memory",
    "find_layout",
    "find_unembedding",
    "gradient_rollout",
    "head_entropy",
    "head_importance",
    "hist_edges",
    "input_x_gradient",
    "integrated_gradients",
    "load",
    "logit_lens",
    "metrics",
    "occlusion",
    "open_run",
    "patch",
    "run",
    "saliency",
    "show",
    "similarity_target",
    "sink_scores",
    "smoothgrad",
    "streaming_rollout",
    "suggest_edits",
    "summarize",
    "watch",
    "widgets",
]
