"""What llmdbg must do on every text family transformers ships: the one table of the zoo.

``TABLE[family][feature]`` is ``PARITY`` (the feature must reproduce the model's own computation,
see ``checks.py``), a :class:`Refusal` (the family cannot support the feature: llmdbg must raise
``ValueError``/``TypeError`` whose message names the model class or
model_type and matches ``pattern``), or an :class:`Upstream` (transformers itself cannot run the
reference on this model; the suite checks that this is still so). ``EXCLUDED`` lists the
families the zoo does not build, with the reason. ``test_zoo_table.py`` checks that the families
transformers ships are exactly ``TABLE`` plus ``EXCLUDED``; ``tools/support_matrix.py`` renders
``docs/support.md`` from this file. Pure data: importing it needs neither torch nor transformers.

An entry says what *should* happen. Where llmdbg does not do it yet, the parity test fails; it is
never marked as expected to fail.
"""

from __future__ import annotations

import re
from typing import NamedTuple

FEATURES = ("blocks", "maps", "lens", "watch", "patch")
PARITY = "parity"


class Refusal(NamedTuple):
    """llmdbg must refuse with an error matching ``pattern`` ({cls} is the model class name)."""

    pattern: str
    reason: str


class Upstream(NamedTuple):
    """transformers itself fails to compute the reference (checked: still failing)."""

    reason: str


Expectation = str | Refusal | Upstream

# Refusals shared by several families.
ENC_DEC_LENS = Refusal(
    r"{cls} is an encoder-decoder model",
    "encoder-decoder: the lens reads one residual stream; decode a decoder-only or encoder model",
)
NO_ATTENTION = Refusal(r"{cls} has no attention", "no softmax attention: state-space or recurrent blocks")
NOT_A_MAP = Refusal(
    r"{cls}.*attention",
    "its attention is not a (B, H, T, T) softmax map (banded, block-local, hashed or approximate)",
)
STREAMS_LENS = Refusal(
    r"{cls} sees hidden states of shape",
    "several residual streams per token, merged only by the model's head",
)


def unsupported(family: str, reason: str, *features: str) -> dict[str, Expectation]:
    """``features`` refused through ``llmdbg.adapters.support.UNSUPPORTED`` (its message names the
    class and ``family``; ``test_support_registry.py`` checks the two lists agree)."""
    return dict.fromkeys(
        features, Refusal(rf"{{cls}} \(model_type '{re.escape(family)}'\) is not supported by", reason)
    )


def row(**deviations: Expectation) -> dict[str, Expectation]:
    """Every feature at PARITY except the named ones."""
    unknown = set(deviations) - set(FEATURES)
    assert not unknown, f"unknown features {unknown}"
    return {f: deviations.get(f, PARITY) for f in FEATURES}


# Families the zoo does not build. transformers lists them in the text-generation auto
# mappings, but their model is not a text model that runs on input_ids alone.
_SPEECH = "speech-to-text: an audio encoder feeding a text decoder; needs audio features"
_VISION = "vision-language model: builds a vision tower and takes pixel inputs"
_DRAFTER = "speculative-decoding drafter: its forward needs the target model's embeddings and shared KV states"


def _text_part(family: str) -> str:
    return f"multimodal config: AutoModelForCausalLM builds the same text decoder as {family} (tested there)"


EXCLUDED: dict[str, str] = {
    **dict.fromkeys(
        [
            "audioflamingo3",
            "glmasr",
            "granite_speech",
            "granite_speech_plus",
            "moss_transcribe_diarize",
            "musicflamingo",
            "nemo_speechlm",
            "omniasr",
            "qwen2_audio",
            "qwen3_asr",
            "vibevoice_asr",
            "voxtral",
            "voxtral_realtime",
        ],
        _SPEECH,
    ),
    **dict.fromkeys(
        ["fuyu", "git", "got_ocr2", "modernvbert", "phi4_multimodal", "t5gemma2", "ultravbert"],
        _VISION,
    ),
    "gemma3": _VISION + " (text model: gemma3_text)",
    "gemma3n": _VISION + " and an audio tower (text model: gemma3n_text)",
    "gemma4": _VISION + " (text model: gemma4_text)",
    "gemma4_unified": _VISION + " (text model: gemma4_unified_text)",
    "dots3_note": _text_part("dots3_note_text"),
    "llama4": _text_part("llama4_text"),
    "qwen3_5": _text_part("qwen3_5_text"),
    "qwen3_5_moe": _text_part("qwen3_5_moe_text"),
    "qwen4_exp": _text_part("qwen4_exp_text"),
    "gemma4_assistant": _DRAFTER,
    "gemma4_unified_assistant": _DRAFTER,
    "musicgen": "text-to-music: the causal LM predicts audio codebooks, input_ids of shape (B * codebooks, T)",
    "musicgen_melody": "text-to-music: the causal LM predicts audio codebooks, input_ids of shape (B * codebooks, T)",
}

