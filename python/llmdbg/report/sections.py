"""Report sections that work on any model, used by :func:`llmdbg.report.run_report`: the model
and its inputs, activation statistics, attention and its analysis, what the model predicts, token
attributions and a map of the texts' hidden states.

Each section takes a :class:`~llmdbg.report.ReportContext`, adds to ``ctx.report``, and
records its arrays in ``ctx.arrays`` and its facts in ``ctx.summary``. Next to its static figures a
section puts the interactive view of the same result (:mod:`llmdbg.widgets`) when it has one; a view
that cannot be built (over the payload limit, say) is left out with the reason in
``ctx.summary["views_skipped"]``, and the figures stay. A section whose feature is
missing from this build of llmdbg (or that does not apply, like a map of fewer than
:data:`MIN_TEXTS_FOR_MAP` texts) adds no HTML and says why in ``ctx.summary["skipped"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._internal.html import esc
from .._internal.pooling import last_real_index, mean_pool
from .context import ReportContext

__all__ = [
    "MIN_TEXTS_FOR_MAP",
    "attention_analysis_section",
    "attention_section",
    "attribution_section",
    "embedding_section",
    "inputs_section",
    "model_section",
    "optional_view",
    "outputs_section",
    "stats_section",
]

#: Fewest texts for which the report draws a t-SNE map of their hidden states.
MIN_TEXTS_FOR_MAP = 8
_TOP_K = 5


def _skip(ctx: Any, section: str, why: str) -> None:
    ctx.summary.setdefault("skipped", {})[section] = why


def _widgets() -> Any:
    """The builders of :mod:`llmdbg.widgets` the sections use, imported when a view is built (so
    a view that cannot load is one more thing :func:`optional_view` records, not a failed report)."""
    from types import SimpleNamespace

    from ..widgets import attention_view, attribution_view, embedding_view

    return SimpleNamespace(
        attention_view=attention_view, attribution_view=attribution_view, embedding_view=embedding_view
    )


def optional_view(summary: dict[str, Any], name: str, build: Callable[[], Any]) -> Any:
    """``build()`` (an interactive view), or None with the reason in ``summary["views_skipped"]``
    when it raises: a view is an extra next to the figures, never a reason to lose the section."""
    try:
        return build()
    except Exception as exc:  # the payload limit, an object the view does not take, ...
        summary.setdefault("views_skipped", {})[name] = f"{type(exc).__name__}: {exc}"
        return None


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _top_tokens(tokenizer: Any, probs: np.ndarray) -> tuple[np.ndarray, str]:
    top = np.argsort(-probs)[:_TOP_K]
    text = ", ".join(f"{tokenizer.convert_ids_to_tokens(int(i))} ({probs[i]:.3f})" for i in top)
    return top, text


def model_section(ctx: ReportContext) -> None:
    """The model's class, size and the layout llmdbg found (blocks, attention, MLP per layer)."""
    report, model, trace, name = ctx.report, ctx.model, ctx.trace, ctx.name
    cfg, layout = model.config, trace.layout
    n_params = sum(p.numel() for p in model.parameters())
    facts = [
        ("Model", name),
        ("Class", type(model).__name__),
        ("Family (llmdbg layout)", layout.family),
        ("Layers", getattr(cfg, "num_hidden_layers", "-")),
        ("Attention heads", getattr(cfg, "num_attention_heads", "-")),
        ("Hidden size", getattr(cfg, "hidden_size", "-")),
        ("Parameters", n_params),
        ("Vocabulary", getattr(cfg, "vocab_size", "-")),
        ("Embeddings", layout.embeddings or "-"),
        ("Final norm", layout.final_norm or "-"),
    ]
    attention = dict(zip(layout.attention_blocks, layout.attention))  # hybrids: attention layers only
    blocks = [
        {"layer": i, "block": b, "attention": attention.get(b, "-"), "mlp": m}
        for i, (b, m) in enumerate(zip(layout.blocks, layout.mlp or ("-",) * len(layout.blocks)))
    ]
    report.add_section("Model", table=[[{"property": k, "value": v} for k, v in facts], blocks])


