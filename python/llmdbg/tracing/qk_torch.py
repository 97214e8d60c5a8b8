"""The recompute kernels in torch operations, for tensors on an accelerator.

Same problem and results as ``llmdbg._core.qk_attention`` (the C++ kernel that CPU tensors take):
attention probabilities are recomputed from queries and keys in blocks of query rows, so no
``(T_q, T_k)`` map per head is ever held; a block costs ``B · H_q · rows · T_k`` floats, sized to
stay near :data:`BLOCK_BYTES`. Logits and softmax in float32, sums in float64 (float32 on devices
without float64 support would be the place to change that).
"""

from __future__ import annotations

from typing import Any

import torch

from ..adapters.attention_calls import KernelProblem

__all__ = ["BLOCK_BYTES", "qk_attention_torch"]

BLOCK_BYTES = 64 * 2**20


def _kv_heads(problem: KernelProblem, heads: torch.Tensor) -> torch.Tensor:
    hq, hkv = problem.query.shape[1], problem.key.shape[1]
    return torch.div(heads, hq // hkv, rounding_mode="floor")


def _mask_block(mask: torch.Tensor, heads: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    m = mask if mask.shape[1] == 1 else mask[:, heads]
    return m[:, :, rows]


def _log_probs(problem: KernelProblem, heads: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """log p for the given query heads and rows: (B, len(heads), len(rows), T_k) float32, -inf
    at excluded keys and everywhere in fully excluded rows."""
    q = problem.query[:, heads][:, :, rows]
    k = problem.key[:, _kv_heads(problem, heads)]
    w = torch.matmul(q, k.transpose(-1, -2)) * problem.scaling
    if problem.softcap > 0:
        w = torch.tanh(w / problem.softcap) * problem.softcap
    if problem.add_mask is not None:
        w = w + _mask_block(problem.add_mask, heads, rows)
    tk = w.shape[-1]
    pos = (rows + problem.offset)[:, None]
    keys = torch.arange(tk, device=w.device)[None, :]
    allowed = torch.ones(len(rows), tk, dtype=torch.bool, device=w.device)
    if problem.causal:
        allowed &= keys <= pos
    if problem.window > 0:
        allowed &= keys > pos - problem.window
    w = w.masked_fill(~allowed, float("-inf"))
    if problem.bool_mask is not None:
        w = w.masked_fill(~_mask_block(problem.bool_mask, heads, rows), float("-inf"))
    # Softmax as exp(w - m) / s, not exp(w - logsumexp): next to a float32-min additive mask
    # (eager's padding rows) log s vanishes in the rounding of m and rows would come out all ones.
    m = w.amax(-1, keepdim=True)
    if problem.sinks is not None:
        m = torch.maximum(m, problem.sinks[heads].view(1, -1, 1, 1))
    finite = torch.isfinite(m)
    m = torch.where(finite, m, torch.zeros_like(m))
    s = torch.exp(w - m).sum(-1, keepdim=True)
    if problem.sinks is not None:
        s = s + torch.exp(problem.sinks[heads].view(1, -1, 1, 1) - m)
    logp = (w - m) - torch.log(s)
    return torch.where(finite & (s > 0), logp, torch.full_like(w, float("-inf")))


def _row_blocks(problem: KernelProblem, n_heads: int, rows: torch.Tensor) -> list[torch.Tensor]:
    b, _, _, tk = problem.shape
    per_row = max(1, b * n_heads * tk * 4)
    size = max(1, BLOCK_BYTES // per_row)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def qk_attention_torch(
    problem: KernelProblem,
    *,
    stats: bool = False,
    special: torch.Tensor | None = None,
    sink_index: torch.Tensor | None = None,
    maps: bool = False,
    map_heads: torch.Tensor | None = None,
    map_rows: torch.Tensor | None = None,
    map_fusion: str = "none",
    row_weights: torch.Tensor | None = None,
    row_heads: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Recompute what was asked; see ``llmdbg._core.qk_attention`` for the meaning of each
    argument and result. Returns torch tensors on the problem's device."""
    b, hq, tq, tk = problem.shape
    device = problem.query.device
    all_heads = torch.arange(hq, device=device)
    all_rows = torch.arange(tq, device=device)
    out: dict[str, Any] = {}
    if stats:
        names = ["entropy", "max_prob", "sink_mass"] + (["special_mass"] if special is not None else [])
        result = {n: torch.empty(b, hq, tq, dtype=torch.float32, device=device) for n in names}
        sink = torch.zeros(b, dtype=torch.long, device=device) if sink_index is None else sink_index.to(device)
        for rows in _row_blocks(problem, hq, all_rows):
            logp = _log_probs(problem, all_heads, rows)
            p = logp.exp()
            empty = ~torch.isfinite(logp).any(-1)
            entropy = -(p.double() * torch.where(p > 0, logp, torch.zeros_like(logp)).double()).sum(-1)
            values = {
                "entropy": entropy,
                "max_prob": p.amax(-1),
                "sink_mass": p.gather(-1, sink.view(b, 1, 1, 1).expand(b, hq, len(rows), 1)).squeeze(-1),
            }
            if special is not None:
                values["special_mass"] = (p.double() * special.to(device)[:, None, None, :].double()).sum(-1)
            for n in names:
                result[n][:, :, rows] = values[n].to(torch.float32).masked_fill(empty, float("nan"))
        out.update(result)
    if maps:
        heads = all_heads if map_heads is None else map_heads.to(device)
        rows_sel = all_rows if map_rows is None else map_rows.to(device)
        parts = []
        for rows in _row_blocks(problem, len(heads), rows_sel):
            p = _log_probs(problem, heads, rows).exp()
            if map_fusion == "mean":
                p = p.double().mean(1).to(torch.float32)
            elif map_fusion == "max":
                p = p.amax(1)
            parts.append(p)
        out["maps"] = torch.cat(parts, dim=-2)
    if row_weights is not None:
        heads = all_heads if row_heads is None else row_heads.to(device)
        weights = row_weights.to(device=device, dtype=torch.float64)
        flat = weights.dim() == 2
        weights = weights[:, None] if flat else weights  # (B, R, T_q)
        used = torch.nonzero(weights.abs().sum((0, 1)) > 0).flatten()
        acc = torch.zeros(b, weights.shape[1], tk, dtype=torch.float64, device=device)
        for rows in _row_blocks(problem, len(heads), used):
            p = _log_probs(problem, heads, rows).exp().double().mean(1)  # (B, rows, T_k)
            acc += torch.einsum("bRr,brk->bRk", weights[:, :, rows], p)
        out["row_product"] = acc[:, 0] if flat else acc
    return out
