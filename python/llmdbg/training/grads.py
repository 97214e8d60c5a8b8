"""Gradient and weight measurements: the global norm every step, per-layer numbers when logged.

The global norm is computed exactly as :func:`torch.nn.utils.clip_grad_norm_` computes it (one
``torch._foreach_norm`` over the gradients, then the 2-norm of the stacked norms), so the two
agree to float rounding, and it stays on the device until the watch's single host copy.

Under FSDP2 the parameters and gradients are DTensors sharded across ranks: every function here
measures this rank's shard (:func:`~llmdbg.training.distributed.local`), and the watch sums the
squares across ranks in its one collective per step, so the norms it records are global.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .distributed import local


def _norms(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-tensor 2-norms, grouped by (device, dtype) for the fused ``_foreach_norm``."""
    groups: dict[tuple[Any, Any], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    out: list[Any] = [None] * len(tensors)
    for idx in groups.values():
        for i, n in zip(idx, torch._foreach_norm([tensors[i] for i in idx])):
            out[i] = n
    return out


def grad_norms(params: list[torch.nn.Parameter]) -> tuple[list[int], torch.Tensor, torch.Tensor] | None:
    """(indices of params with a dense gradient, their norms ``(n,)`` float32, global norm 0-d).

    None when no parameter has a gradient.
    """
    idx = [i for i, p in enumerate(params) if p.grad is not None and not p.grad.is_sparse]
    if not idx:
        return None
    norms = _norms([local(params[i].grad).detach() for i in idx])  # type: ignore[arg-type]  # idx: grads exist
    dev = norms[0].device
    stacked = torch.stack([n.to(dev) for n in norms])
    total = torch.linalg.vector_norm(stacked, 2.0)
    return idx, stacked.float(), total.float()


def weight_norms(params: list[torch.nn.Parameter], idx: list[int]) -> torch.Tensor:
    """2-norms ``(n,)`` float64 of ``params[i]`` for ``i`` in ``idx`` (this rank's shards), on the
    device (no host copy)."""
    if not idx:
        return torch.zeros(0, dtype=torch.float64)
    norms = _norms([local(params[i]).detach() for i in idx])
    dev = norms[0].device
    return torch.stack([n.double().to(dev) for n in norms])


def snapshot(params: list[torch.nn.Parameter], idx: list[int]) -> list[torch.Tensor]:
    """Copies of the weights, to measure the next update's size."""
    return [local(params[i]).detach().clone() for i in idx]


def update_sums(params: list[torch.nn.Parameter], idx: list[int], before: list[torch.Tensor]) -> torch.Tensor:
    """``(2, n)`` float64 on the device: ``||w_now - w_before||²`` and ``||w_before||²`` per
    parameter of this rank's shard (sums of squares add up across FSDP2's shards)."""
    if not idx:
        return torch.zeros((2, 0), dtype=torch.float64)
    now = [local(params[i]).detach() for i in idx]
    delta = _norms(torch._foreach_sub(now, before))
    base = _norms(before)
    dev = delta[0].device
    d = torch.stack([x.double().to(dev) for x in delta])
    b = torch.stack([x.double().to(dev) for x in base])
    return torch.stack([d * d, b * b])


def ratios(sums: Sequence[Sequence[float]]) -> list[float]:
    """``||Δw|| / ||w||`` from :func:`update_sums`' two rows (NaN where ``||w||`` is 0)."""
    return [math.sqrt(d) / math.sqrt(b) if b > 0 else math.nan for d, b in zip(sums[0], sums[1])]
