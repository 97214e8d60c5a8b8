"""Shared benchmark plumbing (the contract in DESIGN.md): warm-up, interleaved repeats, medians,
a readable table and benchmarks/results/<name>.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer repeats; finishes within 60 s")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per configuration")
    p.add_argument("--no-write", action="store_true", help="do not write results/<name>.json")
    return p.parse_args()


def time_interleaved(configs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """One warm-up call each, then `repeats` rounds that run every configuration once, so slow
    drift of the shared machine hits all configurations alike."""
    for fn in configs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, fn in configs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def python_hooks(model, names, inputs, to_numpy=lambda t: t.detach().cpu().numpy()):
    """The baseline users write by hand: a forward hook per module that converts its output to
    numpy, removed afterwards. Returns {name: array}."""
    out, handles = {}, []
    for name in names:

        def hook(m, a, o, name=name):
            out[name] = to_numpy(o if isinstance(o, torch.Tensor) else o[0])

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return out


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak() -> int:
    """Start a peak-memory measurement in this (fresh) process: reset VmHWM through
    /proc/self/clear_refs and return the resident size now, in KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def peak_growth_bytes(start_kib: int) -> int:
    """Peak resident memory above ``start_kib`` (from :func:`reset_peak`) so far, in bytes."""
    return (_status_kib("VmHWM") - start_kib) * 1024


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def env() -> dict[str, object]:
    import numpy
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def report(
    name: str,
    quick: bool,
    rows: list[tuple[str, str]],
    figures: dict[str, object],
    extra: dict[str, object] | None = None,
    write: bool = True,
) -> Path | None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{name} ({'quick' if quick else 'full'})")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    print("figures:")
    for k, v in figures.items():
        print(f"  {k} = {v}")
    if not write:
        return None
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "quick": quick, "figures": figures, "env": env(), **(extra or {})}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path
