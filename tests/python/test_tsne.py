"""llmdbg.TSNE and the t-SNE core stages against independent references.

References: plain numpy implementations of each stage (brute-force neighbours, entropies, O(N^2)
forces and KL), openTSNE and scikit-learn on sklearn's bundled digits (same perplexity and
iterations; KL of every map evaluated exactly under the same P).
"""

import numpy as np
import pytest
import torch

import llmdbg
from llmdbg import _core
from llmdbg.embedding import TSNE


def _blobs(n=300, d=10, centers=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    c = rng.normal(0, 8, size=(centers, d))
    return (c[rng.integers(0, centers, n)] + rng.normal(size=(n, d))).astype(dtype)


def _brute_sqdist(X):
    X = X.astype(np.float64)
    return ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)


def _brute_forces(Y):
    diff = Y[:, None, :] - Y[None, :, :]
    w = 1.0 / (1.0 + (diff**2).sum(-1))
    np.fill_diagonal(w, 0.0)
    return (w[..., None] ** 2 * diff).sum(1), w.sum(), w


def _problem(n=300, perplexity=10.0, seed=0):
    X = _blobs(n, seed=seed)
    k = int(3 * perplexity)
    idx, d2 = _core.tsne_knn(X, k)
    P_cond, _ = _core.tsne_calibrate(d2, perplexity)
    return _core.tsne_joint_probabilities(idx, P_cond)


def _dense(P, n):
    indptr, cols, vals = P
    D = np.zeros((n, n))
    for i in range(n):
        D[i, cols[indptr[i] : indptr[i + 1]]] = vals[indptr[i] : indptr[i + 1]]
    return D


# -- stages --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_equals_brute_force(dtype, metric):
    X = _blobs(250, 12, dtype=dtype, seed=1)
    X[7] = X[3]
    X[9] = X[3]  # exact duplicates are neighbours at distance 0; a point is never its own
    k = 15
    idx, d2 = _core.tsne_knn(X, k, metric, 2)
    Xr = X.astype(np.float64)
    if metric == "cosine":
        Xr = Xr / np.linalg.norm(Xr, axis=1, keepdims=True)
    D = _brute_sqdist(Xr)
    np.fill_diagonal(D, np.inf)
    for i in range(len(X)):
        order = np.lexsort((np.arange(len(X)), D[i]))[:k]
        np.testing.assert_array_equal(idx[i], order)
        np.testing.assert_allclose(d2[i], D[i, order], rtol=1e-9, atol=1e-9)
    assert set(idx[3, :2]) == {7, 9} and d2[3, 0] == 0.0 and 3 not in idx[3]


def test_calibration_hits_target_perplexity():
    X = _blobs(400, seed=2)
    _, d2 = _core.tsne_knn(X, 90)
    for perplexity in (5.0, 30.0):
        P, perp = _core.tsne_calibrate(d2, perplexity, 1e-5, 200, 2)
        np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-12)
        with np.errstate(divide="ignore", invalid="ignore"):
            H = -np.where(P > 0, P * np.log(P), 0.0).sum(1)
        np.testing.assert_allclose(H, np.log(perplexity), atol=1e-5)
        np.testing.assert_allclose(perp, perplexity, rtol=1e-5)


def test_joint_probabilities_symmetric():
    n = 300
    P = _problem(n)
    D = _dense(P, n)
    np.testing.assert_allclose(D, D.T, rtol=0, atol=0)
    assert D.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diag(D) == 0)


@pytest.mark.parametrize("n", [5, 400])
def test_repulsion_matches_brute_force(n):
    rng = np.random.default_rng(3)
    Y = rng.normal(0, 5, size=(n, 2))
    Y[1] = Y[0]  # a duplicate
    ref, zref, _ = _brute_forces(Y)
    for method, theta, tol in [("exact", 0.5, 1e-12), ("bh", 0.0, 1e-12), ("bh", 0.5, 5e-2)]:
        rep, z = _core.tsne_repulsion(Y, method, theta, num_threads=2)
        assert z == pytest.approx(zref, rel=min(tol, 1e-2))
        err = np.linalg.norm(rep - ref) / np.linalg.norm(ref)
        assert err < tol, (method, theta, err)


