"""Saving a :class:`Watch`'s history and reading it back as a :class:`WatchHistory`.

What a watch recorded (``WatchState``: events, histograms and the four tables of rows) is saved;
the hooks, the model and the optimizer are not, so a loaded history is read-only and answers
exactly what the watch's read side answers: :attr:`~WatchHistory.history`,
:attr:`~WatchHistory.layers`, :attr:`~WatchHistory.activations`, :attr:`~WatchHistory.events`,
:attr:`~WatchHistory.histograms`, :meth:`~WatchHistory.events_frame`, :meth:`~WatchHistory.plot`,
the report section and the notebook view.

Rows are lists of dicts of scalars, where a key may be missing from some rows and a value may be
None. They are stored column by column: per column a ``type`` code for every row (missing, None,
bool, int, float or another JSON value), the floats as float64 and the ints and bools as int64 in
``arrays.safetensors``, anything else (strings) in ``meta.json``. The rows come back as the same
dicts, so the DataFrames built from them are equal, NaN and missing cells included.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from .._internal.archive import read_archive, write_archive
from .detectors import Event
from .monitor import Watch
from .state import WatchState
from .views import add_report_section, events_frame, history_frame, repr_html

__all__ = ["WatchHistory", "load_watch", "save_watch"]

KIND = "watch"
TABLES = ("rows", "eval_rows", "layer_rows", "act_rows")
#: The columns of :attr:`Watch.layers`, also when no step was logged.
LAYER_COLUMNS = ["step", "layer", "grad_norm", "grad_rms", "weight_norm", "update_ratio"]
# Type codes of one cell.
_MISSING, _NONE, _BOOL, _INT, _FLOAT, _JSON = range(6)
_INT64 = (-(2**63), 2**63 - 1)


def _code(value: Any) -> int:
    if value is None:
        return _NONE
    if isinstance(value, (bool, np.bool_)):
        return _BOOL
    if isinstance(value, (int, np.integer)) and _INT64[0] <= int(value) <= _INT64[1]:
        return _INT
    if isinstance(value, (float, np.floating)):
        return _FLOAT
    return _JSON


def _encode_rows(name: str, rows: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    out = []
    for c, col in enumerate(columns):
        cells = [r.get(col) for r in rows]
        codes = np.array([_MISSING if col not in r else _code(r[col]) for r in rows], dtype=np.uint8)
        prefix = f"{name}/{c}/"
        arrays[prefix + "type"] = codes
        if (codes == _FLOAT).any():
            arrays[prefix + "float"] = np.array([v if k == _FLOAT else 0.0 for v, k in zip(cells, codes)], np.float64)
        if ((codes == _INT) | (codes == _BOOL)).any():
            arrays[prefix + "int"] = np.array([v if k in (_INT, _BOOL) else 0 for v, k in zip(cells, codes)], np.int64)
        others = [v if k == _JSON else None for v, k in zip(cells, codes)]
        out.append({"name": col, "json": others if (codes == _JSON).any() else None})
    # Rows whose keys come in another order than the columns' (first appearance) keep theirs.
    index = {col: c for c, col in enumerate(columns)}
    orders = {str(i): o for i, r in enumerate(rows) if (o := [index[k] for k in r]) != sorted(o)}
    return {"n": len(rows), "columns": out, "orders": orders}


def _decode_rows(name: str, spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{} for _ in range(spec["n"])]
    for c, col in enumerate(spec["columns"]):
        prefix = f"{name}/{c}/"
        codes = arrays[prefix + "type"].tolist()
        floats = arrays[prefix + "float"].tolist() if prefix + "float" in arrays else None
        ints = arrays[prefix + "int"].tolist() if prefix + "int" in arrays else None
        for i, k in enumerate(codes):
            if k == _MISSING:
                continue
            if k == _NONE:
                value = None
            elif k == _FLOAT:
                value = floats[i]  # type: ignore[index]
            elif k == _INT:
                value = ints[i]  # type: ignore[index]
            elif k == _BOOL:
                value = bool(ints[i])  # type: ignore[index]
            elif k == _JSON:
                value = col["json"][i]
            else:
                raise ValueError(f"unknown cell type {k} in column {col['name']!r} of {name}")
            rows[i][col["name"]] = value
    names = [col["name"] for col in spec["columns"]]
    for i, order in spec["orders"].items():
        row = rows[int(i)]
        rows[int(i)] = {names[c]: row[names[c]] for c in order}
    return rows


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _event(e: dict[str, Any]) -> Event:
    """An :class:`Event` from its saved fields (``batch`` and ``advice`` as JSON gives them back;
    watches saved before they existed have neither)."""
    from .batches import BatchRef

    e = dict(e)
    e["advice"] = tuple(e.get("advice") or ())
    b = e.get("batch")
    if isinstance(b, dict):
        b = dict(b)
        b["ids"] = tuple(b["ids"]) if b.get("ids") is not None else None
        b["shapes"] = {k: tuple(v) for k, v in (b.get("shapes") or {}).items()}
        e["batch"] = BatchRef(**b)
    return Event(**e)


def save_watch(watch: Watch | WatchHistory, path: Any, *, overwrite: bool = False) -> Path:
    """Save what ``watch`` recorded to the directory ``path`` (see :meth:`llmdbg.Watch.save`)."""
    if isinstance(watch, Watch):
        model_name, every, closed = type(watch.model).__name__, watch.every, watch.closed
    elif isinstance(watch, WatchHistory):
        model_name, every, closed = watch.model_name, watch.every, True
    else:
        raise TypeError(f"watch must be an llmdbg.Watch or a loaded WatchHistory, got {type(watch).__name__}")
    s = watch.state
    arrays: dict[str, np.ndarray] = {}
    histograms: dict[str, list[dict[str, Any]]] = {}
    for kind, by_name in s.histograms.items():
        histograms[kind] = []
        for i, (name, by_step) in enumerate(by_name.items()):
            for step, counts in by_step.items():
                arrays[f"histograms/{kind}/{i}/{step}"] = np.asarray(counts)
            histograms[kind].append({"name": name, "steps": [int(step) for step in by_step]})
    meta = {
        "model": model_name,
        "every": int(every),
        "steps": int(s.step),
        "closed": bool(closed),
        "events": [{k: _plain(v) for k, v in dataclasses.asdict(e).items()} for e in s.events],
        "histograms": histograms,
        "tables": {t: _encode_rows(t, getattr(s, t), arrays) for t in TABLES},
    }
    return write_archive(path, KIND, meta, arrays, overwrite=overwrite)


class WatchHistory:
    """What a :class:`~llmdbg.training.Watch` recorded, loaded from disk: read-only, no model.

    Returned by :func:`llmdbg.load` for a directory written by :meth:`llmdbg.Watch.save`. The
    tables, events, histograms, figure, report section and notebook view are built by the same
    functions as the watch's, from the same recorded state, so they are equal.

    Attributes
    ----------
    model_name : str
        Class name of the watched model.
    every : int
        Period of the detailed tier, in optimizer steps.
    steps : int
        Optimizer steps recorded.
    state : WatchState
        The recorded run (events, histograms, rows); the parameter bookkeeping is empty.
    """

    def __init__(self, state: WatchState, *, model_name: str, every: int) -> None:
        self.state = state
        self.model_name = model_name
        self.every = every

    # The read side mirrors Watch's (monitor.py) over the same state, through the same views.
    @property
    def events(self) -> list[Event]:
        """Detected problems in order (:class:`~llmdbg.training.Event`)."""
        return self.state.events

    @property
    def histograms(self) -> dict[str, dict[str, dict[int, np.ndarray]]]:
        """``{"grads"|"weights"|"activations": {name: {step: counts (HIST_BINS,) float64}}}``."""
        return self.state.histograms

    @property
    def history(self) -> Any:
        """Per-step pandas DataFrame indexed by step (see :attr:`llmdbg.Watch.history`)."""
        return history_frame(self.state.rows, self.state.eval_rows)

    @property
    def layers(self) -> Any:
        """Per-layer DataFrame of the logged steps (see :attr:`llmdbg.Watch.layers`)."""
        import pandas as pd

        return pd.DataFrame(self.state.layer_rows, columns=LAYER_COLUMNS)

    @property
    def activations(self) -> Any:
        """Per-module DataFrame of the logged steps (see :attr:`llmdbg.Watch.activations`)."""
        import pandas as pd

        return pd.DataFrame(self.state.act_rows)

    def events_frame(self) -> Any:
        """:attr:`events` as a DataFrame (step, module, kind, severity, message)."""
        return events_frame(self.state.events)

    @property
    def steps(self) -> int:
        """Optimizer steps recorded."""
        return self.state.step

    def plot(self, **kwargs: Any) -> Any:
        """The training dashboard; see :func:`llmdbg.plot.training_dashboard`."""
        from ..plot.training import training_dashboard

        return training_dashboard(self, **kwargs)

    def add_to_report(self, report: Any, title: str = "Training run") -> Any:
        """Append a section (dashboard figure, events and last-step table) to a :class:`~llmdbg.report.Report`."""
        figure = self.plot() if self.state.rows else None
        return add_report_section(
            self.state, report, title, model_name=self.model_name, every=self.every, figure=figure, source=self
        )

    def save(self, path: Any, *, overwrite: bool = False) -> Path:
        """Save this history again (see :meth:`llmdbg.Watch.save`)."""
        return save_watch(self, path, overwrite=overwrite)

    def _repr_html_(self) -> str:
        return repr_html(self.state, model_name=self.model_name, every=self.every, closed=True)

    def __repr__(self) -> str:
        return f"WatchHistory({self.model_name}, steps={self.steps}, every={self.every}, events={len(self.events)})"


def load_watch(path: Any) -> WatchHistory:
    """Load what :meth:`llmdbg.Watch.save` wrote as a read-only :class:`WatchHistory`.

    Raises
    ------
    ValueError
        ``path`` is not a saved watch, was saved by a newer llmdbg, or is corrupted.
    """
    meta, arrays = read_archive(path, [KIND])
    try:
        state = WatchState(names=[], params=[], modules=[], owner=[])
        state.step = int(meta["steps"])
        state.events = [_event(e) for e in meta["events"]]
        for kind, entries in meta["histograms"].items():
            state.histograms[kind] = {
                e["name"]: {step: arrays[f"histograms/{kind}/{i}/{step}"] for step in e["steps"]}
                for i, e in enumerate(entries)
            }
        for t in TABLES:
            setattr(state, t, _decode_rows(t, meta["tables"][t], arrays))
        return WatchHistory(state, model_name=str(meta["model"]), every=int(meta["every"]))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"{str(path)!r} is a corrupted saved watch: {type(e).__name__}: {e}") from None
