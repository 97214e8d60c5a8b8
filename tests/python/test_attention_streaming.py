"""llmdbg.streaming_rollout against an fp64 numpy rollout of the stored maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

import llmdbg
from llmdbg.attention.streaming import streaming_rollout as rollout
from tiny_models import tiny_inputs, tiny_model


def numpy_rollout(maps, fusion="mean", residual=True, mask=None):
    """The reference: Abnar & Zuidema's recursion in float64, written independently."""
    reduce = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
    result = None
    for a in maps:
        a = reduce(a.astype(np.float64), axis=1)
        if residual:
            a = a + np.eye(a.shape[-1])
            a = a / a.sum(-1, keepdims=True)
        result = a if result is None else a @ result
    if mask is not None:
        m = mask.astype(bool)
        result = result * m[:, :, None] * m[:, None, :]
    return result


def stored_maps(model, inputs):
    # The reference is the eager weights the streaming rollout also consumes.
    with llmdbg.capture(model, attentions=True, attention_impl="eager") as trace, torch.no_grad():
        model(**inputs)
    return trace


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama"])
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_streaming_equals_rollout_of_stored_maps(family, fusion):
    model, inputs = tiny_model(family), tiny_inputs(family)
    trace = stored_maps(model, inputs)
    got = rollout(model, inputs, head_fusion=fusion)
    want = numpy_rollout(trace.attentions, fusion, mask=inputs["attention_mask"].numpy())
    assert got.rollout.dtype == np.float32 and got.rollout.shape == (2, 7, 7)
    np.testing.assert_allclose(got.rollout, want, atol=1e-6)
    assert got.modules == list(find_attention(model))
    assert model.config._attn_implementation == "sdpa"


def find_attention(model):
    return llmdbg.find_layout(model).attention


@pytest.mark.parametrize("impl", ["eager", "recompute"])
def test_streaming_head_statistics_and_rows(impl):
    # eager consumes the very maps of the reference (float64 sums of the same numbers); recompute
    # recomputes them from queries and keys (float32 rounding of eager's).
    rtol = 1e-9 if impl == "eager" else 1e-6
    model, inputs = tiny_model("gpt2"), tiny_inputs("gpt2")
    trace = stored_maps(model, inputs)
    got = rollout(model, inputs, rows=[-1, 0], residual=False, attention_impl=impl)
    want = numpy_rollout(trace.attentions, residual=False, mask=inputs["attention_mask"].numpy())
    np.testing.assert_allclose(got.rollout, want[:, [6, 0]], atol=1e-6)
    mask = inputs["attention_mask"].numpy().astype(bool)
    for layer, a in enumerate(trace.attentions):
        a = a.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.where(a > 0, a * np.log(a), 0.0).sum(-1)  # (B, H, T)
        for bi in range(2):
            real = mask[bi]
            np.testing.assert_allclose(got.entropy[layer, bi], ent[bi][:, real].mean(-1), rtol=rtol)
            np.testing.assert_allclose(got.max_weight[layer, bi], a[bi].max(-1)[:, real].mean(-1), rtol=rtol)
            np.testing.assert_allclose(got.first_token_mass[layer, bi], a[bi, :, :, 0][:, real].mean(-1), rtol=rtol)


def test_streaming_runs_at_2048_tokens_on_a_causal_lm():
    torch.manual_seed(0)
    cfg = tf.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=2048, bos_token_id=1, eos_token_id=2
    )
    model = tf.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(3, 100, (1, 2048))
    got = rollout(model, {"input_ids": ids}, rows=[-1])
    assert got.rollout.shape == (1, 1, 2048)
    np.testing.assert_allclose(got.rollout.sum(-1), 1.0, rtol=1e-5)
    assert (got.rollout[0, 0, :] >= 0).all()


def test_streaming_encoder_decoder_needs_a_stack():
    model, inputs = tiny_model("t5"), tiny_inputs("t5")
    with pytest.raises(ValueError, match="stack"):
        rollout(model, inputs)
    trace = stored_maps(model, inputs)
    enc = rollout(model, inputs, stack="encoder")
    dec = rollout(model, inputs, stack="decoder")
    np.testing.assert_allclose(
        enc.rollout, numpy_rollout(trace.attentions[:2], mask=inputs["attention_mask"].numpy()), atol=1e-6
    )
    np.testing.assert_allclose(dec.rollout, numpy_rollout(trace.attentions[2:4]), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(head_fusion="median"), ValueError, "head_fusion"),
        (dict(rows=[7]), ValueError, "rows"),
        (dict(stack="encoder"), ValueError, "stack"),
    ],
)
def test_streaming_bad_arguments(kwargs, exc, match):
    model, inputs = tiny_model("gpt2"), tiny_inputs("gpt2")
    with pytest.raises(exc, match=match):
        rollout(model, inputs, **kwargs)


def test_streaming_bad_inputs_type():
    with pytest.raises(TypeError, match="inputs"):
        rollout(tiny_model("gpt2"), [1, 2, 3])
