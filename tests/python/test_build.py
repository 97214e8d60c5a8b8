"""The extension's build contract: one OpenMP runtime shared with torch, thread counts that reach
our kernels, and long kernels that release the GIL."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import torch

from gil_check import ticks_while_running
from llmdbg import _core

_OPENMP_RE = re.compile(r"lib(gomp|iomp5|omp)[^/]*\.so")


def _openmp_libraries() -> set[str]:
    with open("/proc/self/maps") as f:
        return {line.split()[-1] for line in f if _OPENMP_RE.search(line.rsplit("/", 1)[-1])}


def test_exactly_one_openmp_runtime_is_loaded():
    # A fresh interpreter: the test process also loads anchors (scikit-learn brings its own
    # libgomp), which says nothing about llmdbg. Run our OpenMP kernels, then count runtimes.
    code = (
        "import json, re, numpy as np, llmdbg\n"
        "llmdbg.summarize(np.ones(10, dtype=np.float32))\n"
        "llmdbg.TSNE(n_iter=20, progress=False, random_state=0).fit_transform(np.random.default_rng(0).normal(size=(64, 5)))\n"
        "llmdbg.data.profile(['a b', 'b c'])\n"
        f"pat = re.compile({_OPENMP_RE.pattern!r})\n"
        "print(json.dumps(sorted({l.split()[-1] for l in open('/proc/self/maps') if pat.search(l.rsplit('/', 1)[-1])})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    libs = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(libs) == 1, f"several OpenMP runtimes loaded: {libs}"


def test_torch_set_num_threads_reaches_our_kernels():
    before = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            # Shared runtime: torch's setting is our default team size.
            assert _core.openmp_max_threads() == n
            assert _core.openmp_team_size(0) == n
    finally:
        torch.set_num_threads(before)


def test_explicit_thread_count_overrides_default():
    assert _core.openmp_team_size(3) == 3


def test_extension_imports_in_a_fresh_interpreter():
    code = "import llmdbg, numpy; print(llmdbg.summarize(numpy.arange(5.0)).mean)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2.0"


def test_long_kernel_releases_the_gil():
    x = np.random.default_rng(0).standard_normal(40_000_000).astype(np.float32)
    assert ticks_while_running(lambda: [_core.summarize(x, 1) for _ in range(3)]) > 20
