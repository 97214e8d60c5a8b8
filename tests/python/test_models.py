"""Tests for llmdbg.models: layouts, eager switching and module checks on tiny random models."""

from __future__ import annotations

import functools
import os
import types

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built from configs; never download
import transformers as tf

from llmdbg.adapters.attention_impl import eager_attention
from llmdbg.adapters.layout import (
    ROLES,
    ModelLayout,
    check_module,
    closest_names,
    find_layout,
    is_hf_model,
    resolve_role,
)
from tiny_models import CONFIGS as BASE_CONFIGS
from tiny_models import HEADS, IDS, LAYERS, VOCAB, H

CONFIGS = {
    **BASE_CONFIGS,
    # Not in llmdbg's family table: found through transformers' own _can_record_outputs.
    "bart": lambda: tf.BartConfig(
        d_model=H,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=2 * H,
        decoder_ffn_dim=2 * H,
        vocab_size=VOCAB,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
        **IDS,
    ),
    "opt": lambda: tf.OPTConfig(
        hidden_size=H,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        ffn_dim=2 * H,
        word_embed_proj_dim=H,
        vocab_size=VOCAB,
        **IDS,
    ),
}

# class, family, first attention, first cross-attention, first mlp, embeddings, final norm,
# unembedding, {stack: n_blocks}
L2 = {"decoder": LAYERS}
CASES = [
    (
        "BertModel",
        "bert",
        "encoder.layer.0.attention.self",
        None,
        "encoder.layer.0.intermediate",
        "embeddings.word_embeddings",
        None,
        None,
        {"encoder": LAYERS},
    ),
    (
        "BertForSequenceClassification",
        "bert",
        "bert.encoder.layer.0.attention.self",
        None,
        "bert.encoder.layer.0.intermediate",
        "bert.embeddings.word_embeddings",
        None,
        None,
        {"encoder": LAYERS},
    ),
    (
        "BertForMaskedLM",
        "bert",
        "bert.encoder.layer.0.attention.self",
        None,
        "bert.encoder.layer.0.intermediate",
        "bert.embeddings.word_embeddings",
        None,
        "cls.predictions.decoder",
        {"encoder": LAYERS},
    ),
    (
        "RobertaModel",
        "roberta",
        "encoder.layer.0.attention.self",
        None,
        "encoder.layer.0.intermediate",
        "embeddings.word_embeddings",
        None,
        None,
        {"encoder": LAYERS},
    ),
    (
        "RobertaForMaskedLM",
        "roberta",
        "roberta.encoder.layer.0.attention.self",
        None,
        "roberta.encoder.layer.0.intermediate",
        "roberta.embeddings.word_embeddings",
        None,
        "lm_head.decoder",
        {"encoder": LAYERS},
    ),
    (
        "DistilBertModel",
        "distilbert",
        "transformer.layer.0.attention",
        None,
        "transformer.layer.0.ffn",
        "embeddings.word_embeddings",
        None,
        None,
        {"encoder": LAYERS},
    ),
    (
        "DistilBertForSequenceClassification",
        "distilbert",
        "distilbert.transformer.layer.0.attention",
        None,
        "distilbert.transformer.layer.0.ffn",
        "distilbert.embeddings.word_embeddings",
        None,
        None,
        {"encoder": LAYERS},
    ),
    ("GPT2Model", "gpt2", "h.0.attn", None, "h.0.mlp", "wte", "ln_f", None, L2),
    (
        "GPT2LMHeadModel",
        "gpt2",
        "transformer.h.0.attn",
        None,
        "transformer.h.0.mlp",
        "transformer.wte",
        "transformer.ln_f",
        "lm_head",
        L2,
    ),
    ("GPTNeoXModel", "gpt_neox", "layers.0.attention", None, "layers.0.mlp", "embed_in", "final_layer_norm", None, L2),
    (
        "GPTNeoXForCausalLM",
        "gpt_neox",
        "gpt_neox.layers.0.attention",
        None,
        "gpt_neox.layers.0.mlp",
        "gpt_neox.embed_in",
        "gpt_neox.final_layer_norm",
        "lm_head",
        L2,
    ),
    *[
        (f"{p}Model", f, "layers.0.self_attn", None, "layers.0.mlp", "embed_tokens", "norm", None, L2)
        for p, f in [("Llama", "llama"), ("Mistral", "mistral"), ("Qwen2", "qwen2")]
    ],
    *[
        (
            f"{p}ForCausalLM",
            f,
            "model.layers.0.self_attn",
            None,
            "model.layers.0.mlp",
            "model.embed_tokens",
            "model.norm",
            "lm_head",
            L2,
        )
        for p, f in [("Llama", "llama"), ("Mistral", "mistral"), ("Qwen2", "qwen2")]
    ],
    (
        "Qwen2ForSequenceClassification",
        "qwen2",
        "model.layers.0.self_attn",
        None,
        "model.layers.0.mlp",
        "model.embed_tokens",
        "model.norm",
        None,
        L2,
    ),
    (
        "T5Model",
        "t5",
        "encoder.block.0.layer.0.SelfAttention",
        "decoder.block.0.layer.1.EncDecAttention",
        "encoder.block.0.layer.1.DenseReluDense",
        "encoder.embed_tokens",
        "decoder.final_layer_norm",
        None,
        {"encoder": LAYERS, "decoder": LAYERS},
    ),
    (
        "T5ForConditionalGeneration",
        "t5",
        "encoder.block.0.layer.0.SelfAttention",
        "decoder.block.0.layer.1.EncDecAttention",
        "encoder.block.0.layer.1.DenseReluDense",
        "encoder.embed_tokens",
        "decoder.final_layer_norm",
        "lm_head",
        {"encoder": LAYERS, "decoder": LAYERS},
    ),
    (
        "T5EncoderModel",
        "t5",
        "encoder.block.0.layer.0.SelfAttention",
        None,
        "encoder.block.0.layer.1.DenseReluDense",
        "encoder.embed_tokens",
        "encoder.final_layer_norm",
        None,
        {"encoder": LAYERS},
    ),
    (
        "BartModel",
        "bart",
        "encoder.layers.0.self_attn",
        "decoder.layers.0.encoder_attn",
        None,
        "encoder.embed_tokens",
        None,
        None,
        {"encoder": LAYERS, "decoder": LAYERS},
    ),
    (
        "OPTForCausalLM",
        "opt",
        "model.decoder.layers.0.self_attn",
        None,
        None,
        "model.decoder.embed_tokens",
        "model.decoder.final_layer_norm",
        "lm_head",
        L2,
    ),
]
IDS_OF = [c[0] for c in CASES]


