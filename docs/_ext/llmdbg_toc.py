"""Sphinx extension: the table of contents of ``index.md``, from the pages that exist.

The line ``<!-- llmdbg-toctree -->`` in ``index.md`` becomes two toctrees: the user guide (every
Markdown page in docs/ that is not a reference page, known pages in reading order first, the rest
alphabetically) and the reference (API, supported models, guarantees, migration guide, benchmarks,
architecture). A page added by a new feature therefore joins the build without editing ``index.md``
and never triggers a "document isn't included in any toctree" warning; a page that is listed but
missing cannot occur.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARKER = "<!-- llmdbg-toctree -->"
# Reading order of the user guide; pages not named here follow alphabetically.
GUIDE_ORDER = [
    "capture",
    "long_context",
    "generation",
    "attention",
    "attribution",
    "embeddings",
    "training",
    "code-debugger",
    "lens",
    "interventions",
    "patching",
    "checks",
    "data",
    "report",
    "views",
    "saving",
    "running-on-a-dataset",
    "running-on-a-cluster",
]
REFERENCE = ["api", "support", "guarantees", "migrating", "benchmarks", "architecture"]


def pages(docs_dir: Path, root: str = "index") -> tuple[list[str], list[str]]:
    """(user guide pages, reference pages) present in ``docs_dir``, without suffix, in order."""
    found = {p.stem for p in docs_dir.glob("*.md") if p.stem != root and not p.stem.startswith("_")}
    rank = {name: i for i, name in enumerate(GUIDE_ORDER)}
    guide = sorted(found - set(REFERENCE), key=lambda n: (rank.get(n, len(rank)), n))
    return guide, [r for r in REFERENCE if r in found]


def toctree_markdown(guide: list[str], reference: list[str]) -> str:
    out = []
    for caption, entries in (("User guide", guide), ("Reference", reference)):
        if entries:
            out.append("```{toctree}\n:maxdepth: 2\n:caption: " + caption + "\n\n" + "\n".join(entries) + "\n```\n")
    return "\n".join(out)


def _source_read(app: Any, docname: str, source: list[str]) -> None:
    if docname == app.config.root_doc and MARKER in source[0]:
        guide, reference = pages(Path(app.srcdir), app.config.root_doc)
        source[0] = source[0].replace(MARKER, toctree_markdown(guide, reference))


def _outdated(app: Any, env: Any, added: set[str], changed: set[str], removed: set[str]) -> list[str]:
    # A page added or removed changes the generated toctree, so the root page is re-read.
    return [app.config.root_doc] if added or removed else []


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _source_read)
    app.connect("env-get-outdated", _outdated)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