# Every other family. A comment after a row says why a deviation is there.
TABLE: dict[str, dict[str, Expectation]] = {
    "afmoe": row(),
    "albert": row(  # one layer group applied num_hidden_layers times: every call is a block
        **unsupported(
            "albert", "one shared layer run num_hidden_layers times: one module, several outputs", "blocks", "patch"
        )
    ),
    "apertus": row(),
    "apertus1p5_text": row(),
    "arcee": row(),
    "aria_text": row(),
    "axk1": row(),
    "axk2": row(),
    "bailing_hybrid": row(),
    "bamba": row(),
    "bart": row(lens=ENC_DEC_LENS),
    "beam": row(),
    "bert": row(),
    "bert-generation": row(),
    "big_bird": row(),
    "bigbird_pegasus": row(lens=ENC_DEC_LENS),
    "biogpt": row(),
    "bitnet": row(),
    "blenderbot": row(lens=ENC_DEC_LENS),
    "blenderbot-small": row(lens=ENC_DEC_LENS),
    "bloom": row(),
    "blt": row(
        **unsupported(
            "blt",
            "byte-level local encoder/decoder around a patch-level global transformer: blocks see one state per patch",
            *("blocks", "maps", "lens", "patch"),
        )
    ),
    "camembert": row(),
    "codegen": row(),
    "cohere": row(),
    "cohere2": row(),
    "cohere2_moe": row(),
    "cohere_compass_text": row(),
    "convbert": row(),
    "cpmant": row(
        **unsupported(
            "cpmant",
            "prepends prompt tokens inside the model: blocks and maps cover prompt_length + T positions",
            *("blocks", "maps", "lens", "patch"),
        )
    ),
    "ctrl": row(),
    "cwm": row(),
    "data2vec-text": row(),
    "dbrx": row(),
    "deberta": row(),
    "deberta-v2": row(),
    "deepseek_v2": row(),
    "deepseek_v3": row(),
    "deepseek_v32": row(),
    "deepseek_v4": row(lens=STREAMS_LENS),  # hyper-connections: hc_mult residual streams
    "diffllama": row(),
    "distilbert": row(),
    "doge": row(),
    "dory": row(
        **unsupported(
            "dory", "a looped middle stage: its blocks run several times per forward", *("blocks", "maps", "patch")
        )
    ),
    "dots1": row(),
    "dots3_note_text": row(),
    "electra": row(),
    "emu3": row(),
    "encoder-decoder": row(lens=ENC_DEC_LENS),
    "ergo": row(),
    "ernie": row(),
    "ernie4_5": row(),
    "ernie4_5_moe": row(),
    "esm": row(),
    "esmc": row(),
    "eurobert": row(),
    "exaone": row(),
    "exaone4": row(),
    "exaone_moe": row(),
    "falcon": row(),
    "falcon_h1": row(),
    "falcon_mamba": row(maps=NO_ATTENTION),
    "flaubert": row(),  # layers are parallel ModuleLists (attentions, ffns, layer norms), no block module
    "flex_olmo": row(),
    "flint": row(),
    "fnet": row(maps=Refusal(r"{cls}.*attention", "Fourier token mixing: no attention")),
    "fsmt": row(
        lens=ENC_DEC_LENS, **unsupported("fsmt", "time-major (T, B, D) states inside its blocks", "blocks", "patch")
    ),
    "funnel": row(
        lens=Refusal(r"{cls} is an encoder-decoder model", "pooling shortens the sequence between blocks"),
        **unsupported("funnel", "pooling shortens the sequence between stages", "blocks", "patch"),
    ),
    "gemma": row(),
    "gemma2": row(),
    "gemma3_text": row(),
    "gemma3n_text": row(  # AltUp: altup_num_inputs predictions per token
        lens=STREAMS_LENS, **unsupported("gemma3n_text", "AltUp: (N, B, T, D) block outputs, N streams", "patch")
    ),
    "gemma4_text": row(),
    "gemma4_unified_text": row(),
    "glm": row(),
    "glm4": row(),
    "glm4_moe": row(),
    "glm4_moe_lite": row(),
    "glm_moe_dsa": row(),
    "gpt-sw3": row(),
    "gpt2": row(),
    "gpt_bigcode": row(),
    "gpt_neo": row(),
    "gpt_neox": row(),
    "gpt_neox_japanese": row(),
    "gpt_oss": row(),
    "gptj": row(),
    "granite": row(),
    "granite_swa": row(),
    "granitemoe": row(),
    "granitemoe_swa": row(),
    "granitemoehybrid": row(),
    "granitemoeshared": row(),
    "gte": row(),
    "helium": row(),
    "hrm_text": row(
        **unsupported(
            "hrm_text",
            "hierarchical H/L modules, each run for several cycles on two states that feed each other",
            *("blocks", "maps", "lens", "patch"),
        )
    ),
    "hunyuan_v1_dense": row(),
    "hunyuan_v1_moe": row(),
    "hy_v3": row(),
    "hy_v4": row(lens=STREAMS_LENS),  # hyper-connections
    "hyperclovax": row(),
    "ibert": row(),
    "inkling2_loop_text": row(
        **unsupported(
            "inkling2_loop_text",
            "attention residuals: layers and the final norm read a learned mix of earlier blocks; a looped stage",
            *("blocks", "lens", "patch"),
        )
    ),
    "inkling2_text": row(
        **unsupported(
            "inkling2_text",
            "attention residuals: layers and the final norm read a learned mix of earlier blocks",
            *("blocks", "lens", "patch"),
        )
    ),
    "inkling_text": row(),
    "internlm3": row(),
    "iquestcoder": row(),
    "jais2": row(),
    "jamba": row(),
    "jetmoe": row(),
    "jina_embeddings_v3": row(),
    "kimi_linear": row(),
    "kolibri1": row(),
    "kolibri1_1": row(),
    "laguna": row(),
    "lara_mini": row(),
    "layoutlm": row(),
    "led": row(lens=ENC_DEC_LENS, **unsupported("led", "Longformer attention: banded (B, T, H, 2w + 1)", "maps")),
    "lfm2": row(),
    "lfm2_moe": row(),
    "lfm3": row(),
    "llama": row(),
    "llama4_text": row(),
    "longcat_flash": row(),  # two attention sublayers per layer
    "longformer": row(**unsupported("longformer", "banded (B, T, H, 2w + 1) sliding-window attention", "maps")),
    "longt5": row(lens=ENC_DEC_LENS, **unsupported("longt5", "local / transient-global block attention", "maps")),
    "luke": row(),
    "m2m_100": row(lens=ENC_DEC_LENS),
    "mamba": row(maps=NO_ATTENTION),
    "mamba2": row(maps=NO_ATTENTION),
    "marian": row(lens=ENC_DEC_LENS),
    "mbart": row(lens=ENC_DEC_LENS),
    "megatron-bert": row(),
    "mellum": row(),
    "mimo_v2_flash": row(),
    "minicpm3": row(),
    "minicpm5_moe": row(),
    "minimax": row(),
    "minimax_m2": row(),
    "minimax_m3_vl_text": row(),
    "ministral": row(),
    "ministral3": row(),
    "mistral": row(),
    "mixtral": row(),
    "mllama": row(),
    "mobilebert": row(),
    "modernbert": row(),
    "modernbert-decoder": row(),
    "moshi": row(),
    "mpnet": row(),
    "mpt": row(),
    "mra": row(**unsupported("mra", "multi-resolution approximate attention: no softmax map", "maps")),
    "mt5": row(lens=ENC_DEC_LENS),
    "mvp": row(lens=ENC_DEC_LENS),
    "nanochat": row(),
    "nemotron": row(),
    "nemotron_h": row(),
    "neomme": row(),
    "nllb-moe": row(lens=ENC_DEC_LENS),
    "nomic_bert": row(),
    "nystromformer": row(),
    "olmo": row(),
    "olmo2": row(),
    "olmo3": row(),
    "olmo_hybrid": row(),
    "olmoe": row(),
    "openai-gpt": row(),
    "opt": row(),
    "param2moe": row(),
    "pegasus": row(lens=ENC_DEC_LENS),
    "pegasus_x": row(
        lens=ENC_DEC_LENS,
        **unsupported("pegasus_x", "encoder layers carry token states and global tokens", "blocks", "patch"),
        **unsupported("pegasus_x", "block-local encoder attention with global tokens", "maps"),
    ),
    "perceiver": row(
        **unsupported("perceiver", "blocks process a latent array, not one state per token", "blocks", "lens", "patch")
    ),
    "persimmon": row(),
    "phi": row(),
    "phi3": row(),
    "phimoe": row(),
    "plbart": row(lens=ENC_DEC_LENS),
    "prophetnet": row(
        lens=ENC_DEC_LENS,
        **unsupported(
            "prophetnet", "n-gram predict streams concatenated with the main decoder stream", "blocks", "patch"
        ),
    ),
    "qwen2": row(),
    "qwen2_moe": row(),
    "qwen3": row(),
    "qwen3_5_moe_text": row(),
    "qwen3_5_text": row(),
    "qwen3_moe": row(),
    "qwen3_next": row(),
    "qwen4_exp_text": row(**unsupported("qwen4_exp_text", "hyper-connections: several residual streams", "lens")),
    "recurrent_gemma": row(),
    "reformer": row(
        **unsupported("reformer", "reversible layers: two concatenated streams per token", "lens", "patch"),
        **unsupported("reformer", "LSH and chunked local attention: no (B, H, T, T) map", "maps"),
    ),
    "rembert": row(),
    "roberta": row(),
    "roberta-prelayernorm": row(),
    "roc_bert": row(),
    "roformer": row(),
    "rwkv": row(maps=NO_ATTENTION),
    "sarvam_mla": row(),
    "sarvam_moe": row(),
    "seamless_m4t": row(lens=ENC_DEC_LENS),
    "seamless_m4t_v2": row(lens=ENC_DEC_LENS),
    "seed_oss": row(),
    "smollm3": row(),
    "solar_open": row(),
    "squeezebert": row(
        **unsupported("squeezebert", "channels-first (B, D, T) blocks passing dicts", "blocks", "lens", "patch"),
        **unsupported("squeezebert", "attention modules return dicts holding pre-softmax scores", "maps"),
    ),
    "stablelm": row(),
    "starcoder2": row(),
    "switch_transformers": row(lens=ENC_DEC_LENS),
    "t5": row(lens=ENC_DEC_LENS),
    "t5gemma": row(lens=ENC_DEC_LENS),
    "tapas": row(),
    "trocr": row(),  # run as a decoder-only LM: its cross-attention layers are skipped
    "ultrabert": row(),
    "umt5": row(lens=ENC_DEC_LENS),
    "vaultgemma": row(),
    "whisper": row(),  # the text decoder alone (WhisperForCausalLM): cross-attention skipped
    "xglm": row(),
    "xlm": row(),  # parallel ModuleLists, as flaubert
    "xlm-roberta": row(),
    "xlm-roberta-xl": row(),
    "xlnet": row(
        **unsupported(
            "xlnet",
            "two-stream relative attention, time-major: (T, B, D) states, (T, T, B, H) maps",
            *("blocks", "maps", "lens", "patch"),
        )
    ),
    "xlstm": row(maps=NO_ATTENTION, watch=Upstream("its backward fails in transformers (in-place state update)")),
    "xmod": row(),
    "yoso": row(**unsupported("yoso", "LSH-sampled attention: no softmax map", "maps")),
    "youtu": row(),
    "zamba": row(),
    "zamba2": row(),
    "zaya": row(),
}
