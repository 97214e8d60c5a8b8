"""Change the model's internals and watch the effect: activation patching, head ablation and
head importance."""

from .heads import (
    AblationResult,
    HeadImportance,
    ablate,
    ablation,
    head_importance,
    head_means,
    lm_loss,
)
from .patching import PatchResult, logit_diff, patch

__all__ = [
    "AblationResult",
    "HeadImportance",
    "PatchResult",
    "ablate",
    "ablation",
    "head_importance",
    "head_means",
    "lm_loss",
    "logit_diff",
    "patch",
]
