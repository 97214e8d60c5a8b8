"""Self-contained HTML reports.

A :class:`Report` is a list of sections (text, figures, tables, interactive views) written as one
``index.html`` with inline CSS and figures embedded as base64 PNGs: no external URL, file or font,
so the page can be mailed, archived as a CI artifact or opened offline. The interactive views
(:mod:`llmdbg.widgets`) sit next to the static figures, their data and JavaScript inline in the
page; the figures stay, so the page prints and reads with JavaScript off. The demo report built on MiniLM lives
in :mod:`llmdbg.demo`; :func:`build_demo_report` is re-exported here.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import numbers
import os
import platform
import re
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .._internal.html import esc

__all__ = ["VIEW_START", "Report", "json_safe", "prepare_out_dir", "write_file"]

_CSS = """
:root { --fg: #1d2430; --muted: #5b6472; --line: #dde2ea; --accent: #3b6ea5; --bg: #f6f8fb; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
       sans-serif; color: var(--fg); background: var(--bg); }
header, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 28px; }
h1 { margin: 0 0 4px; font-size: 26px; }
h2 { margin: 0 0 12px; font-size: 20px; border-bottom: 2px solid var(--line); padding-bottom: 6px; }
.subtitle { color: var(--muted); margin: 0 0 16px; }
nav.toc { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 18px;
          margin-bottom: 20px; }
nav.toc ol { margin: 4px 0; padding-left: 22px; columns: 2; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 18px 22px;
          margin-bottom: 20px; }
