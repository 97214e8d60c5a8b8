"""One entry point to the recompute kernels: CPU tensors go to the C++ core
(``llmdbg._core.qk_attention``, OpenMP, AVX2), others to the same computation in torch
operations on their device (:mod:`.qk_torch`). Results come back as numpy arrays."""

from __future__ import annotations

import numpy as np
import torch

from .. import _core
from .._internal.threads import resolve_n_jobs
from ..adapters.attention_calls import KernelProblem
from .qk_torch import qk_attention_torch

__all__ = ["recompute", "uses_core"]


def uses_core(problem: KernelProblem) -> bool:
    """Whether the C++ kernel takes this problem (CPU tensors, and a build that has it)."""
    return problem.query.device.type == "cpu" and hasattr(_core, "qk_attention")


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy()


def recompute(
    problem: KernelProblem,
    *,
    stats: bool = False,
    special: np.ndarray | None = None,
    sink_index: np.ndarray | None = None,
    maps: bool = False,
    map_heads: np.ndarray | None = None,
    map_rows: np.ndarray | None = None,
    map_fusion: str = "none",
    row_weights: np.ndarray | None = None,
    row_heads: np.ndarray | None = None,
    n_jobs: int | None = None,
) -> dict[str, np.ndarray]:
    """Recompute attention from ``problem`` (see :class:`~llmdbg.adapters.attention_calls.KernelProblem`).

    Returns a dict with, as asked: ``entropy``, ``max_prob``, ``sink_mass`` (and
    ``special_mass`` when ``special`` is given), each ``(B, H_q, T_q)`` float32, NaN for fully
    excluded rows; ``maps`` ``(B, heads, rows, T_k)`` float32, or ``(B, rows, T_k)`` with
    ``map_fusion`` ``"mean"``/``"max"``; ``row_product`` ``(B, T_k)`` float64 (or ``(B, R, T_k)``
    for ``(B, R, T_q)`` weights), the sum over query rows ``i`` of ``row_weights[b, (r,) i]``
    times the head mean (over ``row_heads``) of row ``i``.
    """
    if uses_core(problem):
        result = _core.qk_attention(
            problem.query.detach().cpu().numpy(),
            problem.key.detach().cpu().numpy(),
            scaling=problem.scaling,
            softcap=problem.softcap,
            causal=problem.causal,
            window=problem.window,
            offset=problem.offset,
            bool_mask=_np(problem.bool_mask),
            add_mask=_np(problem.add_mask),
            special=special,
            sink_index=sink_index,
            sinks=_np(problem.sinks),
            stats=stats,
            maps=maps,
            map_heads=map_heads,
            map_rows=map_rows,
            map_fusion=map_fusion,  # type: ignore[arg-type]  # checked by the binding
            row_weights=row_weights,
            row_heads=row_heads,
            num_threads=resolve_n_jobs(n_jobs),
        )
        return dict(result)
    device = problem.query.device
    as_t = lambda a: None if a is None else torch.from_numpy(np.asarray(a)).to(device)
    out = qk_attention_torch(
        problem,
        stats=stats,
        special=as_t(special),
        sink_index=as_t(sink_index),
        maps=maps,
        map_heads=as_t(map_heads),
        map_rows=as_t(map_rows),
        map_fusion=map_fusion,
        row_weights=as_t(row_weights),
        row_heads=as_t(row_heads),
    )
    return {k: v.cpu().numpy() for k, v in out.items()}
