"""The report's Comparison section: what :func:`llmdbg.compare` found between two traces.

:func:`comparison_section` is run by :func:`~llmdbg.report.run_report` when its context carries
a comparison (``run_report(..., comparison=llmdbg.compare(a, b))``, or ``llmdbg report --model M
--compare A B``); :func:`write_comparison_report` writes a page holding the comparison alone
(``llmdbg report --compare A B``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .._internal.html import esc
from .context import ReportContext
from .page import Report, json_safe, prepare_out_dir, write_file

__all__ = ["add_comparison", "comparison_section", "write_comparison_report"]

# Keys captured in one trace only are listed up to this many.
_MAX_LISTED = 12


def _records(df: Any) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: missing values (NaN, pandas.NA) as None, shapes as lists."""
    rows = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    return list(json_safe(rows))


def _trace(x: Any) -> Any:
    """A path read once (the comparison and the per-head table both need the trace)."""
    if isinstance(x, (str, os.PathLike)):
        from ..saved.load import load

        return load(x)
    return x


def _listing(keys: list[str]) -> str:
    shown = ", ".join(f"<code>{esc(k)}</code>" for k in keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def _largest(df: Any, column: str) -> str:
    """'module (kind), value' of the row with the largest finite ``column``, or ''."""
    values = df[column].astype("float64")
    finite = values[values.map(math.isfinite)]
    if finite.empty:
        return ""
    i = finite.idxmax()
    return f"<code>{esc(df.at[i, 'module'])}</code> ({esc(df.at[i, 'kind'])}, {column} = {values[i]:.4g})"


def add_comparison(report: Report, df: Any, *, heads: Any = None, names: tuple[str, str] = ("a", "b")) -> None:
    """Add the "Comparison" section for a frame of :func:`llmdbg.compare` to ``report``.

    Parameters
    ----------
    report : Report
        The page to add to.
    df : pandas.DataFrame
        ``llmdbg.compare(a, b)``.
    heads : pandas.DataFrame, optional
        ``llmdbg.compare_heads(a, b)``, shown as a second table.
    names : (str, str)
        How ``a`` and ``b`` are called on the page (paths, checkpoint names).
    """
    from ..plot.compare import plot_comparison

    a, b = (esc(n) for n in names)
    text = [
        f"<p>Trace <b>{a}</b> (the reference) against trace <b>{b}</b>, one row per tensor captured "
        "in both, in the order the hooks fired: the relative L2 distance ‖a − b‖ / ‖a‖, the cosine "
        "similarity and the largest absolute difference (float64, over the positions real in both "
        "traces' attention masks), the Jensen–Shannon divergence of attention rows in bits, "
        "averaged over real queries and heads, and the change b − a of each statistic.</p>"
    ]
    largest = [s for s in (_largest(df, "rel_l2"), _largest(df, "js")) if s]
    if largest:
        text.append(f"<p>Largest change: {'; '.join(largest)}.</p>")
    for side, key in ((a, "only_in_a"), (b, "only_in_b")):
        keys = list(df.attrs.get(key, []))
        if keys:
            text.append(f"<p>Captured in {side} only (not compared): {_listing(keys)}.</p>")
    figures, captions = [], []
    if df["rel_l2"].notna().any():
        figures.append(plot_comparison(df, "rel_l2", log=True).figure)
        captions.append("Relative L2 distance per captured tensor, bottom of the network first.")
    attention = df[df["kind"] == "attention"]
    if attention["js"].notna().any():
        figures.append(plot_comparison(attention, "js", title="attention drift (JS, bits)").figure)
        captions.append("Jensen–Shannon divergence per attention layer, mean over heads.")
    table = df.assign(shape=df["shape"].map(lambda s: "-" if s is None else str(s)))
    tables = [table] if heads is None or len(heads) == 0 else [table, heads]
    report.add_section("Comparison", html="".join(text), figure=figures, table=tables, captions=captions)


def comparison_section(ctx: ReportContext) -> None:
    """The Comparison section of ``ctx.comparison`` (a frame of :func:`llmdbg.compare`), also
    recorded as ``ctx.summary["comparison"]``; nothing when the context carries none."""
    df = getattr(ctx, "comparison", None)
    if df is None:
        return
    add_comparison(ctx.report, df)
    ctx.summary["comparison"] = {
        "rows": _records(df),
        "only_in_a": list(df.attrs.get("only_in_a", [])),
        "only_in_b": list(df.attrs.get("only_in_b", [])),
    }


def write_comparison_report(
    a: Any,
    b: Any,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    title: str | None = None,
    n_jobs: int | None = None,
) -> Path:
    """Compare two traces and write a page holding only that comparison.

    Writes ``out_dir/index.html`` (the Comparison section, with the per-head drift table) and
    ``out_dir/summary.json`` (``a``, ``b``, ``comparison``: rows, ``only_in_a``, ``only_in_b``,
    ``heads``). This is ``llmdbg report --compare A B``.

    Parameters
    ----------
    a, b : Trace, str or PathLike
        As for :func:`llmdbg.compare` (``a`` is the reference).
    out_dir : str or PathLike
        Output directory, created if missing.
    force : bool
        Reuse a non-empty ``out_dir`` (overwriting the two files).
    title : str, optional
        Page title.
    n_jobs : int, optional
        Threads for the attention divergence.

    Returns
    -------
    Path
        The path of ``index.html``.

    Raises
    ------
    FileExistsError
        ``out_dir`` is not empty and ``force`` is False (checked before the traces are read).
    TypeError, ValueError
        As for :func:`llmdbg.compare`.
    """
    from .. import __version__  # the package root holds only the version and re-exports
    from ..saved import compare, compare_heads

    prepare_out_dir(out_dir, force, create=False)
    names = tuple(os.fspath(x) if isinstance(x, (str, os.PathLike)) else n for x, n in ((a, "a"), (b, "b")))
    ta, tb = _trace(a), _trace(b)
    df = compare(ta, tb, n_jobs=n_jobs)
    heads = compare_heads(ta, tb, n_jobs=n_jobs)
    report = Report(title or "llmdbg comparison", subtitle=f"{names[0]} against {names[1]}")
    add_comparison(report, df, heads=heads, names=(names[0], names[1]))
    out = prepare_out_dir(out_dir, force)
    path = report.write(out, force=True)
    summary = {
        "llmdbg": __version__,
        "a": names[0],
        "b": names[1],
        "sections": [s.title for s in report.sections],
        "comparison": {
            "rows": _records(df),
            "only_in_a": list(df.attrs.get("only_in_a", [])),
            "only_in_b": list(df.attrs.get("only_in_b", [])),
            "heads": _records(heads),
        },
    }
    write_file(out / "summary.json", json.dumps(json_safe(summary), indent=1))
    return path
