"""Attribution, GenerationAttribution and Watch histories saved and loaded: every field back with
its type, dtype and shape (arrays bit for bit), the watch's tables equal as DataFrames, the views
working on the loaded objects without a model, and nothing pickled."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf

import llmdbg
import pickle_free
from llmdbg._internal.archive import META_FILE, VERSION
from llmdbg.attribution.persist import load_attribution, load_generation_attribution
from llmdbg.saved.load import load
from llmdbg.training.persist import WatchHistory, load_watch
from pickle_free import assert_no_pickle
from tiny_models import (
    CONFIGS,
    minilm_tokenizer,
    one_thread,  # noqa: F401  (autouse fixture: tiny models on one thread)
    tiny_inputs,
)

no_unpickling = pickle_free.no_unpickling  # the fixture, shared with the other saved-object tests


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_same_result(a, b) -> None:
    """Every dataclass field equal, with the same type; arrays bit-equal."""
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert type(x) is type(y), f.name
        if isinstance(x, np.ndarray):
            assert _same(x, y), f.name
        elif isinstance(x, dict):
            assert list(x) == list(y) and all(_same(x[k], y[k]) for k in x), f.name
        else:
            assert x == y, f.name


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    return tf.GPT2LMHeadModel(CONFIGS["gpt2"]()).eval()


# -- Attribution --------------------------------------------------------------------------------------
def test_integrated_gradients_with_a_tokenizer(tmp_path, no_unpickling):
    tok = minilm_tokenizer()
    torch.manual_seed(0)
    cfg = CONFIGS["bert"]()
    cfg.vocab_size, cfg.num_labels = tok.vocab_size, 3
    model = tf.BertForSequenceClassification(cfg).eval()
    a = llmdbg.integrated_gradients(
        model, ["tokenization works", "a b"], tokenizer=tok, method="adaptive", max_evals=30, progress=False
    )
    assert a.word_ids is not None and any(None in row for row in a.word_ids)
    assert a.delta is not None and a.converged is not None
    path = a.save(tmp_path / "a")
    b = load(path)
    assert_same_result(a, b)
    assert b.words() == a.words() and b.to_html() == a.to_html() and repr(b) == repr(a)
    assert _same(b.relative_delta, a.relative_delta)
    assert_no_pickle(path)
    assert_same_result(a, load_attribution(path))


def test_continuation_per_target(tmp_path, gpt2):
    a = llmdbg.integrated_gradients(
        gpt2,
        {"input_ids": tiny_inputs("gpt2", batch=2)["input_ids"]},
        target=torch.tensor([[3, 4, 5], [6, 7, 8]]),
        n_steps=4,
        progress=False,
    )
    assert a.per_target and a.scores.ndim == 3
    b = load(a.save(tmp_path / "a"))
    assert_same_result(a, b)
    for t in (None, 1):
        assert _same(a.token_scores(1, t), b.token_scores(1, t))
    from matplotlib.figure import Figure

    assert isinstance(b.plot(), Figure)


def test_hand_made_attribution_with_none_fields_and_odd_values(tmp_path):
    a = llmdbg.Attribution(
        scores=np.array([[0.5, np.nan, -0.0, 0.0]], np.float32).T[:, :1].T,  # a non-contiguous view
        tokens=[["[CLS]", "é", "▁x", ""]],
        mask=np.array([[True, True, True, False]]),
        delta=None,
        n_evals=np.array([3]),
        target=None,
        method="saliency",
        word_ids=[[None, 0, 0, None]],
        per_target=False,
    )
    b = load(a.save(tmp_path / "a"))
    assert_same_result(a, b)
    assert b.delta is None and b.target is None and b.target_tokens is None and b.word_ids == [[None, 0, 0, None]]
    with pytest.raises(ValueError, match="neither a numpy array nor plain JSON"):
        dataclasses.replace(a, method=object()).save(tmp_path / "bad")
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_numpy_scalars_keep_their_type(tmp_path, gpt2):
    g = llmdbg.attribute_generation(gpt2, None, torch.tensor([[5, 9, 11]]), max_new_tokens=2, n_steps=4, progress=False)
    g = dataclasses.replace(g, n_evals=np.int64(g.n_evals), prompt_length=np.int32(g.prompt_length))
    b = load(g.save(tmp_path / "g"))
    assert type(b.n_evals) is np.int64 and type(b.prompt_length) is np.int32
    assert_same_result(g, b)


# -- GenerationAttribution -----------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["prompt+generated", "prompt"])
def test_generation_attribution(tmp_path, gpt2, source):
    g = llmdbg.attribute_generation(
        gpt2, None, torch.tensor([[5, 9, 11, 4]]), max_new_tokens=3, n_steps=4, source=source, progress=False
    )
    assert g.delta is not None and set(g.step_scores) == {"probability", "surprisal", "entropy"}
    path = g.save(tmp_path / "g")
    assert_no_pickle(path)
    b = load(path)
    assert_same_result(g, b)
    assert_same_result(g, load_generation_attribution(path))
    pd.testing.assert_frame_equal(g.to_frame(), b.to_frame())
    assert _same(g.sequence_scores, b.sequence_scores)
    assert g._repr_html_() == b._repr_html_() and repr(g) == repr(b)
    with pytest.raises(ValueError, match="holds a saved 'generation_attribution', not 'attribution'"):
        load_attribution(path)


def test_result_refusals(tmp_path):
    from llmdbg.attribution.persist import save_result

    with pytest.raises(TypeError, match="result must be an llmdbg.Attribution or llmdbg.GenerationAttribution"):
        save_result({"scores": 1}, tmp_path / "x")
    a = llmdbg.Attribution(
        scores=np.zeros((1, 2), np.float32),
        tokens=[["a", "b"]],
        mask=np.ones((1, 2), bool),
        delta=None,
        n_evals=np.array([1]),
        target=None,
        method="x",
    )
    path = a.save(tmp_path / "a")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        a.save(path)
    a.method = "y"
    a.save(path, overwrite=True)
    assert load(path).method == "y"
    meta = json.loads((path / META_FILE).read_text())
    (path / META_FILE).write_text(json.dumps({**meta, "version": VERSION + 1}))
    with pytest.raises(ValueError, match=f"format version {VERSION + 1}.*upgrade llmdbg"):
        load(path)
    del meta["layout"]["method"]
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="corrupted saved Attribution: KeyError"):
        load(path)


# -- Watch ---------------------------------------------------------------------------------------------
def _watched_run():
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(CONFIGS["gpt2"]()).train()
    model.transformer.wpe.weight.requires_grad_(False)  # a frozen_parameters event
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    with llmdbg.watch(model, opt, every=2) as w:
        for i in range(5):
            inputs = tiny_inputs("gpt2", seed=i)
            model(**inputs, labels=inputs["input_ids"]).loss.backward()
            if i == 3:  # a non-finite step: an event, a NaN loss and a missing metric
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    w.step(loss=float("nan"))
            else:
                w.step(metrics={"acc": 0.25 * i} if i % 2 else None)
            opt.step()
            opt.zero_grad()
            if i in (1, 4):
                w.eval(i, val_loss=4.0 + i, metrics={"f1": 0.5})
    return w


@pytest.fixture(scope="module")
def watched():
    return _watched_run()


def test_watch_history_round_trip(tmp_path, watched, no_unpickling):
    w = watched
    assert len(w.events) >= 2 and {"frozen_parameters"} < {e.kind for e in w.events}
    assert w.history["loss"].isna().any() and "acc" in w.history and "val_f1" in w.history
    assert w.histograms["grads"] and w.histograms["activations"] and len(w.activations)
    path = w.save(tmp_path / "w")
    assert_no_pickle(path)
    h = load(path)
    assert isinstance(h, WatchHistory) and h.steps == w.state.step == 5 and h.every == 2
    assert h.model_name == "GPT2LMHeadModel" and "steps=5" in repr(h)
    assert h.events == w.events
    pd.testing.assert_frame_equal(h.history, w.history)
    pd.testing.assert_frame_equal(h.layers, w.layers)
    pd.testing.assert_frame_equal(h.activations, w.activations)
    pd.testing.assert_frame_equal(h.events_frame(), w.events_frame())
    assert h.histograms.keys() == w.histograms.keys()
    for kind, by_name in w.histograms.items():
        assert list(h.histograms[kind]) == list(by_name)
        for name, by_step in by_name.items():
            assert list(h.histograms[kind][name]) == list(by_step)
            assert all(_same(v, h.histograms[kind][name][s]) for s, v in by_step.items())
    # The rows themselves, with their Python types (int steps, None, bool flags, NaN).
    for t in ("rows", "eval_rows", "layer_rows", "act_rows"):
        a, b = getattr(w.state, t), getattr(h.state, t)
        assert [list(r) for r in a] == [list(r) for r in b], t
        assert [[type(v) for v in r.values()] for r in a] == [[type(v) for v in r.values()] for r in b], t
        assert repr(a) == repr(b), t
    assert h._repr_html_() == w._repr_html_()  # the watch is closed too


def test_watch_history_views_and_resave(tmp_path, watched):
    from matplotlib.figure import Figure

    from llmdbg.report.page import Report

    h = load(watched.save(tmp_path / "w"))
    assert isinstance(h.plot(), Figure)
    report = Report("t")
    h.add_to_report(report)
    page = report.to_html()
    assert "Training run" in page and "frozen_parameters" in page and "5 optimizer steps" in page
    again = load_watch(h.save(tmp_path / "w2"))
    pd.testing.assert_frame_equal(again.history, watched.history)
    assert again.events == watched.events


def test_empty_watch_and_rows_with_odd_cells(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    w = llmdbg.watch(model, every=1)
    w.close()
    h = load(w.save(tmp_path / "empty"))
    assert h.steps == 0 and h.events == [] and len(h.history) == 0 and len(h.layers) == 0
    pd.testing.assert_frame_equal(h.history, w.history)
    pd.testing.assert_frame_equal(h.layers, w.layers)
    # Cells a row may hold: missing keys, None, bools, big ints, -0.0, NaN payloads, strings, lists.
    nan = np.array([0x7FF8000000000123], dtype=np.uint64).view(np.float64)[0]
    w.state.rows = [
        {"step": 0, "loss": -0.0, "lr": None, "nonfinite": False, "note": "é"},
        {"step": 1, "loss": float(nan), "grad_norm": 2.5, "nonfinite": True, "big": 2**70, "tags": [1, "a"]},
        {"step": 2, "loss": np.float64(1.5), "flag": np.bool_(True), "n": np.int64(7)},
    ]
    h = load(w.save(tmp_path / "odd"))
    got = h.state.rows
    assert [list(r) for r in got] == [list(r) for r in w.state.rows]
    assert got[0]["lr"] is None and got[0]["nonfinite"] is False and got[0]["note"] == "é"
    assert np.float64(got[0]["loss"]).tobytes() == np.float64(-0.0).tobytes()
    assert np.float64(got[1]["loss"]).tobytes() == nan.tobytes()
    assert got[1]["big"] == 2**70 and got[1]["tags"] == [1, "a"] and got[2]["flag"] is True and got[2]["n"] == 7
    pd.testing.assert_frame_equal(h.history, w.history)


def test_watch_refusals(tmp_path, watched):
    from llmdbg.training.persist import save_watch

    with pytest.raises(TypeError, match="watch must be an llmdbg.Watch or a loaded WatchHistory, got str"):
        save_watch("w", tmp_path / "x")
    path = watched.save(tmp_path / "w")
    with pytest.raises(ValueError, match="holds a saved 'watch', not 'trace'"):
        from llmdbg.tracing.persist import load_trace

        load_trace(path)
    meta = json.loads((path / META_FILE).read_text())
    meta["tables"]["rows"]["columns"][0]["name"] = None
    del meta["events"]
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="corrupted saved watch: KeyError"):
        load(path)