def test_gradient_matches_brute_force():
    n = 300
    P = _problem(n)
    Pd = _dense(P, n)
    rng = np.random.default_rng(4)
    Y = rng.normal(0, 2, size=(n, 2))
    ref_rep, Z, w = _brute_forces(Y)
    diff = Y[:, None, :] - Y[None, :, :]
    attr = ((Pd * w)[..., None] * diff).sum(1)
    ref = 12.0 * attr - ref_rep / Z
    for method, theta in [("exact", 0.5), ("bh", 0.0)]:
        g, z = _core.tsne_gradient(*P, Y, 12.0, method, theta, 2)
        np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-14)
        assert z == pytest.approx(Z, rel=1e-12)
    g, _ = _core.tsne_gradient(*P, Y, 12.0, "bh", 0.5, 2)
    assert np.linalg.norm(g - ref) / np.linalg.norm(ref) < 2e-2


def test_kl_matches_numpy():
    n = 200
    P = _problem(n)
    Pd = _dense(P, n)
    Y = np.random.default_rng(5).normal(size=(n, 2))
    _, Z, w = _brute_forces(Y)
    mask = Pd > 0
    ref = (Pd[mask] * np.log(Pd[mask] / (w[mask] / Z))).sum()
    assert _core.tsne_kl_divergence(*P, Y) == pytest.approx(ref, rel=1e-12)


def test_callback_stops_and_interrupts_cleanly():
    P = _problem(200)
    Y0 = np.random.default_rng(6).normal(0, 1e-4, size=(200, 2))
    seen = []

    def stop_at_40(it, kl):
        seen.append((it, kl))
        return it >= 40

    out = _core.tsne_optimize(
        *P, Y0, [(100, 12.0, 20.0, 0.8), (100, 1.0, 200.0, 0.8)], callback=stop_at_40, callback_every=10, kl_every=20
    )
    assert out["stopped"] and out["n_iter"] == 40
    assert [s[0] for s in seen] == [10, 20, 30, 40]
    assert np.isnan(seen[0][1]) and np.isfinite(seen[1][1])

    def interrupt(it, kl):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _core.tsne_optimize(*P, Y0, [(100, 1.0, 200.0, 0.8)], callback=interrupt)
    # The core is still usable afterwards.
    out = _core.tsne_optimize(*P, Y0, [(20, 1.0, 200.0, 0.8)])
    assert out["n_iter"] == 20 and np.isfinite(out["embedding"]).all()


def test_binding_checks_arguments():
    X = _blobs(20)
    with pytest.raises(ValueError, match="k must be"):
        _core.tsne_knn(X, 20)
    with pytest.raises(TypeError, match="float32 or float64"):
        _core.tsne_knn(X.astype(np.int64), 3)
    with pytest.raises(ValueError, match="metric"):
        _core.tsne_knn(X, 3, "manhattan")
    with pytest.raises(ValueError, match="expected"):
        _core.tsne_repulsion(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="method"):
        _core.tsne_repulsion(np.zeros((5, 2)), "nope")
    P = _problem(50)
    with pytest.raises(ValueError, match="rows"):
        _core.tsne_kl_divergence(*P, np.zeros((49, 2)))


# -- the estimator on digits against openTSNE and scikit-learn ------------------------------


@pytest.fixture(scope="module")
def digits_maps():
    from sklearn.datasets import load_digits

    X = load_digits().data.astype(np.float64)
    ours = TSNE(random_state=0, n_jobs=2, progress=False)
    Y = ours.fit_transform(X)
    return X, ours, Y


def test_digits_kl_no_worse_than_opentsne_and_sklearn(digits_maps):
    openTSNE = pytest.importorskip("openTSNE")
    from sklearn.manifold import TSNE as SkTSNE

    X, ours, Y = digits_maps
    n = len(X)
    # openTSNE: exact neighbours, BH, its default schedule (250 exaggerated + 500). The anchors
    # run on one thread: their cost is what it is, and oversubscription only adds noise.
    Yo = np.asarray(
        openTSNE.TSNE(
            perplexity=30,
            n_iter=500,
            early_exaggeration_iter=250,
            neighbors="exact",
            negative_gradient_method="bh",
            theta=0.5,
            n_jobs=1,
            random_state=0,
        ).fit(X)
    )
    # scikit-learn: 750 iterations, learning_rate "auto" (= max(N/48, 50) with its factor 4).
    Ys = SkTSNE(
        perplexity=30,
        max_iter=750,
        learning_rate="auto",
        init="pca",
        angle=0.5,
        method="barnes_hut",
        random_state=0,
        n_jobs=1,
    ).fit_transform(X)
    P = ours.affinities_
    kl_ours = _core.tsne_kl_divergence(*P, np.ascontiguousarray(Y, dtype=np.float64))
    kl_open = _core.tsne_kl_divergence(*P, np.ascontiguousarray(Yo, dtype=np.float64))
    kl_sk = _core.tsne_kl_divergence(*P, np.ascontiguousarray(Ys, dtype=np.float64))
    assert kl_ours == pytest.approx(ours.kl_divergence_, rel=1e-12)
    assert kl_ours <= 1.01 * kl_open, (kl_ours, kl_open)
    assert kl_ours <= 1.01 * kl_sk, (kl_ours, kl_sk)
    assert ours.n_iter_ == 750 and ours.embedding_.shape == (n, 2)


