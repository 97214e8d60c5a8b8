"""The sections of the dataset-level report of a run (:func:`~llmdbg.report.write_run_report`).

Each section takes a :class:`RunReportContext` (the run, its records, the page) and adds to the
page with the same machinery and style as the model report (:class:`~llmdbg.report.Report`): a
summary of the run, the examples with the highest loss, the layers where NaN or Inf appeared,
the heads whose attention collapsed, and a t-SNE map of the examples' embeddings (with its
interactive view next to the figure: hover, search, zoom). A section reads
only the columns its task wrote; a run without that task gets a one-line note naming the task
that would give it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._internal.html import esc
from .page import Report
from .sections import _widgets, optional_view

__all__ = [
    "COLLAPSE_ENTROPY",
    "COLLAPSE_MAX_PROB",
    "COLLAPSE_SINK_MASS",
    "MAX_MAP_POINTS",
    "MIN_MAP_POINTS",
    "SECTIONS",
    "RunReportContext",
    "collapsed_heads",
    "collapsed_heads_section",
    "embedding_map_section",
    "nonfinite_section",
    "run_summary_section",
    "top_loss_section",
]

#: A head is collapsed when its mean entropy over examples is below this (nats) ...
COLLAPSE_ENTROPY = 0.1
#: ... or its mean largest attention weight is above this ...
COLLAPSE_MAX_PROB = 0.95
#: ... or its mean attention mass on the first real token (the sink) is above this.
COLLAPSE_SINK_MASS = 0.9
#: Examples with fewer real tokens are left out of the head means: a one-token text attends to
#: itself only (entropy 0 in every head), so short texts would flag every head.
MIN_TOKENS_FOR_HEADS = 3
#: Most examples drawn on the embedding map (a seeded random sample of the ok ones).
MAX_MAP_POINTS = 5000
#: Fewest examples for an embedding map (as for the model report's map).
MIN_MAP_POINTS = 8
_LISTED = 20  # rows of the skipped/error and highest-loss tables
_IDS_LISTED = 50  # example ids written inline
_SNIPPET = 80  # characters of text shown per example


@dataclass
class RunReportContext:
    """What a run-report section reads, and the two places it writes to.

    Attributes
    ----------
    result : RunResult
        The run (its manifest, ``column_shape``).
    records : pandas.DataFrame
        ``result.records()``: one row per example, ``example_id`` order.
    report : Report
        The page sections add to.
    texts, labels : list or None
        The run's data, indexed by ``example_id``, when it could be read (see
        :func:`write_run_report`); None otherwise.
    data_note : str
        Why ``texts`` is None ("" when it is not).
    max_map_points, random_state, progress
        Embedding map settings.
    summary : dict
        Facts sections record (also where a failed section's error goes).
    """

    result: Any
    records: Any
    report: Report
    texts: list[Any] | None = None
    labels: list[Any] | None = None
    data_note: str = ""
    max_map_points: int = MAX_MAP_POINTS
    random_state: int = 0
    progress: bool = False
    summary: dict[str, Any] = field(default_factory=dict)

    def ok(self) -> Any:
        """The records with ``status == "ok"``."""
        df = self.records
        return df[df["status"] == "ok"] if len(df) else df


def _snippet(text: Any) -> str:
    s = text if isinstance(text, str) else repr(text)
    s = " ".join(s.split())
    return s if len(s) <= _SNIPPET else s[: _SNIPPET - 1] + "…"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _ids(ids: Any) -> str:
    ids = [int(i) for i in ids]
    shown = ", ".join(str(i) for i in ids[:_IDS_LISTED])
    return shown + (f" and {len(ids) - _IDS_LISTED:,} more" if len(ids) > _IDS_LISTED else "")


def _missing(ctx: RunReportContext, title: str, task: str, what: str) -> bool:
    """Add a one-line note and return True when the run lacks ``task``."""
    if task in ctx.result.tasks:
        return False
    ctx.report.add_section(
        title, html=f"<p>This run has no <code>{esc(task)}</code> task: run with it to see {esc(what)}.</p>"
    )
    ctx.summary.setdefault("missing", {})[title] = task
    return True


def _with_text(ctx: RunReportContext, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if ctx.texts is not None:
        for row in rows:
            row["text"] = _snippet(ctx.texts[row["example_id"]])
    return rows


# -- sections -----------------------------------------------------------------------------------------


def run_summary_section(ctx: RunReportContext) -> None:
    """Examples, ok/skipped/error counts, tokens, tasks, the model's identity and the data; then the
    first skipped or failed examples with their reasons."""
    m, df = ctx.result.manifest, ctx.records
    job = m["job"]
    status = df["status"].value_counts().to_dict() if len(df) else {}
    ok = ctx.ok()
    counts = {
        "examples": int(job["data"]["n_examples"]),
        "records": len(df),
        "ok": int(status.get("ok", 0)),
        "skipped": int(status.get("skipped", 0)),
        "errors": int(status.get("error", 0)),
        "truncated": int(df["truncated"].sum()) if len(df) else 0,
        "tokens": int(ok["n_tokens"].sum()) if len(ok) else 0,
    }
    model = job.get("model", {})
    last = m.get("last_run", {})
    facts = [
        ("Run directory", os.path.abspath(ctx.result.out)),
        ("Complete", "yes" if m.get("complete") else "no: some shards are missing"),
        *[(k.capitalize() if k != "tokens" else "Real tokens (ok examples)", v) for k, v in counts.items()],
        ("Tasks", ", ".join(job["tasks"])),
        ("Model class", model.get("class", model.get("source", "-"))),
        ("Model name or path", model.get("name_or_path") or "-"),
        ("Config digest", model.get("config", "-")),
        ("Weights digest", model.get("weights", "-")),
        ("Model dtype", model.get("dtype") or "-"),
        ("Data", m.get("data_source", job["data"].get("source", "-"))),
        ("Max length", job.get("max_length", "-")),
        ("Shard size", job.get("shard_size", "-")),
        ("Created", m.get("created", "-")),
        ("Finished", m.get("finished", "-")),
        ("Last run", f"{last['engine']}, {last['seconds']} s" if "engine" in last else "-"),
    ]
    text = (
        f"<p>{counts['records']:,} of {counts['examples']:,} examples have a record: {counts['ok']:,} ok, "
        f"{counts['skipped']:,} skipped (nothing to run: an empty or undecodable text), "
        f"{counts['errors']:,} failed (the model raised on them; the reason is the error). "
        f"{counts['truncated']:,} were cut to the maximum length.</p>"
    )
    if ctx.data_note:
        text += f"<p>{esc(ctx.data_note)}</p>"
    ctx.report.add_section("Run summary", html=text, table=[{"property": k, "value": v} for k, v in facts])
    ctx.summary["counts"] = counts
    bad = df[df["status"] != "ok"] if len(df) else df
    if len(bad):
        rows = [
            {"example_id": int(r.example_id), "status": r.status, "reason": r.reason}
            for r in bad.head(_LISTED).itertuples()
        ]
        which = f"The first {_LISTED} of the {len(bad):,}" if len(bad) > _LISTED else "The"
        ctx.report.add_section(
            "Skipped and failed examples",
            html=f"<p>{which} examples without a result, in example order, with the reason.</p>",
            table=_with_text(ctx, rows),
        )


def top_loss_section(ctx: RunReportContext) -> None:
    """The examples with the highest loss (the ``loss`` task), with prediction, label and correctness."""
    title = "Highest loss"
    if _missing(ctx, title, "loss", "the examples the model fits worst"):
        return
    ok = ctx.ok()
    loss = ok["loss"].astype("float64")
    finite = ok[np.isfinite(loss)]
    top = finite.sort_values("loss", ascending=False, kind="stable").head(_LISTED)
    has_correct = "correct" in ok.columns and ok["correct"].notna().any()
    rows = []
    for r in top.itertuples():
        row: dict[str, Any] = {"example_id": int(r.example_id), "loss": float(r.loss)}
        pred = getattr(r, "prediction", None)
        row["prediction"] = getattr(r, "prediction_text", None) or ("-" if pred is None or pred != pred else int(pred))
        if ctx.labels is not None:
            row["label"] = str(ctx.labels[int(r.example_id)])
        if has_correct:
            row["correct"] = "-" if r.correct is None else bool(r.correct)
        row.update(n_tokens=int(r.n_tokens), truncated=bool(r.truncated))
        rows.append(row)
    mean = float(loss[np.isfinite(loss)].mean()) if len(finite) else float("nan")
    parts = [
        f"<p>The {len(rows)} highest of the {len(finite):,} finite losses of ok examples (a causal LM's "
        f"mean next-token NLL, a classifier's cross-entropy against the label); the mean loss is "
        f"{mean:.4g}.</p>"
    ]
    if has_correct:
        c = ok["correct"].dropna().astype(bool)
        parts.append(f"<p>Accuracy over the {len(c):,} examples with a label: {c.mean():.4f}.</p>")
    unranked = ok[~np.isfinite(loss)]
    if len(unranked):
        parts.append(
            "<p>Without a finite loss (a classifier's example without a label, a one-token text for a causal "
            f"LM, or NaN/Inf in the model): {_count(len(unranked), 'ok example')}, {_ids(unranked['example_id'])}.</p>"
        )
    ctx.report.add_section(title, html="".join(parts), table=_with_text(ctx, rows) if rows else None)
    ctx.summary["top_loss"] = [row["example_id"] for row in rows]


def nonfinite_section(ctx: RunReportContext) -> None:
    """Per layer (0 = the embedding output), how many examples had NaN or Inf there (the ``stats``
    task), and which examples had any non-finite hidden state."""
    title = "NaN and Inf"
    if _missing(ctx, title, "stats", "the layers where NaN or Inf appear"):
        return
    ok = ctx.ok()
    if not len(ok):
        ctx.report.add_section(title, html="<p>No ok example to count over.</p>")
        return
    nan = np.stack(ok["stats_nan"].to_numpy()) > 0  # (N, L + 1)
    inf = np.stack(ok["stats_inf"].to_numpy()) > 0
    rows = [
        {
            "layer": i,
            "output of": "embeddings" if i == 0 else f"block {i - 1}",
            "examples with NaN": int(nan[:, i].sum()),
            "examples with Inf": int(inf[:, i].sum()),
            "examples with either": int((nan[:, i] | inf[:, i]).sum()),
        }
        for i in range(nan.shape[1])
    ]
    first = ok["first_nonfinite_layer"].astype("float64")
    bad = ok[first >= 0]
    if len(bad):
        text = (
            f"<p>NaN or Inf in a hidden state: {len(bad):,} of {_count(len(ok), 'ok example')}, "
            f"{_ids(bad['example_id'])}. The table counts, per layer, the examples with a non-finite "
            "value there (layer 0 is the embedding output, layer i the output of block i − 1).</p>"
        )
    else:
        text = f"<p>No NaN or Inf in any layer of {_count(len(ok), 'ok example')}.</p>"
    ctx.report.add_section(title, html=text, table=rows)
    ctx.summary["nonfinite"] = {"per_layer": rows, "examples": [int(i) for i in bad["example_id"]]}


def collapsed_heads(ctx: RunReportContext) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """Per-head means over examples and the collapse flags.

    A head is *collapsed* when, averaged over the ok examples with at least
    :data:`MIN_TOKENS_FOR_HEADS` real tokens (all ok examples if none has that many), its
    entropy is below :data:`COLLAPSE_ENTROPY` nats, or its largest weight is above
    :data:`COLLAPSE_MAX_PROB`, or its mass on the first real token is above
    :data:`COLLAPSE_SINK_MASS`: it attends to one key, whatever the text. Each per-example value is
    already a mean over the example's real queries; NaN values (a head a short text could not fill)
    are left out of the means.

    Returns
    -------
    means : dict of str to ndarray of shape (L, H), float64
        ``"entropy"``, ``"max_prob"``, ``"sink_mass"``.
    flags : ndarray of shape (L, H), bool
    n : int
        The number of examples averaged over.
    """
    ok = ctx.ok()
    long_enough = ok[ok["n_tokens"] >= MIN_TOKENS_FOR_HEADS]
    use = long_enough if len(long_enough) else ok
    shape = ctx.result.column_shape("attention_entropy")
    means = {}
    for name in ("entropy", "max_prob", "sink_mass"):
        values = np.stack(use[f"attention_{name}"].to_numpy()).astype(np.float64)  # (N, L * H)
        with warnings.catch_warnings():  # a head NaN in every example stays NaN, silently
            warnings.simplefilter("ignore", RuntimeWarning)
            means[name] = np.nanmean(values, axis=0).reshape(shape)
    with np.errstate(invalid="ignore"):
        flags = (
            (means["entropy"] < COLLAPSE_ENTROPY)
            | (means["max_prob"] > COLLAPSE_MAX_PROB)
            | (means["sink_mass"] > COLLAPSE_SINK_MASS)
        )
    return means, flags, len(use)


def collapsed_heads_section(ctx: RunReportContext) -> None:
    """Heads whose attention collapsed over the dataset (the ``attention`` task): a layer × head
    heatmap of the mean entropy with the collapsed heads dotted, and the table of those heads."""
    title = "Collapsed attention heads"
    if _missing(ctx, title, "attention", "heads whose attention collapsed"):
        return
    if not len(ctx.ok()) or ctx.result.column_shape("attention_entropy") is None:
        ctx.report.add_section(title, html="<p>No ok example with attention statistics.</p>")
        return
    from .. import plot

    means, flags, n = collapsed_heads(ctx)
    short = int((ctx.ok()["n_tokens"] < MIN_TOKENS_FOR_HEADS).sum())
    over = (
        f"the {n:,} ok examples with at least {MIN_TOKENS_FOR_HEADS} real tokens"
        if short and n < len(ctx.ok())
        else f"the {n:,} ok examples"
    )
    rows = []
    for layer, head in np.argwhere(flags):
        e, p, s = (float(means[k][layer, head]) for k in ("entropy", "max_prob", "sink_mass"))
        why = [
            w
            for w, hit in (
                (f"entropy < {COLLAPSE_ENTROPY}", e < COLLAPSE_ENTROPY),
                (f"max prob > {COLLAPSE_MAX_PROB}", p > COLLAPSE_MAX_PROB),
                (f"sink mass > {COLLAPSE_SINK_MASS}", s > COLLAPSE_SINK_MASS),
            )
            if hit
        ]
        rows.append(
            {
                "layer": int(layer),
                "head": int(head),
                "mean entropy": e,
                "mean max prob": p,
                "mean sink mass": s,
                "rule": ", ".join(why),
            }
        )
    text = (
        f"<p>Per layer and head, the mean over {over} of each example's mean over its real queries. A head is "
        f"<b>collapsed</b> when its mean entropy is below {COLLAPSE_ENTROPY} nats, its mean largest "
        f"weight above {COLLAPSE_MAX_PROB}, or its mean mass on the first real token (the sink) above "
        f"{COLLAPSE_SINK_MASS}: it puts (nearly) all its weight on one key whatever the text. "
        f"Collapsed: {len(rows)} of {flags.size} heads.</p>"
    )
    fig = plot.head_heatmap(
        means["entropy"], title="mean attention entropy (dots: collapsed)", label="entropy (nats)", flags=flags
    )
    ctx.report.add_section(
        title,
        html=text,
        figure=fig,
        captions=["Mean attention entropy per layer and head over the dataset; red dots mark collapsed heads."],
        table=rows or None,
    )
    ctx.summary["collapsed_heads"] = [(r["layer"], r["head"]) for r in rows]


def _loss_bins(loss: np.ndarray, n_bins: int = 5) -> list[str]:
    """Quantile bins of ``loss`` as labels ``"loss a–b"`` (NaN: ``"loss n/a"``), with as many
    significant digits as it takes to tell the edges apart."""
    finite = loss[np.isfinite(loss)]
    if not len(finite):
        return ["loss n/a"] * len(loss)
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, n_bins + 1)))
    if len(edges) == 1:
        edges = np.repeat(edges, 2)
    digits = next((d for d in range(3, 10) if len({f"{e:.{d}g}" for e in edges}) == len(set(edges))), 10)
    which = np.clip(np.searchsorted(edges, loss, side="right") - 1, 0, len(edges) - 2)
    names = [f"loss {edges[i]:.{digits}g}–{edges[i + 1]:.{digits}g}" for i in range(len(edges) - 1)]
    return [names[w] if np.isfinite(v) else "loss n/a" for w, v in zip(which, loss)]


def embedding_map_section(ctx: RunReportContext) -> None:
    """A t-SNE map of the ``embedding`` column over a seeded sample of at most ``max_map_points``
    ok examples, coloured by label when the labels are known, else by loss quantile."""
    title = "Embedding map"
    if _missing(ctx, title, "embedding", "a map of the examples' embeddings"):
        return
    from .. import plot
    from ..embedding import TSNE

    ok = ctx.ok()
    vectors = ok["embedding"].to_numpy()
    # only the sample is stacked: a million 768-wide embeddings would be 3 GB more
    pool = np.flatnonzero(np.fromiter((bool(np.isfinite(v).all()) for v in vectors), bool, len(vectors)))
    if len(pool) < MIN_MAP_POINTS:
        ctx.report.add_section(
            title, html=f"<p>{len(pool)} ok examples with a finite embedding; the map needs {MIN_MAP_POINTS}.</p>"
        )
        return
    rng = np.random.default_rng(ctx.random_state)
    rows = np.sort(rng.choice(pool, size=min(len(pool), ctx.max_map_points), replace=False))
    ids = ok["example_id"].to_numpy()[rows]
    n = len(rows)
    perplexity = max(1.0, min(30.0, np.floor((n - 1) / 3 * 100) / 100 - 0.01))
    Y = TSNE(perplexity=perplexity, random_state=ctx.random_state, progress=ctx.progress).fit_transform(
        np.stack(vectors[rows])
    )
    colour, palette, by = None, None, "nothing (no labels, no loss)"
    if ctx.labels is not None:
        colour, by = [str(ctx.labels[int(i)]) for i in ids], "label"
    elif "loss" in ok.columns:
        loss = ok["loss"].to_numpy(np.float64)[rows]
        order = np.argsort(np.where(np.isfinite(loss), loss, np.inf), kind="stable")  # legend in loss order
        Y, ids, loss = Y[order], ids[order], loss[order]
        colour, palette, by = _loss_bins(loss), "viridis", "loss quintile"
    fig = plot.embedding(Y, labels=colour, palette=palette, title=f"t-SNE of the embeddings ({n:,} examples)")
    texts = [
        f"example {int(i)}: {_snippet(ctx.texts[int(i)])}" if ctx.texts is not None else f"example {int(i)}"
        for i in ids
    ]
    view = optional_view(
        ctx.summary,
        "embedding map",
        lambda: _widgets().embedding_view(
            Y,
            labels=texts,
            color_by={by: colour} if colour is not None else None,
            title="The examples' map: hover a point for its example, search a word",
        ),
    )
    dropped = len(ok) - len(pool)
    sample = f"a random sample (seed {ctx.random_state}) of {n:,}" if n < len(pool) else f"all {n:,}"
    ctx.report.add_section(
        title,
        html=(
            f"<p>Each point is one example's <code>embedding</code> (its pooled hidden state), mapped to "
            f"two dimensions by llmdbg's t-SNE (perplexity {perplexity:g}, seed {ctx.random_state}), for "
            f"{sample} ok examples with a finite embedding"
            + (f" ({dropped:,} with NaN or Inf left out)" if dropped else "")
            + f". Colours: {esc(by)}. Nearby points are examples the model represents alike.</p>"
        ),
        figure=fig,
        captions=[f"t-SNE map of {n:,} examples, coloured by {by}."],
        view=view,
    )
    ctx.summary["embedding_map"] = {"n": n, "example_ids": [int(i) for i in ids], "colour": by}


#: The sections of a run report, in page order.
SECTIONS: tuple[tuple[str, Callable[[RunReportContext], None]], ...] = (
    ("Highest loss", top_loss_section),
    ("NaN and Inf", nonfinite_section),
    ("Collapsed attention heads", collapsed_heads_section),
    ("Embedding map", embedding_map_section),
)
