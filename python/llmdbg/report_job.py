"""The report job behind ``llmdbg report`` and ``llmdbg demo``: load a model offline, run it on a
few texts under :func:`llmdbg.capture`, and write one self-contained HTML page with everything
llmdbg can say about that run, plus the raw arrays and a JSON summary.

The steps are plain functions so a notebook can reuse them: the checks of
:mod:`llmdbg.report_inputs` (:func:`~llmdbg.report_inputs.load_model` with friendly errors when
a model cannot be found offline, :func:`~llmdbg.report_inputs.check_target`,
:func:`~llmdbg.report_inputs.tokenize` with truncation warnings, ...), re-exported here, and
:func:`run_report`, which takes an already loaded model. The report's sections are built in
:mod:`llmdbg.demo` (model, inputs, statistics, attention) and :mod:`llmdbg.report_sections`
(outputs, attribution, embedding map); extra sections are callables taking a
:class:`ReportContext`.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .report import Report, prepare_out_dir
from .report_inputs import (
    KINDS,
    TruncationWarning,
    check_out_dir,
    check_target,
    load_model,
    model_kind,
    read_texts,
    tokenize,
)

# The input checks live in report_inputs and are re-exported here for one-stop imports.
__all__ = ["KINDS", "ReportContext", "SectionFailedWarning", "TruncationWarning", "check_out_dir",
           "check_target", "load_model", "model_kind", "read_texts", "run_report", "tokenize"]


class SectionFailedWarning(UserWarning):
    """An optional report section (attribution, embedding map, an extra section) raised; the
    report was written without it, with the error in its place and in ``summary.json``."""


def _guarded(ctx: ReportContext, title: str, section: Callable[[ReportContext], None]) -> None:
    """Run an optional section; if it raises, put the error in the report instead of losing it."""
    import html
    import traceback

    try:
        section(ctx)
    except Exception as exc:  # noqa: BLE001 - the rest of the report is still worth writing
        message = f"{type(exc).__name__}: {exc}"
        ctx.summary.setdefault("errors", {})[title] = message
        tb = "".join(traceback.format_exception(exc)[-6:])
        ctx.report.add_section(f"{title} (failed)", html=(
            f"<p>This section failed: <code>{html.escape(message)}</code>. The rest of the report is "
            f"complete. Please report this with the traceback below.</p><pre>{html.escape(tb)}</pre>"))
        warnings.warn(f"the {title.lower()} section failed ({message}); the report was written "
                      "without it", SectionFailedWarning, stacklevel=2)


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


Section = Callable[[ReportContext], None]


def _short(name: str) -> str:
    """A model name for the page title: a local path shortened to its last two parts."""
    path = Path(name).expanduser()
    return "/".join(path.parts[-2:]) if path.exists() and len(path.parts) > 2 else name


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf (JSON has neither) by None and numpy scalars by Python ones, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def run_report(model: Any, tokenizer: Any, texts: Sequence[str], out_dir: str | os.PathLike, *,
               name: str | None = None, target: Any = None, max_length: int | None = None,
               force: bool = False, progress: bool = True, title: str | None = None,
               extra_sections: Sequence[Section] = ()) -> Path:
    """Run ``model`` on ``texts`` and write the report.

    Writes ``out_dir/index.html`` (model, inputs, outputs, activation statistics, attention maps,
    rollout, flow and head diagnostics, attributions when :func:`llmdbg.integrated_gradients`
    is available, an embedding map for 8 texts or more when :class:`llmdbg.TSNE` is, then
    ``extra_sections``), ``out_dir/arrays.npz`` (``hidden_states_<i>`` ``(B, T, D)``,
    ``attentions_<i>`` ``(B, H, T, T)``, ``rollout`` ``(B, T, T)``, ``input_ids``,
    ``attention_mask``, ``tokens``, and what the sections add) and ``out_dir/summary.json``.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face model (any task head, or none) and its tokenizer.
    texts : sequence of str
        Non-empty texts.
    out_dir : str or PathLike
        Output directory, created if missing.
    name : str, optional
        The model's name in the report (default: its ``config.name_or_path``).
    target : optional
        As for :func:`check_target` (checked here too).
    max_length : int, optional
        Cap on the tokens per text; longer texts are truncated with a :class:`TruncationWarning`.
    force : bool
        Reuse a non-empty ``out_dir`` (overwriting the three files).
    progress : bool
        Show a progress bar (only when stderr is a terminal).
    title : str, optional
        Page title.
    extra_sections : sequence of callables
        ``section(ctx: ReportContext) -> None``, run after the built-in sections.

    Returns
    -------
    Path
        The path of ``index.html``.

    Raises
    ------
    FileExistsError
        ``out_dir`` is not empty and ``force`` is False (checked before the model runs).
    ValueError
        Empty texts, or a target that does not fit the model.
    """
    import torch
    from tqdm.auto import tqdm

    from . import demo, report_sections
    from .capture import capture

    texts = read_texts(list(texts))
    out = prepare_out_dir(out_dir, force)
    kind = model_kind(model)
    target = check_target(target, model, tokenizer, kind)
    name = name or str(getattr(model.config, "name_or_path", "") or type(model).__name__)
    steps = ["tokenizing", "capturing", "statistics", "attention", "attribution", "embedding map",
             "extra sections", "writing"]
    timings: dict[str, float] = {}
    with tqdm(total=len(steps), desc="llmdbg report", unit="step",
              disable=None if progress else True, leave=False) as bar:
        clock = [time.perf_counter()]

        def step(i: int) -> None:
            now = time.perf_counter()
            if i > 0:
                timings[steps[i - 1]] = round(now - clock[0], 3)
                bar.update(1)
            clock[0] = now
            bar.set_postfix_str(steps[i])

        step(0)
        enc = tokenize(tokenizer, texts, max_length, model=model)
        step(1)
        with torch.no_grad(), capture(model, hidden_states=True, attentions=True,
                                      tokenizer=tokenizer) as trace:
            outputs = model(**enc)
        report = Report(title or f"llmdbg report: {_short(name)}",
                        subtitle=f"{type(model).__name__} ({kind}), {len(texts)} text"
                                 f"{'s' if len(texts) != 1 else ''}")
        ctx = ReportContext(model=model, tokenizer=tokenizer, name=name, kind=kind, texts=texts, enc=enc,
                            trace=trace, outputs=outputs, target=target, report=report, progress=progress)
        demo._model_section(report, model, trace, name=name)
        demo._inputs_section(report, texts, trace)
        report_sections.outputs_section(ctx)
        step(2)
        demo._stats_section(report, trace)
        step(3)
        demo._attention_section(report, trace, texts)
        row = 0 if kind != "causal-lm" else int(trace.attention_mask[0].sum()) - 1
        analysis = demo._attention_analysis_section(report, trace, texts, tokenizer, row=row)
        step(4)
        _guarded(ctx, "Attribution", report_sections.attribution_section)
        step(5)
        _guarded(ctx, "Embedding map", report_sections.embedding_section)
        step(6)
        for section in extra_sections:
            _guarded(ctx, getattr(section, "__name__", "extra").strip("_").replace("_", " ").capitalize(),
                     section)
        step(7)
        arrays = {f"hidden_states_{i}": h for i, h in enumerate(trace.hidden_states)}
        arrays.update({f"attentions_{i}": a for i, a in enumerate(trace.attentions)})
        arrays.update(rollout=analysis["rollout"], flow=analysis["flow"])
        arrays.update(input_ids=trace.input_ids, attention_mask=trace.attention_mask,
                      tokens=np.array(trace.tokens, dtype=str))
        arrays.update(ctx.arrays)
        np.savez(out / "arrays.npz", **arrays)
        from . import __version__

        summary = {
            "llmdbg": __version__, "model": name, "class": type(model).__name__, "kind": kind,
            "texts": texts, "tokens": trace.tokens,
            "n_tokens": [int(m.sum()) for m in trace.attention_mask],
            "target": target, "sections": [s.title for s in report.sections],
            "stats": {k: s.as_dict() for k, s in trace.stats.items()},
            "attention_heads": analysis["summary"].to_dict(orient="records"),
            "flow_row": row, **ctx.summary,
        }
        path = report.write(out, force=True)
        timings["writing"] = round(time.perf_counter() - clock[0], 3)
        summary["seconds"] = timings
        (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=1), encoding="utf-8")
        bar.update(1)
    return path
