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


# ---- families whose head does more than lm_head(final_norm(h)) (issue 19) -----------------------

_LM = dict(
    hidden_size=H,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=2,
    intermediate_size=2 * H,
    vocab_size=VOCAB,
    **IDS,
)
_ENC = dict(
    hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=2 * H, vocab_size=VOCAB
)
_MOE = dict(num_local_experts=2, num_experts_per_tok=1)
_OPT = dict(
    hidden_size=H,
    word_embed_proj_dim=16,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    ffn_dim=2 * H,
    vocab_size=VOCAB,
    **IDS,
)

HEADS_BEYOND_NORM = {
    # logits scaled after the head (Cohere's logit_scale is covered above)
    "granitemoe": lambda: tf.GraniteMoeForCausalLM(tf.GraniteMoeConfig(logits_scaling=8.0, **_MOE, **_LM)),
    "granitemoeshared": lambda: tf.GraniteMoeSharedForCausalLM(
        tf.GraniteMoeSharedConfig(logits_scaling=8.0, shared_intermediate_size=H, **_MOE, **_LM)
    ),
    "cohere2_moe": lambda: tf.AutoModelForCausalLM.from_config(
        tf.AutoConfig.for_model("cohere2_moe", logit_scale=0.0625, **_LM)
    ),
    "falcon_h1": lambda: tf.FalconH1ForCausalLM(
        tf.FalconH1Config(
            head_dim=8,
            mamba_d_ssm=H,
            mamba_n_heads=4,
            mamba_d_head=8,
            mamba_d_state=8,
            mamba_n_groups=1,
            mamba_chunk_size=8,
            lm_head_multiplier=0.125,
            **_LM,
        )
    ),
    # soft-capped logits
    "gemma2": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(head_dim=8, final_logit_softcapping=0.5, **_LM)),
    "recurrent_gemma": lambda: tf.RecurrentGemmaForCausalLM(
        tf.RecurrentGemmaConfig(
            lru_width=H, attention_window_size=8, logits_soft_cap=0.5, **{**_LM, "num_hidden_layers": 3}
        )
    ),
    # hidden state scaled before the head, padded vocabulary rows dropped after it
    "inkling": lambda: tf.AutoModelForCausalLM.from_config(
        tf.AutoConfig.for_model("inkling_text", logits_mup_width_multiplier=4.0, unpadded_vocab_size=90, **_LM)
    ),
    # post-LN decoders without a final norm; OPT-350m projects to its embedding width first
    "opt-350m": lambda: tf.OPTForCausalLM(tf.OPTConfig(do_layer_norm_before=False, **_OPT)),
    "opt-pre-ln-project-out": lambda: tf.OPTForCausalLM(tf.OPTConfig(**_OPT)),
    "openai-gpt": lambda: tf.OpenAIGPTLMHeadModel(
        tf.OpenAIGPTConfig(n_embd=H, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB)
    ),
    # masked-LM heads beside the unembedding, or after a final norm
    "electra": lambda: tf.ElectraForMaskedLM(tf.ElectraConfig(embedding_size=16, **_ENC)),
    "convbert": lambda: tf.ConvBertForMaskedLM(tf.ConvBertConfig(embedding_size=16, **_ENC)),
    "eurobert": lambda: tf.EuroBertForMaskedLM(tf.EuroBertConfig(num_key_value_heads=2, pad_token_id=0, **_ENC)),
    "megatron-bert": lambda: tf.MegatronBertForMaskedLM(tf.MegatronBertConfig(**_ENC)),
    "roberta-prelayernorm": lambda: tf.RobertaPreLayerNormForMaskedLM(
        tf.RobertaPreLayerNormConfig(pad_token_id=0, **_ENC)
    ),
    "neomme": lambda: tf.AutoModelForMaskedLM.from_config(
        tf.AutoConfig.for_model("neomme", head_dim=16, embedding_rank=16, per_layer_config={}, pad_token_id=0, **_ENC)
    ),
    # Longformer pads to its attention window inside the encoder and cuts the output back
    "longformer": lambda: tf.LongformerForMaskedLM(
        tf.LongformerConfig(attention_window=4, max_position_embeddings=64, pad_token_id=0, **_ENC)
    ),
    # more decoders: a prediction head before the decoder, a post-LN decoder, an xLSTM soft-cap
    "modernbert-decoder": lambda: tf.ModernBertDecoderForCausalLM(tf.ModernBertDecoderConfig(**IDS, **_ENC)),
    "trocr": lambda: tf.TrOCRForCausalLM(
        tf.TrOCRConfig(
            d_model=H,
            decoder_layers=LAYERS,
            decoder_attention_heads=HEADS,
            decoder_ffn_dim=2 * H,
            vocab_size=VOCAB,
            **IDS,
        )
    ),
    "xlstm": lambda: tf.xLSTMForCausalLM(
        tf.xLSTMConfig(
            hidden_size=128,
            embedding_dim=128,
            num_heads=4,
            num_blocks=2,
            vocab_size=VOCAB,
            output_logit_soft_cap=2.0,
            **IDS,
        )
    ),
}


