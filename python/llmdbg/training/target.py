"""What a :class:`~llmdbg.training.Watch` attaches to: the model without its data-parallel
wrapper, checked (one wrapper at most, FSDP2 rather than FSDP1, a process group when the model
is distributed), and the trivial loss its underfitting detector compares against."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..adapters.task import task_type


def unwrap(model: Any) -> nn.Module:
    """The module a watch hooks: ``model`` without its DDP/DataParallel wrapper, after checking
    that it is wrapped once at most and that a distributed model has its process group."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    from torch.distributed.fsdp import FSDPModule

    ddp = nn.parallel.DistributedDataParallel
    wrappers: list[str] = []
    while isinstance(model, (nn.DataParallel, ddp)):
        wrappers.append(type(model).__name__)
        model = model.module
    modules = [m for _, m in model.named_modules()]
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in modules):
        raise TypeError(
            "model: FSDP1 (FullyShardedDataParallel) is not supported; shard with FSDP2's "
            "torch.distributed.fsdp.fully_shard, whose DTensor parameters the watch reduces"
        )
    fsdp = any(isinstance(m, FSDPModule) for m in modules)
    inner = [type(m).__name__ for m in modules if isinstance(m, (nn.DataParallel, ddp))]
    if len(wrappers) + bool(fsdp) + len(inner) > 1:
        kinds = wrappers + (["FSDP2 (fully_shard)"] if fsdp else []) + inner
        raise ValueError(
            f"model: wrapped more than once ({' around '.join(kinds)}); watch a model under one "
            "data-parallel wrapper: DistributedDataParallel or FSDP2's fully_shard"
        )
    distributed = bool(wrappers and wrappers[0] == ddp.__name__) or fsdp
    if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError(
            "model: it is a DistributedDataParallel/FSDP2 model but no process group is initialised "
            "(call torch.distributed.init_process_group first, or watch the unwrapped model)"
        )
    return model


def baseline_loss(model: nn.Module) -> float | None:
    """A trivial loss to compare against: ln V for language models, ln K for classifiers."""
    cfg, task = getattr(model, "config", None), task_type(model)
    if cfg is None:
        return None
    if task in ("causal-lm", "masked-lm") and getattr(cfg, "vocab_size", 0) > 1:
        return math.log(cfg.vocab_size)
    if task == "classifier" and getattr(cfg, "num_labels", 0) > 1:
        return math.log(cfg.num_labels)
    return None
