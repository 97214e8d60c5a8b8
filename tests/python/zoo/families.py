"""Every text family transformers ships, and its tiny random-weight model.

The families are read from transformers' auto mappings, so a family added by a new transformers
release appears here by itself (and fails ``test_zoo_table.py`` until the table says what to
expect of it). Each family is built with the class ``AutoModelFor...`` picks for it, preferring
the encoder-decoder head, then the masked-LM head, then the causal-LM head: a BERT is tested as
the masked LM users load, a BART as the encoder-decoder.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
import transformers as tf
import transformers.models.auto.modeling_auto as auto

from .configs import VOCAB, tiny_config

# (mapping, kind) in order of preference.
MAPPINGS = (
    ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "seq2seq"),
    ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "masked"),
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "causal"),
)
# Multimodal configs whose causal-LM class is their text decoder: AutoModelForCausalLM builds it
# from the text sub-config (model_type given here) when the family has no text-only model type.
TEXT_PART = {"emu3": "emu3_text_model", "mllama": "mllama_text_model"}
MAX_PARAMS = 2_000_000  # a tiny config that is not tiny is a bug in configs.py


class Family(NamedTuple):
    name: str  # transformers model_type
    kind: str  # "seq2seq", "masked" or "causal"
    cls_name: str  # the model class AutoModelFor<kind> builds


def enumerate_families() -> dict[str, Family]:
    """model_type -> Family, for every entry of the three text-generation auto mappings."""
    out: dict[str, Family] = {}
    for mapping, kind in MAPPINGS:
        for name, cls_name in getattr(auto, mapping).items():
            out.setdefault(name, Family(name, kind, cls_name))
    return out


def _post_build(name: str, model: Any) -> None:
    if name == "xmod":  # X-MOD routes through per-language adapters and needs one chosen
        model.set_default_language("en_XX")


@functools.lru_cache(maxsize=1)  # one family at a time: the parity tests run family by family
def build(name: str) -> torch.nn.Module:
    """The tiny float32 model of family ``name`` in eval mode, seeded (same weights every call)."""
    fam = enumerate_families()[name]
    cls = getattr(tf, fam.cls_name)
    config = tiny_config(TEXT_PART.get(name, name))
    with torch.device("meta"):  # count first: never allocate a model that was not shrunk
        n = sum(p.numel() for p in cls(config).parameters())
    assert n <= MAX_PARAMS, f"{name}: the tiny config has {n:,} parameters; shrink it in zoo/configs.py"
    torch.manual_seed(0)
    model = cls(config).float().eval()
    _post_build(name, model)
    _warm_up(model, inputs(name))
    return model


def _warm_up(model: Any, x: dict[str, torch.Tensor]) -> None:
    """Transformers installs its output-recording hooks on the first forward that asks for hidden
    states or attentions and keeps them: do that now, so that the hooks a feature leaves behind
    are the feature's own."""
    impl = model.config._attn_implementation
    with torch.no_grad():
        model(**x, output_hidden_states=True)
        model.set_attn_implementation("eager")
        try:
            model(**x, output_attentions=True)
        finally:
            model.set_attn_implementation(impl)


def inputs(name: str, batch: int = 2, length: int = 8, *, seed: int = 1) -> dict[str, torch.Tensor]:
    """input_ids (B, T) inside the tiny vocabulary, avoiding the special ids 0-3 (and decoder ids
    of length T - 2 for encoder-decoders)."""
    g = torch.Generator().manual_seed(seed)
    out = {"input_ids": torch.randint(4, VOCAB - 4, (batch, length), generator=g)}
    if enumerate_families()[name].kind == "seq2seq":
        out["decoder_input_ids"] = torch.randint(4, VOCAB - 4, (batch, length - 2), generator=g)
    return out


def describe(model: Any) -> str:
    """Class name and model_type, for messages."""
    return f"{type(model).__name__} ({getattr(model.config, 'model_type', '?')})"
