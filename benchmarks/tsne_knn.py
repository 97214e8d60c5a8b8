"""t-SNE's approximate neighbours: time and recall of HNSW settings against openTSNE's Annoy.

The input is the large section's of ``benchmarks/tsne.py``: make_blobs 50-D, 30 centres, std 4
(overlapping Gaussians of intrinsic dimension 50, where the neighbour distances crowd together:
the hard case for any approximate search), k = 90 (3 x perplexity 30), 2 threads.

Each configuration of ``_core.tsne_knn_approx`` (the whole search: graph, queries from each
point, refinement, exact re-ranking) and openTSNE's Annoy index with openTSNE's own settings
(``openTSNE.nearest_neighbors.Annoy``, what ``openTSNE.TSNE`` uses from 1,000 points) runs once
on the same data, in this process, after a warm-up on 2,000 points. Recall is ``TSNE.knn_recall_``'s
measure: on 1,000 random points, the found neighbours within the true k-th squared distance
(blocked brute force). Figures: time_ratio_default_vs_annoy, knn_recall_default,
knn_recall_annoy, and time and recall per configuration in the JSON.

    python benchmarks/tsne_knn.py [--quick] [--n N]     # full: N = 100,000; --quick: 20,000

The docs' table at 300,000 points came from ``--n 300000`` (about 10 minutes; it is not
written to results/, which holds the full run).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from _harness import parse_args, report

K = 90
THREADS = 2
CONFIGS: dict[str, dict] = {
    "graph only, M 16, ef_c 100": dict(M=16, ef_construction=100, refine=0),
    "M 16, ef_c 100, refined": dict(M=16, ef_construction=100),
    "M 16, ef_c 100, refined, ef_search 200": dict(M=16, ef_construction=100, ef_search=200),
    "M 12, ef_c 64, refined, ef_search 200": dict(M=12, ef_construction=64, ef_search=200),
    "M 32, ef_c 64, refined": dict(M=32, ef_construction=64),
    "default (M 24, ef_c 64, refined)": {},
}


def _data(n: int) -> np.ndarray:
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=n, n_features=50, centers=30, cluster_std=4.0, random_state=0)
    return X.astype(np.float32)


def _annoy(X: np.ndarray) -> np.ndarray:
    from openTSNE.nearest_neighbors import Annoy

    return np.asarray(Annoy(X, K, metric="euclidean", n_jobs=THREADS, random_state=0).build()[0])


def main() -> None:
    n = None
    if "--n" in sys.argv:
        i = sys.argv.index("--n")
        n = int(sys.argv[i + 1])
        del sys.argv[i : i + 2]
    args = parse_args(__doc__.splitlines()[0])
    quick = args.quick
    n = n or (20_000 if quick else 100_000)

    import torch

    from llmdbg import _core
    from llmdbg.embedding import _neighbors

    torch.set_num_threads(THREADS)
    X = _data(n)
    warm = _data(2000)
    _core.tsne_knn_approx(warm, K, num_threads=THREADS)
    _annoy(warm)

    seconds: dict[str, float] = {}
    recall: dict[str, float] = {}
    runs = {
        f"llmdbg {name}": (lambda kw=kw: _core.tsne_knn_approx(X, K, num_threads=THREADS, **kw)[0])
        for name, kw in CONFIGS.items()
    }
    runs["openTSNE Annoy"] = lambda: _annoy(X)
    rows_out = []
    for name, fn in runs.items():
        t0 = time.perf_counter()
        found = fn()
        seconds[name] = time.perf_counter() - t0
        recall[name] = _neighbors.recall(X, found, THREADS, np.random.default_rng(0))  # same rows each
        rows_out.append((name, f"{seconds[name]:7.1f} s  recall {recall[name]:.4f}"))
        print(f"{name}: {seconds[name]:.1f} s, recall {recall[name]:.4f}", flush=True)
    default = "llmdbg default (M 24, ef_c 64, refined)"
    figures = {
        "time_ratio_default_vs_annoy": round(seconds[default] / seconds["openTSNE Annoy"], 4),
        "knn_recall_default": round(recall[default], 5),
        "knn_recall_annoy": round(recall["openTSNE Annoy"], 5),
    }
    extra = {"n": n, "d": 50, "k": K, "threads": THREADS, "seconds": seconds, "recall": recall}
    report("tsne_knn", quick, rows_out, figures, extra, write=not args.no_write and n == (20_000 if quick else 100_000))


if __name__ == "__main__":
    main()
