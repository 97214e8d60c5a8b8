"""The shared validation behind every attention analysis (llmdbg.attention.attention_stack)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmdbg
from llmdbg.attention import attention_stack
from tiny_models import tiny_inputs, tiny_model


def softmax_maps(l=2, b=2, h=3, t=5, seed=0):
    x = np.random.default_rng(seed).standard_normal((l, b, h, t, t))
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def test_accepts_five_d_array_list_tensors_and_head_mean_maps():
    maps = softmax_maps()
    for given in (maps, list(maps), [torch.from_numpy(m) for m in maps], [m.mean(1) for m in maps]):
        s = attention_stack(given)
        assert s.shape == (2, 2, 5) and s.mask is None
        assert all(a.flags.c_contiguous and a.ndim == 4 for a in s.layers)
    half = attention_stack([torch.from_numpy(m).to(torch.bfloat16) for m in maps], atol=2e-2)
    assert half.layers[0].dtype == np.float32


def test_trace_with_mask_tokens_and_stacks():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")

    class Tok:
        def convert_ids_to_tokens(self, ids):
            return [str(i) for i in ids]

    with llmdbg.capture(model, attentions=True, tokenizer=Tok()) as trace, torch.no_grad():
        model(**inputs)
    s = attention_stack(trace)
    assert s.shape == (2, 2, 7)
    np.testing.assert_array_equal(s.mask, inputs["attention_mask"].numpy().astype(bool))
    assert s.tokens[0][0] == str(inputs["input_ids"][0, 0].item())
    t5, t5_inputs = tiny_model("t5"), tiny_inputs("t5")
    with llmdbg.capture(t5, attentions=True) as trace, torch.no_grad():
        t5(**t5_inputs)
    with pytest.raises(ValueError, match="encoder and decoder stacks"):
        attention_stack(trace)
    enc, dec = attention_stack(trace, stack="encoder"), attention_stack(trace, stack="decoder")
    assert enc.shape == (2, 2, 7) and dec.shape == (2, 2, 5) and dec.mask is None
    np.testing.assert_array_equal(enc.layers[0], trace.attentions[0])
    np.testing.assert_array_equal(dec.layers[1], trace.attentions[3])  # cross-attention is left out
    with pytest.raises(ValueError, match="stack must be one of"):
        attention_stack(trace, stack="middle")


def test_renormalize_fixes_rows_only_when_asked():
    maps = softmax_maps() * 2.0
    with pytest.raises(ValueError, match="sums to 2, not 1; pass renormalize=True"):
        attention_stack(maps)
    s = attention_stack(maps, renormalize=True)
    np.testing.assert_allclose(s.layers[1].sum(-1), 1.0)


def test_padding_rows_are_not_checked():
    maps = softmax_maps()
    maps[:, 1, :, -1, :] = 0.0  # a padded query row with no weight
    mask = np.ones((2, 5), int)
    mask[1, -1] = 0
    with pytest.raises(ValueError, match="sums to 0"):
        attention_stack(maps)
    assert attention_stack(maps, attention_mask=mask).mask[1, -1] == False  # noqa: E712


@pytest.mark.parametrize(
    "given, exc, match",
    [
        (np.ones((2, 3, 5, 5)), ValueError, r"\(L, B, H, T, T\)"),
        ([np.ones((2, 3, 5))[None, None]], ValueError, r"\(B, H, T, T\)"),
        ([np.full((2, 3, 5, 4), 0.25)], ValueError, "square"),
        ([np.full((2, 3, 5, 5), 0.2), np.full((2, 3, 6, 6), 1 / 6)], ValueError, "T must agree"),
        ([np.ones((2, 3, 5, 5), dtype=int)], TypeError, "floating point"),
        ([], ValueError, "empty"),
        ([np.array([["a"]], dtype=object)], TypeError, "numeric"),
    ],
)
def test_shape_and_type_errors(given, exc, match):
    with pytest.raises(exc, match=match):
        attention_stack(given)


def test_nan_and_bad_masks():
    maps = softmax_maps()
    maps[1, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"attentions\[1\] contains NaN"):
        attention_stack(maps)
    good = softmax_maps()
    with pytest.raises(ValueError, match=r"expected \(B, T\)"):
        attention_stack(good, attention_mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match="only 0"):
        attention_stack(good, attention_mask=np.full((2, 5), 2))
    with pytest.raises(ValueError, match="no real token"):
        attention_stack(good, attention_mask=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="only applies to a Trace"):
        attention_stack(good, stack="encoder")


def test_negative_weights_are_refused_even_when_rows_sum_to_one():
    """Rows like (152.9, -151.9) sum to 1 but are no distribution; rollout used to return them."""
    import llmdbg

    rng = np.random.default_rng(0)
    a = rng.random((1, 1, 2, 4, 4)) + 0.1
    a /= a.sum(-1, keepdims=True)
    a[0, 0, 0, 1, :2] = (152.9, -151.9 - a[0, 0, 0, 1, 2:].sum())
    assert np.allclose(a.sum(-1), 1.0)
    for fn in (llmdbg.attention_rollout, llmdbg.attention_flow):
        with pytest.raises(
            ValueError, match=r"attentions\[0\] weights must be >= 0: layer 0 \(batch 0, head 0, query 1, key 1\)"
        ):
            fn(a)
    with pytest.raises(ValueError, match=r">= 0: layer 0 \(batch 0, head 0, query 1, key 1\)"):
        llmdbg.head_entropy(a)  # checked by the head-statistics kernel


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2"])
def test_bf16_maps_are_accepted_within_their_own_rounding(family):
    """bf16 checkpoints used to be refused ("row sums to 0.998047, not 1") by rollout, flow and the
    head summary. Their rounding is accepted; float32 maps with the same error are not."""
    import llmdbg
    from test_attention_streaming import numpy_rollout
    from tiny_models import tiny_inputs, tiny_model

    model, inputs = tiny_model(family, dtype=torch.bfloat16), tiny_inputs(family)
    # eager: the model's own bf16-rounded weights (recomputed maps are float32 and sum to 1)
    with llmdbg.capture(model, attentions=True, attention_impl="eager") as trace, torch.no_grad():
        model(**inputs)
    mask = inputs["attention_mask"].numpy()
    sums = np.stack([a.sum(-1) for a in trace.attentions])
    assert (np.abs(sums - 1.0) * mask[None, :, None, :]).max() > 1e-3  # beyond the float32 tolerance
    want = numpy_rollout(trace.attentions, mask=mask)
    np.testing.assert_allclose(llmdbg.attention_rollout(trace), want, atol=1e-5)
    assert np.isfinite(llmdbg.attention_flow(trace, rows=[0])).all()
    assert len(llmdbg.attention_summary(trace)) == len(trace.attentions) * trace.attentions[0].shape[1]
    off = [a.astype(np.float32) * np.float32(1.002) + np.float32(1e-9) for a in trace.attentions]
    with pytest.raises(ValueError, match="not 1; pass renormalize=True"):
        llmdbg.attention_rollout(off, attention_mask=mask)


def test_stack_attention_modules_follow_each_modules_own_block():
    """Attention modules were paired with layout.blocks by position, which misassigns them once a
    stack has blocks without attention (hybrids): each module now goes with its attention_blocks
    entry."""
    from llmdbg.adapters.layout import ModelLayout
    from llmdbg.attention._inputs import stack_attention_modules

    enc, dec = ("e.0", "e.1"), ("d.0", "d.1", "d.2")
    layout = ModelLayout(
        family="hybrid-encoder-decoder",
        blocks=enc + dec,
        attention=("e.1.attn", "d.2.attn"),
        cross_attention=(),
        mlp=(),
        embeddings=None,
        final_norm=None,
        unembedding=None,
        stacks={"encoder": enc, "decoder": dec},
        attention_blocks=("e.1", "d.2"),
    )
    assert stack_attention_modules(layout, "encoder") == ["e.1.attn"]
    assert stack_attention_modules(layout, "decoder") == ["d.2.attn"]
