"""The training view: loss and gradient-norm curves of a watched run, with its events marked.

Each curve travels as one float32 buffer (NaN where a step has no value), the steps as int32; the
events (a few per run) as plain JSON records. A click on an event marker shows its message, module
and step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import View
from ._payload import check_size, encode_array, encoded_size

__all__ = ["training_view"]

_SERIES = ("loss", "grad_norm")


def _state(obj: Any) -> Any:
    state = getattr(obj, "state", None)
    if state is None or not hasattr(state, "rows") or not hasattr(state, "events"):
        raise TypeError(
            f"training_view: expected a Watch (llmdbg.watch) or a WatchHistory (llmdbg.load of a saved "
            f"watch), got {type(obj).__name__}"
        )
    return state


def _column(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    """(N,) float32 of ``rows[i][key]``, NaN where missing or None."""
    out = np.full(len(rows), np.nan, dtype=np.float32)
    for i, r in enumerate(rows):
        v = r.get(key)
        if v is not None:
            out[i] = float(v)
    return out


def training_view(
    obj: Any,
    *,
    series: tuple[str, ...] = _SERIES,
    max_events: int = 10_000,
    title: str = "",
    max_bytes: int | None = None,
) -> View:
    """Interactive loss and gradient-norm curves of a watched training run, events marked.

    One panel per series over the optimizer steps (hover for the values of a step; *log scale*
    switches the y axes), the validation loss of :meth:`Watch.eval` as dots on the loss panel,
    non-finite steps as red crosses, and a marker per event above the panels, coloured by severity.
    Clicking a marker shows the events of that step (kind, severity, module, message) and draws
    the step's line on the curves. A run with no step and no event shows a "No data" message.

    Parameters
    ----------
    obj : Watch or WatchHistory
        A live :func:`llmdbg.watch` or one read back with :func:`llmdbg.load`.
    series : tuple of str
        Columns of ``obj.history`` to draw, one panel each (default loss and grad_norm; a metric
        passed to ``watch.step(metrics=...)`` works too). Columns the run never recorded are
        left out.
    max_events : int
        Most events shown (the first ones); a note says how many were left out.
    title : str
        Heading above the view.
    max_bytes : int, optional
        Payload limit (:data:`llmdbg.widgets.MAX_PAYLOAD_BYTES` when None).

    Returns
    -------
    View
        Named ``"training"``.

    Raises
    ------
    PayloadTooLargeError
        The steps would make a payload over ``max_bytes`` (more than ~5 million steps at the
        default limit); pass ``max_bytes=`` or a shorter history.
    """
    state = _state(obj)
    if isinstance(series, str):
        series = (series,)
    rows = sorted(state.rows, key=lambda r: int(r["step"]))
    n = len(rows)
    instead = "a shorter run (WatchHistory of fewer steps) or fewer series="
    check_size(
        encoded_size((n,), "float32") * (len(series) + 2), f"a training history of {n:,} steps", instead, max_bytes
    )
    steps = np.asarray([int(r["step"]) for r in rows], dtype=np.int64)
    if n and (steps.min() < -(2**31) or steps.max() >= 2**31):
        raise ValueError("steps beyond the int32 range cannot be drawn")
    curves = []
    for name in series:
        if not any(r.get(name) is not None for r in rows):
            continue
        values = _column(rows, name)
        finite = values[np.isfinite(values) & (values > 0)]
        # a log axis when the positive values span more than two decades (gradient norms often do)
        log = bool(len(finite) > 1 and finite.max() / finite.min() > 100)
        curves.append({"name": name, "values": encode_array(values, "float32"), "log": log})
    nonfinite = np.asarray([bool(r.get("nonfinite")) for r in rows], dtype=np.uint8)

    val = None
    eval_rows = [r for r in getattr(state, "eval_rows", []) if r.get("val_loss") is not None]
    if eval_rows and any(c["name"] == "loss" for c in curves):
        val = {
            "steps": encode_array(np.asarray([int(r["step"]) for r in eval_rows]), "int32"),
            "values": encode_array(_column(eval_rows, "val_loss"), "float32"),
        }
    events = [
        {
            "step": int(e.step),
            "module": str(e.module),
            "kind": str(e.kind),
            "severity": str(e.severity),
            "message": str(e.message),
            "rank": None if getattr(e, "rank", None) is None else int(e.rank),
            "advice": [str(a) for a in getattr(e, "advice", ()) or ()],
        }
        for e in list(state.events)[: max(0, int(max_events))]
    ]
    left_out = len(state.events) - len(events)
    payload: dict[str, Any] = {
        "n": n,
        "steps": encode_array(steps, "int32"),
        "series": curves,
        "nonfinite": encode_array(nonfinite, "uint8"),
        "val": val,
        "events": events,
        "events_left_out": left_out,
        "model_name": str(getattr(obj, "model_name", "") or type(getattr(obj, "model", None)).__name__),
    }
    if not n and not events:
        payload["empty"] = (
            "No data: this run has no recorded step yet. Call watch.step(loss=loss) after each "
            "backward pass, then show the watch again."
        )
    return View("training", payload, title=title, max_bytes=max_bytes, instead=instead)
