"""The wheel in a fresh virtual environment that holds only torch: pip installs llmdbg's own
dependencies from the wheel's metadata, and capture, attention rollout, integrated gradients and
t-SNE give correct results there, away from this checkout and this environment's packages.

The wheel is built once per session from this checkout (its build directory, build/wheel, is the
one `make wheel` uses, so rebuilds are incremental); set LLMDBG_WHEEL to a built wheel to test
that one instead. Timings of each step are printed (pytest -s shows them).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TORCH_PUBLIC = str(torch.__version__).split("+", 1)[0]
TORCH_MINOR = ".".join(TORCH_PUBLIC.split(".")[:2])


def _run(cmd: list, step: str, timings: dict, **kwargs) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    timings[step] = round(time.perf_counter() - start, 1)
    print(f"[test_install] {step}: {timings[step]} s")
    assert out.returncode == 0, f"{step} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def _clean_env() -> dict[str, str]:
    """This process's environment without what would leak the checkout or this environment's
    packages into the venv. pip's own configuration (where it finds packages) is kept."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE")
    }
    env.update(HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1", OMP_NUM_THREADS="2")
    return env


def _dependency_pins(requirements: list[str]) -> list[str]:
    """name==version of every installed distribution the wheel's requirements reach, torch
    excluded: the venv then resolves the versions this test suite runs against (all found in the
    package indexes pip already uses here) rather than whatever is newest today."""
    pins, todo, seen = [], [r for r in requirements if "extra ==" not in r], set()
    while todo:
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", todo.pop())[0]
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen or key == "torch":
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        pins.append(f"{key}=={dist.version}")
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
    return sorted(pins)


@pytest.fixture(scope="module")
def timings():
    t: dict[str, float] = {}
    yield t
    print(f"[test_install] timings (s): {json.dumps(t)}")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, timings) -> Path:
    given = os.environ.get("LLMDBG_WHEEL")
    if given:
        path = Path(given)
        assert path.is_file() and path.suffix == ".whl", f"LLMDBG_WHEEL={given!r} is not a wheel file"
        return path
    out = tmp_path_factory.mktemp("wheel")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "-q",
            "-w",
            out,
            f"-Cbuild-dir={REPO / 'build' / 'wheel'}",
            REPO,
        ],
        "build the wheel",
        timings,
        env={**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2")},
    )
    (path,) = out.glob("llmdbg-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel, timings) -> Path:
    """A new venv, torch installed first (as a user's environment has it), then the wheel."""
    root = tmp_path_factory.mktemp("venv")
    env = _clean_env()
    _run([sys.executable, "-m", "venv", root / "venv"], "create the venv", timings, env=env)
    python = root / "venv" / "bin" / "python"
    # --no-compile: byte-compiling torch and transformers at install time doubles the install time;
    # the few modules imported get compiled on first import instead.
    _run(
        [python, "-m", "pip", "install", "-q", "--no-compile", f"torch=={TORCH_PUBLIC}"],
        "pip install torch",
        timings,
        env=env,
        cwd=root,
    )
    from zipfile import ZipFile

    with ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        requires = re.findall(r"^Requires-Dist: (.+)$", zf.read(name).decode(), flags=re.M)
    constraints = root / "constraints.txt"
    constraints.write_text("\n".join(_dependency_pins(requires)) + "\n")
    _run(
        [python, "-m", "pip", "install", "-q", "--no-compile", "-c", constraints, wheel],
        "pip install the wheel",
        timings,
        env=env,
        cwd=root,
    )
    return python


def test_wheel_name_and_metadata_record_the_build_torch(wheel):
    from zipfile import ZipFile

    assert wheel.name.startswith(f"llmdbg-0.2.0+torch{TORCH_MINOR}-"), wheel.name
    with ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        text = zf.read(meta).decode()
        build_info = zf.read("llmdbg/_build_info.py").decode()
    assert re.search(rf"^Version: 0\.2\.0\+torch{re.escape(TORCH_MINOR)}$", text, flags=re.M)
    major, minor = map(int, TORCH_MINOR.split("."))
    torch_requires = re.findall(r"^Requires-Dist: (torch\b.*)$", text, flags=re.M)
    assert len(torch_requires) == 1, torch_requires  # torch>=2.13,<2.14 (in either order)
    assert set(torch_requires[0][len("torch") :].split(",")) == {f">={major}.{minor}", f"<{major}.{minor + 1}"}
    for dep in ("numpy", "transformers", "tqdm", "pandas"):
        assert re.search(rf"^Requires-Dist: {dep}\b[^;]*$", text, flags=re.M), dep
    assert f'TORCH_VERSION = "{torch.__version__}"' in build_info
    assert any(re.fullmatch(r"llmdbg/_core\..*\.so", n) for n in names)
    # Every module of the package is shipped (a .gitignore pattern once dropped llmdbg/report/).
    source = REPO / "python"
    modules = {
        p.relative_to(source).as_posix() for p in (source / "llmdbg").rglob("*.py*") if "__pycache__" not in p.parts
    }
    assert not modules - set(names), sorted(modules - set(names))


_SCRIPT = textwrap.dedent(r"""
    import json, sys
    from importlib import metadata
    import numpy as np, torch, transformers as tf
    import llmdbg

    torch.manual_seed(0)
    torch.set_num_threads(1)
    out = {"llmdbg_file": llmdbg.__file__, "version": metadata.version("llmdbg"),
           "sys_path": sys.path,
           "dists": sorted(d.metadata["Name"].lower() for d in metadata.distributions())}

    # A tiny random-weight BERT classifier from a config (no download).
    # initializer_range 0.2 (not 0.02): logits and attention that differ between tokens.
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, vocab_size=100, num_labels=3, pad_token_id=0,
                           initializer_range=0.2)
    model = tf.BertForSequenceClassification(config).eval()
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)

    # capture: block outputs, attention maps, statistics in C++.
    with llmdbg.capture(model, "blocks", attentions=True) as trace, torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    blocks = list(trace.activations)
    acts = [trace.activations[b] for b in blocks]
    stats = trace.stats[blocks[-1]]
    out["capture"] = {"n_blocks": len(blocks), "shape": list(acts[-1].shape),
                      "finite": bool(all(np.isfinite(a).all() for a in acts)),
                      "stats": [stats.count, stats.std, stats.absmax],
                      "numpy": [acts[-1].size, float(acts[-1].astype(np.float64).std()), float(np.abs(acts[-1]).max())],
                      "n_attn": len(trace.attentions), "attn_shape": list(trace.attentions[0].shape)}

    # attention rollout: rows are distributions over the input tokens.
    roll = llmdbg.attention_rollout(trace)
    ref = np.broadcast_to(np.eye(9), (2, 9, 9))  # numpy reference: R = Â_L ... Â_1
    for a in trace.attentions:
        fused = a.astype(np.float64).mean(1) + np.eye(9)
        ref = (fused / fused.sum(-1, keepdims=True)) @ ref
    out["rollout"] = {"shape": list(roll.shape), "finite": bool(np.isfinite(roll).all()),
                      "min": float(roll.min()), "row_sum_err": float(np.abs(roll.sum(-1) - 1).max()),
                      "ref_err": float(np.abs(roll - ref).max())}

    # integrated gradients: completeness against the model's own logits at input and baseline.
    target = logits.argmax(-1)
    baseline = torch.zeros_like(ids)  # the pad token everywhere
    attr = llmdbg.integrated_gradients(model, {"input_ids": ids, "attention_mask": mask},
                                       baseline=baseline.numpy(), n_steps=32, progress=False)
    with torch.no_grad():
        base_logits = model(input_ids=baseline, attention_mask=mask).logits
    rows = torch.arange(2)
    f_x, f_b = logits[rows, target].double().numpy(), base_logits[rows, target].double().numpy()
    out["ig"] = {"shape": list(attr.scores.shape), "finite": bool(np.isfinite(attr.scores).all()),
                 "target": attr.target.tolist(), "model_target": target.tolist(),
                 "sum": attr.scores.astype(np.float64).sum(-1).tolist(), "model_gap": (f_x - f_b).tolist(),
                 "value": attr.value.tolist(), "model_value": f_x.tolist()}

    # t-SNE: three separated clusters stay separated.
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=20.0, size=(3, 10))
    x = np.concatenate([c + rng.normal(size=(40, 10)) for c in centers])
    labels = np.repeat(np.arange(3), 40)
    y = llmdbg.TSNE(perplexity=10, n_iter=300, random_state=0, progress=False).fit_transform(x)
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    out["tsne"] = {"shape": list(y.shape), "finite": bool(np.isfinite(y).all()),
                   "nn_accuracy": float((labels[d.argmin(1)] == labels).mean())}
    print("RESULT " + json.dumps(out))
""")


def test_capture_rollout_ig_tsne_in_a_fresh_venv(venv, tmp_path, timings):
    script = tmp_path / "use_llmdbg.py"
    script.write_text(_SCRIPT)
    proc = _run(
        [venv, script],
        "run capture, rollout, IG, t-SNE in the venv",
        timings,
        env=_clean_env(),
        cwd=tmp_path,
        timeout=300,
    )
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line[len("RESULT ") :])

    # Imported from the venv, not from this checkout or this environment.
    venv_root = str(Path(venv).parent.parent)
    assert out["llmdbg_file"].startswith(venv_root), out["llmdbg_file"]
    assert not any(p.startswith(str(REPO)) for p in out["sys_path"]), out["sys_path"]
    assert out["version"] == f"0.2.0+torch{TORCH_MINOR}"
    # The wheel's dependencies were installed by pip from its metadata.
    for dep in ("numpy", "transformers", "tqdm", "pandas", "torch"):
        assert dep in out["dists"], dep
    assert "matplotlib" not in out["dists"] and "pytest" not in out["dists"]  # no extras

    cap = out["capture"]
    assert cap["n_blocks"] == 2 and cap["shape"] == [2, 9, 32] and cap["finite"]
    assert cap["stats"] == pytest.approx(cap["numpy"], rel=1e-5)  # C++ statistics of the capture
    assert cap["n_attn"] == 2 and cap["attn_shape"] == [2, 4, 9, 9]

    roll = out["rollout"]
    assert roll["shape"] == [2, 9, 9] and roll["finite"] and roll["min"] >= 0
    assert roll["row_sum_err"] < 1e-5 and roll["ref_err"] < 1e-5

    ig = out["ig"]
    assert ig["shape"] == [2, 9] and ig["finite"]
    assert ig["target"] == ig["model_target"]  # the predicted class by default
    assert ig["value"] == pytest.approx(ig["model_value"], rel=1e-4, abs=1e-5)
    for total, gap in zip(ig["sum"], ig["model_gap"]):  # completeness: sum = F(x) - F(baseline)
        assert abs(gap) > 0.05
        assert total == pytest.approx(gap, rel=1e-3)

    ts = out["tsne"]
    assert ts["shape"] == [120, 2] and ts["finite"] and ts["nn_accuracy"] == 1.0


