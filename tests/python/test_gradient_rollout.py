"""Gradient-weighted rollout (Chefer et al. 2021b) against an autograd reference built with plain
hooks and retain_grad."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

import llmdbg
from llmdbg.attention.gradient import gradient_rollout
from tiny_models import CONFIGS, tiny_inputs, tiny_model


def reference(model, inputs, scalar_fn):
    """Hooks keep each eager attention map with retain_grad; backward; apply the rule in numpy."""
    layout = llmdbg.find_layout(model)
    kept, handles = [], []
    for name in layout.attention:

        def hook(m, a, o):
            o[1].retain_grad()
            kept.append(o[1])

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    model.set_attn_implementation("eager")
    try:
        out = model(**inputs)
        scalar_fn(out).sum().backward()
    finally:
        model.set_attn_implementation("sdpa")
        for h in handles:
            h.remove()
    b, t = inputs["input_ids"].shape
    r = np.broadcast_to(np.eye(t), (b, t, t)).copy()
    for a in kept:
        cam = np.clip(a.grad.double().numpy() * a.detach().double().numpy(), 0, None).mean(1)
        r = r + cam @ r
    model.zero_grad(set_to_none=True)
    return r


def _model(cls, family, seed=0, **extra):
    torch.manual_seed(seed)
    cfg = CONFIGS[family]()
    for k, v in extra.items():
        setattr(cfg, k, v)
    return cls(cfg).eval()


def test_causal_lm_next_token_log_probability():
    model = _model(tf.GPT2LMHeadModel, "gpt2")
    inputs = tiny_inputs("gpt2")
    got = gradient_rollout(model, inputs, target=[5, 9])
    rows = np.array([6, 5])  # last real token of each sequence (the second is padded at the end)

    def scalar(out):
        logp = torch.log_softmax(out.logits[torch.arange(2), torch.tensor(rows)], -1)
        return logp[torch.arange(2), torch.tensor([5, 9])]

    want = reference(model, inputs, scalar)
    np.testing.assert_array_equal(got.rows, rows)
    np.testing.assert_allclose(got.matrix, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.scores, want[np.arange(2), rows], rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    assert model.config._attn_implementation == "sdpa"


def test_sequence_classifier_predicted_class_reads_cls_row():
    model = _model(tf.BertForSequenceClassification, "bert", num_labels=3)
    inputs = tiny_inputs("bert")
    got = gradient_rollout(model, inputs)
    with torch.no_grad():
        predicted = model(**inputs).logits.argmax(-1)
    want = reference(model, inputs, lambda out: out.logits[torch.arange(2), predicted])
    np.testing.assert_array_equal(got.target, predicted.numpy())
    np.testing.assert_array_equal(got.rows, [0, 0])
    np.testing.assert_allclose(got.matrix, want, rtol=1e-5, atol=1e-6)


def test_callable_target_on_a_frozen_encoder():
    model = _model(tf.BertModel, "bert")
    for p in model.parameters():
        p.requires_grad_(False)
    inputs = tiny_inputs("bert")
    got = gradient_rollout(model, inputs, target=lambda out: out.last_hidden_state[:, 0].norm(dim=-1), position=0)
    assert got.target is None and got.matrix.shape == (2, 7, 7)
    assert (got.matrix >= 0).all() and np.all(np.diagonal(got.matrix, axis1=1, axis2=2) >= 1)


def test_bad_targets_and_rows():
    model = _model(tf.BertModel, "bert")
    inputs = tiny_inputs("bert")
    with pytest.raises(ValueError, match="no logits"):
        gradient_rollout(model, inputs)
    lm = _model(tf.GPT2LMHeadModel, "gpt2")
    with pytest.raises(ValueError, match="one per sequence"):
        gradient_rollout(lm, tiny_inputs("gpt2"), target=[1, 2, 3])
    with pytest.raises(ValueError, match="position"):
        gradient_rollout(lm, tiny_inputs("gpt2"), position=99)
    t5 = _model(tf.T5ForConditionalGeneration, "t5")
    with pytest.raises(ValueError, match="stack"):
        gradient_rollout(t5, tiny_inputs("t5"))


def stack_reference(model, inputs, names, index, scalar_fn, t):
    """Like ``reference``, for the self-attention modules ``names`` of one stack of an
    encoder-decoder (weights at ``index`` of the eager output: 2 for T5)."""
    kept, handles = [], []
    for name in names:

        def hook(m, a, o):
            o[index].retain_grad()
            kept.append(o[index])

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    model.set_attn_implementation("eager")
    try:
        scalar_fn(model(**inputs)).sum().backward()
    finally:
        model.set_attn_implementation("sdpa")
        for h in handles:
            h.remove()
    b = inputs["input_ids"].shape[0]
    r = np.broadcast_to(np.eye(t), (b, t, t)).copy()
    for a in kept:
        r = r + np.clip(a.grad.double().numpy() * a.detach().double().numpy(), 0, None).mean(1) @ r
    model.zero_grad(set_to_none=True)
    return r


def _bart():
    return tiny_model("bart", tf.BartForConditionalGeneration, init_std=0.3)


@pytest.mark.parametrize("family", ["t5", "bart"])
@pytest.mark.parametrize("stack", ["encoder", "decoder"])
@pytest.mark.parametrize("impl", ["auto", "eager"])
def test_encoder_decoder_stacks_match_the_eager_reference(family, stack, impl):
    # Larger initial weights than the defaults: relevance far above float32 rounding of R's diagonal.
    model = _model(tf.T5ForConditionalGeneration, "t5", initializer_factor=4.0) if family == "t5" else _bart()
    inputs = tiny_inputs("t5")  # input tokens (2, 7) with one padded, decoder tokens (2, 5)
    layout = llmdbg.find_layout(model)
    blocks = set(layout.stacks[stack])
    names = [a for b, a in zip(layout.attention_blocks, layout.attention) if b in blocks]
    got = gradient_rollout(model, inputs, stack=stack, attention_impl=impl)
    # The explained quantity is the decoder's next-token log-probability at its last token, for
    # both stacks (the encoder predicts nothing itself); its default token is the most likely one.
    with torch.no_grad():
        best = model(**inputs).logits[:, -1].argmax(-1)

    def scalar(out):
        return torch.log_softmax(out.logits[:, -1].float(), -1)[torch.arange(2), best]

    t = inputs["input_ids" if stack == "encoder" else "decoder_input_ids"].shape[1]
    want = stack_reference(model, inputs, names, layout.attention_index, scalar, t)
    np.testing.assert_array_equal(got.target, best.numpy())
    assert got.matrix.shape == (2, t, t)
    spread = np.abs(want - np.eye(t)).max()
    assert spread > 1e-3, spread  # the stack's attention does carry relevance
    # Eager: the same maps and gradients. Recompute: the model's SDPA kernel, whose outputs (and so
    # gradients) differ from eager's by rounding, amplified by the large weights.
    tol = 1e-6 if impl == "eager" else 1e-4 * spread
    np.testing.assert_allclose(got.matrix, want, rtol=1e-5, atol=tol)
    rows = [6, 5] if stack == "encoder" else [4, 4]  # last real token of the stack's sequence
    np.testing.assert_array_equal(got.rows, rows)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
