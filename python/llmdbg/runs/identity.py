"""What makes two runs the same job: the model's class, config and weights, bit for bit.

Computed where the model is: in this process for the local engine or a model object, inside a Ray
task for a model given by name or factory, so that the same weights give the same identity
whichever engine runs them, and two checkpoints of one config never count as one job.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

__all__ = ["model_identity"]

#: Entries of each parameter whose exact bits enter the digest.
DIGEST_SAMPLE = 4096


def model_identity(model: torch.nn.Module) -> dict[str, Any]:
    """``{"class", "name_or_path", "config", "weights", "dtype"}``: the config's JSON hash and a
    digest of the exact bits of up to :data:`DIGEST_SAMPLE` evenly spaced entries of every
    parameter (thread-count independent, as a float sum is not; fast on a 70B model; two
    checkpoints differ almost everywhere)."""
    config = getattr(model, "config", None)
    to_json = getattr(config, "to_json_string", None)
    cfg = to_json(use_diff=False) if callable(to_json) else ""
    h = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            idx = torch.linspace(0, max(flat.numel() - 1, 0), min(flat.numel(), DIGEST_SAMPLE)).long()
            h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
            h.update(flat[idx.to(flat.device)].float().cpu().numpy().tobytes())
    first = next(model.parameters(), None)
    return {
        "class": type(model).__name__,
        "name_or_path": str(getattr(model, "name_or_path", "") or ""),
        "config": hashlib.blake2b(cfg.encode(), digest_size=16).hexdigest(),
        "weights": h.hexdigest(),
        "dtype": None if first is None else str(first.dtype),
    }
