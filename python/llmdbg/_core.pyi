"""Type stubs for the compiled core (private; use the llmdbg package)."""

from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
import torch

# statistics and shared pieces (cpp/bindings/stats.cpp, common.cpp, capture.cpp)
HIST_BINS: int
HIST_MIN_EXP: int

class CaptureBudgetError(MemoryError): ...

def summarize(array: np.ndarray, num_threads: int = 0) -> dict[str, Any]: ...
def openmp_max_threads() -> int: ...
def openmp_team_size(num_threads: int = 0) -> int: ...
def device_summary(tensor: torch.Tensor) -> dict[str, Any]: ...

class CaptureStore:
    def __init__(self, max_bytes: int = 0, dtype: str = "float32") -> None: ...
    def add(
        self,
        key: str,
        tensor: torch.Tensor,
        *,
        head_dim: int = -1,
        token_dim: int = -1,
        token_start: int = 0,
        token_stop: int = ...,
        keep: bool = True,
        stats: bool = True,
    ) -> None: ...
    def tensors(self, key: str) -> list[torch.Tensor]: ...
    def summary(self, key: str) -> dict[str, Any]: ...
    def has_stats(self, key: str) -> bool: ...
    def keys(self) -> list[str]: ...
    def clear(self) -> None: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def max_bytes(self) -> int: ...
    @property
    def saw_device_tensor(self) -> bool: ...

# attention (cpp/bindings/attention.cpp)
def attention_head_stats(
    layers: list[np.ndarray], mask: np.ndarray | None, special: np.ndarray | None, num_threads: int = 0
) -> dict[str, np.ndarray]: ...
def attention_js_divergence(
    a: list[np.ndarray], b: list[np.ndarray], mask: np.ndarray | None, num_threads: int = 0
) -> np.ndarray: ...
def attention_rollout(
    layers: list[np.ndarray],
    *,
    mask: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    head_fusion: str = "mean",
    residual: bool = True,
    discard_ratio: float = 0.0,
    num_threads: int = 0,
) -> np.ndarray: ...
def attention_flow(
    layers: list[np.ndarray],
    *,
    mask: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    head_fusion: str = "mean",
    residual: bool = True,
    num_threads: int = 0,
) -> np.ndarray: ...
@overload
def attention_row_sums(array: np.ndarray, num_threads: int = 0, with_min: Literal[False] = False) -> np.ndarray: ...
@overload
def attention_row_sums(
    array: np.ndarray, num_threads: int = 0, *, with_min: Literal[True]
) -> tuple[np.ndarray, np.ndarray]: ...

# attention from queries and keys (cpp/bindings/qk_attention.cpp)
def qk_attention(
    q: np.ndarray,
    k: np.ndarray,
    *,
    scaling: float,
    softcap: float = 0.0,
    causal: bool = False,
    window: int = 0,
    offset: int = 0,
    bool_mask: np.ndarray | None = None,
    add_mask: np.ndarray | None = None,
    special: np.ndarray | None = None,
    sink_index: np.ndarray | None = None,
    sinks: np.ndarray | None = None,
    stats: bool = False,
    maps: bool = False,
    map_heads: np.ndarray | None = None,
    map_rows: np.ndarray | None = None,
    map_fusion: Literal["none", "mean", "max"] = "none",
    row_weights: np.ndarray | None = None,
    row_heads: np.ndarray | None = None,
    num_threads: int = 0,
) -> dict[str, np.ndarray]: ...

# integrated gradients (cpp/bindings/attribution.cpp)
def quadrature(method: str, n: int) -> tuple[np.ndarray, np.ndarray]: ...
def patterson_quadrature(level: int) -> tuple[np.ndarray, np.ndarray]: ...

PATTERSON_MAX_LEVEL: int

def ig_path(baseline: torch.Tensor, diff: torch.Tensor, alphas: torch.Tensor, dtype: str) -> torch.Tensor: ...
def ig_accumulate(
    acc: torch.Tensor, grads: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor | None = None
) -> None: ...

# data profiling (cpp/bindings/data.cpp)
def count_whitespace_tokens(texts: Sequence[str], num_threads: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]: ...
def duplicate_groups(texts: Sequence[str], num_threads: int = 0) -> np.ndarray: ...
def profile_whitespace(
    texts: Sequence[str], num_threads: int = 0
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]: ...
def duplicate_summary(
    groups: np.ndarray, codes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def int64_array(items: Sequence[int]) -> np.ndarray | None: ...
def count_ids(
    ids: np.ndarray, offsets: np.ndarray, vocab_size: int, num_threads: int = 0
) -> tuple[np.ndarray, np.ndarray]: ...

# t-SNE (cpp/bindings/tsne.cpp)
def tsne_knn(
    X: np.ndarray, k: int, metric: str = "euclidean", num_threads: int = 0
) -> tuple[np.ndarray, np.ndarray]: ...
def tsne_knn_approx(
    X: np.ndarray,
    k: int,
    *,
    M: int = 16,
    ef_construction: int = 100,
    ef_search: int = 0,
    seed: int = 100,
    refine: int = 16,
    num_threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]: ...
def tsne_calibrate(
    sqdist: np.ndarray, perplexity: float, tol: float = 1e-5, max_iter: int = 200, num_threads: int = 0
) -> tuple[np.ndarray, np.ndarray]: ...
def tsne_joint_probabilities(
    indices: np.ndarray, P: np.ndarray, num_threads: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def tsne_repulsion(
    Y: np.ndarray,
    method: str = "bh",
    theta: float = 0.5,
    n_interp: int = 3,
    min_intervals: int = 50,
    intervals_per_unit: float = 1.0,
    num_threads: int = 0,
) -> tuple[np.ndarray, float]: ...
def tsne_gradient(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    Y: np.ndarray,
    exaggeration: float = 1.0,
    method: str = "bh",
    theta: float = 0.5,
    num_threads: int = 0,
) -> tuple[np.ndarray, float]: ...
def tsne_kl_divergence(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, Y: np.ndarray, num_threads: int = 0
) -> float: ...
def tsne_optimize(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    Y: np.ndarray,
    phases: list[tuple[int, float, float, float]],
    *,
    method: str = "bh",
    theta: float = 0.5,
    max_step_norm: float = 5.0,
    min_gain: float = 0.01,
    n_interp: int = 3,
    min_intervals: int = 50,
    intervals_per_unit: float = 1.0,
    callback: Any = None,
    callback_every: int = 10,
    kl_every: int = 50,
    num_threads: int = 0,
) -> dict[str, Any]: ...