def test_a_torch_of_another_minor_is_refused_at_import(venv, tmp_path, timings):
    """Make the installed build claim another torch minor; importing llmdbg then fails with an
    ImportError naming both versions and the rebuild command (not an undefined symbol)."""
    where = subprocess.run(
        [str(venv), "-c", "import importlib.util as u; print(u.find_spec('llmdbg').submodule_search_locations[0])"],
        capture_output=True,
        text=True,
        check=True,
        env=_clean_env(),
        cwd=tmp_path,
    )
    info = Path(where.stdout.strip()) / "_build_info.py"
    original = info.read_text()
    major, minor = map(int, TORCH_MINOR.split("."))
    other = f"{major}.{minor - 1}.0" if minor else f"{major - 1}.0.0"
    info.write_text(re.sub(r'TORCH_VERSION = "[^"]*"', f'TORCH_VERSION = "{other}"', original))
    try:
        # check_torch_build is the first thing llmdbg/__init__.py runs; importing the checker
        # directly gives the same error whether or not the package __init__ calls it yet.
        proc = subprocess.run(
            [str(venv), "-c", "from llmdbg._internal.build_check import check_torch_build as c; c()"],
            capture_output=True,
            text=True,
            env=_clean_env(),
            cwd=tmp_path,
            timeout=120,
        )
    finally:
        info.write_text(original)
    assert proc.returncode != 0
    assert "ImportError: llmdbg was built against torch " + other in proc.stderr, proc.stderr[-3000:]
    assert re.search(rf"torch {re.escape(TORCH_PUBLIC)}\S* is imported", proc.stderr)
    assert "-m pip install --no-build-isolation --force-reinstall --no-deps" in proc.stderr