def inputs_section(ctx: ReportContext) -> None:
    """The texts with their token counts and token strings."""
    report, texts, trace = ctx.report, ctx.texts, ctx.trace
    mask = trace.attention_mask
    rows = [
        {
            "#": i,
            "text": t,
            "tokens": int(mask[i].sum()),
            "token strings": " ".join(tok for tok, m in zip(trace.tokens[i], mask[i]) if m),
        }
        for i, t in enumerate(texts)
    ]
    report.add_section(
        "Inputs",
        html="<p>Tokenized with padding to the longest sentence; "
        "padding positions are left out of the plots below.</p>",
        table=rows,
    )


def stats_section(ctx: ReportContext) -> None:
    """Residual-stream statistics per layer, a magnitude histogram and the statistics table."""
    report, trace = ctx.report, ctx.trace
    from .. import plot

    keys = trace.hidden_state_modules
    labels = ["embeddings"] + [f"layer {i}" for i in range(len(keys) - 1)]
    last = trace.layout.blocks[-1]
    report.add_section(
        "Activation statistics",
        html="<p>Statistics of the residual stream (the embedding output, then every block output) "
        "over all tokens of all sentences, padding included, computed by the C++ core in one "
        "pass per tensor. The table lists every captured tensor (<code>:input</code> is a "
        "block's input, <code>:attn</code> an attention map); mean, std, min and max are "
        "over the finite values.</p>",
        figure=[
            plot.activation_stats(trace, keys, labels=labels, title="Residual stream per layer"),
            plot.histogram(trace.stats[last], title=f"Magnitudes of {last} (last block output)"),
        ],
        captions=[
            "Mean, standard deviation, absolute maximum and fraction of exact zeros per layer.",
            "Histogram of |x| on the fixed log2 bins of llmdbg.hist_edges().",
        ],
        table=trace.stats_table().drop(columns=["var"]),
    )  # var = std**2; keeps the table narrow


def attention_section(ctx: ReportContext) -> None:
    """Head-mean attention heatmaps of the first text, one per layer."""
    report, trace, texts = ctx.report, ctx.trace, ctx.texts
    from .. import plot

    keep = trace.attention_mask[0].astype(bool)
    tokens = [t for t, k in zip(trace.tokens[0], keep) if k]
    maps = [a[0][:, keep][:, :, keep] for a in trace.attentions]  # (H, t, t), no padding
    layers = ", ".join(str(i) for i in range(len(maps)))
    view = optional_view(
        ctx.summary,
        "attention",
        lambda: _widgets().attention_view(trace, batch=0, title="Attention of sentence 0, every head"),
    )
    report.add_section(
        "Attention",
        html=f"<p>Attention of sentence 0 (<em>{esc(texts[0])}</em>), averaged over heads, for "
        f"layers {layers}. Each row is a query token; its weights over the key tokens "
        "sum to 1. In the interactive view, click a head of the layer × head grid to open its map "
        "and hover a token to see where it looks and who looks at it.</p>",
        figure=plot.attention_grid(maps, tokens, head="mean"),
        captions=[f"Attention heatmaps, layers {layers}, mean over heads."],
        view=view,
    )