@pytest.mark.parametrize("name", list(HEADS_BEYOND_NORM))
def test_last_row_is_the_models_own_distribution(name):
    """Each of these used to be refused ("no final norm found", "cannot tell which modules form
    the masked-LM head", "cannot reproduce ... own logits"); the last row must now be exactly the
    model's own next-token (or masked-token) distribution, over the whole vocabulary."""
    torch.manual_seed(0)
    model = HEADS_BEYOND_NORM[name]().eval()
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        probs = torch.softmax(model(**inputs).logits.float(), -1)
    vocab = probs.shape[-1]
    lens = logit_lens(model, inputs, top_k=VOCAB, progress=False)
    real = inputs["attention_mask"].bool().numpy()
    want = probs.sort(-1, descending=True)
    assert lens.top_probs.shape[-1] == vocab  # Inkling: 90 real tokens of 100 rows
    np.testing.assert_allclose(lens.top_probs[-1][real], want.values.numpy()[real], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(lens.top_ids[-1][real][..., :3], want.indices.numpy()[real][..., :3])


def test_opt_350m_reads_every_layer_through_project_out():
    """OPT-350m (post-LN, no final norm, project_out to the 512-wide embeddings): every row is
    lm_head(project_out(h_l)), the map the model applies after its last block."""
    torch.manual_seed(0)
    model = HEADS_BEYOND_NORM["opt-350m"]().eval()
    unembed = find_unembedding(model)
    assert unembed.kind == "causal" and unembed.final_norm is None
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states  # [l] = input of block l
        want = [torch.softmax(model.lm_head(model.model.decoder.project_out(h)).float(), -1) for h in hidden[:-1]]
    lens = logit_lens(model, inputs, top_k=5, progress=False)
    real = inputs["attention_mask"].bool().numpy()
    for row, p in enumerate(want):
        top = p.topk(5, dim=-1)
        np.testing.assert_allclose(lens.top_probs[row][real], top.values.numpy()[real], rtol=1e-4, atol=1e-6)


def test_truncated_logits_are_refused_not_skipped():
    """A head whose logits have another vocabulary size than the unembedding used to skip the
    reproduction check (shapes differ) and return the unembedding's distribution silently."""

    class Truncated(tf.LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits[..., :50]
            return out

    torch.manual_seed(0)
    model = Truncated(tiny_model("llama").config).eval()
    with pytest.raises(ValueError, match=r"logits have shape \(2, 7, 50\).*cannot reproduce"):
        logit_lens(model, tiny_inputs("llama"), progress=False)


def test_heads_llmdbg_cannot_follow_are_refused_in_words():
    """SqueezeBERT's channels-first blocks pass dicts (refused by family), Reformer's head takes its two
    concatenated streams (a torch shape error), PegasusX's layout shows one stack of an
    encoder-decoder (rows misaligned with the decoder); each must be a ValueError naming it."""
    torch.manual_seed(0)
    squeeze = tf.SqueezeBertForMaskedLM(tf.SqueezeBertConfig(embedding_size=H, pad_token_id=0, **_ENC)).eval()
    with pytest.raises(ValueError, match=r"SqueezeBertForMaskedLM \(model_type 'squeezebert'\) .* channels-first"):
        logit_lens(squeeze, tiny_inputs("bert"), progress=False)
    reformer = tf.ReformerForMaskedLM(
        tf.ReformerConfig(
            hidden_size=H,
            attention_head_size=8,
            num_attention_heads=HEADS,
            feed_forward_size=2 * H,
            attn_layers=["local", "local"],
            axial_pos_embds_dim=[16, 16],
            axial_pos_shape=[4, 4],
            local_attn_chunk_length=4,
            is_decoder=False,
            vocab_size=VOCAB,
            pad_token_id=0,
        )
    ).eval()
    with pytest.raises(
        ValueError, match=r"ReformerForMaskedLM \(model_type 'reformer'\) is not supported by the logit lens"
    ):
        logit_lens(reformer, tiny_inputs("bert", length=16), progress=False)
    pegasus = tf.PegasusXForConditionalGeneration(
        tf.PegasusXConfig(
            d_model=H,
            encoder_layers=LAYERS,
            decoder_layers=LAYERS,
            encoder_attention_heads=HEADS,
            decoder_attention_heads=HEADS,
            encoder_ffn_dim=2 * H,
            decoder_ffn_dim=2 * H,
            vocab_size=VOCAB,
            **IDS,
        )
    ).eval()
    with pytest.raises(ValueError, match="PegasusXForConditionalGeneration is an encoder-decoder model"):
        logit_lens(pegasus, tiny_inputs("t5"), progress=False)
