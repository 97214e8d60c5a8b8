"""One collective per logged step under ``torch.distributed``.

Each rank packs what it measured on its own shard of the batch (loss, activation counts, sums,
sums of squares, histogram counts, outlier and dead-unit counts, and its maxima) into one float64
tensor and takes part in a single ``all_reduce(SUM)``. Maxima ride along in that same collective:
each rank writes its maxima into its own slot of a ``(world, n_max)`` block and zeros elsewhere,
so after the sum every rank reads all ranks' maxima and takes the max locally. Sums of counts
and of fixed-bin histograms are exact, so merged histograms equal a single-process run's.

Gradients need no reduction of their own: after DDP's backward every rank holds the averaged
gradient, so its norms and histograms are already global.
"""

from __future__ import annotations

import numpy as np
import torch


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce_packed(
    sums: np.ndarray, maxima: np.ndarray, device: torch.device | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``sums`` and max ``maxima`` (1-D float64) across ranks with one ``all_reduce``.

    Without a process group both come back unchanged.
    """
    rank, world = rank_world()
    sums = np.asarray(sums, np.float64).ravel()
    maxima = np.asarray(maxima, np.float64).ravel()
    if world == 1:
        return sums, maxima
    slots = np.zeros((world, maxima.size), np.float64)
    slots[rank] = maxima
    buf = torch.from_numpy(np.concatenate([sums, slots.ravel()]))
    if device is not None and device.type != "cpu":
        buf = buf.to(device)
    torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
    out = buf.cpu().numpy()
    return out[: sums.size], out[sums.size :].reshape(world, maxima.size).max(0)