def test_digits_trustworthiness(digits_maps):
    from sklearn.manifold import trustworthiness

    X, _, Y = digits_maps
    assert trustworthiness(X, Y, n_neighbors=10) >= 0.95


# -- estimator behaviour -------------------------------------------------------------------


def test_deterministic_for_seed_and_thread_count():
    X = _blobs(400, 20, seed=7)
    kw = {"n_iter": 200, "exaggeration_iter": 100, "random_state": 3, "progress": False}
    a = TSNE(n_jobs=2, **kw).fit_transform(X)
    b = TSNE(n_jobs=2, **kw).fit_transform(X)
    np.testing.assert_array_equal(a, b)
    d = TSNE(n_jobs=2, **{**kw, "random_state": 4}).fit_transform(X)
    assert not np.array_equal(a, d)
    # The core's reductions run in a fixed order, so the thread count does not matter either
    # (random init keeps torch's BLAS, used for PCA, out of this comparison). n >= 1000: the
    # core uses at most one thread per 500 points; below 20000 points it also switches between
    # the full team and one thread by measured speed, which must not change the result.
    P = _problem(1500, perplexity=10.0)
    Y0 = np.random.default_rng(0).normal(0, 1e-4, size=(1500, 2))
    runs = [
        _core.tsne_optimize(*P, Y0, [(220, 12.0, 125.0, 0.8), (200, 1.0, 1500.0, 0.8)], num_threads=t)["embedding"]
        for t in (1, 2, 2)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[1], runs[2])
    # Small inputs (digits-sized): PCA runs on one thread, so the estimator is thread-count
    # independent end to end.
    X = _blobs(600, 30, seed=8)
    kw = {"n_iter": 120, "exaggeration_iter": 60, "random_state": 0, "progress": False}
    np.testing.assert_array_equal(TSNE(n_jobs=1, **kw).fit_transform(X), TSNE(n_jobs=2, **kw).fit_transform(X))


def test_torch_and_float32_input():
    X = _blobs(200, 8, seed=8)
    kw = {"n_iter": 100, "exaggeration_iter": 50, "random_state": 0, "progress": False, "perplexity": 10}
    a = TSNE(**kw).fit_transform(X.astype(np.float32))
    b = TSNE(**kw).fit_transform(torch.from_numpy(X.astype(np.float32)))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float64 and a.shape == (200, 2)


def test_many_duplicates_do_not_collapse():
    base = _blobs(40, 16, seed=9)
    X = np.repeat(base, 10, axis=0)  # 400 rows, 40 distinct
    for method in ("bh", "exact"):
        t = TSNE(perplexity=20, n_iter=300, exaggeration_iter=100, random_state=0, method=method, progress=False)
        Y = t.fit_transform(X)
        assert np.isfinite(Y).all() and np.isfinite(t.kl_divergence_)
        spread = np.abs(Y).max()
        assert 1.0 < spread < 1e3
        # Copies of a point stay together relative to the map's size.
        groups = Y.reshape(40, 10, 2)
        within = np.linalg.norm(groups - groups.mean(1, keepdims=True), axis=-1).max()
        assert within < 0.1 * spread


def test_methods_and_schedules_agree_roughly():
    X = _blobs(400, 10, centers=5, seed=10)
    kw = {"n_iter": 250, "exaggeration_iter": 100, "random_state": 0, "progress": False}
    kls = {m: TSNE(method=m, **kw).fit(X).kl_divergence_ for m in ("bh", "exact", "fft")}
    assert kls["bh"] == pytest.approx(kls["exact"], rel=0.03)
    assert kls["fft"] == pytest.approx(kls["exact"], rel=0.03)
    classic = TSNE(schedule="classic", **kw).fit(X)
    assert classic.learning_rate_ == (200.0, 200.0)
    assert classic.kl_divergence_ == pytest.approx(kls["exact"], rel=0.1)


