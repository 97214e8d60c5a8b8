"""llmdbg.summarize and the device (ATen) statistics path against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmdbg
from llmdbg import _core


def _numpy_reference(x: np.ndarray) -> dict:
    x = x.astype(np.float64).ravel()
    fin = x[np.isfinite(x)]
    nz = np.abs(fin[fin != 0])
    return dict(
        count=x.size,
        finite_count=fin.size,
        nan_count=int(np.isnan(x).sum()),
        inf_count=int(np.isinf(x).sum()),
        zero_count=int((x == 0).sum()),
        mean=fin.mean(),
        std=fin.std(),
        min=fin.min(),
        max=fin.max(),
        absmax=np.abs(fin).max(),
        histogram=np.bincount(np.clip(np.frexp(nz)[1] - 1 + 32, 0, 63), minlength=64),
    )


def _with_specials(n: int, dtype, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(n) * 10.0 ** np.random.default_rng(1).integers(-12, 12, n)
    x = x.astype(dtype)
    x[::97] = 0
    x[5], x[17], x[-3] = np.nan, np.inf, -np.inf
    return x


def _check(s, ref):
    get = (lambda k: s[k]) if isinstance(s, dict) else (lambda k: getattr(s, k))
    for k in ("count", "finite_count", "nan_count", "inf_count", "zero_count", "min", "max", "absmax"):
        assert get(k) == ref[k], k
    np.testing.assert_allclose(get("mean"), ref["mean"], rtol=1e-9)
    np.testing.assert_allclose(get("std"), ref["std"], rtol=1e-9)
    np.testing.assert_array_equal(get("histogram"), ref["histogram"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 1000, 300_001])
def test_summarize_matches_numpy(dtype, n):
    x = _with_specials(max(n, 20), dtype)
    _check(llmdbg.summarize(x), _numpy_reference(x))


def test_summarize_accepts_tensors_bf16_and_ints():
    t = torch.randn(3, 50, dtype=torch.bfloat16)
    s = llmdbg.summarize(t)
    _check(s, _numpy_reference(t.float().numpy()))
    s = llmdbg.summarize(np.arange(10, dtype=np.int64))
    assert s.mean == 4.5 and s.zero_count == 1


def test_summarize_bitwise_identical_for_any_thread_count():
    x = _with_specials(500_000, np.float32)
    a, b = llmdbg.summarize(x, n_jobs=1), llmdbg.summarize(x, n_jobs=2)
    assert (a.mean, a.std, a.min) == (b.mean, b.std, b.min)


def test_device_summary_path_equals_host_kernel():
    # The ATen path used for CUDA tensors, run here on CPU tensors.
    x = _with_specials(100_000, np.float32)
    _check(_core.device_summary(torch.from_numpy(x)), _numpy_reference(x))


def test_hist_edges_and_empty_and_all_nan():
    edges = llmdbg.hist_edges()
    assert edges.shape == (65,) and edges[32] == 1.0 and edges[33] == 2.0
    s = llmdbg.summarize(np.array([], dtype=np.float32))
    assert s.count == 0 and np.isnan(s.mean)
    s = llmdbg.summarize(np.array([np.nan, np.nan]))
    assert s.nan_count == 2 and s.finite_count == 0 and np.isnan(s.std)
    assert s.has_nonfinite and "histogram" in s.as_dict()


def test_summarize_bad_input():
    with pytest.raises(TypeError, match="real numeric"):
        llmdbg.summarize(np.array(["a"]))
    with pytest.raises(TypeError, match="complex"):
        llmdbg.summarize(torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="n_jobs"):
        llmdbg.summarize(np.ones(3), n_jobs=0)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.summarize(np.ones((4, 4), dtype=np.float32)[:, ::2], 1)
    with pytest.raises(TypeError, match="float32 or float64"):
        _core.summarize(np.ones(4, dtype=np.int32), 1)