def attention_analysis_section(ctx: ReportContext) -> None:
    """Rollout and flow of the first text's query row (0: [CLS]; a causal model's last real token)
    and the per-head diagnostics table; writes ``rollout``, ``flow`` to ``ctx.arrays`` and
    ``attention_heads``, ``flow_row`` to ``ctx.summary``."""
    report, trace, texts, tokenizer = ctx.report, ctx.trace, ctx.texts, ctx.tokenizer
    row = 0 if ctx.kind != "causal-lm" else int(trace.attention_mask[0].sum()) - 1
    from .. import plot
    from ..attention import attention_flow, attention_rollout, attention_summary

    keep = trace.attention_mask[0].astype(bool)
    tokens = [t for t, k in zip(trace.tokens[0], keep) if k]
    name = trace.tokens[0][row]
    who = esc(name)
    rollout = attention_rollout(trace)
    flow = attention_flow(trace, rows=[row])
    summary = attention_summary(trace, tokenizer=tokenizer)
    entropy = summary.pivot(index="layer", columns="head", values="entropy_norm").to_numpy()
    flagged = summary.pivot(index="layer", columns="head", values="sink").to_numpy(dtype=bool) | summary.pivot(
        index="layer", columns="head", values="collapsed"
    ).to_numpy(dtype=bool)
    counts = {k: int(summary[k].sum()) for k in ("collapsed", "uniform", "sink")}
    report.add_section(
        "Attention analysis",
        html=(
            f"<p>How much each token of sentence 0 (<em>{esc(texts[0])}</em>) feeds "
            f"position {row} (<code>{who}</code>) at the top of the network: attention <b>rollout</b> (the product of "
            "the head-averaged maps mixed with the residual stream) and attention <b>flow</b> "
            "(the maximum flow through the same layered graph), both from the C++ core with "
            "padding removed. Then one row per layer and head: entropy (natural log), entropy "
            "normalised by log(number of keys), the largest weight, the sink score (StreamingLLM's "
            "α) with its token, the mass on special tokens, and flags: "
            f"{counts['collapsed']} collapsed, {counts['uniform']} uniform, {counts['sink']} sink "
            "heads.</p>"
        ),
        figure=[
            plot.token_relevance(rollout[0, row, keep], tokens, title=f"rollout, {name} row"),
            plot.token_relevance(flow[0, 0, keep], tokens, title=f"attention flow, {name} row"),
            plot.head_heatmap(
                entropy,
                title="normalised entropy per head (dots: sink or collapsed)",
                label="entropy / log(keys)",
                flags=flagged,
            ),
        ],
        table=summary.drop(columns=["sink_token"]).round(4),
        captions=[
            f"Rollout relevance of each token for {name} (position {row}).",
            f"Attention-flow relevance for {name} (position {row}).",
            "Normalised entropy per layer and head.",
        ],
    )
    ctx.arrays.update(rollout=rollout, flow=flow)
    ctx.summary.update(attention_heads=summary.to_dict(orient="records"), flow_row=row)


def outputs_section(ctx: ReportContext) -> None:
    """What the model computes for each text: class probabilities, the next token, the token at
    the mask, or (for an encoder without a head) the cosine similarity of mean-pooled embeddings."""
    mask = ctx.trace.attention_mask
    tok, kind, rows = ctx.tokenizer, ctx.kind, []
    if kind == "classifier":
        logits = ctx.outputs.logits.detach().float().cpu().numpy()  # (B, C)
        probs = _softmax(logits)
        labels = ctx.model.config.id2label or {}
        for i, p in enumerate(probs):
            c = int(p.argmax())
            row = {"#": i, "predicted": str(labels.get(c, c)), "probability": float(p[c])}
            if ctx.target is not None:
                row[f"p({labels.get(ctx.target, ctx.target)})"] = float(p[ctx.target])
            rows.append(row)
        ctx.arrays.update(logits=logits.astype(np.float32))
        ctx.summary["predictions"] = [int(c) for c in probs.argmax(axis=1)]
        note = "Class probabilities (softmax of the logits)."
    elif kind in ("causal-lm", "masked-lm"):
        logits = ctx.outputs.logits.detach().float().cpu()  # (B, T, V)
        ids = ctx.trace.input_ids
        if kind == "causal-lm":
            where = last_real_index(mask)
            note = "The five most likely next tokens after each text."
        else:
            where = np.array(
                [int(np.flatnonzero(r == tok.mask_token_id)[0]) if (r == tok.mask_token_id).any() else -1 for r in ids]
            )
            note = f"The five most likely tokens at the first {esc(str(tok.mask_token))} of each text."
        top_ids = np.full((len(where), _TOP_K), -1, dtype=np.int64)
        top_p = np.zeros((len(where), _TOP_K), dtype=np.float32)
        for i, pos in enumerate(where):
            if pos < 0:
                rows.append({"#": i, "top tokens": f"(no {tok.mask_token} in this text)"})
                continue
            probs = _softmax(logits[i, pos].numpy())
            top, text = _top_tokens(tok, probs)
            top_ids[i], top_p[i] = top, probs[top]
            rows.append({"#": i, "position": int(pos), "top tokens": text})
        ctx.arrays.update(top_token_ids=top_ids, top_token_probs=top_p)
        ctx.summary["predictions"] = [[tok.convert_ids_to_tokens(int(j)) for j in r if j >= 0] for r in top_ids]
    else:
        hidden = ctx.outputs.last_hidden_state.detach().float().cpu().numpy()  # (B, T, D)
        pooled = mean_pool(hidden, mask).astype(np.float64)
        unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        cos = unit @ unit.T
        rows = [{"#": i, **{str(j): float(cos[i, j]) for j in range(len(cos))}} for i in range(len(cos))]
        ctx.arrays.update(sentence_embeddings=pooled.astype(np.float32), cosine_similarity=cos.astype(np.float32))
        note = (
            "Cosine similarity of the texts' mean-pooled last hidden states (padding excluded), "
            "the sentence embedding of sentence-transformers models."
        )
    ctx.report.add_section("Outputs", html=f"<p>{note}</p>", table=rows)


