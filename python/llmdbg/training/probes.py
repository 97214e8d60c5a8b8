"""Activation probes of the periodic tier: statistics per block, dead units, outlier features.

On a logged step (every ``every`` steps) the hooks summarise each block's output with the C++
statistics kernel (:func:`llmdbg.summarize`: fixed log2 bins, float64 accumulation), count
per hidden feature the positions with ``|a| >= 6`` (outlier features, LLM.int8) and record
which feed-forward units were active on any token (dead units). Everything is kept as *sums*
(counts, sums, sums of squares, histogram counts) so that calls, steps and ranks merge exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _core
from .._internal.threads import resolve_n_jobs
from .hooks import float_tensors

#: |a| at or above which a hidden feature counts as an outlier on a position (LLM.int8).
OUTLIER_THRESHOLD = 6.0
#: Below this |a| a GELU/SiLU unit counts as inactive on a token (ReLU-like units: a <= 0).
DEAD_EPS = 1e-6
_RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.Hardtanh)

# Packed layout of one tensor's statistics (float64): counts, sums, extrema, histogram.
STAT_FIELDS = ("count", "finite", "nan", "inf", "zero", "sum", "sumsq")
N_SUM = len(STAT_FIELDS) + _core.HIST_BINS  # summed across calls and ranks
N_MAX = 1  # absmax: max across calls and ranks


def packed_stats(x: torch.Tensor) -> tuple[np.ndarray, float]:
    """(sums ``(N_SUM,)`` float64, absmax) of one tensor via the C++ kernel."""
    t = x.detach()
    if t.device.type == "cpu":
        arr = t.to(torch.float32).contiguous().numpy() if t.dtype != torch.float64 else t.contiguous().numpy()
        d = _core.summarize(arr, resolve_n_jobs(None))
    else:
        d = _core.device_summary(t)
    fin = d["finite_count"]
    mean = d["mean"] if fin else 0.0
    var = d["var"] if fin else 0.0
    head = [d["count"], fin, d["nan_count"], d["inf_count"], d["zero_count"], mean * fin, (var + mean * mean) * fin]
    absmax = d["absmax"] if fin else 0.0
    if d["nan_count"] or d["inf_count"]:
        absmax = float("inf")
    return np.concatenate([np.asarray(head, np.float64), np.asarray(d["histogram"], np.float64)]), absmax


def unpack_stats(sums: np.ndarray, absmax: float) -> dict[str, float]:
    """Mean, std, absmax, zero fraction and non-finite counts from packed sums."""
    count, fin, nan, inf, zero, s, ss = (float(v) for v in sums[: len(STAT_FIELDS)])
    mean = s / fin if fin else float("nan")
    var = max(ss / fin - mean * mean, 0.0) if fin else float("nan")
    return {
        "mean": mean,
        "std": var**0.5,
        "absmax": absmax,
        "zero_fraction": zero / count if count else 0.0,
        "nan_count": int(nan),
        "inf_count": int(inf),
        "count": int(count),
    }


def _is_activation(mod: nn.Module) -> bool:
    name = type(mod).__name__
    return (
        type(mod).__module__.startswith("torch.nn.modules.activation")
        or name.endswith("Activation")
        or name in {"GELU", "SiLU", "ReLU", "GELUTanh", "QuickGELU"}
    )


def find_blocks(model: nn.Module) -> tuple[list[str], list[str]]:
    """(block names, feed-forward activation module names) of ``model``.

    Hugging Face models use :func:`llmdbg.find_layout`; other models fall back to their direct
    children as blocks and every activation module as a feed-forward activation.
    """
    from ..adapters.layout import find_layout

    names = dict(model.named_modules())
    try:
        layout = find_layout(model)
        blocks = list(layout.blocks)
        mlps = list(layout.mlp) or blocks
    except Exception:
        blocks = [n for n, _ in model.named_children()]
        mlps = [""]
    acts = []
    for mlp in mlps:
        prefix = f"{mlp}." if mlp else ""
        acts += [n for n, m in names.items() if n.startswith(prefix) and n and _is_activation(m)]
    return blocks, list(dict.fromkeys(acts))


class ActivationProbe:
    """Hooks that summarise block outputs and FFN activations while :attr:`armed`.

    The hooks exist only while armed (the logged steps): the other steps pay no hook call.
    """

    def __init__(self, model: nn.Module, blocks: list[str], activations: list[str]) -> None:
        self.blocks, self.activations = blocks, activations
        self._targets = [(model.get_submodule(n), self._block_hook(n)) for n in blocks]
        for name in activations:
            mod = model.get_submodule(name)
            self._targets.append((mod, self._act_hook(name, isinstance(mod, _RELU_LIKE))))
        self._armed = False
        self.handles: list[Any] = []
        self.sums: dict[str, np.ndarray] = {}
        self.absmax: dict[str, float] = {}
        self.outliers: dict[str, np.ndarray] = {}  # block -> per-feature counts of |a| >= 6
        self.positions: dict[str, float] = {}  # block -> positions seen
        self.active: dict[str, np.ndarray] = {}  # activation -> per-unit "active on a token" (0/1)
        self.tokens: dict[str, float] = {}

    @property
    def armed(self) -> bool:
        """Whether the hooks are attached (and record)."""
        return self._armed

    @armed.setter
    def armed(self, on: bool) -> None:
        on = bool(on)
        if on and not self.handles:
            self.handles = [mod.register_forward_hook(hook) for mod, hook in self._targets]
        elif not on and self.handles:
            self._detach()
        self._armed = on

    def _detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _block_hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self.armed or not torch.is_grad_enabled():
                return
            x = next(float_tensors(output), None)
            if x is None:
                return
            sums, amax = packed_stats(x)
            self.sums[name] = self.sums.get(name, 0) + sums
            self.absmax[name] = max(self.absmax.get(name, 0.0), amax)
            flat = x.detach().reshape(-1, x.shape[-1])
            big = (flat.abs() >= OUTLIER_THRESHOLD).sum(0, dtype=torch.float64).cpu().numpy()
            self.outliers[name] = self.outliers.get(name, 0) + big
            self.positions[name] = self.positions.get(name, 0.0) + flat.shape[0]

        return hook

    def _act_hook(self, name: str, relu_like: bool):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self.armed or not torch.is_grad_enabled() or not isinstance(output, torch.Tensor):
                return
            flat = output.detach().reshape(-1, output.shape[-1])
            on = flat > 0 if relu_like else flat.abs() >= DEAD_EPS
            self.active[name] = np.maximum(self.active.get(name, 0), on.any(0).to(torch.float64).cpu().numpy())
            self.tokens[name] = self.tokens.get(name, 0.0) + flat.shape[0]

        return hook

    def take(self) -> dict[str, Any]:
        """The statistics gathered while armed, then cleared (dead-unit activity is kept by the
        caller across steps)."""
        out = {
            "sums": self.sums,
            "absmax": self.absmax,
            "outliers": self.outliers,
            "positions": self.positions,
            "active": self.active,
            "tokens": self.tokens,
        }
        self.sums, self.absmax, self.outliers, self.positions, self.active, self.tokens = {}, {}, {}, {}, {}, {}
        return out

    def remove(self) -> None:
        self._detach()
        self._armed = False
