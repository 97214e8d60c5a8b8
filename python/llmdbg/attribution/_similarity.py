"""A ready-made callable target: cosine similarity of a mean-pooled sentence embedding to a fixed
reference embedding per example (sentence-transformers' MiniLM recipe)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._internal.pooling import mean_pool


def similarity_target(reference: Any) -> Callable[[Any, dict], torch.Tensor]:
    """Target ``f(outputs, batch)``: cosine similarity between each row's mean-pooled
    ``last_hidden_state`` and ``reference[example]``.

    Parameters
    ----------
    reference : array_like, shape (B, d) or (d,)
        The embedding each input is compared to (e.g. the other sentence's mean-pooled embedding,
        computed once without gradients: only the attributed input goes through the path).

    Returns
    -------
    callable
        Pass as ``target=`` to any attribution method.
    """
    ref = torch.as_tensor(
        np.asarray(reference.detach().cpu() if isinstance(reference, torch.Tensor) else reference), dtype=torch.float32
    )
    if ref.dim() == 1:
        ref = ref[None]
    if ref.dim() != 2:
        raise ValueError(f"reference must have shape (B, d) or (d,), got {tuple(ref.shape)}")

    def target(outputs: Any, batch: dict) -> torch.Tensor:
        hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
        pooled = mean_pool(hidden.float(), batch["attention_mask"])
        rows = batch["example"].to(pooled.device)
        r = ref.to(pooled.device)[rows if ref.shape[0] > 1 else torch.zeros_like(rows)]
        return torch.nn.functional.cosine_similarity(pooled, r, dim=-1)

    return target
