"""The dataset-level report of a run: one offline HTML page about what :func:`llmdbg.run`
found over every example (``llmdbg report --run OUT``).

:func:`write_run_report` reads a run directory (``open_run(out).records()``, one row per example),
reads the run's data again when it can (for texts and labels), and runs the sections of
:mod:`~llmdbg.report.sections_run` in page order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

from .context import guarded
from .page import Report, write_file
from .sections_run import MAX_MAP_POINTS, MIN_MAP_POINTS, SECTIONS, RunReportContext, run_summary_section

__all__ = ["write_run_report"]


def _examples(result: Any, data: Any) -> tuple[list[Any] | None, list[Any] | None, str]:
    """(texts, labels, note): the run's data read again, checked against the manifest's fingerprint."""
    from ..runs.data import read_examples

    job = result.manifest["job"]
    given = data is not None
    if not given:
        source = result.manifest.get("data_source", job["data"].get("source"))
        if not (isinstance(source, str) and os.path.isfile(source)):
            return None, None, "The texts are not shown: the run's data was not a file that can be read again."
        data = source
    try:
        examples = read_examples(
            data, text_column=job.get("text_column", "text"), label_column=job.get("label_column") or None
        )
    except (ValueError, OSError) as exc:
        if given:
            raise
        return None, None, f"The texts are not shown: {data} cannot be read again ({exc})."
    if examples.fingerprint() != job["data"].get("fingerprint"):
        if given:
            raise ValueError("data: these are not the examples the run ran on (their fingerprint differs)")
        return None, None, f"The texts are not shown: {data} changed since the run."
    return list(examples.texts), examples.labels, ""


#: The columns the sections read, by task (the others, such as cached activations' offsets, lens
#: and attribution columns, are not loaded).
_COLUMNS = {
    "loss": ("loss", "prediction", "prediction_text", "correct"),
    "stats": ("stats_nan", "stats_inf", "first_nonfinite_layer"),
    "attention": ("attention_entropy", "attention_max_prob", "attention_sink_mass"),
    "embedding": ("embedding",),
}


def _records(result: Any) -> Any:
    """The records, with only the columns some section reads (those the run's shards have)."""
    import pyarrow.parquet as pq

    parts = sorted(f for f in os.listdir(result.out) if f.startswith("part-") and f.endswith(".parquet"))
    if not parts:
        return result.records()
    have = set(pq.read_schema(os.path.join(result.out, parts[0])).names)
    wanted = ["status", "reason", "n_tokens", "truncated", *(c for cols in _COLUMNS.values() for c in cols)]
    return result.records([c for c in wanted if c in have])


def write_run_report(
    out: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    force: bool = False,
    data: Any = None,
    title: str | None = None,
    max_map_points: int = MAX_MAP_POINTS,
    random_state: int = 0,
    progress: bool = False,
) -> Path:
    """Write the dataset-level report of a run directory as one offline HTML page.

    Sections (each needs its task in the run; without it, a one-line note says which task gives
    it): the run summary (examples, ok / skipped / error counts, tokens, tasks, the model's
    identity, the first skipped or failed examples with their reasons); the examples with the
    highest loss (``loss``); per layer the examples with NaN or Inf (``stats``); collapsed
    attention heads with a layer × head heatmap (``attention``, rule in
    :func:`~llmdbg.report.sections_run.collapsed_heads`);
    a t-SNE map of the embeddings (``embedding``). A section that fails is replaced by its error
    and a :class:`~llmdbg.report.SectionFailedWarning`; the page is still written.

    Parameters
    ----------
    out : str or os.PathLike
        A directory written by :func:`llmdbg.run` (complete or not).
    output : str or os.PathLike, optional
        The HTML file to write; default ``out/_report.html`` (its leading underscore keeps
        Parquet readers of ``out`` from reading it as a shard). Parent directories are created.
    force : bool
        Replace an existing ``output`` file.
    data : optional
        The run's data (anything :func:`llmdbg.run` accepts), for the texts and labels of runs over
        data held in memory; by default the run's data file is read again when it still exists
        and holds the same examples. Texts are then shown beside the examples, and the map is
        coloured by label.
    title : str, optional
        Page title; default ``"llmdbg run: <directory name>"``.
    max_map_points : int
        Most examples on the embedding map (a random sample seeded by ``random_state``).
    random_state : int
        Seed of the sample and of t-SNE.
    progress : bool
        Show t-SNE's progress bar.

    Returns
    -------
    Path
        The path of the page.

    Raises
    ------
    ValueError
        ``out`` holds no run; ``data`` is not the run's data; bad ``max_map_points``.
    FileExistsError
        ``output`` exists (and ``force`` is False) or is a directory.

    Examples
    --------
    >>> res = llmdbg.run(model, tok, "data.jsonl", tasks=("stats", "loss"), out="runs/x")  # doctest: +SKIP
    >>> llmdbg.report.write_run_report("runs/x", "x.html")  # doctest: +SKIP
    """
    from ..runs import open_run

    if isinstance(max_map_points, bool) or not isinstance(max_map_points, int) or max_map_points < MIN_MAP_POINTS:
        raise ValueError(f"max_map_points must be an int >= {MIN_MAP_POINTS}, got {max_map_points!r}")
    result = open_run(out)
    path = Path(output).expanduser() if output is not None else Path(result.out) / "_report.html"
    if path.is_dir():
        raise FileExistsError(f"output {path} is a directory; give a file name such as {path / 'report.html'}")
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists; pass --force (force=True) to replace it")
    texts, labels, note = _examples(result, data)
    name = os.path.basename(os.path.abspath(result.out))
    report = Report(title or f"llmdbg run: {name}", subtitle=f"{os.path.abspath(result.out)}")
    ctx = RunReportContext(
        result,
        _records(result),
        report,
        texts=texts,
        labels=labels,
        data_note=note,
        max_map_points=max_map_points,
        random_state=random_state,
        progress=progress,
    )
    run_summary_section(ctx)
    if not len(ctx.records):
        report.add_section("No records", html="<p>No shard of this run is written yet: rerun the job to resume it.</p>")
    for section_title, section in SECTIONS if len(ctx.records) else ():
        # guarded() reads only .report and .summary, which a RunReportContext has too
        guarded(cast(Any, ctx), section_title, cast(Any, section))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, report.to_html())
    return path
