"""Notebook displays (``_repr_html_``) of Trace and attention summaries: compact, offline (inline
HTML only: no script, no external URL) and showing the numbers the objects hold."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import torch

import llmdbg
from tiny_models import HEADS, LAYERS, tiny_inputs, tiny_model


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Cells:
    p = _Cells()
    p.feed(page)
    return p


def _assert_offline(page: str) -> None:
    assert "<script" not in page and "<link" not in page and "<style" not in page
    assert not re.search(r"https?://|url\(", page)


def _bert_trace():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    with torch.no_grad(), llmdbg.capture(model, "mlp", attentions=True, hidden_states=True) as trace:
        model(**inputs)
    return trace


def test_trace_repr_is_compact_and_matches_the_statistics():
    trace = _bert_trace()
    trace._HTML_ROWS = 3  # fewer rows than tensors: the display is cut, and says so
    page = trace._repr_html_()
    _assert_offline(page)
    stats = list(trace.stats.items())
    assert len(stats) > trace._HTML_ROWS
    parsed = _parse(page)
    text = "".join(parsed.text)
    assert f"… {len(stats) - trace._HTML_ROWS} more" in text and "trace.stats_table()" in text
    assert sum(1 for tag, _ in parsed.tags if tag == "tr") == trace._HTML_ROWS + 1
    b, t = trace.attention_mask.shape
    assert f"batch {b} × {t} tokens" in text and f"{LAYERS} attention maps" in text and "all finite" in text
    key, s = stats[0]
    assert key in text and f"{s.mean:.4g}" in text and f"{s.absmax:.4g}" in text


def test_trace_repr_flags_non_finite_tensors():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    with torch.no_grad():
        model[0].bias[1] = float("nan")
    with torch.no_grad(), llmdbg.capture(model, "*") as trace:
        model(torch.ones(2, 4))
    page = trace._repr_html_()
    text = "".join(_parse(page).text)
    assert "1 with NaN/Inf" in text or "2 with NaN/Inf" in text
    bad = {k: s.nan_count + s.inf_count for k, s in trace.stats.items()}
    assert bad["0"] == 2  # one NaN bias entry, two rows
    assert "#c0392b" in page  # shown in red


def test_attention_summary_is_a_dataframe_with_a_grid_display():
    trace = _bert_trace()
    summary = llmdbg.attention_summary(trace)
    assert isinstance(summary, pd.DataFrame) and len(summary) == LAYERS * HEADS
    # Derived frames are plain DataFrames (no surprise display on a slice or pivot).
    assert type(summary.pivot(index="layer", columns="head", values="entropy")) is pd.DataFrame
    assert type(summary.drop(columns=["sink_token"])) is pd.DataFrame
    page = summary._repr_html_()
    _assert_offline(page)
    parsed = _parse(page)
    cells = [a for tag, a in parsed.tags if tag == "span" and "title" in a]
    assert len(cells) == LAYERS * HEADS
    text = "".join(parsed.text)
    for layer, head, e in summary[["layer", "head", "entropy_norm"]].itertuples(index=False):
        assert any(f"layer {layer}, head {head}: entropy_norm {e:.4g}" in c["title"] for c in cells)
    assert f"{int(summary['sink'].sum())} sink, {int(summary['collapsed'].sum())} collapsed" in text
    assert text.count("S") >= int(summary["sink"].sum())


def test_attention_summary_grid_marks_flagged_heads():
    # Layer 0: every query looks at key 0 (collapsed and a sink); layer 1: uniform.
    t = 6
    sink = np.zeros((1, 2, t, t), np.float32)
    sink[..., 0] = 1
    uniform = np.full((1, 2, t, t), 1 / t, np.float32)
    summary = llmdbg.attention_summary([sink, uniform])
    assert summary["collapsed"].tolist() == [True, True, False, False]
    assert summary["uniform"].tolist() == [False, False, True, True]
    page = summary._repr_html_()
    marks = re.findall(r"<b style=[^>]*>([SCU]+)</b>", page)
    assert marks == ["SC", "SC", "U", "U"]
    assert "2 sink, 2 collapsed, 2 uniform" in "".join(_parse(page).text)
