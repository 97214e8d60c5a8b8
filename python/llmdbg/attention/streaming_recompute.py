"""Streaming rollout from the queries and keys of the model's own attention calls.

No attention map is ever materialised for the chosen rows: the forward records each layer's
queries and keys (float32, the only O(L·T·d) state), and the rollout of rows R is computed top
down afterwards, ``r ← r · Â_l`` for l = L … 1, where ``r · Ā_l`` (the head mean) comes from the
recompute kernel's vector–matrix product, tile by tile. Extra memory is O(L·(H_q + H_kv)·T·d) for
the recorded queries and keys plus O(|R|·T) for the rows. Without ``rows`` the full product needs
O(T²) anyway: each layer's head-mean map is recomputed during the forward and folded in bottom up.

``Â_l = (Ā_l + I) / rowsum``: for a query row that attends somewhere the row sum is 2, for a fully
masked row (left padding) Â is the identity row, and for models with learned sinks (rows summing
below 1) the row sums come from the recomputed maps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..adapters.attention_calls import AttentionCall, KernelProblem, kernel_problem, recording_attention
from ..tracing.recompute import recompute


class RecomputeRollout:
    """The recorder of one streaming rollout: statistics per layer, and either the recorded
    problems (``rows`` given, top-down afterwards) or the running bottom-up product."""

    def __init__(
        self, names: list[str], mask: np.ndarray | None, rows: np.ndarray | None, residual: bool, on_layer: Callable
    ) -> None:
        self.names = names
        self.mask = mask
        self.rows = rows
        self.residual = residual
        self.on_layer = on_layer
        self.problems: list[KernelProblem] = []
        self.empty: list[np.ndarray] = []  # per layer (B, T) fully masked query rows
        self.product: np.ndarray | None = None
        self.entropy: list[np.ndarray] = []
        self.max_weight: list[np.ndarray] = []
        self.first_mass: list[np.ndarray] = []
        self.seen: list[str] = []

    def __call__(self, call: AttentionCall) -> None:
        problem = kernel_problem(call)
        b, _, tq, tk = problem.shape
        if tq != tk:
            raise ValueError(f"{call.name} computed non-square attention ({tq} queries, {tk} keys)")
        real = np.ones((b, tq), bool) if self.mask is None else self.mask.astype(bool)
        first = real.argmax(1).astype(np.int64)
        stats = recompute(problem, stats=True, sink_index=first)
        ok = real[:, None, :] & ~np.isnan(stats["entropy"])  # (B, H, T)
        count = np.maximum(ok.sum(-1), 1)
        for name, out in (("entropy", self.entropy), ("max_prob", self.max_weight), ("sink_mass", self.first_mass)):
            values = np.where(ok, stats[name].astype(np.float64), 0.0)
            out.append(values.sum(-1) / count)
        empty = np.isnan(stats["entropy"]).all(1)  # (B, T)
        if self.rows is not None:
            self.problems.append(problem)
            self.empty.append(empty)
        else:
            fused = recompute(problem, maps=True, map_fusion="mean")["maps"].astype(np.float64)  # (B, T, T)
            if self.residual:
                fused[:, np.arange(tq), np.arange(tq)] += 1.0
                fused /= fused.sum(-1, keepdims=True)
            self.product = fused if self.product is None else fused @ self.product
        self.seen.append(call.name)
        self.on_layer()

    def top_down(self) -> np.ndarray:
        """``(B, |rows|, T)`` float64: e_rows · Â_L ⋯ Â_1."""
        assert self.rows is not None and self.problems
        b, _, t, _ = self.problems[0].shape
        r = np.zeros((b, len(self.rows), t))
        r[:, np.arange(len(self.rows)), self.rows] = 1.0
        for problem, empty in zip(reversed(self.problems), reversed(self.empty)):
            if problem.sinks is None:
                # Row sums of Ā are 1 (0 for fully masked rows): Â_i = (Ā_i + e_i) / 2, or e_i.
                weights = np.where(empty[:, None, :], 0.0, r / 2 if self.residual else r)
                product = recompute(problem, row_weights=weights)["row_product"]
                r = product + (np.where(empty[:, None, :], r, r / 2) if self.residual else 0.0)
            else:  # rows sum below 1: read the sums off the recomputed head-mean map
                fused = recompute(problem, maps=True, map_fusion="mean")["maps"].astype(np.float64)
                if self.residual:
                    fused[:, np.arange(t), np.arange(t)] += 1.0
                    fused /= fused.sum(-1, keepdims=True)
                r = np.einsum("brt,btk->brk", r, fused)
        return r


def run(
    model: torch.nn.Module,
    batch: dict[str, Any],
    modules: list[str],
    mask: np.ndarray | None,
    rows: np.ndarray | None,
    residual: bool,
    on_layer: Callable,
) -> RecomputeRollout:
    """One forward under recording; returns the recorder with the product or the top-down rows."""
    recorder = RecomputeRollout(modules, mask, rows, residual, on_layer)
    named = {n: model.get_submodule(n) for n in modules}
    with recording_attention(model, named, recorder), torch.no_grad():
        model(**batch)
    if len(recorder.seen) != len(modules):
        missing = [n for n in modules if n not in recorder.seen]
        raise RuntimeError(f"the attention of {missing[:3]} never reached llmdbg; use attention_impl='eager'")
    return recorder
