"""Neighbour search for t-SNE (private): exact or HNSW in the core, brute-force queries here.

``search`` picks the core's exact blocked-GEMM search or its approximate HNSW graph (hnswlib).
``query`` finds the k nearest reference rows of other points by blocked brute force (torch
GEMMs on float32 candidates, re-ranked in float64); it measures the recall of an approximate
search on a sample and finds the neighbours of new points for ``TSNE.transform``.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _core
from .._internal.threads import torch_threads

NEIGHBORS = ("auto", "exact", "approx")
# "auto" uses the HNSW graph from this many points on. Measured on this project's 2-core machine
# with the vectorised graph (make_blobs, k = 90, 2 threads, best of 2, search alone): 50-D,
# exact vs HNSW 2.7 vs 2.9 s at 30,000, 5.6 vs 4.9 s at 45,000, 9.8 vs 7.5 s at 60,000; 10-D,
# 4.0 vs 6.0 s at 60,000 (the exact search still ahead). 60,000 keeps the deterministic exact
# search wherever it is faster or within a third of the graph's time.
APPROX_FROM = 60_000
RECALL_QUERIES = 1000
# Reference rows per GEMM block of a brute-force query (bounds its memory to queries x block).
_REF_BLOCK = 1 << 16


def use_approx(neighbors: str, n: int) -> bool:
    if neighbors not in NEIGHBORS:
        raise ValueError(f"neighbors must be one of {NEIGHBORS}, got {neighbors!r}")
    return neighbors == "approx" or (neighbors == "auto" and n >= APPROX_FROM)


def search(X: np.ndarray, k: int, approx: bool, threads: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of every row of X (self excluded): (indices (N, k) int64, sqdist float64)."""
    if approx:
        return _core.tsne_knn_approx(X, k, seed=seed, num_threads=threads)
    return _core.tsne_knn(X, k, "euclidean", threads)


def query(R: np.ndarray, Q: np.ndarray, k: int, threads: int, exclude: np.ndarray | None = None):
    """The k nearest rows of R for every row of Q, by blocked brute force.

    Parameters
    ----------
    R : ndarray, shape (N, d)
        Reference rows.
    Q : ndarray, shape (M, d)
        Query rows, same dtype family as R.
    k : int
        Neighbours per query (< N, or <= N - 1 with ``exclude``).
    exclude : ndarray of int, shape (M,), optional
        A reference row to leave out per query (the query itself when Q is a sample of R).

    Returns
    -------
    indices : ndarray, shape (M, k), int64
    sqdist : ndarray, shape (M, k), float64
        Sorted by (squared distance in float64, index).
    """
    m = len(Q)
    spare = k + 8 + (1 if exclude is not None else 0)
    cand_d: list[torch.Tensor] = []
    cand_i: list[torch.Tensor] = []
    with torch_threads(threads), torch.no_grad():
        Rt = torch.from_numpy(np.ascontiguousarray(R)).float()
        Qt = torch.from_numpy(np.ascontiguousarray(Q)).float()
        centre = Rt.mean(dim=0)  # centring keeps |q|^2 + |r|^2 - 2 q.r from cancelling
        Qc = Qt - centre
        qn = (Qc * Qc).sum(dim=1, keepdim=True)
        for r0 in range(0, len(R), _REF_BLOCK):
            Rc = Rt[r0 : r0 + _REF_BLOCK] - centre
            d2 = qn + (Rc * Rc).sum(dim=1)[None, :] - 2.0 * (Qc @ Rc.T)
            take = min(spare, d2.shape[1])
            vals, idx = torch.topk(d2, take, dim=1, largest=False)
            cand_d.append(vals)
            cand_i.append(idx + r0)
        cand = torch.cat(cand_i, dim=1).numpy()
    out_i = np.empty((m, k), np.int64)
    out_d = np.empty((m, k), np.float64)
    for a in range(m):  # re-rank the candidates in float64 (only their rows are converted)
        c = cand[a]
        if exclude is not None:
            c = c[c != exclude[a]]
        dist = ((R[c].astype(np.float64) - Q[a].astype(np.float64)) ** 2).sum(axis=1)
        order = np.lexsort((c, dist))[:k]
        out_i[a], out_d[a] = c[order], dist[order]
    return out_i, out_d


def recall(X: np.ndarray, indices: np.ndarray, threads: int, rng: np.random.Generator) -> float:
    """Fraction of the true k nearest neighbours found, on up to 1000 random rows of X.

    ``indices`` (N, k) are any search's neighbours of every row of X (llmdbg's graph, or another
    library's, as the benchmarks measure openTSNE's Annoy). A found neighbour counts when its
    squared distance (float64, recomputed here) is within the query's true k-th, so ties at the
    k-th distance are not misses.
    """
    n, k = indices.shape
    rows = np.sort(rng.choice(n, size=min(n, RECALL_QUERIES), replace=False))
    _, true_d = query(X, X[rows], k, threads, exclude=rows)
    Xq = np.asarray(X[rows], dtype=np.float64)
    found_d = ((np.asarray(X[indices[rows]], dtype=np.float64) - Xq[:, None, :]) ** 2).sum(axis=2)
    hits = found_d <= true_d[:, -1:] * (1 + 1e-9) + 1e-300
    return float(hits.mean())
