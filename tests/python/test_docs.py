"""The documentation builds without a single warning, and its generated parts (the toctree, the
API reference, the benchmarks page) contain what their sources say."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import llmdbg_benchmarks  # noqa: E402 (after the sys.path line)
import llmdbg_toc  # noqa: E402


def _fresh_build() -> Path | None:
    """``make test`` builds the docs with -W just before pytest and names the output in
    LLMDBG_DOCS_HTML; reuse it when it is newer than every source it was built from."""
    html = os.environ.get("LLMDBG_DOCS_HTML")
    index = Path(html) / "index.html" if html else None
    if index is None or not index.is_file():
        return None
    sources = [*DOCS.rglob("*"), *(ROOT / "python" / "llmdbg").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.json")]
    newest = max(p.stat().st_mtime for p in sources if p.is_file())
    return index.parent if newest < index.stat().st_mtime else None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if (fresh := _fresh_build()) is not None:
        return fresh
    out = tmp_path_factory.mktemp("docs")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-b",
            "html",
            "-W",
            "--keep-going",
            "-q",
            "-d",
            str(out / ".doctrees"),
            str(DOCS),
            str(out / "html"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"sphinx failed:\n{proc.stderr[-6000:]}"
    assert proc.stderr.strip() == "", proc.stderr
    return out / "html"


def _text(path: Path) -> str:
    return re.sub(r"<[^>]+>", "", path.read_text("utf-8"))


def test_every_page_is_built_and_in_the_toctree(built):
    pages = sorted(p.stem for p in DOCS.glob("*.md"))
    index = (built / "index.html").read_text("utf-8")
    for page in pages:
        assert (built / f"{page}.html").is_file(), page
        if page != "index":
            assert f'href="{page}.html"' in index, f"{page} missing from the table of contents"


def test_api_reference_documents_every_export(built):
    import llmdbg

    html = (built / "api.html").read_text("utf-8")
    for name in llmdbg.__all__:
        assert f'id="llmdbg.{name}"' in html or f'id="module-llmdbg.{name}"' in html, (
            f"llmdbg.{name} has no entry in the API reference"
        )
    # Docstrings are rendered as reStructuredText (numpydoc sections become field lists).
    assert "Parameters" in _text(built / "api.html")
    assert ":func:" not in _text(built / "api.html")


def test_benchmarks_page_lists_every_recorded_figure(built):
    text = _text(built / "benchmarks.html")
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        data = json.loads(path.read_text("utf-8"))
        assert f"python benchmarks/{data['benchmark']}.py" in text
        for figure in data["figures"]:
            assert figure in text, figure


def test_goal_status():
    assert llmdbg_benchmarks.goal_status(0.04, "<= 0.05") == "met"
    assert llmdbg_benchmarks.goal_status(0.05, "< 0.05") == "not met"
    assert llmdbg_benchmarks.goal_status(120.0, ">= 100") == "met"
    assert llmdbg_benchmarks.goal_status(-0.02, ">= -0.01") == "not met"
    assert llmdbg_benchmarks.goal_status(None, "<= 1") == ""
    assert llmdbg_benchmarks.goal_status(1.0, None) == ""
    with pytest.raises(ValueError, match="OP NUMBER"):
        llmdbg_benchmarks.goal_status(1.0, "fast")


def test_goals_file_is_readable():
    goals = json.loads((ROOT / "benchmarks" / "goals.json").read_text("utf-8"))
    for bench, figures in goals.items():
        if bench.startswith("_"):
            continue
        for figure, goal in figures.items():
            assert llmdbg_benchmarks.goal_status(0.0, goal) in ("met", "not met"), (bench, figure)


def test_benchmarks_render_from_results(tmp_path):
    (tmp_path / "x.json").write_text(
        json.dumps({"benchmark": "x", "quick": True, "figures": {"speedup": 3.0, "ratio": 0.7}, "env": {"threads": 2}})
    )
    goals = tmp_path / "goals.json"
    goals.write_text(json.dumps({"x": {"speedup": ">= 2", "ratio": "<= 0.5", "absent": "<= 1"}}))
    md = llmdbg_benchmarks.render(tmp_path, goals)
    assert "| `speedup` | 3 | >= 2 | met |" in md
    assert "| `ratio` | 0.7 | <= 0.5 | not met |" in md
    assert "quick run" in md and "`absent` (<= 1)" in md


def test_toc_orders_known_pages_first(tmp_path):
    for name in ("index", "zeta", "report", "capture", "api", "benchmarks", "attention"):
        (tmp_path / f"{name}.md").write_text("# t\n")
    guide, reference = llmdbg_toc.pages(tmp_path)
    assert guide == ["capture", "attention", "report", "zeta"]
    assert reference == ["api", "benchmarks"]


def _resolve(dotted: str):
    import importlib

    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj


def test_migration_guide_names_exist():
    text = (DOCS / "migrating.md").read_text("utf-8")
    # Every `llmdbg.x(.y)` the guide names, e.g. llmdbg.integrated_gradients, llmdbg.plot.embedding.
    names = sorted(set(re.findall(r"\bllmdbg(?:\.[A-Za-z_]\w*)+", text)))
    assert "llmdbg.capture" in names
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (AttributeError, ImportError):
            missing.append(name)
    assert not missing, f"docs/migrating.md names what llmdbg does not have: {missing}"


def test_lenient_filter_only_catches_listed_modules():
    import logging
    import types

    import llmdbg_api

    app = types.SimpleNamespace(config=types.SimpleNamespace(llmdbg_lenient_modules=["llmdbg.training"]))
    filt = llmdbg_api.LenientDocstrings(app)

    def record(location, level=logging.WARNING):
        rec = logging.LogRecord("sphinx", level, "x", 1, "bad field list", None, None)
        rec.location = location
        return rec

    assert not filt.filter(record("/p/watch.py:docstring of llmdbg.training.watch.Watch:3"))
    assert filt.filter(record("/p/trace.py:docstring of llmdbg.trace.Trace:3"))
    assert filt.filter(record("/p/x.py:docstring of llmdbg.training_extra.f:3"))  # prefix, not module
    assert filt.filter(record("docs/report.md:12"))
    assert filt.filter(record("/p/watch.py:docstring of llmdbg.training.watch:3", level=logging.INFO))
    assert filt.caught == ["/p/watch.py:docstring of llmdbg.training.watch.Watch:3: bad field list"]


def test_escape_pipes_leaves_literals_and_tables():
    import llmdbg_api

    lines = ["Relative |delta| / |F(x)|", "a ``|x|`` literal and :math:`|x|`", "| a | b |", "+---+---+"]
    llmdbg_api.escape_pipes(lines)
    assert lines == ["Relative \\|delta\\| / \\|F(x)\\|", "a ``|x|`` literal and :math:`|x|`", "| a | b |", "+---+---+"]
