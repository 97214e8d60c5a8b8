"""What a report section receives: :class:`ReportContext`, and the guard that keeps a failing
optional section from losing the rest of the report."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._internal.html import esc
from .page import Report

__all__ = ["ReportContext", "Section", "SectionFailedWarning", "guarded"]


class SectionFailedWarning(UserWarning):
    """An optional report section (attribution, embedding map, an extra section) raised; the
    report was written without it, with the error in its place and in ``summary.json``."""


def guarded(ctx: ReportContext, title: str, section: Callable[[ReportContext], None]) -> None:
    """Run an optional section; if it raises, put the error in the report instead of losing it."""
    import traceback

    try:
        section(ctx)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        ctx.summary.setdefault("errors", {})[title] = message
        tb = "".join(traceback.format_exception(exc)[-6:])
        ctx.report.add_section(
            f"{title} (failed)",
            html=(
                f"<p>This section failed: <code>{esc(message)}</code>. The rest of the report is "
                f"complete. Please report this with the traceback below.</p><pre>{esc(tb)}</pre>"
            ),
        )
        warnings.warn(
            f"the {title.lower()} section failed ({message}); the report was written without it",
            SectionFailedWarning,
            stacklevel=2,
        )


@dataclass
class ReportContext:
    """Everything a report section may read, and the two places it writes to.

    Attributes
    ----------
    model, tokenizer
        The model (eval mode) and its tokenizer.
    name : str
        How the model is called in the report (a hub name or a path).
    kind : str
        One of :data:`KINDS`.
    texts : list of str
        The inputs, in order.
    enc : Mapping[str, torch.Tensor]
        The tokenizer's output the model ran on (padded, truncated).
    trace : Trace
        The capture of that forward (hidden states and attention maps, with tokens).
    outputs : Any
        The model's output object of that forward.
    target : Any
        The checked target (see :func:`check_target`), or None for the default.
    report : Report
        Add sections here.
    arrays : dict of str to numpy.ndarray
        Written to ``arrays.npz``.
    summary : dict
        Written to ``summary.json`` (JSON-serialisable values only).
    progress : bool
        Whether long steps may show progress bars.
    comparison : pandas.DataFrame or None
        A frame of :func:`llmdbg.compare`, shown in a Comparison section when given.
    """

    model: Any
    tokenizer: Any
    name: str
    kind: str
    texts: list[str]
    enc: Any
    trace: Any
    outputs: Any
    target: Any
    report: Report
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    comparison: Any = None


Section = Callable[[ReportContext], None]