@functools.cache
def build(cls_name: str, eager: bool = False) -> nn.Module:
    """A tiny random model; cached because several tests share it (eager tests restore state)."""
    cls = getattr(tf, cls_name)
    config = CONFIGS[cls.config_class.model_type]()
    if eager:
        config._attn_implementation = "eager"
    torch.manual_seed(0)
    return cls(config).eval()


def batch_for(model: nn.Module) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(3, VOCAB, (2, 6), generator=g),
        "attention_mask": torch.ones(2, 6, dtype=torch.long),
    }
    if model.config.is_encoder_decoder and not isinstance(model, tf.T5EncoderModel):
        batch["decoder_input_ids"] = torch.randint(3, VOCAB, (2, 4), generator=g)
    return batch


def all_impls(model: nn.Module) -> list:
    """Attention implementation of every config reachable from the model, in a fixed order."""
    configs = [model.config] + [m.config for m in model.modules() if isinstance(m, tf.PreTrainedModel)]
    configs += [getattr(c, k) for c in list(configs) for k in c.sub_configs if getattr(c, k) is not None]
    return [c._attn_implementation for c in configs]


@pytest.mark.parametrize("case", CASES, ids=IDS_OF)
def test_layout(case):
    cls_name, family, attn, cross, mlp, emb, norm, unemb, stacks = case
    model = build(cls_name)
    layout = find_layout(model)
    modules = dict(model.named_modules())  # deduplicated, as capture() indexes them
    assert isinstance(layout, ModelLayout) and layout.family == family
    assert hash(layout) == hash(find_layout(model)) and layout == find_layout(model)
    assert {k: len(v) for k, v in layout.stacks.items()} == stacks
    assert layout.blocks == tuple(b for v in layout.stacks.values() for b in v)
    assert len(layout.attention) == len(layout.blocks) and layout.attention[0] == attn
    assert layout.cross_attention[:1] == ((cross,) if cross else ())
    if cross:
        assert len(layout.cross_attention) == stacks["decoder"]
    assert layout.mlp[:1] == ((mlp,) if mlp else ())
    assert (layout.embeddings, layout.final_norm, layout.unembedding) == (emb, norm, unemb)
    named = [*layout.blocks, *layout.attention, *layout.cross_attention, *layout.mlp, emb, norm, unemb]
    assert all(n in modules for n in named if n is not None)
    # T5/BART: get_input_embeddings() is `shared`, which is never called; ours shares its weight.
    assert modules[emb].weight is model.get_input_embeddings().weight
    assert (model.get_output_embeddings() is modules[unemb]) if unemb else model.get_output_embeddings() is None
    if norm:
        assert "norm" in type(modules[norm]).__name__.lower()
    assert layout.attention_index == (2 if family == "t5" else 1)


