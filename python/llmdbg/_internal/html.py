"""Small HTML pieces for the notebook displays (``_repr_html_``) of llmdbg objects.

Everything is inline: styles in ``style`` attributes, no script, no stylesheet or font from
another site, so a notebook shows the same thing offline, in JupyterLab, VS Code or on GitHub
(which strips scripts and ``<style>`` blocks). Colours are readable on light and dark themes.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

BOX = (
    "font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; font-size: 12.5px; "
    "line-height: 1.4; max-width: 100%; overflow-x: auto;"
)
CELL = "padding: 2px 8px; text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap;"
HEAD = "padding: 2px 8px; text-align: right; font-weight: 600; border-bottom: 1px solid #8884; white-space: nowrap;"
MUTED = "color: #888;"
BAD = "color: #c0392b; font-weight: 600;"


# Bidirectional controls (U+202A-202E, U+2066-2069) and the marks U+200E/200F reorder the text
# around them when rendered ("Trojan Source"): a token or text holding one could make the page show
# something other than what the model saw. They are shown as visible code points instead.
_BIDI = {c: f"\u27e8U+{c:04X}\u27e9" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F]}


def esc(value: Any) -> str:
    """HTML-escaped text with bidirectional control characters made visible."""
    return html.escape(str(value)).translate(_BIDI)


def fmt(value: Any) -> str:
    """Numbers as ``.4g`` (integers with thousands separators), anything else as text."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def shade(value: float, lo: float = 0.0, hi: float = 1.0) -> str:
    """A translucent blue background whose strength grows with ``value`` in ``[lo, hi]``."""
    if not math.isfinite(value) or hi <= lo:
        return ""
    t = min(1.0, max(0.0, (value - lo) / (hi - lo)))
    return f"background: rgba(59, 110, 165, {0.08 + 0.6 * t:.2f});"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], first_left: bool = True) -> str:
    """Rows of already-escaped cell HTML under ``header`` (escaped here)."""
    left = "text-align: left;"
    head = "".join(
        f'<th style="{HEAD}{left if first_left and i == 0 else ""}">{esc(h)}</th>' for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td style="{CELL}{left if first_left and i == 0 else ""}">{c}</td>' for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def box(title: str, summary: str, body: str, footer: str = "") -> str:
    foot = f'<div style="{MUTED}">{footer}</div>' if footer else ""
    return f'<div style="{BOX}"><div><b>{esc(title)}</b> <span style="{MUTED}">{summary}</span></div>{body}{foot}</div>'
