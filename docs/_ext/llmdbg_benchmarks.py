"""Sphinx extension: the benchmarks page, generated from ``benchmarks/results/*.json``.

A page that contains the line ``<!-- llmdbg-benchmark-tables -->`` gets it replaced, when Sphinx
reads it, by one Markdown section per results file: the command that reproduces it, whether it
was a ``--quick`` run, the environment, and a table of every figure with its goal from
``benchmarks/goals.json`` and whether the recorded value meets it. The page is rebuilt whenever a
results file changes (each file is registered as a dependency of the page).
"""

from __future__ import annotations

import json
import math
import operator
import re
from pathlib import Path
from typing import Any

MARKER = "<!-- llmdbg-benchmark-tables -->"
_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_GOAL = re.compile(r"^\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def goal_status(value: Any, goal: str | None) -> str:
    """``"met"``, ``"not met"`` or ``""`` (no goal, or a value that is not a number)."""
    if goal is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return ""
    m = _GOAL.match(goal)
    if m is None:
        raise ValueError(f"benchmarks/goals.json: cannot read goal {goal!r}; expected 'OP NUMBER'")
    return "met" if _OPS[m.group(1)](float(value), float(m.group(2))) else "not met"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(results_dir: Path, goals_file: Path | None = None) -> str:
    """The Markdown that replaces :data:`MARKER`."""
    goals: dict[str, dict[str, str]] = {}
    if goals_file is not None and goals_file.is_file():
        goals = {k: v for k, v in json.loads(goals_file.read_text("utf-8")).items() if not k.startswith("_")}
    files = sorted(results_dir.glob("*.json"))
    if not files:
        return "No benchmark results are recorded yet (`benchmarks/results/` is empty).\n"
    out: list[str] = []
    for path in files:
        data = json.loads(path.read_text("utf-8"))
        name = str(data.get("benchmark", path.stem))
        figures = data.get("figures", {})
        env = data.get("env", {})
        bench_goals = goals.get(name, {})
        out.append(f"## {name}\n")
        run = "quick run (`--quick`): indicative only" if data.get("quick") else "full run"
        out.append(
            f"Reproduce with `python benchmarks/{name}.py` ({run}; results in `benchmarks/results/{path.name}`).\n"
        )
        facts = [f"{k} {_fmt(v)}" for k, v in env.items()]
        for key in ("model", "device", "batch", "tokens", "repeats"):
            if key in data and not isinstance(data[key], (dict, list)):
                facts.append(f"{key}: {_fmt(data[key])}")
        if facts:
            out.append("Environment: " + ", ".join(_cell(f) for f in facts) + ".\n")
        out.append("| figure | value | goal | status |\n| --- | --- | --- | --- |")
        for fig, value in figures.items():
            goal = bench_goals.get(fig)
            out.append(f"| `{fig}` | {_cell(_fmt(value))} | {_cell(goal or '')} | {goal_status(value, goal)} |")
        missing = [f for f in bench_goals if f not in figures]
        if missing:
            out.append("")
            out.append(
                "Figures with a goal that this run did not record: "
                + ", ".join(f"`{f}` ({_cell(bench_goals[f])})" for f in missing)
                + "."
            )
        out.append("")
    return "\n".join(out) + "\n"


def _source_read(app: Any, docname: str, source: list[str]) -> None:
    if MARKER not in source[0]:
        return
    root = Path(app.confdir).parent
    results, goals = root / "benchmarks" / "results", root / "benchmarks" / "goals.json"
    for dep in [*sorted(results.glob("*.json")), goals]:
        if dep.exists():
            app.env.note_dependency(str(dep))
    source[0] = source[0].replace(MARKER, render(results, goals))


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _source_read)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
