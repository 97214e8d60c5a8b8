"""Tests for llmdbg.plot: every function returns a Figure that shows exactly its input."""

from __future__ import annotations

import matplotlib  # noqa: F401 - fail, never skip, when a test dependency is missing
import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from llmdbg import hist_edges, plot, summarize


def _softmax_maps(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _image_data(ax) -> np.ndarray:
    """The array an axes displays, whether drawn with imshow or pcolormesh."""
    artists = [a for a in ax.get_children() if isinstance(a, (AxesImage, QuadMesh))]
    assert len(artists) == 1, artists
    data = np.asarray(artists[0].get_array())
    return data.reshape(-1) if isinstance(artists[0], QuadMesh) else data


def _heatmap_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_attention_heatmap_shows_the_array_and_labels():
    attn = _softmax_maps(np.random.default_rng(0), 5, 5)
    tokens = ["[CLS]", "a", "<b>", "c", "[SEP]"]
    fig = plot.attention_heatmap(attn, tokens, title="layer 0")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # heatmap + colorbar
    ax = _heatmap_axes(fig)[0]
    np.testing.assert_array_equal(_image_data(ax), attn)
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == tokens
    assert ax.get_title() == "layer 0"


def test_attention_heatmap_long_sequences_have_no_labels_and_rectangular_maps():
    rng = np.random.default_rng(1)
    attn = _softmax_maps(rng, 70, 70)
    fig = plot.attention_heatmap(attn, [f"t{i}" for i in range(70)])
    ax = _heatmap_axes(fig)[0]
    assert list(ax.get_xticks()) == [] and list(ax.get_yticks()) == []
    # Two new queries against a cache of 6 keys: queries are labelled with the last tokens.
    rect = _softmax_maps(rng, 2, 6)
    fig = plot.attention_heatmap(rect, list("abcdef"))
    ax = _heatmap_axes(fig)[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["e", "f"]
    fig = plot.attention_heatmap(rect, (["q1", "q2"], list("abcdef")))
    assert [t.get_text() for t in _heatmap_axes(fig)[0].get_yticklabels()] == ["q1", "q2"]


def test_attention_heatmap_into_given_axes():
    attn = _softmax_maps(np.random.default_rng(2), 4, 4)
    host = Figure()
    ax = host.add_subplot()
    assert plot.attention_heatmap(attn, ax=ax) is host
    assert len(host.axes) == 1  # no colorbar added to someone else's axes
    np.testing.assert_array_equal(_image_data(ax), attn)


def test_attention_heatmap_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(T_q, T_k\)"):
        plot.attention_heatmap(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="labels"):
        plot.attention_heatmap(np.zeros((4, 4)), ["a", "b"])


def test_attention_grid_head_mean_and_single_head():
    rng = np.random.default_rng(3)
    layers = [_softmax_maps(rng, 3, 6, 6) for _ in range(4)]
    tokens = list("abcdef")
    fig = plot.attention_grid(layers, tokens)
    heat = _heatmap_axes(fig)
    assert len(heat) == 4 and len(fig.axes) == 5  # one colorbar
    for ax, layer in zip(heat, layers):
        np.testing.assert_allclose(_image_data(ax), layer.mean(axis=0), rtol=1e-6)
    assert [ax.get_title() for ax in heat] == ["layer 0", "layer 1", "layer 2", "layer 3"]

    fig = plot.attention_grid(layers, tokens, layers=[1, 3], head=2)
    heat = _heatmap_axes(fig)
    assert [ax.get_title() for ax in heat] == ["layer 1", "layer 3"]
    np.testing.assert_array_equal(_image_data(heat[0]), layers[1][2])
    np.testing.assert_array_equal(_image_data(heat[1]), layers[3][2])


def test_attention_grid_accepts_2d_maps_and_explains_batches():
    rng = np.random.default_rng(4)
    maps = [_softmax_maps(rng, 5, 5) for _ in range(2)]
    fig = plot.attention_grid(maps)
    for ax, m in zip(_heatmap_axes(fig), maps):
        np.testing.assert_array_equal(_image_data(ax), m)
    with pytest.raises(ValueError, match=r"a\[0\] for a in trace.attentions"):
        plot.attention_grid([_softmax_maps(rng, 2, 3, 5, 5)])
    with pytest.raises(ValueError, match="out of range"):
        plot.attention_grid(maps, layers=[5])
    with pytest.raises(ValueError, match="out of range"):
        plot.attention_grid([_softmax_maps(rng, 3, 5, 5)], head=3)
    with pytest.raises(ValueError, match="head"):
        plot.attention_grid(maps, head="max")


def test_activation_stats_panels_and_nonfinite_annotation():
    rng = np.random.default_rng(5)
    good = rng.standard_normal((4, 8)).astype(np.float32)
    bad = good.copy()
    bad[0, :2] = np.nan
    bad[1, 0] = np.inf
    stats = {"emb": summarize(good), "layer.0": summarize(np.maximum(good, 0)), "layer.1": summarize(bad)}
    fig = plot.activation_stats(stats)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["mean", "std", "abs max", "zero fraction"]
    for ax, field in zip(fig.axes, ["mean", "std", "absmax", "zero_fraction"]):
        line = ax.get_lines()[0]
        np.testing.assert_allclose(line.get_ydata(), [getattr(s, field) for s in stats.values()])
    absmax_ax = fig.axes[2]
    notes = [t.get_text() for t in absmax_ax.texts]
    assert notes == ["NaN 2\nInf 1"]
    assert [t.get_text() for t in fig.axes[3].get_xticklabels()] == list(stats)

    fig = plot.activation_stats(stats, ["layer.1", "emb"], labels=["L1", "E"])
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [stats["layer.1"].mean, stats["emb"].mean])
    assert [t.get_text() for t in fig.axes[3].get_xticklabels()] == ["L1", "E"]
    with pytest.raises(KeyError, match="nope"):
        plot.activation_stats(stats, ["nope"])
    with pytest.raises(ValueError, match="labels"):
        plot.activation_stats(stats, labels=["one"])
    with pytest.raises(TypeError, match="Trace or a mapping"):
        plot.activation_stats([1, 2])


def test_activation_stats_from_a_trace():
    import torch

    import llmdbg

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with torch.no_grad(), llmdbg.capture(model, modules=["0", "1", "2"]) as trace:
        model(torch.randn(3, 4))
    fig = plot.activation_stats(trace)
    assert [t.get_text() for t in fig.axes[3].get_xticklabels()] == ["0", "1", "2"]
    np.testing.assert_allclose(fig.axes[3].get_lines()[0].get_ydata(), [trace.stats[k].zero_fraction for k in "012"])


def test_histogram_bars_are_the_nonempty_bins():
    x = np.array([0.0, 0.0, 0.3, -0.7, 1.5, 3.0, 1000.0, np.nan], dtype=np.float32)
    s = summarize(x)
    fig = plot.histogram(s, title="h")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    counts = np.asarray(s.histogram)
    nz = np.flatnonzero(counts)
    lo, hi = nz[0], nz[-1] + 1
    bars = ax.patches
    assert [b.get_height() for b in bars] == counts[lo:hi].tolist()
    np.testing.assert_allclose([b.get_x() for b in bars], np.log2(hist_edges())[lo:hi])
    assert all(b.get_width() == 1.0 for b in bars)
    assert ax.get_xlabel() == "log2 |x|"
    assert "zeros: 2" in ax.texts[0].get_text() and "NaN: 1" in ax.texts[0].get_text()


def test_figures_render_to_png():
    import io

    fig = plot.attention_grid([_softmax_maps(np.random.default_rng(6), 2, 3, 3)], ["a", "b", "c"])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- attention-analysis figures ---------------------------------------------------------------


def test_head_grid_shows_every_layer_and_head():
    maps = [np.random.default_rng(i).random((4, 6, 6)) for i in range(3)]
    fig = plot.head_grid(maps)
    assert len(fig.axes) == 12
    np.testing.assert_array_equal(fig.axes[5].images[0].get_array(), maps[1][1])  # row 1, head 1
    assert fig.axes[0].get_ylabel() == "L0" and fig.axes[3].get_title() == "H3"
    fig = plot.head_grid(maps, layers=[2], heads=[0, 3])
    assert len(fig.axes) == 2
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), maps[2][3])
    with pytest.raises(ValueError, match=r"\(H, T, T\)"):
        plot.head_grid([np.zeros((6, 6))])


def test_head_heatmap_values_and_flags():
    values = np.arange(12, dtype=float).reshape(3, 4) / 12
    fig = plot.head_heatmap(values, title="entropy", label="nats", flags=values > 0.8)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), values)
    assert len(ax.texts) == 12 and ax.get_title() == "entropy"
    assert len(ax.collections[0].get_offsets()) == int((values > 0.8).sum())
    with pytest.raises(ValueError, match="layers, heads"):
        plot.head_heatmap(np.zeros(4))


def test_token_relevance_bars_equal_scores():
    scores = np.array([0.1, 0.5, 0.2, 0.9])
    fig = plot.token_relevance(scores, ["a", "b", "c", "d"], title="rollout")
    text_ax, bar_ax = fig.axes
    np.testing.assert_allclose([p.get_height() for p in bar_ax.patches], scores)
    assert [t.get_text() for t in text_ax.texts] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="4 scores for 3 tokens"):
        plot.token_relevance(scores, ["a", "b", "c"])
