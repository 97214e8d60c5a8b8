"""Logit lens against a manual computation from Hugging Face's hidden_states."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

from llmdbg.adapters.unembedding import find_unembedding
from llmdbg.lens import logit_lens
from tiny_models import HEADS, IDS, LAYERS, VOCAB, H, tiny_inputs, tiny_model

CAUSAL = {
    "gpt2": (tf.GPT2LMHeadModel, "transformer.ln_f"),
    "llama": (tf.LlamaForCausalLM, "model.norm"),
    "qwen2": (tf.Qwen2ForCausalLM, "model.norm"),
    "mistral": (tf.MistralForCausalLM, "model.norm"),
    "gpt_neox": (tf.GPTNeoXForCausalLM, "gpt_neox.final_layer_norm"),
}


def _manual(model, inputs, norm):
    """Rows from output_hidden_states: hidden_states[l] for l < L (block inputs), normalised
    once; the last row is the model's own logits."""
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        rows = [model.lm_head(norm(h)) if norm is not None else h for h in out.hidden_states[:-1]]
    return [torch.softmax(r.float(), -1) for r in rows] + [torch.softmax(out.logits.float(), -1)]


@pytest.mark.parametrize("family", list(CAUSAL))
def test_equals_manual_computation(family):
    cls, norm_name = CAUSAL[family]
    model = tiny_model(family, cls)
    inputs = tiny_inputs(family)
    res = logit_lens(model, inputs, top_k=3, target="next")
    manual = _manual(model, inputs, model.get_submodule(norm_name))
    assert res.top_ids.shape == (3, 2, 7, 3) and res.kind == "causal"
    for r, p in enumerate(manual):
        tp, ti = p.topk(3, dim=-1)
        np.testing.assert_allclose(res.top_probs[r], tp.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(res.top_ids[r], ti.numpy())
        nxt = inputs["input_ids"][:, 1:]
        pt = p[:, :-1].gather(-1, nxt[..., None])[..., 0]
        np.testing.assert_allclose(
            res.target_prob[r][:, :-1][inputs["attention_mask"][:, 1:].bool().numpy()],
            pt[inputs["attention_mask"][:, 1:].bool()].numpy(),
            rtol=1e-5,
        )
        rank = (p[:, :-1] > pt[..., None]).sum(-1) + 1
        assert (
            res.target_rank[r][:, :-1][inputs["attention_mask"][:, 1:].bool().numpy()]
            == rank[inputs["attention_mask"][:, 1:].bool()].numpy()
        ).all()
    assert (res.target_rank[:, :, -1] == -1).all() and np.isnan(res.target_prob[:, :, -1]).all()
    assert (res.target_rank[:, -1, -2] == -1).all()  # the next position is padding


def test_last_row_is_model_output_not_normalised_twice():
    model = tiny_model("gpt2", tf.GPT2LMHeadModel)
    inputs = tiny_inputs("gpt2")
    res = logit_lens(model, inputs, top_k=1, layers=[-1])
    with torch.no_grad():
        logits = model(**inputs).logits
    np.testing.assert_allclose(res.top_probs[0, ..., 0], torch.softmax(logits, -1).max(-1).values.numpy(), rtol=1e-5)
    double = torch.softmax(
        model.lm_head(model.transformer.ln_f(model(**inputs, output_hidden_states=True).hidden_states[-1])), -1
    )
    assert not np.allclose(res.top_probs[0, ..., 0], double.max(-1).values.detach().numpy(), rtol=1e-3)


@pytest.mark.parametrize(
    "family,cls",
    [("bert", tf.BertForMaskedLM), ("roberta", tf.RobertaForMaskedLM), ("distilbert", tf.DistilBertForMaskedLM)],
)
def test_masked_lm_head(family, cls):
    model = tiny_model(family, cls)
    inputs = tiny_inputs(family)
    res = logit_lens(model, inputs, top_k=2, target=5)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        head = find_unembedding(model)
        for r, h in enumerate(out.hidden_states):
            p = torch.softmax(head.apply(h), -1)
            np.testing.assert_allclose(res.top_probs[r], p.topk(2, -1).values.numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(res.target_prob[r], p[..., 5].numpy(), rtol=1e-5)
        last = torch.softmax(out.logits, -1)
    np.testing.assert_allclose(res.top_probs[-1], last.topk(2, -1).values.numpy(), rtol=1e-5, atol=1e-6)
    assert res.kind == "masked_lm"


def test_restores_model_state_and_plot():
    model = tiny_model("llama", tf.LlamaForCausalLM).train()
    before = {k: len(m._forward_hooks) + len(m._forward_pre_hooks) for k, m in model.named_modules()}
    res = logit_lens(model, tiny_inputs("llama"), layers=[0, 2])
    assert model.training and all(m.training for m in model.modules())
    assert before == {k: len(m._forward_hooks) + len(m._forward_pre_hooks) for k, m in model.named_modules()}
    assert res.layers.tolist() == [0, 2]
    fig = res.plot()
    assert len(fig.axes) == 2  # grid + colour bar


def test_bad_input():
    model = tiny_model("gpt2", tf.GPT2LMHeadModel)
    inputs = tiny_inputs("gpt2")
    with pytest.raises(ValueError, match="out of range"):
        logit_lens(model, inputs, layers=[3])
    with pytest.raises(ValueError, match="out of range"):
        logit_lens(model, inputs, layers=[-4])
    with pytest.raises(ValueError, match="no unembedding"):
        logit_lens(tiny_model("gpt2"), inputs)  # GPT2Model: no LM head
    with pytest.raises(ValueError, match="encoder-decoder"):
        logit_lens(tiny_model("t5", tf.T5ForConditionalGeneration), tiny_inputs("t5"))
    with pytest.raises(ValueError, match="top_k"):
        logit_lens(model, inputs, top_k=0)
    with pytest.raises(ValueError, match="shape"):
        logit_lens(model, inputs, target=np.zeros((1, 7)))
    with pytest.raises(ValueError, match="vocabulary"):
        logit_lens(model, inputs, target=10_000)
    with pytest.raises(TypeError, match="tokenizer"):
        logit_lens(model, "some text")


def _scaled_lm(name):
    """Tiny Cohere, Cohere2 and Granite LMs with their logit scaling far from 1 (silent-wrong-result
    regressions: the lens ignored it and said top-1 probability 1.0 where the model said 0.035)."""
    common = dict(
        hidden_size=H,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        intermediate_size=2 * H,
        vocab_size=VOCAB,
        **IDS,
    )
    torch.manual_seed(0)
    if name == "cohere":
        return tf.CohereForCausalLM(tf.CohereConfig(logit_scale=0.0625, **common)).eval()
    if name == "cohere2":
        return tf.Cohere2ForCausalLM(tf.Cohere2Config(logit_scale=0.0625, **common)).eval()
    return tf.GraniteForCausalLM(tf.GraniteConfig(logits_scaling=8.0, **common)).eval()


@pytest.mark.parametrize("name", ["cohere", "cohere2", "granite"])
def test_logit_scaling_is_applied_like_the_model(name):
    model = _scaled_lm(name)
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        out = model(**inputs).logits.float()
    lens = logit_lens(model, inputs, top_k=5, progress=False)
    want = torch.softmax(out, -1).topk(5, dim=-1)
    real = inputs["attention_mask"].bool().numpy()
    np.testing.assert_allclose(lens.top_probs[-1][real], want.values.numpy()[real], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(lens.top_ids[-1][real], want.indices.numpy()[real])
    scaled = find_unembedding(model).apply(torch.randn(1, 3, 32))
    unscaled = model.lm_head(model.model.norm(torch.randn(1, 3, 32)))
    assert scaled.abs().mean() < unscaled.abs().mean()  # the scale shrinks logits in all three


def test_a_head_llmdbg_does_not_know_is_refused_not_guessed():
    class Tempered(tf.LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3.0  # a post-processing step no config describes
            return out

    torch.manual_seed(0)
    model = Tempered(tiny_model("llama").config).eval()
    with pytest.raises(ValueError, match="cannot reproduce Tempered's own logits"):
        logit_lens(model, tiny_inputs("llama"), progress=False)


def test_modernbert_reads_through_its_masked_lm_head():
    """ModernBERT's logits are decoder(head(final_norm(h))); the lens used to call it causal and skip
    the prediction head (0 % top-1 agreement with the model)."""
    cfg = tf.ModernBertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        global_attn_every_n_layers=1,
    )
    torch.manual_seed(0)
    model = tf.ModernBertForMaskedLM(cfg).eval()
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        want = torch.softmax(model(**inputs).logits.float(), -1).topk(5, dim=-1)
    lens = logit_lens(model, inputs, top_k=5, progress=False)
    assert find_unembedding(model).kind == "masked_lm"
    real = inputs["attention_mask"].bool().numpy()
    np.testing.assert_array_equal(lens.top_ids[-1][real], want.indices.numpy()[real])
    np.testing.assert_allclose(lens.top_probs[-1][real], want.values.numpy()[real], rtol=1e-4, atol=1e-6)