def test_cosine_metric_equals_euclidean_on_normalised_rows():
    X = _blobs(200, 12, seed=11)
    kw = {"n_iter": 50, "exaggeration_iter": 50, "random_state": 0, "progress": False, "perplexity": 10}
    a = TSNE(metric="cosine", **kw).fit(X)
    b = TSNE(**kw).fit(X / np.linalg.norm(X, axis=1, keepdims=True))
    for u, v in zip(a.affinities_, b.affinities_):
        np.testing.assert_allclose(u, v, rtol=1e-9)


def test_pca_reduction_for_wide_inputs():
    X = _blobs(300, 200, seed=12)
    t = TSNE(n_iter=50, exaggeration_iter=50, random_state=0, progress=False).fit(X)
    u = TSNE(n_iter=50, exaggeration_iter=50, random_state=0, progress=False, pca_components=None).fit(X)
    # Well-separated blobs: PCA-50 keeps nearly all neighbourhoods.
    assert t.n_features_in_ == 200 and np.isfinite(t.kl_divergence_)
    overlap = np.mean(
        [
            len(
                set(t.affinities_.indices[t.affinities_.indptr[i] : t.affinities_.indptr[i + 1]])
                & set(u.affinities_.indices[u.affinities_.indptr[i] : u.affinities_.indptr[i + 1]])
            )
            / (u.affinities_.indptr[i + 1] - u.affinities_.indptr[i])
            for i in range(300)
        ]
    )
    assert overlap > 0.9


def test_init_array_and_random():
    X = _blobs(100, 5, seed=13)
    Y0 = np.random.default_rng(0).normal(0, 1e-4, size=(100, 2))
    kw = {"n_iter": 30, "exaggeration_iter": 30, "progress": False, "perplexity": 10}
    a = TSNE(init=Y0, **kw).fit_transform(X)
    b = TSNE(init=torch.from_numpy(Y0), **kw).fit_transform(X)
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(TSNE(init="random", random_state=1, **kw).fit_transform(X)).all()


def test_exported_from_package():
    assert llmdbg.TSNE is TSNE


# -- bad input -----------------------------------------------------------------------------


def test_too_few_samples():
    with pytest.raises(ValueError, match="at least 4 samples"):
        TSNE(progress=False).fit(np.random.default_rng(0).normal(size=(3, 5)))


def test_perplexity_too_large_is_clamped_with_warning():
    X = _blobs(30, 4)
    with pytest.warns(UserWarning, match="perplexity=30"):
        t = TSNE(perplexity=30, n_iter=20, exaggeration_iter=10, progress=False).fit(X)
    assert t.perplexity_ == pytest.approx(29 / 3)
    assert np.isfinite(t.embedding_).all()
    with pytest.raises(ValueError, match="perplexity"):
        TSNE(perplexity=0.5, progress=False).fit(X)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_rows(bad):
    X = _blobs(50, 4)
    X[[3, 17]] = bad
    with pytest.raises(ValueError, match=r"2 row\(s\) with NaN or Inf \(rows 3, 17\)"):
        TSNE(perplexity=5, progress=False).fit(X)


def test_constant_data():
    with pytest.raises(ValueError, match="constant"):
        TSNE(perplexity=5, progress=False).fit(np.ones((50, 4)))
    with pytest.raises(ValueError, match="constant"):  # one direction under cosine
        TSNE(metric="cosine", perplexity=5, progress=False).fit(np.outer(np.arange(1, 51), np.ones(4)))
    with pytest.raises(ValueError, match="all-zero"):
        TSNE(metric="cosine", perplexity=5, progress=False).fit(np.vstack([np.zeros(4), _blobs(49, 4)]))


def test_wrong_init_shape():
    X = _blobs(50, 4)
    with pytest.raises(ValueError, match=r"init array must have shape \(N, 2\) = \(50, 2\)"):
        TSNE(init=np.zeros((50, 3)), perplexity=5, progress=False).fit(X)
    with pytest.raises(ValueError, match="init must be"):
        TSNE(init="spectral", perplexity=5, progress=False).fit(X)


@pytest.mark.parametrize("k", [1, 3])
def test_unsupported_n_components(k):
    with pytest.raises(ValueError, match="n_components must be 2"):
        TSNE(n_components=k, perplexity=5, progress=False).fit(_blobs(50, 4))


