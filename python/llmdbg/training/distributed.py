"""One collective per step under ``torch.distributed``, entered by every rank whatever it found.

A watch under DDP or FSDP2 must never let one rank skip a collective that the others enter: the
others would wait forever. So each :meth:`~llmdbg.training.Watch.step` packs *everything* its
rank measured into one float64 buffer (:class:`Packer`) and every rank takes part in a single
``all_reduce(SUM)``, on finite and non-finite steps alike; a rank that found a NaN/Inf reports
it *through* that collective. Three kinds of entries share the buffer:

* **sums** (counts, sums of squares, fixed-bin histogram counts) are summed across ranks, so
  merged histograms and norms equal a single-process run's;
* **per-rank rows** (each rank's loss, local gradient norm, non-finite flags, located module):
  each rank writes its row of a ``(world, n)`` block and zeros elsewhere, so after the sum every
  rank reads every rank's values (and maxima are taken from them);
* **local values** ride along unreduced, so the step still costs one host copy.

Rows are written into disjoint slots, so a NaN on one rank stays in that rank's row and names it.
Without an initialised process group nothing is communicated and the packer is just the step's
single host copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_SUM, _ROWS, _LOCAL = 0, 1, 2


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _flat(x: Any, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().reshape(-1).to(device=device, dtype=torch.float64)
    return torch.as_tensor(np.asarray(x, np.float64).reshape(-1), device=device)


class Packer:
    """Collects a step's numbers, reduces them with at most one ``all_reduce``, hands them back.

    Add entries with :meth:`sum`, :meth:`rows` and :meth:`local` (each returns a handle), call
    :meth:`reduce` once, then read with ``packer[handle]`` as float64 numpy arrays: a sum's
    reduced ``(n,)``, a row block's ``(world, n)``, a local entry's own ``(n,)``. Entries may
    be tensors on any device (they are moved to ``device`` for the collective) or array-likes.
    """

    def __init__(self, rank: int | None = None, world: int | None = None) -> None:
        if rank is None or world is None:
            rank, world = rank_world()
        self.rank, self.world = rank, world
        self._items: list[tuple[int, Any, int]] = []
        self._out: list[np.ndarray] | None = None

    def _add(self, kind: int, x: Any) -> int:
        if self._out is not None:
            raise RuntimeError("Packer: entries cannot be added after reduce()")
        n = x.numel() if isinstance(x, torch.Tensor) else int(np.asarray(x).size)
        self._items.append((kind, x, n))
        return len(self._items) - 1

    def sum(self, x: Any) -> int:
        """An entry summed across ranks."""
        return self._add(_SUM, x)

    def rows(self, x: Any) -> int:
        """An entry of which every rank reads every rank's copy, as a ``(world, n)`` block."""
        return self._add(_ROWS, x)

    def local(self, x: Any) -> int:
        """An entry that is not communicated, only copied to the host with the rest."""
        return self._add(_LOCAL, x)

    @property
    def communicates(self) -> bool:
        """Whether :meth:`reduce` runs a collective (a process group of more than one rank)."""
        return self.world > 1 and any(kind != _LOCAL for kind, _, _ in self._items)

    def reduce(self, device: torch.device | None = None) -> None:
        """The one collective (every rank must call it with entries of the same sizes), then the
        one host copy."""
        dev = device if device is not None else torch.device("cpu")
        parts = []
        for kind, x, n in self._items:
            t = _flat(x, dev)
            if kind == _ROWS and self.world > 1:
                block = torch.zeros((self.world, n), dtype=torch.float64, device=dev)
                block[self.rank] = t
                t = block.reshape(-1)
            parts.append(t)
        buf = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
        if self.communicates:
            shared = torch.cat([p for p, (kind, _, _) in zip(parts, self._items) if kind != _LOCAL])
            torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.SUM)
            pos = 0
            for i, (kind, _, _) in enumerate(self._items):
                if kind != _LOCAL:
                    parts[i] = shared[pos : pos + parts[i].numel()]
                    pos += parts[i].numel()
            buf = torch.cat(parts)
        host = buf.cpu().numpy()
        self._out, pos = [], 0
        for kind, _, n in self._items:
            size = n * self.world if kind == _ROWS and self.world > 1 else n
            v = host[pos : pos + size]
            pos += size
            rows = self.world if self.world > 1 else 1
            self._out.append(v.reshape(rows, n) if kind == _ROWS else v)

    def __getitem__(self, handle: int) -> np.ndarray:
        if self._out is None:
            raise RuntimeError("Packer: call reduce() before reading")
        return self._out[handle]


def is_sharded(params: list[torch.nn.Parameter]) -> bool:
    """Whether any parameter is a DTensor sharded across ranks (FSDP2's ``fully_shard``)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) and any(pl.is_shard() for pl in p.placements) for p in params)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (its shard), or the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t
