"""Shared by every method: turn per-target tensors into an :class:`Attribution` in the user's
layout (continuation prompts mapped back to their original positions)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._inputs import Prepared, token_strings
from ._targets import Target
from .result import Attribution


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().float().cpu().numpy().astype(np.float32)


def assemble(
    prep: Prepared,
    target: Target,
    cont: Any,
    batch: dict[str, Any],
    scores: torch.Tensor,
    method: str,
    n_evals: np.ndarray,
    *,
    delta: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
    baseline_value: torch.Tensor | None = None,
    converged: np.ndarray | None = None,
) -> Attribution:
    """``scores`` (G, B, T[, d]) in the run layout; ``delta``/``value``/``baseline_value`` (B, G)."""
    g = scores.shape[0]
    s = scores.detach().float().movedim(0, 1)  # (B, G, T[, d])
    ids = batch["input_ids"]
    if cont is not None:
        positions, _, t_orig = cont
        out = torch.zeros((s.shape[0], g, t_orig, *s.shape[3:]), dtype=torch.float32, device=s.device)
        for i, pos in enumerate(positions):
            out[i, :, pos.to(s.device)] = s[i, :, : pos.numel()]
        s = out
    valid = target.valid.cpu() if target.valid is not None else torch.ones(s.shape[0], g, dtype=torch.bool)
    per_target = cont is not None or g > 1
    if not per_target:
        s = s[:, 0]

    def shaped(t: torch.Tensor | None) -> np.ndarray | None:
        if t is None:
            return None
        arr = _np(t)
        assert arr is not None
        arr[~valid.numpy()] = np.nan
        return arr if per_target else arr[:, 0]

    tok = prep.tokenizer
    target_ids = None if target.ids is None else target.ids.cpu().numpy()
    target_tokens = None
    if target_ids is not None and target.kind == "token":
        target_tokens = [
            [t for t, ok in zip(row, v) if ok]
            for row, v in zip(token_strings(torch.from_numpy(target_ids), tok), valid.tolist())
        ]
    if target_ids is not None and not per_target:
        target_ids = target_ids[:, 0]
    return Attribution(
        scores=np.ascontiguousarray(s.cpu().numpy().astype(np.float32)),
        tokens=token_strings(ids, tok),
        mask=batch["attention_mask"].bool().cpu().numpy(),
        delta=shaped(delta),
        n_evals=np.asarray(n_evals, dtype=np.int64),
        target=target_ids,
        method=method,
        target_tokens=target_tokens,
        value=shaped(value),
        baseline_value=shaped(baseline_value),
        converged=None if converged is None else np.asarray(converged, dtype=bool),
        word_ids=prep.word_ids,
        per_target=per_target,
    )
