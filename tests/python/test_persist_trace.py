"""trace.save / llmdbg.load: every array, statistic, input, token, layout and generate() call comes
back bit for bit, and every function that accepts a Trace gives identical results on the loaded
one, which needs no model. Nothing under a saved trace is a pickle, and none is read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf

import llmdbg
import pickle_free
from llmdbg._internal.archive import META_FILE, VERSION
from llmdbg.saved.load import load
from llmdbg.tracing.persist import SavedStore, load_trace
from pickle_free import assert_no_pickle
from tiny_models import (
    CONFIGS,
    minilm_tokenizer,
    one_thread,  # noqa: F401  (autouse fixture: tiny models on one thread)
    tiny_inputs,
    tiny_model,
)

ROOT = Path(__file__).resolve().parents[2]

no_unpickling = pickle_free.no_unpickling  # the fixture, shared with the other saved-object tests


# -- comparisons ---------------------------------------------------------------------------------------
def _same(a, b) -> bool:
    """Bit-equal arrays: dtype, shape and raw bytes (NaN payloads included)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _same_value(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return _same(a, b)
    if isinstance(a, float):
        return type(b) is float and np.float64(a).tobytes() == np.float64(b).tobytes()
    return type(a) is type(b) and a == b


def assert_same_trace(a: llmdbg.Trace, b: llmdbg.Trace) -> None:
    """Everything a Trace reads, compared exactly."""
    assert isinstance(b, llmdbg.Trace) and isinstance(b._store, SavedStore)
    assert a.keys() == b.keys()
    for key in a.keys():
        ca, cb = a.calls(key), b.calls(key)
        assert len(ca) == len(cb) and all(_same(x, y) for x, y in zip(ca, cb)), key
        assert a._store.has_stats(key) == b._store.has_stats(key), key
        if a._store.has_stats(key):
            sa, sb = a._store.summary(key), b._store.summary(key)
            assert sa.keys() == sb.keys() and all(_same_value(sa[k], sb[k]) for k in sa), key
    assert a.nbytes == b.nbytes
    assert len(a._masks) == len(b._masks) and all(_same(x, y) for x, y in zip(a._masks, b._masks))
    assert len(a._input_ids) == len(b._input_ids) and all(_same(x, y) for x, y in zip(a._input_ids, b._input_ids))
    assert a.tokens == b.tokens
    assert a.layout == b.layout
    assert a.attention_modules == b.attention_modules and a.hidden_state_modules == b.hidden_state_modules
    assert a._attention_order == b._attention_order and a._attention_causal == b._attention_causal
    assert a._attention_stats.keys() == b._attention_stats.keys()
    for layer, stats in a._attention_stats.items():
        assert stats.keys() == b._attention_stats[layer].keys()
        for name, parts in stats.items():
            assert all(_same(x, y) for x, y in zip(parts, b._attention_stats[layer][name], strict=True))
    assert len(a._generations) == len(b._generations)
    assert repr(a) == repr(b)
    assert _outcome(a._repr_html_) == _outcome(b._repr_html_)


def _outcome(fn):
    """What ``fn()`` returns, or the type and message of what it raises: both must match."""
    try:
        return fn()
    except Exception as e:
        return type(e), str(e)


def _mappings_equal(a, b) -> None:
    assert list(a) == list(b)
    for name in a:
        assert _same(a[name], b[name]), name


def _round_trip(trace, tmp_path, name="t"):
    path = trace.save(tmp_path / name)
    loaded = load(path)
    assert_same_trace(trace, loaded)
    return loaded


def _lm(family: str = "gpt2", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()


# -- round trips ---------------------------------------------------------------------------------------
def test_activations_inputs_grads_and_stats(tmp_path, no_unpickling):
    model = _lm()
    inputs = tiny_inputs("gpt2")
    with llmdbg.capture(model, ["blocks", "mlp"], inputs=True, grads=True, attentions=True) as trace:
        out = model(**inputs, labels=inputs["input_ids"])
        out.loss.backward()
    loaded = _round_trip(trace, tmp_path)
    assert len(trace.grads) > 0 and len(trace.attention_grads) > 0
    for kind in ("activations", "inputs", "grads"):
        _mappings_equal(getattr(trace, kind), getattr(loaded, kind))
    for x, y in zip(trace.attention_grads, loaded.attention_grads, strict=True):
        assert _same(x, y)
    for key, s in trace.stats.items():
        t = loaded.stats[key]
        assert s.as_dict().keys() == t.as_dict().keys()
        assert all(_same_value(getattr(s, f), getattr(t, f)) for f in s.as_dict()), key
    pd.testing.assert_frame_equal(trace.stats_table(), loaded.stats_table())
    assert_no_pickle(tmp_path / "t")
    # A second save of the loaded trace gives the same content.
    again = _round_trip(loaded, tmp_path, "t2")
    assert_same_trace(trace, again)


def test_attention_maps_and_every_attention_function(tmp_path):
    model = tiny_model("bert")
    tok = minilm_tokenizer()
    with torch.no_grad(), llmdbg.capture(model, attentions=True, hidden_states=True, tokenizer=tok) as trace:
        model(**tiny_inputs("bert"))
    loaded = _round_trip(trace, tmp_path)
    assert loaded.tokens == trace.tokens and trace.tokens and isinstance(trace.tokens[0][0], str)
    for x, y in zip(trace.attentions, loaded.attentions, strict=True):
        assert _same(x, y)
    for x, y in zip(trace.hidden_states, loaded.hidden_states, strict=True):
        assert _same(x, y)
    for fn in (llmdbg.attention_rollout, llmdbg.attention_flow, llmdbg.head_entropy, llmdbg.sink_scores):
        assert _same(fn(trace), fn(loaded)), fn.__name__
    assert _same(llmdbg.attention_rollout(trace, rows=[0, 3]), llmdbg.attention_rollout(loaded, rows=[0, 3]))
    pd.testing.assert_frame_equal(llmdbg.attention_summary(trace), llmdbg.attention_summary(loaded))
    assert _same(llmdbg.attention_drift(trace, trace), llmdbg.attention_drift(loaded, trace))
    assert _same(llmdbg.attention_drift(trace, loaded), np.zeros_like(llmdbg.attention_drift(trace, loaded)))
    assert _same(trace.attention_mask, loaded.attention_mask) and _same(trace.input_ids, loaded.input_ids)


def test_attention_statistics(tmp_path):
    model = _lm("llama")
    with torch.no_grad(), llmdbg.capture(model, attentions="stats") as trace:
        model(**tiny_inputs("llama"))
        model(**tiny_inputs("llama", seed=2))
    loaded = _round_trip(trace, tmp_path)
    assert trace.attention_stats.keys() == loaded.attention_stats.keys() and trace.attention_stats
    for layer, stats in trace.attention_stats.items():
        for name, a in stats.items():
            assert _same(a, loaded.attention_stats[layer][name])
        calls = loaded.attention_stats_calls(layer)
        assert len(calls) == 2 and all(
            _same(c["entropy"], d["entropy"]) for c, d in zip(calls, trace.attention_stats_calls(layer))
        )
    assert loaded._attention_causal == trace._attention_causal and any(loaded._attention_causal.values())
    pd.testing.assert_frame_equal(llmdbg.attention_summary(trace), llmdbg.attention_summary(loaded))


def test_several_forward_calls_and_different_lengths(tmp_path):
    model = tiny_model("gpt2")
    with torch.no_grad(), llmdbg.capture(model, "blocks", inputs=True) as trace:
        model(**tiny_inputs("gpt2", length=5))
        model(**tiny_inputs("gpt2", length=5, seed=2))
        model(**tiny_inputs("gpt2", length=8, seed=3))
    loaded = _round_trip(trace, tmp_path)
    for key in trace.keys():
        assert len(loaded.calls(key)) == 3
    with pytest.raises(ValueError, match="different sequence lengths"):
        _ = loaded.input_ids
    with pytest.raises(ValueError, match="ran 3 times with different shapes"):
        _ = loaded.activations["h.0"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(modules="blocks", reduce="stats"),
        dict(modules="blocks", reduce="last_token", dtype=np.float16),
        dict(attentions=True, reduce="head_mean", dtype=np.float64),
        dict(attentions=llmdbg.AttentionQuery(layers=[1], heads=[0, 2], rows=[-1])),
        dict(modules="blocks", stats=False),
    ],
    ids=["stats", "last_token-fp16", "head_mean-fp64", "query", "no-stats"],
)
def test_reduce_variants(tmp_path, kwargs):
    model = tiny_model("gpt2")
    with torch.no_grad(), llmdbg.capture(model, **kwargs) as trace:
        model(**tiny_inputs("gpt2"))
    loaded = _round_trip(trace, tmp_path)
    _mappings_equal(trace.activations, loaded.activations)
    assert list(trace.stats) == list(loaded.stats)
    if kwargs.get("reduce") == "stats":
        assert not len(loaded.activations) and len(loaded.stats) == 2
        with pytest.raises(KeyError, match="only statistics were captured"):
            loaded._array("h.0")
    if kwargs.get("dtype") is not None:
        arrays = list(loaded.activations.values()) + loaded.attentions
        assert arrays and all(a.dtype == kwargs["dtype"] for a in arrays)
    for x, y in zip(trace.attentions, loaded.attentions, strict=True):
        assert _same(x, y)


def test_plain_module_without_layout(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.tensor([[1.0, float("nan"), 2.0], [0.0, 0.0, 0.0]])
    with torch.no_grad(), llmdbg.capture(model, ["0", "2"]) as trace:
        model(x)
    loaded = _round_trip(trace, tmp_path)
    assert loaded.layout is None and loaded.tokens is None and loaded.attention_mask is None
    assert loaded.stats["0"].nan_count == trace.stats["0"].nan_count > 0


@pytest.mark.parametrize("mode", ["greedy", "beam"])
def test_generate_trace(tmp_path, mode):
    model = _lm("gpt2")
    model.generation_config.eos_token_id = None
    ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(3))
    kwargs = dict(do_sample=False) if mode == "greedy" else dict(do_sample=False, num_beams=3, num_return_sequences=2)
    with llmdbg.capture(model, "blocks", attentions="stats", hidden_states=True) as trace:
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, pad_token_id=0, **kwargs)
    a = trace.generation
    for name in ("sequences", "probabilities", "ranks", "entropies", "top_ids", "top_probs", "token_ids"):
        getattr(a, name)  # the original computes its step scores before saving too
    loaded = _round_trip(trace, tmp_path)
    b = loaded.generation
    for name in ("sequences", "probabilities", "ranks", "entropies", "top_ids", "top_probs", "token_ids"):
        assert _same(getattr(a, name), getattr(b, name)), name
    assert (a.beam_indices is None) == (b.beam_indices is None) == (mode == "greedy")
    if mode == "beam":
        assert _same(a.beam_indices, b.beam_indices)
    assert a.prompt_length == b.prompt_length and a.n_generated == b.n_generated
    assert _same(a.attention_mask, b.attention_mask) and _same(a.generated_positions, b.generated_positions)
    _mappings_equal(a.activations, b.activations)
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert _same(x, y)
    assert a.attention_stats.keys() == b.attention_stats.keys() and b.attention_stats
    for layer, stats in a.attention_stats.items():
        assert all(_same(v, b.attention_stats[layer][k]) for k, v in stats.items())
    ia, ib = a.inputs(), b.inputs()
    assert ia.keys() == ib.keys() and all(torch.equal(ia[k], ib[k]) for k in ia)
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())
    assert repr(a) == repr(b) and a._repr_html_() == b._repr_html_()
    # The loaded inputs replay the generation on the model: the same step probabilities.
    with torch.no_grad():
        logits = model(**ib).logits.float().log_softmax(-1)
    pos = torch.from_numpy(b.generated_positions)
    got = logits[:, pos].gather(2, torch.from_numpy(b.token_ids)[..., None])[..., 0].exp().numpy()
    if mode == "greedy":
        np.testing.assert_allclose(got, b.probabilities, rtol=1e-5, atol=1e-6)