figure { margin: 12px 0; text-align: center; }
figure img { max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 13px; }
.table-wrap { overflow-x: auto; margin: 12px 0; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
th { background: #eef2f7; position: sticky; top: 0; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:hover { background: #f3f6fa; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px;
       background: #f0f2f5; padding: 1px 4px; border-radius: 3px; }
footer { color: var(--muted); font-size: 12px; padding-bottom: 28px; }
.interactive { margin: 14px 0; padding: 10px 12px; border: 1px dashed var(--line); border-radius: 6px;
               overflow-x: auto; }
.interactive > .note { color: var(--muted); font-size: 12px; margin: 0 0 6px; }
@media print { .interactive { display: none; } }
"""

#: Marks the start of an interactive view's block in the page (the benchmark strips these blocks to
#: get the static page on the same inputs).
VIEW_START = '<div class="interactive">'


def _view_html(view: Any) -> str:
    """A view (:class:`llmdbg.widgets.View`) in its block, with a line saying what it is."""
    if not callable(getattr(view, "to_html", None)) or not hasattr(view, "name"):
        raise TypeError(f"view must be an llmdbg.widgets.View, got {type(view).__name__}")
    note = (
        '<p class="note">Interactive view (hover, click, search); the figures of this section show '
        "the same data without JavaScript.</p>"
    )
    return f"{VIEW_START}{note}{view.to_html()}</div><!-- /interactive -->"


@dataclass
class _Section:
    title: str
    anchor: str
    parts: list[str] = field(default_factory=list)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _figure_html(fig: Any, alt: str, caption: str | None = None) -> str:
    """A matplotlib figure as an ``<img>`` with a base64 PNG data URI."""
    if not hasattr(fig, "savefig"):
        raise TypeError(f"figure must be a matplotlib Figure, got {type(fig).__name__}")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Tokens outside the font (CJK, emoji) render as boxes; that is no reason to fail.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
        fig.savefig(buf, format="png", dpi=100, facecolor="white")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def _cell(value: Any) -> tuple[str, bool]:
    """(escaped text, is numeric) for one table cell."""
    if isinstance(value, bool) or value is None:
        return esc(str(value)), False
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}", True
    if isinstance(value, numbers.Real):
        return f"{float(value):.4g}", True
    return esc(str(value)), False


def _table_html(table: Any) -> str:
    """A pandas DataFrame or a list of dicts as an escaped HTML table."""
    if hasattr(table, "to_dict") and hasattr(table, "columns"):  # pandas DataFrame
        import pandas as pd

        if not isinstance(table.index, pd.RangeIndex) or table.index.name is not None:
            table = table.reset_index()
        columns = [str(c) for c in table.columns]
        rows = [dict(zip(columns, r)) for r in table.itertuples(index=False, name=None)]
    elif isinstance(table, (list, tuple)) and all(isinstance(r, dict) for r in table):
        columns = list(dict.fromkeys(str(k) for r in table for k in r))  # first-seen order
        rows = [{str(k): v for k, v in r.items()} for r in table]
    else:
        raise TypeError(f"table must be a pandas DataFrame or a list of dicts, got {type(table).__name__}")
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    numeric = [bool(cells) and all(row[j][1] for row in cells) for j in range(len(columns))]
    head = "".join(
        f'<th class="num">{esc(c)}</th>' if num else f"<th>{esc(c)}</th>" for c, num in zip(columns, numeric)
    )
    body = [
        "<tr>" + "".join(f'<td class="num">{t}</td>' if num else f"<td>{t}</td>" for t, num in row) + "</tr>"
        for row in cells
    ]
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def prepare_out_dir(out_dir: str | os.PathLike, force: bool = False, *, create: bool = True) -> Path:
    """Check ``out_dir`` for a report and create it, refusing a non-empty one unless ``force``.

    With ``force=True`` the directory is reused as it is: the report's files are overwritten and
    nothing else in it is deleted. ``create=False`` only checks, so that a failure later (loading
    a model, say) leaves no empty directory behind.

    Raises
    ------
    FileExistsError
        ``out_dir`` exists and is not a directory, or is not empty (and ``force`` is False).
    """
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; choose another output directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise FileExistsError(
            f"output directory {path} already exists and is not empty; pass --force (force=True) to "
            "overwrite the report in it (index.html, arrays.npz, summary.json), or choose another directory"
        )
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


class Report:
    """An HTML report built section by section.

    Parameters
    ----------
    title : str
        Page title and heading.
    subtitle : str, optional
        A line of plain text under the heading.
    views : bool
        Keep the interactive views sections add (default); False writes the static page only
        (figures and tables, no script at all).

    Examples
    --------
    >>> r = Report("My model")
    >>> r.add_section("Notes", html="<p>All finite.</p>", table=[{"layer": 0, "absmax": 3.2}])
    >>> path = r.write("out", force=True)  # doctest: +SKIP
    """

    def __init__(self, title: str, subtitle: str | None = None, *, views: bool = True) -> None:
        self.title = str(title)
        self.subtitle = subtitle
        self.views = bool(views)
        #: Why :meth:`view_of` returned no view, one line per refusal.
        self.views_skipped: list[str] = []
        self.sections: list[_Section] = []

    def _anchor(self, title: str) -> str:
        base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
        taken = {s.anchor for s in self.sections}
        anchor, n = base, 2
        while anchor in taken:
            anchor, n = f"{base}-{n}", n + 1
        return anchor

    def view_of(self, obj: Any, **opts: Any) -> Any:
        """The interactive view of ``obj`` (:func:`llmdbg.widgets.show`) for ``add_section(view=...)``.

        Code below the report layer (a feature adding its own section, like
        ``Watch.add_to_report``) cannot import the views; it asks the report instead. Returns None
        when this report leaves views out (``views=False``), or when ``obj`` has no view or its
        view cannot be built (the reason is appended to :attr:`views_skipped`): a view is an extra
        next to the figures, never a reason to lose the section.
        """
        if not self.views:
            return None
        try:
            from ..widgets import show

            return show(obj, **opts)
        except Exception as exc:  # no view for the type, the payload limit, ...
            self.views_skipped.append(f"{type(obj).__name__}: {type(exc).__name__}: {exc}")
            return None

    def add_section(
        self,
        title: str,
        html: str | None = None,
        figure: Any = None,
        table: Any = None,
        *,
        captions: list[str] | None = None,
        view: Any = None,
    ) -> Report:
        """Append a section: raw HTML first, then figures, then interactive views, then tables.

        Parameters
        ----------
        title : str
            Section heading (escaped; also gives the anchor the table of contents links to).
        html : str, optional
            Trusted HTML inserted as is (escape user text yourself with :func:`html.escape`).
        figure : matplotlib Figure or list of them, optional
            Rendered to PNG now (at 100 dpi) and embedded as a base64 data URI.
        table : pandas DataFrame, list of dicts, or a list of those, optional
            Rendered as an HTML table; every cell is escaped, numbers formatted with ``.4g``
            (integers with thousands separators). A named or non-default index becomes a column.
        captions : list of str, optional
            One caption per figure.
        view : llmdbg.widgets.View or list of them, optional
            Interactive views, placed after the figures (left out when the report was made with
            ``views=False``). Their data and JavaScript are inline; nothing is fetched.

        Returns
        -------
        Report
            ``self``, for chaining.
        """
        section = _Section(str(title), self._anchor(str(title)))
        if html:
            section.parts.append(html)
        figures = _as_list(figure)
        captions = list(captions or [])
        for i, fig in enumerate(figures):
            cap = captions[i] if i < len(captions) else None
            section.parts.append(_figure_html(fig, alt=cap or f"{title}: figure {i + 1}", caption=cap))
        views = [_view_html(v) for v in _as_list(view)]  # checked even when left out
        if self.views:
            section.parts.extend(views)
        tables = (
            [table] if isinstance(table, (list, tuple)) and table and isinstance(table[0], dict) else _as_list(table)
        )
        section.parts.extend(_table_html(t) for t in tables)
        self.sections.append(section)
        return self

    def to_html(self) -> str:
        """The whole page as a string."""
        esc = html.escape
        toc = "".join(f'<li><a href="#{s.anchor}">{esc(s.title)}</a></li>' for s in self.sections)
        body = "\n".join(
            f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>\n' + "\n".join(s.parts) + "</section>"
            for s in self.sections
        )
        sub = f'<p class="subtitle">{esc(self.subtitle)}</p>' if self.subtitle else ""
        now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        versions = ", ".join(f"{name} {_version(name)}" for name in ("llmdbg", "torch", "transformers"))
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{esc(self.title)}</h1>{sub}</header>\n<main>\n"
            f'<nav class="toc" id="contents"><strong>Contents</strong><ol>{toc}</ol></nav>\n'
            f"{body}\n</main>\n<footer>Generated by llmdbg on {esc(now)} &middot; {esc(versions)}"
            f" &middot; Python {esc(platform.python_version())}</footer>\n</body>\n</html>\n"
        )

    def write(self, out_dir: str | Path, force: bool = False) -> Path:
        """Write ``out_dir/index.html`` and return its path.

        Parameters
        ----------
        out_dir : str or Path
            Created if missing.
        force : bool
            Reuse a non-empty ``out_dir`` (only ``index.html`` is overwritten).

        Raises
        ------
        FileExistsError
            ``out_dir`` exists and is not empty and ``force`` is False.
        """
        path = prepare_out_dir(out_dir, force) / "index.html"
        write_file(path, self.to_html())
        return path


def write_file(path: Path, data: str | bytes) -> None:
    """Write ``path`` through a temporary file in the same directory and a rename, so that a
    symbolic link at ``path`` is replaced rather than followed (``--force`` must not overwrite
    whatever an ``index.html`` link points to), and a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (JSON has neither) by None and numpy scalars by Python ones, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
