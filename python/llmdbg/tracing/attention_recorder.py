"""What a capture does with each recorded attention call: recompute the statistics or maps its
query asked for, check them against the model's own output when ``verify=True``, and keep them.

The recorder sees the call before the model's kernel runs (queries, keys, mask) and, for
verification, its output afterwards. Nothing here holds a ``(T_q, T_k)`` map per head unless the
query asked for one.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..adapters.attention_calls import AttentionCall, KernelProblem, kernel_problem, reported_problem
from .query import AttentionQuery
from .recompute import recompute

__all__ = ["STAT_NAMES", "AttentionRecorder", "VerificationError", "verify_tolerance"]

STAT_NAMES = ("entropy", "max_prob", "sink_mass", "special_mass")
_VERIFY_ROWS = 8


class VerificationError(AssertionError):
    """``verify=True`` found recomputed probabilities that do not reproduce the model's output."""


def verify_tolerance(dtype: torch.dtype) -> float:
    """Largest accepted ``|Σ_j p_ij v_j − output_i|`` relative to ``max |v|``: 1e-4 when the
    model's attention ran in float32/float64, 2e-2 in bfloat16/float16 (their own rounding)."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


class AttentionRecorder:
    """Per-call recompute for one capture.

    Parameters
    ----------
    mode : {"stats", "maps"}
    query : AttentionQuery or None
        For ``"maps"``: which layers, heads and rows, and the head fusion.
    names : list of str
        Attention modules in layer order (index = layer).
    add_map : callable
        ``add_map(module_name, array)`` stores one call's maps in the capture store.
    verify : bool
        Check a sample of rows of every call against the kernel's own output.
    """

    def __init__(
        self,
        mode: str,
        query: AttentionQuery | None,
        names: list[str],
        add_map: Callable[[str, np.ndarray], None],
        *,
        verify: bool = False,
        n_jobs: int | None = None,
        row_slice: slice | None = None,
    ) -> None:
        self.mode = mode
        self.row_slice = row_slice
        self.query = query
        self.names = names
        self.add_map = add_map
        self.verify = verify
        self.n_jobs = n_jobs
        self.layers = set(query.layer_indices(len(names))) if query is not None else set(range(len(names)))
        self.stats: dict[int, dict[str, list[np.ndarray]]] = {}
        self.calls: dict[str, int] = {}
        # Per key stream ("input_ids" or "decoder_input_ids"): (special flags (B, T) or None,
        # first real position (B,) or None), set by the model's forward pre-hook.
        self.streams: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
        self.stream_of: dict[str, str] = {}
        self.causal: dict[int, bool] = {}  # layer -> the module's is_causal flag
        self.warned_dropout = False
        self.forwards = 0  # model forwards seen (counted by attention_setup.record_streams)
        # Beam search reorders cached rows between steps: earlier special-token flags no longer
        # line up with the rows, so decode steps report special_mass as NaN (unknown).
        self.cache_reordered = False
        # Attention modules whose forward ran (a decoder-only call skips cross-attention), and the
        # recorded calls of the first forward in call order: a module called several times per
        # forward (ALBERT's shared layer, Perceiver's repeated block) gives one map per call.
        self.entered: set[str] = set()
        self.sequence: list[str] = []
        self._last_qk: dict[str, tuple[Any, Any]] = {}

    def check_complete(self, recorded: bool) -> None:
        """Raise when the model ran but a selected attention module never reached the recorder
        (a module that computes attention outside the AttentionInterface), instead of leaving a
        silent gap in the trace."""
        missing = [
            self.names[i]
            for i in sorted(self.layers)
            if self.names[i] not in self.calls and self.names[i] in self.entered
        ]
        if not self.forwards or not missing:
            return
        shown = f"{missing[:3]}{' ...' if len(missing) > 3 else ''}"
        raise RuntimeError(
            f"the model ran but the attention of {shown} never reached llmdbg: these modules compute "
            "attention outside transformers' AttentionInterface (or skipped it); use attention_impl='eager'"
            if recorded
            else f"the model ran but {shown} returned no attention weights"
        )

    def __call__(self, call: AttentionCall) -> Callable[[Any], None] | None:
        if call.layer not in self.layers or self._repeats_last_call(call):
            return None
        self._count(call.name)
        self.causal[call.layer] = bool(getattr(call.module, "is_causal", False))
        if not self.warned_dropout and float(call.kwargs.get("dropout") or 0.0) > 0:
            self.warned_dropout = True
            warnings.warn(
                f"{call.name}: attention dropout is active (the model is in train mode); the recomputed "
                "maps are the probabilities before dropout, not the dropped-out weights the kernel used",
                stacklevel=2,
            )
        problem = kernel_problem(call)
        shown = reported_problem(call, problem)  # the weights the model's eager attention reports
        b, hq, tq, tk = problem.shape
        special, sink = self._key_tokens(call.name, b, tk)
        if self.mode == "stats":
            result = recompute(shown, stats=True, special=special, sink_index=sink, n_jobs=self.n_jobs)
            if "special_mass" not in result:
                result["special_mass"] = np.full((b, hq, tq), np.nan, dtype=np.float32)
            slot = self.stats.setdefault(call.layer, {n: [] for n in STAT_NAMES})
            for n in STAT_NAMES:
                slot[n].append(result[n])
        else:
            assert self.query is not None  # maps mode always has a query
            heads = self.query.head_indices(hq, call.name)
            rows = self._rows(tq, call.name)
            result = recompute(
                shown,
                maps=True,
                map_heads=heads,
                map_rows=rows,
                map_fusion=self.query.reduce or "none",
                n_jobs=self.n_jobs,
            )
            self.add_map(call.name, result["maps"])
        if not self.verify:
            return None
        return lambda output: self._verify(call, problem, output)

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.forwards <= 1:
            self.sequence.append(name)

    def _repeats_last_call(self, call: AttentionCall) -> bool:
        """A second kernel call of a module on the very same queries and keys (DiffLlama runs one
        softmax against two halves of V): the same probabilities, which the model reports once."""
        last = self._last_qk.get(call.name)
        self._last_qk[call.name] = (weakref.ref(call.query), weakref.ref(call.key))
        return last is not None and last[0]() is call.query and last[1]() is call.key

    def _rows(self, tq: int, name: str) -> np.ndarray | None:
        assert self.query is not None
        if self.query.rows is None and self.row_slice is not None:
            return np.arange(tq, dtype=np.int64)[self.row_slice]
        return self.query.row_indices(tq, name)

    def add_eager(self, layer: int, name: str, weights: torch.Tensor, module: Any = None) -> None:
        """The eager path: the same statistics or query from materialised ``(B, H, T_q, T_k)``
        weights (a module's own output under eager attention)."""
        if layer not in self.layers:
            return
        self._count(name)
        self.causal[layer] = bool(getattr(module, "is_causal", False))
        b, h, tq, tk = weights.shape
        if self.mode == "stats":
            special, first = self._key_tokens(name, b, tk)
            slot = self.stats.setdefault(layer, {n: [] for n in STAT_NAMES})
            for n, v in stats_from_weights(weights, special, first).items():
                slot[n].append(v)
            return
        assert self.query is not None
        w = weights.detach()
        heads, rows = self.query.head_indices(h, name), self._rows(tq, name)
        if heads is not None:
            w = w[:, torch.from_numpy(heads).to(w.device)]
        if rows is not None:
            w = w[:, :, torch.from_numpy(rows).to(w.device)]
        if self.query.reduce == "mean":
            w = w.to(torch.float64).mean(1)
        elif self.query.reduce == "max":
            w = w.amax(1)
        self.add_map(name, w.to(torch.float32).cpu().numpy())

    def _key_tokens(self, name: str, b: int, tk: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        special, first = self.streams.get(self.stream_of.get(name, "input_ids"), (None, None))
        if special is not None and special.shape != (b, tk):
            special = None
        if first is not None and (first.shape != (b,) or (first >= tk).any()):
            first = None
        return special, first

    def _verify(self, call: AttentionCall, problem: KernelProblem, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        value = call.value
        if not isinstance(out, torch.Tensor) or value is None:
            raise VerificationError(f"{call.name}: the attention call returned no output tensor to verify against")
        _, hq, tq, _ = problem.shape
        rows = np.unique(np.linspace(0, tq - 1, min(tq, _VERIFY_ROWS)).round().astype(np.int64))
        probs = recompute(problem, maps=True, map_rows=rows, n_jobs=self.n_jobs)["maps"]  # (B, Hq, r, Tk)
        v = value.detach().to(torch.float64)
        if problem.key.shape[2] < v.shape[2]:  # SDPA crops cached keys beyond T_q (see kernel_problem)
            v = v[:, :, : problem.key.shape[2]]
        v = v.repeat_interleave(hq // v.shape[1], dim=1).cpu()  # (B, Hq, Tk, dv)
        expected = torch.from_numpy(probs).to(torch.float64) @ v  # (B, Hq, r, dv)
        got = out.detach().to(torch.float64).cpu()[:, rows].transpose(1, 2)  # (B, T, Hq, dv) -> (B, Hq, r, dv)
        real = torch.from_numpy(probs).sum(-1) > 0  # fully excluded rows have kernel-specific outputs
        diff = ((expected - got).abs().amax(-1) * real).max().item()
        scale = max(v.abs().max().item(), 1e-30)
        tol = verify_tolerance(out.dtype)
        if diff > tol * scale:
            raise VerificationError(
                f"{call.name}: recomputed attention does not reproduce the model's {call.implementation} output: "
                f"max |p·V − output| = {diff:.3g} > {tol:g} × max|V| = {tol * scale:.3g} on rows {rows.tolist()}. "
                "The call's mask or options are not understood for this family; use attention_impl='eager'"
            )


def stats_from_weights(
    weights: torch.Tensor, special: np.ndarray | None, first: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The per-query statistics of materialised ``(B, H, T_q, T_k)`` weights (the eager path),
    float64 sums, float32 results; rows that sum to 0 are NaN."""
    w = weights.detach().to(torch.float64)
    b, h, tq, tk = w.shape
    empty = w.sum(-1) <= 0
    sink = torch.zeros(b, dtype=torch.long) if first is None else torch.from_numpy(first)
    out = {
        "entropy": -torch.special.xlogy(w, w).sum(-1),
        "max_prob": w.amax(-1),
        "sink_mass": w.gather(-1, sink.to(w.device).view(b, 1, 1, 1).expand(b, h, tq, 1)).squeeze(-1),
        "special_mass": (
            (w * torch.from_numpy(special).to(w.device, torch.float64)[:, None, None, :]).sum(-1)
            if special is not None and special.shape == (b, tk)
            else torch.full((b, h, tq), float("nan"), dtype=torch.float64)
        ),
    }
    return {n: v.masked_fill(empty, float("nan")).to(torch.float32).cpu().numpy() for n, v in out.items()}