def test_generate_of_an_encoder_decoder_and_maps(tmp_path):
    torch.manual_seed(0)
    model = tf.T5ForConditionalGeneration(CONFIGS["t5"]()).eval()
    prompt = torch.randint(3, 100, (2, 5), generator=torch.Generator().manual_seed(3))
    with llmdbg.capture(model, "blocks", attentions=True) as trace:
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=3, min_new_tokens=3)
    a = trace.generation
    loaded = _round_trip(trace, tmp_path)
    b = loaded.generation
    ia, ib = a.inputs(), b.inputs()
    assert set(ib) >= {"input_ids", "attention_mask", "decoder_input_ids"}
    assert all(torch.equal(ia[k], ib[k]) for k in ia)
    # Generation.attentions refuses the encoder's maps (one call for the whole generation), alike.
    maps = lambda g: [(x.dtype, x.shape, x.tobytes()) for x in g.attentions]
    assert _outcome(lambda: maps(a)) == _outcome(lambda: maps(b))
    dec = [k for k in trace.keys() if k.startswith("decoder.") and k.endswith(":attn")]
    for k in (k for k in dec if "SelfAttention" in k):
        assert all(_same(x, y) for x, y in zip(a._calls(k), b._calls(k), strict=True))
    enc = next(n for n in b.activations if n.startswith("encoder."))
    with pytest.raises(ValueError, match="ran 1 times during generate"):
        _ = b.activations[enc]
    assert _same(llmdbg.attention_rollout(trace, stack="encoder"), llmdbg.attention_rollout(loaded, stack="encoder"))


