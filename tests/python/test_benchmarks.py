"""The benchmark scripts stay runnable: they import, parse their options and, where the hardware
is missing, say so instead of failing. (Their figures come from running them, not from here.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted(p for p in (Path(__file__).parents[2] / "benchmarks").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_help(script):
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout


def test_benchmark_contract_in_results():
    import json

    for path in (Path(__file__).parents[2] / "benchmarks" / "results").glob("*.json"):
        data = json.loads(path.read_text())
        assert data["benchmark"] == path.stem
        assert isinstance(data["quick"], bool) and data["figures"] and "torch" in data["env"]
