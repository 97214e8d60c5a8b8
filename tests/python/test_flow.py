"""attention_flow against a faithful networkx version of Abnar & Zuidema's compute_flows (one
Edmonds–Karp max-flow per (output, input) pair on the layered graph), plus padding, rows, threads,
Traces and bad inputs."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

import llmdbg
from llmdbg.attention import attention_flow, attention_rollout
from tiny_models import tiny_inputs, tiny_model


def softmax_maps(l=3, b=2, h=3, t=6, seed=0, dtype=np.float32):
    x = np.random.default_rng(seed).standard_normal((l, b, h, t, t)) * 2
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(dtype)


def residual_maps(maps, fusion="mean"):
    """(L, T, T) Â_l of one sequence as in the reference notebook: fuse heads, + I, normalise."""
    reduce = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
    a = reduce(maps.astype(np.float64), axis=1)
    a = a + np.eye(a.shape[-1])
    return a / a.sum(-1, keepdims=True)


def networkx_flow(mats):
    """The paper's algorithm (attention_graph_util.py: get_adjmat, compute_flows), ported to
    networkx 3 (from_numpy_matrix is gone): node l*T + i is token i at layer l (0 = input), edge
    (l, i) -> (l-1, j) has capacity mats[l-1][i, j]; one Edmonds–Karp max-flow from every output
    node to every input node; each row normalised to sum 1."""
    n_layers, t, _ = mats.shape
    size = (n_layers + 1) * t
    adj = np.zeros((size, size))
    for i in range(1, n_layers + 1):
        for k_f in range(t):
            for k_t in range(t):
                adj[i * t + k_f, (i - 1) * t + k_t] = mats[i - 1][k_f][k_t]
    graph = nx.from_numpy_array(adj, create_using=nx.DiGraph())
    for u, v in graph.edges():
        graph[u][v]["capacity"] = adj[u, v]
    flows = np.zeros((t, t))
    for u in range(t):
        for v in range(t):
            flows[u, v] = nx.maximum_flow_value(graph, n_layers * t + u, v, flow_func=nx.algorithms.flow.edmonds_karp)
        flows[u] /= flows[u].sum()
    return flows


@pytest.mark.parametrize("seed", range(6))
def test_equals_networkx_edmonds_karp(seed):
    rng = np.random.default_rng(seed)
    l, t = int(rng.integers(1, 4)), int(rng.integers(2, 7))
    maps = softmax_maps(l=l, b=2, t=t, seed=seed)
    if seed % 2:  # sparse maps: many zero capacities
        maps = np.where(rng.random(maps.shape) < 0.5, 0, maps**3)
        maps[..., np.arange(t), np.arange(t)] += 0.01
        maps = (maps / maps.sum(-1, keepdims=True)).astype(np.float32)
    got = attention_flow(maps)
    assert got.dtype == np.float32 and got.shape == (2, t, t)
    for b in range(2):
        want = networkx_flow(residual_maps(maps[:, b]))
        assert np.abs(got[b] - want).max() <= 1e-6
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("fusion", ["max", "min"])
def test_head_fusion_matches_networkx(fusion):
    maps = softmax_maps(l=2, b=1, t=5, seed=7)
    got = attention_flow(maps, head_fusion=fusion)
    np.testing.assert_allclose(got[0], networkx_flow(residual_maps(maps[:, 0], fusion)), atol=1e-6)


def test_one_layer_flow_is_the_residual_map():
    maps = softmax_maps(l=1, b=2, t=8, seed=8)
    want = np.stack([residual_maps(maps[:, b])[0] for b in range(2)])
    np.testing.assert_allclose(attention_flow(maps), want, atol=1e-6)


def test_without_residual_rows_still_sum_to_one():
    maps = softmax_maps(l=3, b=1, t=7, seed=9)
    got = attention_flow(maps, residual=False)
    mats = maps[:, 0].astype(np.float64).mean(1)
    np.testing.assert_allclose(got[0], networkx_flow(mats), atol=1e-6)


def test_rows_and_padding():
    maps = softmax_maps(l=3, b=1, t=6, seed=10)
    full = attention_flow(maps)
    np.testing.assert_array_equal(attention_flow(maps, rows=[-1, 2, 2]), full[:, [5, 2, 2]])
    t, real = 9, np.array([0, 1, 3, 4, 6, 7])
    padded = np.random.default_rng(11).random((3, 1, 3, t, t)).astype(np.float32)
    padded[..., real[:, None], :] = 0
    padded[..., real[:, None], real[None, :]] = maps
    mask = np.isin(np.arange(t), real)[None].astype(int)
    got = attention_flow(padded, attention_mask=mask)
    expected = np.zeros((1, t, t), np.float32)
    expected[0][np.ix_(real, real)] = full[0]
    np.testing.assert_array_equal(got, expected)
    assert not attention_flow(padded, attention_mask=mask, rows=[2]).any()  # a padding row


def test_bitwise_identical_for_every_thread_count():
    maps = softmax_maps(l=4, b=2, t=20, seed=12)
    ref = attention_flow(maps, n_jobs=1)
    for n in (2, 3):
        np.testing.assert_array_equal(attention_flow(maps, n_jobs=n), ref)


def test_flow_differs_from_rollout_but_agrees_on_one_layer():
    maps = softmax_maps(l=3, b=1, t=6, seed=13)
    assert np.abs(attention_flow(maps) - attention_rollout(maps)).max() > 1e-3
    np.testing.assert_allclose(attention_flow(maps[:1]), attention_rollout(maps[:1]), atol=1e-6)


def test_trace_from_capture():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    with llmdbg.capture(model, attentions=True) as trace, torch.no_grad():
        model(**inputs)
    got = attention_flow(trace)
    assert got.shape == (2, 7, 7)
    np.testing.assert_array_equal(got, attention_flow(trace.attentions, attention_mask=inputs["attention_mask"]))
    assert not got[1, -1].any() and not got[1, :, -1].any()  # the padded position
    for b, n in ((0, 7), (1, 6)):
        want = networkx_flow(residual_maps(np.stack(trace.attentions)[:, b, :, :n, :n]))
        np.testing.assert_allclose(got[b, :n, :n], want, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    maps = softmax_maps()
    with pytest.raises(ValueError, match="one array of shape"):
        attention_flow(maps[0])
    with pytest.raises(ValueError, match="batch size and T must agree"):
        attention_flow([maps[0], softmax_maps(l=1, t=5)[0]])
    with pytest.raises(ValueError, match="must be square"):
        attention_flow([maps[0][..., :4]])
    nan = maps.copy()
    nan[2, 1, 0, 3, 1] = np.inf
    with pytest.raises(ValueError, match=r"attentions\[2\] contains NaN or Inf"):
        attention_flow(nan)
    with pytest.raises(ValueError, match="not 1; pass renormalize=True"):
        attention_flow(maps * 2)
    np.testing.assert_allclose(attention_flow(maps * 2, renormalize=True), attention_flow(maps), atol=1e-6)
    with pytest.raises(ValueError, match="head_fusion must be one of"):
        attention_flow(maps, head_fusion="median")
    with pytest.raises(ValueError, match=r"rows must be in \[-6, 6\) .* got 6"):
        attention_flow(maps, rows=[6])
    with pytest.raises(TypeError, match="discard_ratio"):
        attention_flow(maps, discard_ratio=0.5)  # not a flow option


def test_kernel_releases_the_gil():
    import threading
    import time

    maps = softmax_maps(l=6, b=1, t=40, seed=14)
    done = threading.Event()

    def work():
        attention_flow(maps, n_jobs=1)
        done.set()

    worker = threading.Thread(target=work)
    ticks = 0
    worker.start()
    while not done.is_set():  # Python keeps running here only if the kernel dropped the GIL
        ticks += 1
        time.sleep(0.001)
    worker.join()
    assert ticks > 10
