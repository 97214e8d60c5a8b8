"""Pooling over tokens, written once: the mean over real tokens and the last real token.

Both work on numpy arrays and on torch tensors, and handle right and left padding through the
mask (the last real token is the last position whose mask is nonzero, not ``mask.sum() - 1``).
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["last_real_index", "mean_pool"]

A = TypeVar("A", np.ndarray, torch.Tensor)


def last_real_index(mask: A) -> A:
    """Index of the last nonzero entry of each row of a (B, T) mask, int64 (B,).

    A row without a real token gives -1.
    """
    if isinstance(mask, torch.Tensor):
        t = mask.shape[-1]
        positions = torch.arange(t, device=mask.device).expand_as(mask)
        return torch.where(mask.bool(), positions, -1).amax(-1)
    m = np.asarray(mask) != 0
    t = m.shape[-1]
    last = t - 1 - np.argmax(m[..., ::-1], axis=-1)
    return np.where(m.any(axis=-1), last, -1).astype(np.int64)


def mean_pool(hidden: A, mask: Any = None) -> A:
    """(B, T, D) hidden states averaged over the real tokens of each row: (B, D).

    numpy input accumulates in float64 and returns float32; torch input stays in its dtype (it
    may carry gradients). Without a mask every token counts.
    """
    if isinstance(hidden, torch.Tensor):
        if mask is None:
            return hidden.mean(1)
        m = mask.to(hidden.dtype)[..., None]
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    h = np.asarray(hidden, dtype=np.float64)
    w = np.ones(h.shape[:2]) if mask is None else (np.asarray(mask) != 0).astype(np.float64)
    return (np.einsum("bt,btd->bd", w, h) / w.sum(axis=1, keepdims=True)).astype(np.float32)
