"""Attention analysis: rollout, attention flow, gradient-weighted rollout, head diagnostics and
streaming rollout for long contexts. Kernels run in the C++ core; everything takes and returns
numpy arrays.

Every function accepts a :class:`~llmdbg.Trace` captured with ``attentions=True``, a sequence of
per-layer ``(B, H, T, T)`` arrays (or tensors), or one ``(L, B, H, T, T)`` array.
"""

from ._inputs import SINK_FAMILIES, AttentionStack, attention_stack
from .flow import attention_flow
from .gradient import Relevance, gradient_rollout
from .heads import (
    DEFAULT_SPECIAL_TOKENS,
    attention_drift,
    attention_summary,
    head_entropy,
    sink_scores,
)
from .rollout import attention_rollout
from .streaming import StreamingRollout, streaming_rollout
from .summary import AttentionSummary

__all__ = [
    "DEFAULT_SPECIAL_TOKENS",
    "SINK_FAMILIES",
    "AttentionStack",
    "AttentionSummary",
    "Relevance",
    "StreamingRollout",
    "attention_drift",
    "attention_flow",
    "attention_rollout",
    "attention_stack",
    "attention_summary",
    "gradient_rollout",
    "head_entropy",
    "sink_scores",
    "streaming_rollout",
]
