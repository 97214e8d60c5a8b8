"""Read-outs of a watch: the history table, the notebook view and the HTML-report section.

The notebook view (``_repr_html_``) is compact and offline: a small table, the latest events and
inline SVG sparklines; no script, font or external URL, and no matplotlib (it stays fast).
"""

from __future__ import annotations

import html
import math
from typing import Any

from .._internal.html import esc
from .detectors import Event
from .state import WatchState

EVENT_COLUMNS = ["step", "module", "kind", "severity", "message", "rank", "advice", "batch"]


def history_frame(rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]]):
    """The per-step table: ``rows`` (``WatchState.rows``) joined with ``eval_rows`` on the step."""
    import pandas as pd

    cols = ["step", "loss", "grad_norm", "lr", "nonfinite"]
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=cols)
    if eval_rows:
        ev = pd.DataFrame(eval_rows).groupby("step", as_index=False).last()
        df = df.merge(ev, on="step", how="outer") if len(df) else ev
    return df.set_index("step").sort_index()


def sparkline(
    values: list[float], width: int = 220, height: int = 36, color: str = "#3b6ea5", marks: list[int] | None = None
) -> str:
    """An inline SVG polyline of ``values`` (non-finite points skipped, ``marks`` as red dots)."""
    pts = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(pts) < 2:
        return ""
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    span, n = (hi - lo) or 1.0, max(len(values) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return 2 + (width - 4) * i / n, height - 2 - (height - 4) * (v - lo) / span

    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in pts))
    dots = "".join(
        f'<circle cx="{xy(i, values[i])[0]:.1f}" cy="{xy(i, values[i])[1]:.1f}" r="2.5" fill="#c0392b"/>'
        for i in (marks or [])
        if 0 <= i < len(values) and math.isfinite(values[i])
    )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{line}"/>{dots}</svg>'
    )


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return esc(str(v))


def events_frame(events: list[Event]):
    """``events`` as a DataFrame with the columns :data:`EVENT_COLUMNS` (``advice``: the
    suggestions joined by ``" | "``; ``batch``: the kept batch's file, or why it was not kept)."""
    import pandas as pd

    rows = [
        {
            **e.__dict__,
            "advice": " | ".join(e.advice),
            "batch": (e.batch.path or e.batch.reason) if e.batch is not None else None,
        }
        for e in events
    ]
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def repr_html(state: WatchState, *, model_name: str, every: int, closed: bool, max_events: int = 8) -> str:
    """The compact notebook view of a watch of a ``model_name`` model (``every``: its period)."""
    esc = html.escape
    rows = state.rows
    last = rows[-1] if rows else {}
    losses = [r["loss"] for r in rows]
    spikes = [
        i for i, r in enumerate(rows) if any(e.kind == "loss_spike" and e.step == r["step"] for e in state.events)
    ]
    counts: dict[str, int] = {}
    for e in state.events:
        counts[e.severity] = counts.get(e.severity, 0) + 1
    sev = ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"
    status = "closed" if closed else "watching"
    head = (
        f"<b>llmdbg.watch</b> · <code>{esc(model_name)}</code> · {status} · "
        f"{state.step} steps · every {every} · events: {esc(sev)}"
    )
    table = (
        "<table style='border-collapse:collapse;font-size:12px'><tr>"
        + "".join(f"<th style='text-align:left;padding:2px 8px'>{k}</th>" for k in ("loss", "grad norm", "lr"))
        + "</tr><tr>"
        + "".join(
            f"<td style='padding:2px 8px'>{_fmt(last.get(k))}<br>{s}</td>"
            for k, s in (
                ("loss", sparkline(losses, marks=spikes)),
                (
                    "grad_norm",
                    sparkline(
                        [r["grad_norm"] if r["grad_norm"] is not None else math.nan for r in rows], color="#8e44ad"
                    ),
                ),
                ("lr", ""),
            )
        )
        + "</tr></table>"
    )
    ev = state.events[-max_events:]
    ev_html = ""
    if ev:
        ev_html = (
            "<table style='border-collapse:collapse;font-size:12px;margin-top:4px'><tr>"
            + "".join(
                f"<th style='text-align:left;padding:2px 6px'>{c}</th>"
                for c in ("step", "kind", "severity", "module", "message")
            )
            + "</tr>"
            + "".join(
                "<tr>"
                + "".join(
                    f"<td style='padding:2px 6px'>{esc(str(x))}</td>"
                    for x in (e.step, e.kind, e.severity, e.module, e.message)
                )
                + "</tr>"
                for e in ev
            )
            + "</table>"
        )
    return f"<div class='llmdbg-watch'>{head}{table}{ev_html}</div>"


def add_report_section(
    state: WatchState,
    report: Any,
    title: str = "Training run",
    *,
    model_name: str,
    every: int,
    figure: Any = None,
    source: Any = None,
) -> Any:
    """Dashboard ``figure`` (None: none), events table and last-step numbers as one section of
    ``report``, with the interactive training view of ``source`` (the watch or its loaded
    history) when the report offers views (``report.view_of``; this layer cannot import them)."""
    intro = (
        f"<p>{state.step} optimizer steps watched on <code>{esc(model_name)}</code>; "
        f"per-layer statistics every {every} steps; {len(state.events)} events.</p>"
    )
    tables = []
    if state.events:
        tables.append(events_frame(state.events))
    if state.rows:
        tables.append(history_frame(state.rows, state.eval_rows).tail(5).reset_index())
    captions = (
        [
            (
                "Loss (spikes and overfitting marked), gradient norms per layer, "
                "update/weight ratios and gradient histograms over time."
            )
        ]
        if figure
        else None
    )
    view_of = getattr(report, "view_of", None)
    view = view_of(source) if source is not None and callable(view_of) and state.rows else None
    return report.add_section(title, html=intro, figure=figure, table=tables or None, captions=captions, view=view)