def test_unstitchable_generation_keeps_its_reason(tmp_path):
    model = _lm("gpt2")
    model.generation_config.eos_token_id = None
    embeds = model.get_input_embeddings()(torch.tensor([[5, 6, 7]]))
    with llmdbg.capture(model, "blocks") as trace:
        model.generate(inputs_embeds=embeds, max_new_tokens=2, min_new_tokens=2, pad_token_id=0)
    loaded = _round_trip(trace, tmp_path)
    with pytest.raises(ValueError, match="without input_ids"):
        loaded.generation.inputs()
    assert _same(trace.generation.probabilities, loaded.generation.probabilities)


def test_saving_inside_the_with_block_keeps_what_was_recorded(tmp_path):
    model = tiny_model("gpt2")
    with torch.no_grad(), llmdbg.capture(model, "blocks") as trace:
        model(**tiny_inputs("gpt2"))
        trace.save(tmp_path / "first")
        model(**tiny_inputs("gpt2", seed=2))
    first = load(tmp_path / "first")
    assert [len(first.calls(k)) for k in first.keys()] == [1, 1]
    assert all(_same(first.calls(k)[0], trace.calls(k)[0]) for k in trace.keys())
    assert [len(trace.calls(k)) for k in trace.keys()] == [2, 2]


# -- no model needed, no pickle read ---------------------------------------------------------------------
def test_load_in_a_fresh_process_without_any_model(tmp_path):
    model = tiny_model("gpt2")
    with torch.no_grad(), llmdbg.capture(model, attentions=True) as trace:
        model(**tiny_inputs("gpt2"))
    trace.save(tmp_path / "t")
    expected = llmdbg.attention_rollout(trace)
    script = (
        "import sys, numpy, pickle\n"
        "pickle.loads = pickle.load = None\n"
        "from llmdbg.saved.load import load\n"
        "from safetensors.numpy import save_file\n"
        "t = load(sys.argv[1])\n"
        "import llmdbg\n"
        "save_file({'r': llmdbg.attention_rollout(t)}, sys.argv[2])\n"
        "assert 'transformers' not in sys.modules or not any(\n"
        "    'modeling_' in m for m in sys.modules), 'a model module was imported'\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "t"), str(tmp_path / "r.safetensors")],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    from safetensors.numpy import load_file

    assert _same(load_file(str(tmp_path / "r.safetensors"))["r"], expected)


# -- refusals ------------------------------------------------------------------------------------------
def _small_trace():
    model = tiny_model("gpt2")
    with torch.no_grad(), llmdbg.capture(model, "blocks") as trace:
        model(**tiny_inputs("gpt2"))
    return trace


def test_overwrite_and_bad_arguments(tmp_path):
    trace = _small_trace()
    assert trace.save(tmp_path / "t") == tmp_path / "t"
    with pytest.raises(ValueError, match="already exists and is not empty; pass overwrite=True"):
        trace.save(tmp_path / "t")
    trace.save(str(tmp_path / "t"), overwrite=True)
    assert_same_trace(trace, load(tmp_path / "t"))
    from llmdbg.tracing.persist import save_trace

    with pytest.raises(TypeError, match="trace must be an llmdbg.Trace, got dict"):
        save_trace({}, tmp_path / "x")
    assert sorted(os.listdir(tmp_path)) == ["t"]


def test_newer_version_wrong_kind_and_corruption(tmp_path):
    path = _small_trace().save(tmp_path / "t")
    meta = json.loads((path / META_FILE).read_text())
    (path / META_FILE).write_text(json.dumps({**meta, "version": VERSION + 1}))
    for reader in (load, load_trace):
        with pytest.raises(ValueError, match=f"saved by a newer llmdbg \\(format version {VERSION + 1}"):
            reader(path)
    (path / META_FILE).write_text(json.dumps({**meta, "kind": "watch"}))
    with pytest.raises(ValueError, match="holds a saved 'watch', not 'trace'"):
        load_trace(path)
    (path / META_FILE).write_text(json.dumps({**meta, "kind": "hologram"}))
    with pytest.raises(ValueError, match="holds a saved 'hologram', which this llmdbg cannot read"):
        load(path)
    del meta["store"]
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="is a corrupted saved trace: KeyError"):
        load(path)
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path / "missing")
