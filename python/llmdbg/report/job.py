"""The report job behind ``llmdbg report`` and ``llmdbg demo``: run a loaded model on a few texts
under :func:`llmdbg.capture`, and write one self-contained HTML page with everything llmdbg can
say about that run, plus the raw arrays and a JSON summary.

The input checks live in :mod:`llmdbg.report.inputs`, the sections in
:mod:`llmdbg.report.sections` (each a callable taking a :class:`~llmdbg.report.ReportContext`),
the page in :mod:`llmdbg.report.page`; :func:`run_report` puts them together.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import sections
from .context import ReportContext, Section, guarded
from .inputs import (
    check_target,
    model_kind,
    read_texts,
    tokenize,
)
from .page import Report, json_safe, prepare_out_dir, write_file
from .sections_compare import comparison_section

__all__ = ["run_report"]


def _short(name: str) -> str:
    """A model name for the page title: a local path shortened to its last two parts."""
    path = Path(name).expanduser()
    return "/".join(path.parts[-2:]) if path.exists() and len(path.parts) > 2 else name


def run_report(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    target: Any = None,
    max_length: int | None = None,
    force: bool = False,
    progress: bool = True,
    title: str | None = None,
    extra_sections: Sequence[Section] = (),
    comparison: Any = None,
) -> Path:
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
    comparison : pandas.DataFrame, optional
        ``llmdbg.compare(a, b)`` of two traces, shown in a Comparison section before
        ``extra_sections`` (and recorded in ``summary.json`` under ``comparison``).

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

    from ..tracing.api import capture

    texts = read_texts(list(texts))
    out = prepare_out_dir(out_dir, force)
    kind = model_kind(model)
    target = check_target(target, model, tokenizer, kind)
    name = name or str(getattr(model.config, "name_or_path", "") or type(model).__name__)
    steps = [
        "tokenizing",
        "capturing",
        "statistics",
        "attention",
        "attribution",
        "embedding map",
        "extra sections",
        "writing",
    ]
    timings: dict[str, float] = {}
    with tqdm(
        total=len(steps), desc="llmdbg report", unit="step", disable=None if progress else True, leave=False
    ) as bar:
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
        with torch.no_grad(), capture(model, hidden_states=True, attentions=True, tokenizer=tokenizer) as trace:
            outputs = model(**enc)
        report = Report(
            title or f"llmdbg report: {_short(name)}",
            subtitle=f"{type(model).__name__} ({kind}), {len(texts)} text{'s' if len(texts) != 1 else ''}",
        )
        ctx = ReportContext(
            model=model,
            tokenizer=tokenizer,
            name=name,
            kind=kind,
            texts=texts,
            enc=enc,
            trace=trace,
            outputs=outputs,
            target=target,
            report=report,
            progress=progress,
            comparison=comparison,
        )
        sections.model_section(ctx)
        sections.inputs_section(ctx)
        sections.outputs_section(ctx)
        step(2)
        sections.stats_section(ctx)
        step(3)
        sections.attention_section(ctx)
        sections.attention_analysis_section(ctx)
        step(4)
        guarded(ctx, "Attribution", sections.attribution_section)
        step(5)
        guarded(ctx, "Embedding map", sections.embedding_section)
        step(6)
        if comparison is not None:
            guarded(ctx, "Comparison", comparison_section)
        for section in extra_sections:
            guarded(ctx, getattr(section, "__name__", "extra").strip("_").replace("_", " ").capitalize(), section)
        step(7)
        arrays: dict[str, Any] = {f"hidden_states_{i}": h for i, h in enumerate(trace.hidden_states)}
        arrays.update({f"attentions_{i}": a for i, a in enumerate(trace.attentions)})
        arrays.update(
            input_ids=trace.input_ids, attention_mask=trace.attention_mask, tokens=np.array(trace.tokens, dtype=str)
        )
        arrays.update(ctx.arrays)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_file(out / "arrays.npz", buffer.getvalue())
        from .. import __version__  # the package root holds only the version and re-exports

        summary = {
            "llmdbg": __version__,
            "model": name,
            "class": type(model).__name__,
            "kind": kind,
            "texts": texts,
            "tokens": trace.tokens,
            "n_tokens": [int(m.sum()) for m in (trace.attention_mask if trace.attention_mask is not None else [])],
            "target": target,
            "sections": [s.title for s in report.sections],
            "stats": {k: s.as_dict() for k, s in trace.stats.items()},
            **ctx.summary,
        }
        path = report.write(out, force=True)
        timings["writing"] = round(time.perf_counter() - clock[0], 3)
        summary["seconds"] = timings
        write_file(out / "summary.json", json.dumps(json_safe(summary), indent=1))
        bar.update(1)
    return path
