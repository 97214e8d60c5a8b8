"""The task a model was built for, decided in one place with one vocabulary.

``"seq2seq"`` (encoder-decoder), ``"causal-lm"``, ``"masked-lm"``, ``"classifier"`` (sequence
classification) or ``"encoder"`` (no task head, or a head llmdbg does not know). The decision reads
the config (``is_encoder_decoder``) and the class name that transformers gives each task head
(``...ForCausalLM``, ``...LMHeadModel``, ``...ForMaskedLM``, ``...ForSequenceClassification``),
after unwrapping DDP/DataParallel and ``torch.compile``.
"""

from __future__ import annotations

from typing import Literal, cast

from torch import nn

from .modules import hf_model

__all__ = ["TASKS", "Task", "task_type", "unwrap"]

Task = Literal["seq2seq", "causal-lm", "masked-lm", "classifier", "encoder"]
TASKS: tuple[str, ...] = ("seq2seq", "causal-lm", "masked-lm", "classifier", "encoder")

_CAUSAL = ("ForCausalLM", "LMHeadModel")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP/DataParallel wrappers and ``torch.compile``'s ``OptimizedModule``."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = cast(nn.Module, model.module)
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = cast(nn.Module, model._orig_mod)
        else:
            return model


def task_type(model: nn.Module) -> Task:
    """One of :data:`TASKS` for ``model``."""
    model = hf_model(model) or unwrap(model)  # PEFT and user wrappers: the transformers model inside
    name = type(model).__name__
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return "seq2seq"
    if any(hint in name for hint in _CAUSAL):
        return "causal-lm"
    if "MaskedLM" in name:
        return "masked-lm"
    if name.endswith("ForSequenceClassification"):
        return "classifier"
    return "encoder"
