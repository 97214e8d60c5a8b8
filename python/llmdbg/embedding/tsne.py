"""t-SNE with a C++ core: exact kNN, perplexity calibration and a Barnes-Hut (or FFT) optimiser.

t-SNE places points in 2-D so that the Student-t similarities of the map match the Gaussian
neighbourhood probabilities P of the data, by minimising KL(P || Q). Everything after the input
checks runs in the compiled core without the GIL: k-nearest neighbours (exact from blocked
GEMMs, or approximate from an HNSW graph at large N; on PCA-50 projections of wide inputs), a
per-point search (safeguarded Newton steps) for the Gaussian precision of the target
perplexity, the symmetric sparse P, and the whole gradient-descent loop with a Barnes-Hut
quadtree rebuilt every iteration (flat arrays, Morton order, one interaction list per leaf),
FFT-interpolated repulsion or the exact O(N^2) sum. The input is read in row chunks, so a
memory-mapped array or a dataset run's Parquet shards are never held whole in memory.

Determinism: with exact neighbours (``neighbors="exact"``, what "auto" uses below 60,000
points) maps are bitwise reproducible for a fixed ``random_state`` on one machine, whatever
``n_jobs`` and ``method``: the core's reductions run in a fixed order (it may itself run small
problems on one thread when that is faster; the FFT spreads its charges by grid row, not into
per-thread grids), and the PCA step runs its GEMMs on one thread (``tests/python/test_tsne.py``
checks 1 vs 2 threads above 1M input entries, ``test_tsne_hostile.py`` for ``method="fft"``).
The approximate search is bitwise reproducible with ``n_jobs=1`` only: its graph is built by
parallel inserts, whose order the scheduler decides, so with more threads a few of the k
neighbours can differ between runs (the recall, ``knn_recall_``, does not change measurably)
and the map with them. Maps do not depend on the data's scale: X is first multiplied by a power
of two (exact) that brings its largest |x| into [0.5, 1), so ``X * 2**s`` gives the same map, and
data of magnitude 1e-300 to 1e300 works. Ctrl-C stops every stage within ~10 ms of a poll
(``KeyboardInterrupt``).

References: van der Maaten, "Accelerating t-SNE using tree-based algorithms", JMLR 15 (2014);
Linderman et al., Nat. Methods 16 (2019); Kobak & Berens, Nat. Commun. 10 (2019) for the default
schedule (learning rate N / exaggeration, momentum 0.8, PCA initialisation), as in openTSNE.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import NamedTuple

import numpy as np

from .. import _core
from .._internal.threads import resolve_n_jobs
from . import _neighbors
from ._prepare import InputSpace, as_float_matrix, check_finite_rows, pca, prepare_rows
from ._sklearn import SklearnProtocol
from ._source import as_rows

_METHODS = ("bh", "fft", "exact")
_METRICS = ("euclidean", "cosine")
_SCHEDULES = ("opentsne", "classic")
_MAX_COORDINATE = 1e150  # cpp/core/tsne/optimize.cpp: check_embedding


def _finite_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


class Affinities(NamedTuple):
    """The symmetric joint probabilities P (sum 1) as CSR arrays."""

    indptr: np.ndarray  # (N + 1,) int64
    indices: np.ndarray  # (nnz,) int64
    data: np.ndarray  # (nnz,) float64

    def to_scipy(self):
        """As a ``scipy.sparse.csr_matrix`` (needs scipy)."""
        import scipy.sparse

        n = len(self.indptr) - 1
        return scipy.sparse.csr_matrix((self.data, self.indices, self.indptr), shape=(n, n))


class TSNE(SklearnProtocol):
    """t-distributed stochastic neighbour embedding, a scikit-learn estimator.

    Parameters
    ----------
    n_components : int
        Dimension of the map. Only 2 is supported (the Barnes-Hut tree is a quadtree).
    perplexity : float
        Effective number of neighbours per point (>= 1). Each point uses
        k = min(N - 1, floor(3 * perplexity)) exact nearest neighbours. A perplexity >= N / 3 is
        lowered to (N - 1) / 3 with a ``UserWarning`` (as openTSNE does).
    early_exaggeration : float
        Factor on P during the first ``exaggeration_iter`` iterations.
    exaggeration_iter : int
        Iterations with early exaggeration.
    n_iter : int
        Total iterations, early exaggeration included (750 = 250 + 500).
    learning_rate : float or "auto"
        Step size, in units of a gradient without the factor 4 (openTSNE's units; scikit-learn's
        gradient includes it, so its ``learning_rate=L`` equals ``4 * L`` here). "auto" is
        N / exaggeration per phase for ``schedule="opentsne"`` and max(N / 12, 200) for
        ``schedule="classic"`` (scikit-learn's "auto" in these units).
    theta : float
        Barnes-Hut accuracy: a cell of side s is summarised when s / distance < theta (the
        scikit-learn / openTSNE convention). 0 gives the exact sum through the tree.
    init : "pca", "random" or array of shape (N, 2)
        "pca": the first two principal components scaled so PC1 has std 1e-4, plus 1% jitter;
        "random": N(0, 1e-4^2). An array is used as given (finite, within +-1e150).
    metric : "euclidean" or "cosine"
        "cosine" L2-normalises the rows, so distances are 2 (1 - cos) (same P as openTSNE and
        scikit-learn's cosine t-SNE after calibration).
    method : "bh", "fft" or "exact"
        Repulsion: Barnes-Hut, FFT-accelerated interpolation (FIt-SNE; fastest for N >~ 10k) or
        the exact O(N^2) sum. The FFT grid is bounded by the number of points: an iteration whose
        map needs more than max(50, 4 sqrt(N) / 3) intervals per side (at most 512; e.g. a
        spread-out ``init``) uses Barnes-Hut instead, so memory stays O(N).
    schedule : "opentsne" or "classic"
        "opentsne": momentum 0.8 throughout, learning rate N / exaggeration per phase.
        "classic": momentum 0.5 then 0.8 and one learning rate (bhtsne / scikit-learn).
    pca_components : int, "auto" or None
        Reduce the data to this many principal components before the kNN search (the kNN
        dominates the run time for wide inputs). "auto": 50 when the data has more than 100
        features, otherwise no reduction. None: never. What "auto" trades: on MiniLM's
        30,522 x 384 token embeddings (``benchmarks/tsne.py``, full run) the map from PCA-50
        neighbours has an exact KL (against the full-dimension P) 18.6 % above openTSNE's
        full-dimension map, where ``pca_components=None`` is 2.4 % below it, and runs in half
        the time (0.064 vs 0.128 of openTSNE BH's). The neighbours change, not the optimiser:
        use None when the exact neighbourhoods of wide data matter more than the time.
    neighbors : "auto", "exact" or "approx"
        The kNN search. "exact": blocked GEMMs, O(N^2 D), deterministic for every thread count.
        "approx": an HNSW graph (hnswlib; M 24, ef_construction 64, each search starting at
        the point itself, ef max(k + 32, 1.5 k)), refined once from the neighbours' own
        neighbour lists and from the reverse lists, O(N log N); the candidates are re-ranked
        with exact distances. Its recall against exact search is measured on 1000 sampled
        points and stored in ``knn_recall_``: 0.976 at 300,000 and 0.926 at 1,000,000 points of
        make_blobs 50-D (30 overlapping Gaussians: intrinsic dimension 50, a hard case for
        approximate search, which does better on data of lower intrinsic dimension; openTSNE's
        Annoy finds 0.856 and 0.657 of them there).
        Use "exact" where every neighbour matters. Its graph is built by parallel
        inserts, so with ``n_jobs`` > 1 a few neighbours (and so the map) can change from run to
        run; ``n_jobs=1`` is reproducible. "auto": "approx" from 60,000 points, where it
        overtakes the exact search (measured on 50-D data, 2 threads), "exact" below.
    random_state : int, numpy Generator / RandomState or None
        Seed for the initial map (PCA jitter or random init) and the HNSW graph.
    n_jobs : int or None
        Threads (at most). None uses ``torch.get_num_threads()``; -1 all cores. The optimiser
        uses at most one thread per 500 points and, below 20,000 points (``method`` "bh" or
        "exact"), runs on one thread whenever its periodic timing finds that faster (busy
        machines); the map is the same.
    verbose : bool
        Print stage timings and the KL estimate every 50 iterations.
    progress : bool
        Show a tqdm bar over the iterations (only when stderr is a terminal).
    max_step_norm : float
        Cap on each point's step per iteration (openTSNE's default, 5; <= 0 or inf: no cap).

    Attributes
    ----------
    embedding_ : ndarray, shape (N, 2), float64
    kl_divergence_ : float
        Exact KL(P || Q) of the final map, computed in double with the O(N^2) normaliser.
    n_iter_ : int
        Iterations run.
    perplexity_ : float
        The perplexity used (after the clamp).
    learning_rate_ : tuple of float
        Learning rate of the exaggeration phase and of the main phase.
    affinities_ : Affinities
        The joint probabilities P (CSR arrays).
    n_features_in_ : int
    neighbors_ : str
        "exact" or "approx": the search used.
    knn_recall_ : float
        Fraction of the exact k nearest neighbours the search found, measured against blocked
        brute force on 1000 random points (1.0 for the exact search).
    example_ids_ : ndarray of int64 or None
        For a run input: the ``example_id`` of each row of the map.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X = load_digits().data
    >>> Y = llmdbg.TSNE(random_state=0).fit_transform(X)   # (1797, 2)
    """

    def __init__(
        self,
        n_components=2,
        perplexity=30.0,
        early_exaggeration=12.0,
        exaggeration_iter=250,
        n_iter=750,
        learning_rate="auto",
        theta=0.5,
        init="pca",
        metric="euclidean",
        method="bh",
        schedule="opentsne",
        pca_components="auto",
        neighbors="auto",
        random_state=None,
        n_jobs=None,
        verbose=False,
        progress=True,
        max_step_norm=5.0,
    ):
        self.n_components = n_components
        self.perplexity = perplexity
        self.early_exaggeration = early_exaggeration
        self.exaggeration_iter = exaggeration_iter
        self.n_iter = n_iter
        self.learning_rate = learning_rate
        self.theta = theta
        self.init = init
        self.metric = metric
        self.method = method
        self.schedule = schedule
        self.pca_components = pca_components
        self.neighbors = neighbors
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.progress = progress
        self.max_step_norm = max_step_norm

    # -- sklearn API ---------------------------------------------------------------------------

    def fit(self, X, y=None, *, column=None):
        """Embed X. Returns self.

        Parameters
        ----------
        X : array-like of shape (N, D), numpy.memmap, run directory or RunResult
            float32/float64 rows (numpy array, memmap or torch tensor), read in row chunks: a
            memory-mapped array is never copied whole (only the (N, 50) PCA projection, or the
            scaled rows when there is no PCA, is held in memory). A dataset run's directory (str
            or path) or ``llmdbg.open_run(...)`` result is read shard by shard from its Parquet
            files (``column``, default ``"embedding"``; records with status "ok", their ids in
            ``example_ids_``).
        y : ignored
        column : str, optional
            The vector column of a run input.
        """
        self._fit(X, column)
        return self

    def fit_transform(self, X, y=None, *, column=None):
        """Embed X (see ``fit``) and return the map, shape (N, 2), float64."""
        return self._wrap_output(self._fit(X, column))

    def transform(self, X, *, perplexity=5.0, n_iter=250, learning_rate=0.1, exaggeration=1.5):
        """Place new points on the fitted map, which stays fixed (openTSNE's ``transform``).

        Each new point gets its nearest training points (exact search in the fitted input
        space: same scale, cosine normalisation and PCA as ``fit``), Gaussian affinities
        calibrated to ``perplexity``, starts at their P-weighted mean position and is then
        optimised alone against the fixed map: attraction to its neighbours, repulsion from every
        training point (interpolated on a grid once, as in FIt-SNE), per-point normalisation.

        Parameters
        ----------
        X : array-like, shape (M, D)
            New rows with the training data's D features.
        perplexity : float
            Of the new points' affinities (openTSNE's default 5: a new point should sit with its
            closest training points).
        n_iter : int
            Gradient steps (momentum 0.8, gains, gradient norm capped at 0.25 as openTSNE).
        learning_rate : float
        exaggeration : float
            Factor on the attraction.

        Returns
        -------
        ndarray, shape (M, 2), float64
        """
        from ._transform import place

        if not hasattr(self, "embedding_"):
            raise ValueError("this TSNE is not fitted yet: call fit or fit_transform first")
        Q = as_float_matrix(X, "X")
        if Q.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {Q.shape[1]} features, but TSNE is expecting {self.n_features_in_} features as input"
            )
        check_finite_rows(Q, "X")
        if not (_finite_number(perplexity) and perplexity >= 1):
            raise ValueError(f"perplexity must be a finite number >= 1, got {perplexity!r}")
        if not isinstance(n_iter, (int, np.integer)) or isinstance(n_iter, bool) or n_iter < 0:
            raise ValueError(f"n_iter must be an int >= 0, got {n_iter!r}")
        for name, v in (("learning_rate", learning_rate), ("exaggeration", exaggeration)):
            if not (_finite_number(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        threads = resolve_n_jobs(self.n_jobs)
        Qk = self._space.apply(Q.astype(self._space.dtype, copy=False), "X")
        Y = place(
            self._reference,
            self.embedding_,
            Qk,
            perplexity=float(perplexity),
            n_iter=int(n_iter),
            learning_rate=float(learning_rate),
            exaggeration=float(exaggeration),
            threads=threads,
        )
        return self._wrap_output(Y)

    # -- the pipeline --------------------------------------------------------------------------

    def _check_params(self, n: int) -> float:
        if self.n_components != 2:
            raise ValueError(f"n_components must be 2 (the Barnes-Hut tree is a quadtree), got {self.n_components!r}")
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {self.method!r}")
        if self.metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {self.metric!r}")
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {self.schedule!r}")
        if not (isinstance(self.theta, (int, float)) and self.theta >= 0):
            raise ValueError(f"theta must be a number >= 0, got {self.theta!r}")
        for name in ("n_iter", "exaggeration_iter"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if not (_finite_number(self.early_exaggeration) and self.early_exaggeration > 0):
            raise ValueError(f"early_exaggeration must be a finite number > 0, got {self.early_exaggeration!r}")
        lr = self.learning_rate
        if not (isinstance(lr, str) and lr == "auto") and not (_finite_number(lr) and lr > 0):
            raise ValueError(f"learning_rate must be 'auto' or a finite number > 0, got {lr!r}")
        if not (_finite_number(self.max_step_norm) or self.max_step_norm == math.inf):
            raise ValueError(f"max_step_norm must be a number (<= 0: no cap), got {self.max_step_norm!r}")
        if n < 4:
            raise ValueError(f"X: t-SNE needs at least 4 samples (rows), got {n}")
        perp = self.perplexity
        if not (
            isinstance(perp, (int, float, np.floating))
            and not isinstance(perp, bool)
            and np.isfinite(perp)
            and perp >= 1
        ):
            raise ValueError(f"perplexity must be a finite number >= 1, got {perp!r}")
        if perp >= n / 3:
            clamped = (n - 1) / 3
            warnings.warn(
                f"perplexity={perp} is too large for {n} samples (must be < N/3); using perplexity={clamped:.4g}",
                UserWarning,
                stacklevel=4,
            )
            perp = clamped
        return float(perp)

    def _phases(self, n: int) -> list[tuple[int, float, float, float]]:
        ee_iter = min(int(self.exaggeration_iter), int(self.n_iter))
        main_iter = int(self.n_iter) - ee_iter
        alpha = float(self.early_exaggeration)
        if self.schedule == "opentsne":
            if self.learning_rate == "auto":
                lrs = (n / alpha, float(n))
            else:
                lrs = (float(self.learning_rate),) * 2
            mom = (0.8, 0.8)
        else:
            lr = max(n / 12.0, 200.0) if self.learning_rate == "auto" else float(self.learning_rate)
            lrs, mom = (lr, lr), (0.5, 0.8)
        self.learning_rate_ = lrs
        return [(ee_iter, alpha, lrs[0], mom[0]), (main_iter, 1.0, lrs[1], mom[1])]

    def _rng(self) -> np.random.Generator:
        rs = self.random_state
        if isinstance(rs, np.random.RandomState):
            return np.random.default_rng(rs.randint(0, 2**31 - 1))
        return np.random.default_rng(rs)

    def _initial_map(self, X: np.ndarray, Xr: np.ndarray | None, threads: int) -> np.ndarray:
        n = X.shape[0]
        init = self.init
        rng = self._rng()
        if isinstance(init, str):
            if init == "random":
                return rng.normal(0.0, 1e-4, size=(n, 2))
            if init != "pca":
                raise ValueError(f"init must be 'pca', 'random' or an (N, 2) array, got {init!r}")
            pcs = Xr[:, :2] if Xr is not None and Xr.shape[1] >= 2 else pca(X, 2, threads)
            Y = np.asarray(pcs, dtype=np.float64)
            if Y.shape[1] < 2:  # one input feature: its axis, and a small random second coordinate
                Y = np.column_stack([Y, rng.normal(0.0, max(float(Y.std()), 1e-12) * 1e-2, size=n)])
            std = Y[:, 0].std()
            if not std > 0:  # rank-0 data is rejected earlier; guard anyway
                return rng.normal(0.0, 1e-4, size=(n, 2))
            Y = Y / std * 1e-4
            return Y + rng.normal(0.0, 1e-6, size=Y.shape)
        Y = as_float_matrix(init, "init").astype(np.float64)
        if Y.shape != (n, 2):
            raise ValueError(f"init array must have shape (N, 2) = ({n}, 2), got {Y.shape}")
        check_finite_rows(Y, "init")
        if np.abs(Y).max() > _MAX_COORDINATE:
            raise ValueError(
                f"init coordinates must be within +-{_MAX_COORDINATE:g} (the core keeps every "
                f"similarity a normal double), got {np.abs(Y).max():g}"
            )
        return np.ascontiguousarray(Y)

    def _fit(self, X, column=None) -> np.ndarray:
        t0 = time.perf_counter()
        source = as_rows(X, column)
        n, d = source.shape
        if d < 1:  # the wording of scikit-learn's check_array, which its tooling looks for
            raise ValueError(f"X: found array with {d} feature(s) (shape={(n, d)}) while a minimum of 1 is required.")
        if n < 4:
            raise ValueError(f"X: t-SNE needs at least 4 samples (rows), got n_samples = {n} (shape={(n, d)})")
        if self.metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {self.metric!r}")
        # PCA before the kNN search for wide inputs.
        n_pca = self.pca_components
        if n_pca == "auto":
            n_pca = 50 if d > 100 else None
        if n_pca is not None and (not isinstance(n_pca, (int, np.integer)) or isinstance(n_pca, bool) or n_pca < 2):
            raise ValueError(f"pca_components must be 'auto', None or an int >= 2, got {n_pca!r}")
        approx = _neighbors.use_approx(self.neighbors, n)
        # Checks (finite rows, not constant), exact power-of-two rescaling (the map does not depend
        # on the data's scale; |x| from 1e-300 to 1e300 works), cosine normalisation and PCA, one
        # row chunk at a time.
        Xk, space = prepare_rows(source, self.metric, None if n_pca is None else int(n_pca))
        perp = self._check_params(n)
        threads = resolve_n_jobs(self.n_jobs)
        Xr = Xk if space.components is not None else None
        Y0 = self._initial_map(Xk, Xr, threads)
        t1 = time.perf_counter()

        k = min(n - 1, int(3 * perp))
        seed = int(self._rng().integers(0, 2**31 - 1)) if approx else 0
        indices, sqdist = _neighbors.search(Xk, k, approx, threads, seed)
        # Recall of the approximate search against exact brute force on 1000 sampled points.
        self.knn_recall_ = _neighbors.recall(Xk, indices, threads, self._rng()) if approx else 1.0
        self.neighbors_ = "approx" if approx else "exact"
        t2 = time.perf_counter()
        P_cond, _ = _core.tsne_calibrate(sqdist, perp, 1e-5, 200, threads)
        indptr, cols, vals = _core.tsne_joint_probabilities(indices, P_cond, threads)
        t3 = time.perf_counter()
        if self.verbose:
            print(
                f"[t-SNE] N={n} D={d}{f' -> PCA {Xk.shape[1]}' if Xr is not None else ''}: "
                f"prepare {t1 - t0:.2f}s, kNN (k={k}, {self.neighbors_}) {t2 - t1:.2f}s, "
                f"affinities {t3 - t2:.2f}s",
                flush=True,
            )

        phases = self._phases(n)
        total = sum(p[0] for p in phases)
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="t-SNE", unit="it", leave=False, disable=None if self.progress else True)
        verbose = self.verbose

        def callback(iteration: int, kl: float) -> bool:
            bar.update(iteration - bar.n)
            if not math.isnan(kl):
                bar.set_postfix(kl=f"{kl:.4f}", refresh=False)
                if verbose and iteration % 50 == 0:
                    print(f"[t-SNE] iteration {iteration}: KL ~ {kl:.4f}", flush=True)
            return False

        want_callback = (not bar.disable) or verbose
        try:
            out = _core.tsne_optimize(
                indptr,
                cols,
                vals,
                Y0,
                phases,
                method=self.method,
                theta=float(self.theta),
                max_step_norm=float(self.max_step_norm),
                callback=callback if want_callback else None,
                callback_every=10,
                kl_every=50 if want_callback else 0,
                num_threads=threads,
            )
        finally:
            bar.close()
        t4 = time.perf_counter()
        if verbose:
            print(
                f"[t-SNE] optimisation ({self.method}) {t4 - t3:.2f}s, "
                f"KL {out['kl_divergence']:.4f}, total {t4 - t0:.2f}s",
                flush=True,
            )

        self.embedding_ = out["embedding"]
        self.kl_divergence_ = float(out["kl_divergence"])
        self.n_iter_ = int(out["n_iter"])
        self.perplexity_ = perp
        self.affinities_ = Affinities(indptr, cols, vals)
        self.n_features_in_ = d
        self.example_ids_ = source.example_ids
        # For transform: the fitted input space and the rows the neighbours were searched in.
        self._space: InputSpace = space
        self._reference = Xk
        return self.embedding_