#: Examples drawn as figures in the attribution section (all are in the arrays and the table).
MAX_ATTRIBUTION_FIGURES = 4


def _ig_target(ctx: ReportContext) -> tuple[Any, str] | None:
    """(target for integrated_gradients, what it explains), or None when nothing applies."""
    tok, kind = ctx.tokenizer, ctx.kind
    if kind == "classifier":
        labels = ctx.model.config.id2label or {}
        if ctx.target is None:
            return None, "the logit of the predicted class"
        return ctx.target, f"the logit of class {ctx.target} ({esc(str(labels.get(ctx.target, '')))})"
    if kind == "causal-lm":
        if ctx.target is None:
            return None, "the log-probability of the most likely next token"
        return ctx.target, (f"the log-probability of each token of the continuation <em>{esc(ctx.target)}</em>")
    if kind == "masked-lm":
        if not any(tok.mask_token_id in row for row in ctx.trace.input_ids.tolist()):
            return None
        what = (
            "the predicted token"
            if ctx.target is None
            else f"<code>{esc(tok.convert_ids_to_tokens(ctx.target))}</code>"
        )
        return ctx.target, f"the log-probability of {what} at the first {esc(tok.mask_token)}"
    if len(ctx.texts) < 2:
        return None
    import llmdbg

    pooled = ctx.arrays["sentence_embeddings"]
    reference = pooled[(np.arange(len(pooled)) + 1) % len(pooled)]
    return llmdbg.similarity_target(reference), (
        "the cosine similarity of each text's mean-pooled embedding with the next text's (the last with the first)"
    )