@pytest.mark.parametrize("shape", [(50,), (5, 10, 4)])
def test_non_2d_input(shape):
    with pytest.raises(ValueError, match="must be 2-D"):
        TSNE(perplexity=5, progress=False).fit(np.zeros(shape))


def test_bad_options():
    X = _blobs(50, 4)
    for kw, msg in [
        ({"method": "fast"}, "method"),
        ({"metric": "l1"}, "metric"),
        ({"schedule": "x"}, "schedule"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"theta": -0.1}, "theta"),
        ({"n_jobs": 0}, "n_jobs"),
        ({"pca_components": 1}, "pca_components"),
    ]:
        with pytest.raises(ValueError, match=msg):
            TSNE(perplexity=5, progress=False, **kw).fit(X)
    with pytest.raises(TypeError, match="real numbers"):
        TSNE(perplexity=5, progress=False).fit(np.array([["a", "b"]] * 10))


@pytest.mark.parametrize("method", ["exact", "bh", "fft"])
def test_duplicates_and_a_tiny_gap_at_perplexity_one_stay_finite(method):
    """Three duplicates plus a point 1.3e-144 away at perplexity 1: "exact" returned an all-NaN map
    and "bh" raised; the calibration now takes the limit (uniform over the tied neighbours)."""
    X = np.zeros((6, 3))
    X[3] = [1.3e-144, 0, 0]
    X[4] = [1.0, 2, 3]
    X[5] = [2.0, 1, 0]
    Y = TSNE(method=method, perplexity=1.0, random_state=0, progress=False).fit_transform(X)
    assert Y.shape == (6, 2) and np.isfinite(Y).all()


def test_pca_initialised_maps_do_not_depend_on_the_thread_count_above_a_million_entries():
    """The docs promise bitwise-equal maps for every n_jobs; above 1M entries the multi-threaded
    PCA GEMM used to make maps differ by up to 8.0 between 1 and 2 threads."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4200, 256)) + rng.integers(0, 5, (4200, 1))  # 1.08M float64 entries
    kw = dict(perplexity=10.0, n_iter=60, exaggeration_iter=20, random_state=0, progress=False)
    one = TSNE(n_jobs=1, **kw).fit_transform(X)
    two = TSNE(n_jobs=2, **kw).fit_transform(X)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize(("shape", "dtype"), [((4200, 256), np.float64), ((2000, 1024), np.float32)])
def test_pca_is_bitwise_equal_for_every_thread_count(shape, dtype):
    from llmdbg.embedding._prepare import pca

    rng = np.random.default_rng(0)
    X = (rng.standard_normal(shape) + rng.integers(0, 5, (shape[0], 1))).astype(dtype)
    np.testing.assert_array_equal(pca(X, 50, 1), pca(X, 50, 2))


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_extreme_magnitudes_rank_like_unit_ones_and_never_read_out_of_bounds(scale):
    """Finite data of magnitude 1e30 overflowed the float32 distances to NaN; fewer than k
    candidates remained and the kNN read past its list (garbage indices or a segfault)."""
    X = np.random.default_rng(0).standard_normal((60, 5))
    idx, d2 = _core.tsne_knn(X, 6, "euclidean", 1)
    idx_s, d2_s = _core.tsne_knn(X * scale, 6, "euclidean", 1)
    np.testing.assert_array_equal(idx_s, idx)
    np.testing.assert_allclose(d2_s, d2 * scale**2, rtol=1e-9)
    Y = TSNE(perplexity=5.0, random_state=0, progress=False).fit_transform(X * scale)
    assert Y.shape == (60, 2) and np.isfinite(Y).all()


def test_core_knn_refuses_non_finite_rows():
    X = np.zeros((10, 3))
    X[4, 1] = np.nan
    with pytest.raises(ValueError, match="knn: row 4 of X holds NaN or Inf"):
        _core.tsne_knn(X, 3, "euclidean", 1)


def test_one_feature_input_gets_a_two_dimensional_map():
    """One input feature used to fail inside the optimiser ("Y has shape (20, 1)")."""
    x = np.sort(np.random.default_rng(0).standard_normal(40))[:, None]
    Y = TSNE(perplexity=5.0, random_state=0, progress=False).fit_transform(x)
    assert Y.shape == (40, 2) and np.isfinite(Y).all()
    # neighbours on the line stay neighbours in the map
    d = np.linalg.norm(Y[1:] - Y[:-1], axis=1)
    far = np.linalg.norm(Y[:, None] - Y[None], axis=-1).mean()
    assert np.median(d) < 0.5 * far
