"""The embedding and training views' Python side: their payloads hold exactly the objects' own
numbers, sizes are refused with a way out, bad input is named, and show() picks them. What they
draw is tested in a browser (test_views_browser_maps.py)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import llmdbg
from llmdbg.embedding.maps import EmbeddingMap
from llmdbg.training import Event
from llmdbg.widgets import PayloadTooLargeError, View, show
from llmdbg.widgets._payload import decode_array
from llmdbg.widgets.embedding import embedding_view
from llmdbg.widgets.training import training_view
from tiny_models import one_thread, tiny_model  # noqa: F401  (autouse fixture: one thread)

HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "</script><!--"]


def _payload(view: View) -> dict:
    return json.loads(view.payload_json)


def _map(n: int = 50, seed: int = 0) -> EmbeddingMap:
    rng = np.random.default_rng(seed)
    coords = rng.normal(size=(n, 2)).astype(np.float32)
    labels = [f"tok{i % 7}" for i in range(n)]
    labels[:3] = HOSTILE
    return EmbeddingMap(coords=coords, labels=labels, ids=np.arange(n), vectors=np.zeros((n, 3), np.float32))


# -- embedding ------------------------------------------------------------------------------------
def test_embedding_payload_holds_the_map_coordinates_and_labels():
    model = tiny_model("bert")
    m = llmdbg.embed_tokens(model, projection="pca", max_tokens=None)  # the 100 rows of the tiny vocabulary
    v = show(m)
    assert isinstance(v, View) and v.name == "embedding"
    p = _payload(v)
    assert p["n"] == p["total"] == len(m) == 100
    coords = decode_array(p["coords"])
    assert coords.dtype == np.float32
    np.testing.assert_array_equal(coords, m.coords)
    strings, index = p["labels"]["strings"], decode_array(p["labels"]["index"])
    assert index.dtype == np.uint32 and len(strings) == len(set(strings))
    assert [strings[i] for i in index] == m.labels
    assert p["colorings"] == [{"name": "label", "labels": True}]


def test_embedding_colourings_are_categories_with_an_index_per_point():
    m = _map(60)
    clusters = np.arange(60) % 3 * 10  # 0, 10, 20
    layers = ["L1" if i < 30 else "L0" for i in range(60)]
    p = _payload(embedding_view(m, clusters=clusters, layers=layers, color_by={"class": list("ab") * 30}))
    by = {c["name"]: c for c in p["colorings"]}
    assert list(by) == ["class", "cluster", "layer", "label"]
    assert by["cluster"]["names"] == ["0", "10", "20"]  # numbers in numeric order
    np.testing.assert_array_equal(decode_array(by["cluster"]["index"]), clusters // 10)
    assert by["layer"]["names"] == ["L1", "L0"]  # strings in first-seen order
    assert [by["layer"]["names"][i] for i in decode_array(by["layer"]["index"])] == layers
    assert [by["class"]["names"][i] for i in decode_array(by["class"]["index"])] == list("ab") * 30
    # a colouring named "label" (a dataset's labels) replaces the labels' own
    q = _payload(embedding_view(m, color_by={"label": [i % 2 for i in range(60)]}))
    assert [c["name"] for c in q["colorings"]] == ["label"] and q["colorings"][0]["names"] == ["0", "1"]


def test_embedding_sample_is_a_seeded_subset_of_the_points():
    m = _map(500)
    p = _payload(embedding_view(m, sample=100, random_state=3, clusters=np.arange(500)))
    assert p["n"] == 100 and p["total"] == 500
    keep = np.sort(np.random.default_rng(3).choice(500, 100, replace=False))
    np.testing.assert_array_equal(decode_array(p["coords"]), m.coords[keep])
    cl = p["colorings"][0]
    assert [int(cl["names"][i]) for i in decode_array(cl["index"])] == keep.tolist()
    strings = p["labels"]["strings"]
    assert [strings[i] for i in decode_array(p["labels"]["index"])] == [m.labels[i] for i in keep]


def test_embedding_over_the_limit_names_a_sample():
    m = _map(20_000)
    with pytest.raises(PayloadTooLargeError, match=r"sample=5,000"):
        embedding_view(m, max_bytes=100_000)
    small = embedding_view(m, max_bytes=100_000, sample=5_000)  # what the message suggested fits
    assert _payload(small)["n"] == 5_000


def test_embedding_hostile_labels_stay_data_in_the_html():
    v = embedding_view(_map(10))
    html = v.to_html()
    payload = html.split('type="application/json"', 1)[1].split("</script>", 1)[0]
    assert "<script" not in payload and "<img" not in payload and "<!--" not in payload
    assert _payload(v)["labels"]["strings"][:3] == HOSTILE


def test_embedding_plain_coordinates_and_an_empty_map():
    p = _payload(embedding_view(np.array([[0.0, 1.0], [2.0, 3.0]]), labels=["a", "b"]))
    assert p["n"] == 2 and p["labels"]["strings"] == ["a", "b"]
    empty = _payload(embedding_view(np.zeros((0, 2))))
    assert empty["n"] == 0 and "empty" in empty["empty"]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"obj": np.zeros((5, 3))}, TypeError, r"\(N, 2\)"),
        ({"obj": "points"}, TypeError, "EmbeddingMap"),
        ({"obj": np.array([[0.0, np.nan]])}, ValueError, "NaN"),
        ({"labels": ["a"]}, ValueError, "labels: expected 10"),
        ({"clusters": [1, 2]}, ValueError, r"color_by\['cluster'\]: expected 10"),
        ({"color_by": {"x": "abcdefghij"}}, ValueError, "a string"),
        ({"sample": 0}, ValueError, "sample: expected a positive int"),
        ({"sample": True}, ValueError, "sample"),
    ],
)
def test_embedding_bad_input_is_named(kwargs, exc, match):
    obj = kwargs.pop("obj", _map(10))
    with pytest.raises(exc, match=match):
        embedding_view(obj, **kwargs)


# -- training -------------------------------------------------------------------------------------
def _watch(steps: int = 40, spike: int | None = 30):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = llmdbg.watch(model, opt, every=10)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(steps):
            loss = ((model(x) - y) ** 2).mean()
            if i == spike:
                loss = loss * 1000
            loss.backward()
            w.step(loss=loss)
            opt.step()
            opt.zero_grad()
    return w


def test_training_payload_holds_the_history_and_the_events(tmp_path):
    w = _watch()
    w.eval(20, val_loss=0.75)
    w.state.events.append(Event(step=5, module=HOSTILE[1], kind="custom", severity="low", message=HOSTILE[0]))
    p = _payload(show(w))
    hist = w.history
    steps = decode_array(p["steps"])
    assert p["n"] == len(hist) == 40
    np.testing.assert_array_equal(steps, hist.index.to_numpy())
    series = {s["name"]: decode_array(s["values"]) for s in p["series"]}
    assert list(series) == ["loss", "grad_norm"]
    np.testing.assert_allclose(series["loss"], hist["loss"].to_numpy(np.float32), rtol=0)
    np.testing.assert_allclose(series["grad_norm"], hist["grad_norm"].to_numpy(np.float32), rtol=0)
    assert p["series"][0]["log"] is True  # the x1000 spike spans more than two decades
    np.testing.assert_array_equal(decode_array(p["nonfinite"]), hist["nonfinite"].to_numpy().astype(np.uint8))
    np.testing.assert_array_equal(decode_array(p["val"]["steps"]), [20])
    np.testing.assert_allclose(decode_array(p["val"]["values"]), [0.75])
    frame = w.events_frame()
    assert len(p["events"]) == len(frame) and any(e["kind"] == "loss_spike" and e["step"] == 30 for e in p["events"])
    base = ["step", "module", "kind", "severity", "message"]
    assert [{k: e[k] for k in base} for e in p["events"]] == frame[base].to_dict(orient="records")
    assert [e["advice"] for e in p["events"]] == [list(e.advice) for e in w.events]
    assert all(e["rank"] is None for e in p["events"])
    assert p["events"][-1]["message"] == HOSTILE[0] and p["events"][-1]["module"] == HOSTILE[1]
    # the saved and reloaded history gives the same view
    w.close()
    back = llmdbg.load(w.save(tmp_path / "run"))
    q = _payload(show(back))
    assert q["events"] == p["events"] and q["steps"] == p["steps"] and q["series"] == p["series"]


def test_training_nonfinite_and_missing_values():
    w = _watch(steps=6, spike=None)
    w.state.rows[2]["loss"] = float("nan")
    w.state.rows[2]["nonfinite"] = True
    w.state.rows[3]["grad_norm"] = None
    p = _payload(training_view(w, series=("loss", "grad_norm", "lr", "not_recorded")))
    series = {s["name"]: decode_array(s["values"]) for s in p["series"]}
    assert list(series) == ["loss", "grad_norm", "lr"]  # never-recorded columns are left out
    assert np.isnan(series["loss"][2]) and np.isnan(series["grad_norm"][3])
    np.testing.assert_allclose(series["lr"], 0.01)
    assert decode_array(p["nonfinite"]).tolist() == [0, 0, 1, 0, 0, 0]
    w.close()


def test_training_empty_run_says_no_data_and_events_are_capped():
    model = torch.nn.Linear(2, 1)
    w = llmdbg.watch(model)
    p = _payload(training_view(w))
    assert p["n"] == 0 and p["events"] == [] and p["empty"].startswith("No data")
    for k in range(5):
        w.state.events.append(Event(step=k, module="", kind="custom", severity="info", message=str(k)))
    q = _payload(training_view(w, max_events=2))
    assert [e["message"] for e in q["events"]] == ["0", "1"] and q["events_left_out"] == 3 and "empty" not in q
    w.close()


def test_training_bad_input_and_size_limit():
    with pytest.raises(TypeError, match="Watch"):
        training_view(object())
    with pytest.raises(TypeError, match="show\\(\\) has a view for"):
        show(42)
    w = _watch(steps=12, spike=None)
    with pytest.raises(PayloadTooLargeError, match="shorter run"):
        training_view(w, max_bytes=100)
    w.close()