def attribution_section(ctx: ReportContext) -> None:
    """Integrated-gradients attributions of each token (:func:`llmdbg.integrated_gradients`)."""
    import llmdbg

    ig = getattr(llmdbg, "integrated_gradients", None)
    if ig is None:
        _skip(ctx, "attribution", "llmdbg.integrated_gradients is not available in this build")
        return
    chosen = _ig_target(ctx)
    if chosen is None:
        why = (
            "no text holds the mask token"
            if ctx.kind == "masked-lm"
            else "an encoder without a head needs two texts to attribute their similarity"
        )
        _skip(ctx, "attribution", why)
        return
    target, what = chosen
    enc = {k: v for k, v in ctx.enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    attr = ig(ctx.model, enc, target=target, tokenizer=ctx.tokenizer, progress=ctx.progress)
    rel = attr.relative_delta
    rows = []
    for i in range(len(attr.tokens)):
        row: dict[str, Any] = {"#": i, "model evaluations": int(attr.n_evals[i])}
        if attr.target_tokens is not None:
            row["target"] = "".join(attr.target_tokens[i])
        if attr.delta is not None:
            row["max |delta|"] = float(np.abs(np.asarray(attr.delta[i])).max())
        if rel is not None:
            row["relative delta"] = float(np.asarray(rel[i]).max())
        if attr.converged is not None:
            row["converged"] = bool(attr.converged[i])
        rows.append(row)
    n_fig = min(len(attr.tokens), MAX_ATTRIBUTION_FIGURES)
    view = optional_view(
        ctx.summary, "attribution", lambda: _widgets().attribution_view(attr, index=0, title="Attribution of text 0")
    )
    more = (
        f" Figures for the first {n_fig} texts; every score is in <code>arrays.npz</code>."
        if len(attr.tokens) > n_fig
        else ""
    )
    ctx.report.add_section(
        "Attribution",
        html=(
            f"<p>Integrated gradients ({esc(attr.method)}) of {what}, per input token: "
            "red tokens push it up, blue ones down; the baseline replaces every token but the special "
            "ones by padding. The convergence delta is the sum of the scores minus the change of the "
            f"explained value between baseline and input; small relative deltas mean the integral is "
            f"accurate.{more}</p>" + attr.to_html()
        ),
        figure=[attr.plot(i) for i in range(n_fig)],
        captions=[f"Attribution of text {i}." for i in range(n_fig)],
        table=rows,
        view=view,
    )
    ctx.arrays.update(attribution_scores=attr.scores.astype(np.float32))
    if attr.delta is not None:
        ctx.arrays.update(attribution_delta=np.asarray(attr.delta, dtype=np.float32))
    ctx.summary["attribution"] = {
        "method": attr.method,
        "target": None if attr.target is None else np.asarray(attr.target).tolist(),
        "target_tokens": attr.target_tokens,
        "n_evals": attr.n_evals.tolist(),
        "relative_delta": None if rel is None else np.asarray(rel).tolist(),
        "converged": None if attr.converged is None else attr.converged.tolist(),
    }


def embedding_section(ctx: ReportContext) -> None:
    """A t-SNE map of the texts' mean-pooled last hidden states, for 8 texts or more."""
    import llmdbg

    from .. import plot

    if len(ctx.texts) < MIN_TEXTS_FOR_MAP:
        _skip(ctx, "embedding map", f"{len(ctx.texts)} texts; the map needs at least {MIN_TEXTS_FOR_MAP}")
        return
    labels = None
    if ctx.kind == "classifier":
        names = ctx.model.config.id2label or {}
        labels = [str(names.get(c, c)) for c in ctx.summary["predictions"]]
    texts = [t if len(t) <= 40 else t[:37] + "..." for t in ctx.texts]
    emap = llmdbg.embed_hidden_states(ctx.trace, -1, "mean", labels=labels or texts, random_state=0)
    fig = plot.embedding(emap.coords, labels=labels, texts=texts, title="t-SNE of mean-pooled last hidden states")
    view = optional_view(
        ctx.summary,
        "embedding map",
        lambda: _widgets().embedding_view(
            emap,
            labels=ctx.texts,
            color_by={"predicted class": labels} if labels else None,
            title="The texts' map: hover a point for its text, search a word",
        ),
    )
    ctx.report.add_section(
        "Embedding map",
        html=(
            "<p>Each text is a point: its last hidden state averaged over its real tokens, mapped to "
            "two dimensions by llmdbg's t-SNE (perplexity min(30, (N - 1) / 3), seed 0). Nearby "
            "points are texts the model represents alike; distances between far-apart groups mean "
            + ("little. Colours are the predicted classes.</p>" if labels else "little.</p>")
        ),
        figure=fig,
        captions=["t-SNE map of the texts."],
        view=view,
    )
    ctx.arrays.update(embedding_map=np.asarray(emap.coords, dtype=np.float32))
    ctx.summary["embedding_map"] = {"n": len(ctx.texts), "layer": -1, "pooling": "mean"}
