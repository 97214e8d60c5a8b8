"""The closed-form gradient of token log-probabilities at the LM head input (attribution/_head.py)
against autograd through the head, the fallback when a model post-processes its logits, and that
the closed form is really what multi-token attributions use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf
from captum.attr import LayerIntegratedGradients

import llmdbg
from llmdbg.attribution import _engine, _head
from llmdbg.attribution.integrated import setup
from tiny_models import CONFIGS, tiny_inputs

CAUSAL = {"gpt2": tf.GPT2LMHeadModel, "llama": tf.LlamaForCausalLM, "qwen2": tf.Qwen2ForCausalLM}


def _lm(family, cls=None):
    torch.manual_seed(0)
    return (cls or CAUSAL[family])(CONFIGS[family]()).eval()


class HalvedLogitsLMHeadModel(tf.GPT2LMHeadModel):
    """Post-processes the head output (like soft-capping or logit scaling): no closed form."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out


@pytest.mark.parametrize("family", list(CAUSAL))
def test_cotangents_equal_autograd_through_the_head(family):
    model = _lm(family)
    prompt = tiny_inputs(family, batch=2, length=6)
    prompt["attention_mask"][:] = 1
    cont = torch.tensor([[11, 42, 7, 93], [5, 6, 8, 9]])
    prep, tgt, _, _ = setup(model, prompt, cont, None, "zeros", "embeddings")
    rows = torch.arange(2)
    point = (prep.b + 0.3 * prep.diff).requires_grad_(True)
    head = _head.output_head(model, tgt)
    assert head is model.lm_head
    with _head.tap(head) as seen:
        values, outputs = _engine.forward_rows(model, prep, tgt, point, rows, 1, return_outputs=True)
    h, cot = _head.cotangents(tgt, outputs, rows, head, seen)
    assert cot.shape == (4, *h.shape)
    for g in range(4):
        (ref,) = torch.autograd.grad(values[:, g].sum(), h, retain_graph=True)
        torch.testing.assert_close(cot[g], ref, rtol=1e-5, atol=1e-6)


def test_multitoken_uses_the_closed_form(monkeypatch):
    model = _lm("gpt2")
    prompt = tiny_inputs("gpt2", batch=1, length=6)["input_ids"]

    def no_autograd_through_head(*_args, **_kwargs):
        raise AssertionError("autograd through the LM head was used")

    monkeypatch.setattr(_engine, "vjp", no_autograd_through_head)
    attr = llmdbg.integrated_gradients(
        model, {"input_ids": prompt}, target=torch.tensor([[11, 42, 7]]), baseline="zeros", n_steps=8, progress=False
    )
    assert np.isfinite(attr.scores).all() and (np.abs(attr.scores) > 0).any()


def test_postprocessed_logits_fall_back_and_match_captum(monkeypatch):
    model = _lm("gpt2", HalvedLogitsLMHeadModel)
    ids = tiny_inputs("gpt2", batch=1, length=8)["input_ids"]
    used = []
    real = _head.cotangents
    monkeypatch.setattr(_engine, "cotangents", lambda *a: used.append(real(*a)) or used[-1])
    ours = llmdbg.integrated_gradients(
        model, {"input_ids": ids}, target=17, baseline=torch.zeros_like(ids), n_steps=12, progress=False
    )
    assert used and all(u is None for u in used)  # the halved logits are not the head's output tensor

    def forward(i):
        return torch.log_softmax(model(input_ids=i).logits[:, -1].float(), -1)

    ref = LayerIntegratedGradients(forward, model.transformer.wte).attribute(
        ids, baselines=torch.zeros_like(ids), target=17, n_steps=12
    )
    np.testing.assert_allclose(ours.scores, ref.sum(-1).detach().numpy(), rtol=1e-4, atol=2e-5)


def test_classifier_targets_do_not_use_the_head():
    torch.manual_seed(0)
    model = tf.GPT2ForSequenceClassification(CONFIGS["gpt2"]()).eval()
    _prep, tgt, _, _ = setup(model, tiny_inputs("gpt2", batch=1, length=5), 0, None, "zeros", "embeddings")
    assert _head.output_head(model, tgt) is None
