"""Embedding maps: embed_tokens, embed_hidden_states, pool_hidden_states and plot.embedding,
against independent references (the model's weights, a manual torch pooling of Hugging Face's
own hidden states, numpy PCA)."""

from __future__ import annotations

import matplotlib  # noqa: F401 - fail, never skip, when a test dependency is missing
import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

import llmdbg
from llmdbg import plot
from llmdbg.embedding import EmbeddingMap, pool_hidden_states
from tiny_models import tiny_inputs, tiny_model


@pytest.fixture(scope="module")
def minilm():
    from llmdbg.report.demo import load_minilm

    return load_minilm()


@pytest.fixture(scope="module")
def bert():
    return tiny_model("bert")


def _pca_reference(X: np.ndarray) -> np.ndarray:
    Xc = X.astype(np.float64) - X.mean(0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    return Xc @ vt[:2].T


def _same_up_to_sign(a: np.ndarray, b: np.ndarray, tol: float) -> None:
    for k in range(2):
        err = min(np.abs(a[:, k] - b[:, k]).max(), np.abs(a[:, k] + b[:, k]).max())
        assert err < tol * max(1.0, np.abs(b[:, k]).max()), (k, err)


# ---------------------------------------------------------------------------------------------
# embed_tokens
# ---------------------------------------------------------------------------------------------


def test_embed_tokens_rows_are_the_model_weights(minilm):
    model, tok = minilm
    words = ["paris", "london", "france", "dog", "cat", "##ing", "the", 1000, 2023]
    m = llmdbg.embed_tokens(model, tok, words, projection="pca")
    W = model.embeddings.word_embeddings.weight.detach().numpy()
    want_ids = [
        tok.vocab["paris"],
        tok.vocab["london"],
        tok.vocab["france"],
        tok.vocab["dog"],
        tok.vocab["cat"],
        tok.vocab["##ing"],
        tok.vocab["the"],
        1000,
        2023,
    ]
    assert m.ids.tolist() == want_ids
    np.testing.assert_array_equal(m.vectors, W[want_ids])
    assert m.labels[:7] == ["paris", "london", "france", "dog", "cat", "##ing", "the"]
    assert m.labels[7:] == tok.convert_ids_to_tokens([1000, 2023])
    assert m.coords.shape == (9, 2) and m.coords.dtype == np.float32
    _same_up_to_sign(m.coords, _pca_reference(W[want_ids]), 1e-4)
    assert np.asarray(m).shape == (9, 2)


def test_embed_tokens_word_that_is_one_piece_after_tokenisation(minilm):
    model, tok = minilm
    # "Paris" is not a vocabulary entry of the uncased vocabulary, but tokenises to "paris".
    m = llmdbg.embed_tokens(model, tok, ["Paris", "dog", "cat", "fox"], projection="pca")
    assert m.ids[0] == tok.vocab["paris"]


def test_embed_tokens_sample_of_the_vocabulary_with_tsne(minilm):
    model, tok = minilm
    W = model.get_input_embeddings().weight.detach().numpy()
    m = llmdbg.embed_tokens(model, tok, max_tokens=300, random_state=3, tsne={"n_iter": 300})
    assert len(m) == 300 and len(set(m.ids.tolist())) == 300
    assert np.all(np.diff(m.ids) > 0) and m.ids.max() < W.shape[0]
    np.testing.assert_array_equal(m.vectors, W[m.ids])
    assert m.labels == tok.convert_ids_to_tokens(m.ids.tolist())
    assert m.coords.shape == (300, 2) and np.isfinite(m.coords).all()
    assert m.info["projection"] == "tsne" and m.info["perplexity"] == 30.0
    # Same seed, same map; a different seed draws other tokens.
    again = llmdbg.embed_tokens(model, tok, max_tokens=300, random_state=3, tsne={"n_iter": 300})
    np.testing.assert_array_equal(again.coords, m.coords)
    other = llmdbg.embed_tokens(model, tok, max_tokens=300, random_state=4, projection="pca")
    assert other.ids.tolist() != m.ids.tolist()


def test_embed_tokens_small_subset_clamps_perplexity_and_accepts_an_estimator(bert):
    m = llmdbg.embed_tokens(bert, None, list(range(10, 22)))
    assert m.labels == [str(i) for i in range(10, 22)]
    assert m.info["perplexity"] < 11 / 3  # clamped below (N - 1) / 3 for N = 12
    W = bert.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(m.vectors, W[10:22])

    class Fixed:
        def fit_transform(self, X):
            return X[:, :2] * 2

    m2 = llmdbg.embed_tokens(bert, None, [5, 6, 7, 8], tsne=Fixed())
    np.testing.assert_allclose(m2.coords, W[5:9, :2] * 2, rtol=1e-6)
    # A raw (V, D) matrix works too.
    m3 = llmdbg.embed_tokens(W, None, [5, 6, 7, 8], projection="pca")
    np.testing.assert_array_equal(m3.vectors, W[5:9])


@pytest.mark.parametrize(
    "tokens, exc, match",
    [
        (["dog", "zzqxjv"], ValueError, "not one token"),
        ([5, 10**6], ValueError, "outside the vocabulary"),
        ([-1, 2], ValueError, "outside the vocabulary"),
        ([True, 2], TypeError, "token strings or integer ids"),
        ([1.5, 2], TypeError, "token strings or integer ids"),
        ("dog", TypeError, "single string"),
        ([], ValueError, "empty"),
    ],
)
def test_embed_tokens_bad_tokens(minilm, tokens, exc, match):
    model, tok = minilm
    with pytest.raises(exc, match=match):
        llmdbg.embed_tokens(model, tok, tokens, projection="pca")


def test_embed_tokens_bad_arguments(bert):
    with pytest.raises(ValueError, match="max_tokens"):
        llmdbg.embed_tokens(bert, None, max_tokens=2)
    with pytest.raises(ValueError, match="need a tokenizer"):
        llmdbg.embed_tokens(bert, None, ["dog"])
    with pytest.raises(ValueError, match="projection"):
        llmdbg.embed_tokens(bert, None, [1, 2, 3, 4], projection="umap")
    with pytest.raises(ValueError, match="at least 4 points"):
        llmdbg.embed_tokens(bert, None, [1, 2, 3])
    with pytest.raises(TypeError, match="tsne"):
        llmdbg.embed_tokens(bert, None, [1, 2, 3, 4], tsne="fast")
    with pytest.raises(TypeError, match="input embeddings"):
        llmdbg.embed_tokens(object(), None, [1, 2])
    W = bert.get_input_embeddings().weight.detach().numpy().copy()
    W[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        llmdbg.embed_tokens(W, None, [1, 2, 3, 4], projection="pca")


# ---------------------------------------------------------------------------------------------
# embed_hidden_states / pool_hidden_states
# ---------------------------------------------------------------------------------------------


def _capture(model, inputs):
    with llmdbg.capture(model, hidden_states=True) as trace, torch.no_grad():
        model(**inputs)
    return trace


def _torch_pool(model, inputs, layer: int, pooling: str) -> np.ndarray:
    """Independent reference: Hugging Face's own hidden_states, pooled in torch."""
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states[layer].double()
    mask = inputs["attention_mask"].double()
    if pooling == "mean":
        return ((hs * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy()
    if pooling == "cls":
        return hs[:, 0].numpy()
    last = inputs["attention_mask"].sum(1) - 1  # right padding
    return hs[torch.arange(hs.shape[0]), last].numpy()


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
@pytest.mark.parametrize("layer", [0, 1, -1])
def test_pooled_states_match_a_torch_reference(bert, pooling, layer):
    inputs = tiny_inputs("bert", batch=6, length=9)
    inputs["attention_mask"][2, 5:] = 0  # more padding than tiny_inputs' one position
    trace = _capture(bert, inputs)
    m = llmdbg.embed_hidden_states(trace, layer, pooling, projection="pca")
    want = _torch_pool(bert, inputs, layer, pooling)
    np.testing.assert_allclose(m.vectors, want, rtol=1e-5, atol=1e-6)
    assert m.vectors.dtype == np.float32 and m.coords.shape == (6, 2)
    _same_up_to_sign(m.coords, _pca_reference(m.vectors), 1e-4)
    assert m.labels == [str(i) for i in range(6)] and m.ids.tolist() == list(range(6))
    # Padding never counts: the mean differs from the unmasked mean for the padded sequence.
    if pooling == "mean":
        unmasked = pool_hidden_states(trace.hidden_states[layer], None, "mean")
        assert np.abs(unmasked[2] - m.vectors[2]).max() > 1e-3
        np.testing.assert_allclose(unmasked[0], m.vectors[0], rtol=1e-5, atol=1e-6)


def test_embed_hidden_states_tsne_and_labels(bert):
    inputs = tiny_inputs("bert", batch=8, length=6)
    trace = _capture(bert, inputs)
    m = llmdbg.embed_hidden_states(trace, -1, labels=list("abcdefgh"))
    assert m.labels == list("abcdefgh")
    assert m.coords.shape == (8, 2) and np.isfinite(m.coords).all()
    assert m.info["pooling"] == "mean" and m.info["layer"] == -1


def test_embed_hidden_states_by_module_name_and_token_labels(minilm):
    model, tok = minilm
    batch = tok(["a cat", "the dog barks", "hello"], return_tensors="pt", padding=True)
    with llmdbg.capture(model, "encoder.layer.2", tokenizer=tok) as trace, torch.no_grad():
        model(**batch)
    m = llmdbg.embed_hidden_states(trace, "encoder.layer.2", "mean", projection="pca")
    with torch.no_grad():
        hs = model(**batch, output_hidden_states=True).hidden_states[3].double()
    mask = batch["attention_mask"].double()
    want = ((hs * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy()
    np.testing.assert_allclose(m.vectors, want, rtol=1e-4, atol=1e-5)
    # Labels: the real tokens of each sequence, padding left out.
    assert m.labels[2] == "[CLS] hello [SEP]"


def test_pool_last_with_left_padding():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    last = pool_hidden_states(h, mask, "last")
    np.testing.assert_array_equal(last, h[[0, 1, 2], [4, 4, 2]])
    mean = pool_hidden_states(h, mask, "mean")
    np.testing.assert_allclose(mean[1], h[1, 2:].astype(np.float64).mean(0), rtol=1e-6)


def test_embed_hidden_states_bad_input(bert):
    inputs = tiny_inputs("bert", batch=5, length=6)
    trace = _capture(bert, inputs)
    with pytest.raises(IndexError, match="out of range"):
        llmdbg.embed_hidden_states(trace, 7)
    with pytest.raises(KeyError, match="no activations"):
        llmdbg.embed_hidden_states(trace, "encoder.layer.9")
    with pytest.raises(TypeError, match="layer"):
        llmdbg.embed_hidden_states(trace, 1.0)
    with pytest.raises(ValueError, match="pooling"):
        llmdbg.embed_hidden_states(trace, 1, "max")
    with pytest.raises(ValueError, match="labels"):
        llmdbg.embed_hidden_states(trace, 1, labels=["a", "b"])
    small = _capture(bert, tiny_inputs("bert", batch=3, length=6))
    with pytest.raises(ValueError, match="at least 4 points"):
        llmdbg.embed_hidden_states(small, 1)
    with llmdbg.capture(bert, "encoder.layer.0") as no_hidden, torch.no_grad():
        bert(**inputs)
    with pytest.raises(ValueError, match="hidden_states=True"):
        llmdbg.embed_hidden_states(no_hidden, 0)
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        pool_hidden_states(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="attention_mask"):
        pool_hidden_states(np.zeros((2, 3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="no real token"):
        pool_hidden_states(np.zeros((2, 3, 4)), np.array([[1, 1, 0], [0, 0, 0]]))


# ---------------------------------------------------------------------------------------------
# plot.embedding
# ---------------------------------------------------------------------------------------------


def _scatter(fig: Figure) -> PathCollection:
    cols = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert len(cols) == 1
    return cols[0]


def test_plot_embedding_shows_the_points_labels_and_texts():
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((40, 2))
    labels = ["a"] * 20 + ["b"] * 20
    texts = [f"t{i}" for i in range(40)]
    fig = plot.embedding(Y, labels=labels, texts=texts, max_texts=10, title="map")
    assert isinstance(fig, Figure)
    np.testing.assert_allclose(_scatter(fig).get_offsets(), Y)
    ax = fig.axes[0]
    assert len(ax.texts) == 10 and {t.get_text() for t in ax.texts} <= set(texts)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert len(set(map(tuple, _scatter(fig).get_facecolors()))) == 2
    assert ax.get_title() == "map"


def test_plot_embedding_of_a_map_annotates_its_labels():
    m = EmbeddingMap(
        coords=np.array([[0, 0], [1, 1], [2, 0]], np.float32),
        labels=["x", "y", "z"],
        ids=np.arange(3),
        vectors=np.zeros((3, 4), np.float32),
    )
    fig = m.plot()
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["x", "y", "z"]
    assert fig.axes[0].get_legend() is None
    fig2 = plot.embedding(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), max_texts=0)
    np.testing.assert_allclose(_scatter(fig2).get_offsets(), [[0, 1], [2, 3]])


def test_plot_embedding_bad_input():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plot.embedding(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        plot.embedding(np.array([[0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="labels"):
        plot.embedding(np.zeros((5, 2)), labels=["a"] * 4)
    with pytest.raises(TypeError, match="texts"):
        plot.embedding(np.zeros((5, 2)), texts="abc")
    with pytest.raises(ValueError, match="max_texts"):
        plot.embedding(np.zeros((5, 2)), max_texts=-1)
    with pytest.raises(TypeError, match="Y"):
        plot.embedding(object())


# ---------------------------------------------------------------------------------------------
# issue 19: tiny sets and values beyond float32
# ---------------------------------------------------------------------------------------------


def test_four_rows_get_a_default_tsne_map():
    """The default perplexity for 4 points was floor(100 * 3 / 3) / 100 - 0.01 = 0.99, which
    TSNE refuses (perplexity must be >= 1)."""
    W = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    m = llmdbg.embed_tokens(W, progress=False, tsne={"n_iter": 30, "exaggeration_iter": 10})
    assert m.coords.shape == (4, 2) and np.isfinite(m.coords).all() and m.info["perplexity"] == 1.0


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_pool_hidden_states_refuses_values_beyond_float32(pooling):
    """float64 states of 1e300 pooled to inf in the float32 result (with a cast warning)."""
    h = np.ones((2, 3, 4))
    h[:, :, 1] = 1e300
    with pytest.raises(ValueError, match="hidden states: values beyond the float32 range"):
        pool_hidden_states(h, None, pooling)
    h[:, :, 1] = 1e30  # within float32: pooled as they are
    out = pool_hidden_states(h, None, pooling)
    np.testing.assert_allclose(out[:, 1], 1e30, rtol=1e-6)


def test_pool_hidden_states_bad_input_names_it():
    with pytest.raises(ValueError, match="hidden states: no positions"):
        pool_hidden_states(np.zeros((2, 0, 3)), None, "cls")  # used to raise a bare IndexError
    with pytest.raises(TypeError, match="hidden states: expected real numbers"):
        pool_hidden_states(np.zeros((2, 3, 4), dtype=np.complex64), None, "mean")
    bf16 = pool_hidden_states(torch.ones(2, 3, 4, dtype=torch.bfloat16), None, "mean")
    np.testing.assert_array_equal(bf16, np.ones((2, 4), np.float32))


def test_embed_tokens_refuses_an_empty_or_out_of_range_matrix():
    with pytest.raises(ValueError, match="model: the embedding matrix .* has no columns"):
        llmdbg.embed_tokens(np.zeros((10, 0)), projection="pca", progress=False)
    with pytest.raises(ValueError, match="model: the selected embedding rows exceed the float32 range"):
        llmdbg.embed_tokens(np.full((10, 3), 1e300) * np.arange(10)[:, None], projection="pca", progress=False)


def test_mean_pooling_ignores_non_finite_padding():
    """inf or NaN at a padding position made the mean NaN (0 * inf in the masked sum)."""
    h = np.random.default_rng(0).standard_normal((2, 4, 3))
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    ref = np.stack([h[0, :3].mean(0), h[1, :2].mean(0)])
    h[0, 3] = np.inf
    h[1, 2:] = np.nan
    np.testing.assert_allclose(pool_hidden_states(h, mask, "mean"), ref, rtol=1e-6)