@pytest.mark.parametrize("case", CASES, ids=IDS_OF)
def test_attention_modules_return_weights(case):
    model = build(case[0])
    layout, batch = find_layout(model), batch_for(model)
    seen: dict[str, list] = {"self": [], "cross": []}
    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda mod, args, out, kind=kind: seen[kind].append(out[layout.attention_index])
        )
        for kind, names in [("self", layout.attention), ("cross", layout.cross_attention)]
        for n in names
    ]
    try:
        with torch.no_grad():
            model(**batch)  # SDPA: the weights slot exists but is empty
            assert all(w is None for w in seen["self"] + seen["cross"])
            seen["self"].clear(), seen["cross"].clear()
            with eager_attention(model):
                model(**batch)  # no output_attentions: the hooks alone must see the weights
                captured = {k: list(v) for k, v in seen.items()}
                out = model(**batch, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    expected_self = [
        w for key in ("attentions", "encoder_attentions", "decoder_attentions") for w in (getattr(out, key, None) or ())
    ]
    expected_cross = list(getattr(out, "cross_attentions", None) or ())
    assert len(captured["self"]) == len(layout.attention) == len(expected_self)
    assert len(captured["cross"]) == len(layout.cross_attention) == len(expected_cross)
    for got, want in zip(captured["self"] + captured["cross"], expected_self + expected_cross):
        assert got.ndim == 4 and got.shape[:2] == (2, HEADS)
        torch.testing.assert_close(got.sum(-1), torch.ones(got.shape[:-1]))
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("cls_name", ["LlamaForCausalLM", "T5ForConditionalGeneration", "BertModel"])
def test_eager_attention_restores(cls_name):
    model = build(cls_name)
    before = all_impls(model)
    assert set(before) == {"sdpa"}
    with eager_attention(model) as m:
        assert m is model and set(all_impls(model)) == {"eager"}
        with eager_attention(model):  # re-entrant: the inner one changes nothing
            assert set(all_impls(model)) == {"eager"}
        assert set(all_impls(model)) == {"eager"}
    assert all_impls(model) == before
    with pytest.raises(KeyError, match="boom"), eager_attention(model):
        assert set(all_impls(model)) == {"eager"}
        raise KeyError("boom")
    assert all_impls(model) == before


def test_eager_attention_restores_mixed_setup_exactly():
    model = build("T5ForConditionalGeneration")
    model.encoder.config._attn_implementation_internal = "eager"  # encoder and decoder own their configs
    try:
        before = all_impls(model)
        assert set(before) == {"sdpa", "eager"}
        with eager_attention(model):
            assert set(all_impls(model)) == {"eager"}
        assert all_impls(model) == before
    finally:
        model.encoder.config._attn_implementation_internal = "sdpa"


def test_eager_attention_noop_when_already_eager():
    model = build("GPT2LMHeadModel", eager=True)
    with eager_attention(model):
        assert set(all_impls(model)) == {"eager"}
    assert set(all_impls(model)) == {"eager"}


def test_eager_attention_rejects_plain_modules():
    with pytest.raises(TypeError, match="not a Hugging Face transformers model"):
        with eager_attention(nn.Linear(2, 2)):
            pass


class Wrapper(nn.Module):
    """A user's own module around a transformers model (a custom head, like PEFT does)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(H, 2)

    def forward(self, **batch):
        return self.backbone(**batch)


@pytest.mark.parametrize("cls_name", ["T5ForConditionalGeneration", "BertModel"])
def test_wrapped_model_is_laid_out_and_switched_like_the_model(cls_name):
    inner = build(cls_name)
    model, want = Wrapper(inner), find_layout(inner)
    layout = find_layout(model)
    assert layout.family == want.family and layout.attention_index == want.attention_index
    assert layout.attention == tuple(f"backbone.{n}" for n in want.attention)
    assert layout.cross_attention == tuple(f"backbone.{n}" for n in want.cross_attention)
    assert (layout.embeddings, layout.final_norm) == (
        f"backbone.{want.embeddings}",
        want.final_norm and f"backbone.{want.final_norm}",
    )
    weights = []
    hook = model.get_submodule(layout.attention[-1]).register_forward_hook(
        lambda m, a, o: weights.append(o[layout.attention_index])
    )
    try:
        with eager_attention(model) as m, torch.no_grad():
            assert m is model and set(all_impls(inner)) == {"eager"}
            model(**batch_for(inner))
    finally:
        hook.remove()
    assert set(all_impls(inner)) == {"sdpa"}
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(weights[0].shape[:-1]))


class Block(nn.Module):
    def __init__(self, d: int = 8):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        h = self.ln(x)
        x = x + self.attn(h, h, h, average_attn_weights=False)[0]
        return x + self.mlp(x)


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.adapters = nn.ModuleList(nn.Linear(8, 8) for _ in range(5))  # larger, but no attention
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.norm_f = nn.LayerNorm(8)
        self.head = nn.Linear(8, 10)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm_f(x))


def test_generic_fallback():
    model = TinyLM()
    layout = find_layout(model)
    assert layout.family == "generic" and layout.stacks == {"decoder": ("blocks.0", "blocks.1", "blocks.2")}
    assert layout.attention == ("blocks.0.attn", "blocks.1.attn", "blocks.2.attn")
    assert layout.mlp == ("blocks.0.mlp", "blocks.1.mlp", "blocks.2.mlp") and layout.cross_attention == ()
    assert (layout.embeddings, layout.final_norm, layout.unembedding) == ("embed", "norm_f", None)
    assert resolve_role(model, "attention") == list(layout.attention)
    weights = []
    model.get_submodule(layout.attention[0]).register_forward_hook(lambda m, a, o: weights.append(o[1]))
    model(torch.randint(0, 10, (2, 5)))
    assert weights[0].shape == (2, 2, 5, 5)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(2, 2, 5))


def test_no_blocks_raises():
    with pytest.raises(ValueError, match=r"could not find transformer blocks in Sequential: .*explicitly"):
        find_layout(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))


@pytest.mark.parametrize("func", [find_layout, check_module])
def test_non_module_raises(func):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got dict"):
        func({"not": "a model"})


def test_check_module():
    model = build("LlamaForCausalLM")
    assert check_module(model) is model
    with torch.device("meta"):
        meta = tf.LlamaForCausalLM(CONFIGS["llama"]())
    with pytest.raises(ValueError, match=r"'model\.embed_tokens\.weight' .* meta device; .*materialised"):
        check_module(meta)
    offloaded = tf.LlamaForCausalLM(CONFIGS["llama"]())
    offloaded.hf_device_map = {"model.embed_tokens": 0, "model.layers": "cpu", "lm_head": "disk"}
    with pytest.raises(ValueError, match="offloaded.*materialised weights"):
        check_module(offloaded)
    offloaded.hf_device_map = {"": "cpu"}  # everything on the CPU is not offloading
    assert check_module(offloaded) is offloaded
    offloaded.model.layers[1]._hf_hook = types.SimpleNamespace(offload=True)
    with pytest.raises(ValueError, match="'model.layers.1' is offloaded"):
        check_module(offloaded)


def test_resolve_role():
    model = build("LlamaForCausalLM")
    assert resolve_role(model, "attention") == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    assert resolve_role(model, "embeddings") == ["model.embed_tokens"]
    assert resolve_role(model, "unembedding") == ["lm_head"]
    for role in ROLES:
        if role != "cross_attention":
            assert resolve_role(model, role)
    with pytest.raises(ValueError, match="no 'cross_attention'"):
        resolve_role(model, "cross_attention")
    with pytest.raises(ValueError, match="valid roles are blocks, attention"):
        resolve_role(model, "heads")
    with pytest.raises(ValueError, match="BertModel has no 'unembedding'"):
        resolve_role(build("BertModel"), "unembedding")


def test_closest_names_and_is_hf_model():
    model = build("LlamaForCausalLM")
    hits = closest_names(model, "layers.*.mlpp")
    assert hits[0] == "model.layers.0.mlp" and "model.layers.1.mlp" not in hits and len(hits) <= 5
    assert "model.layers.0.self_attn" in closest_names(model, "self_atn", n=3)
    assert closest_names(model, "zzzzqqqq") == []
    assert is_hf_model(model) and not is_hf_model(TinyLM()) and not is_hf_model(object())
