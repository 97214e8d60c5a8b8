"""Tiny random-weight configs for every family of the zoo, shrunk from transformers' defaults.

``tiny_config(family)`` starts from the family's default config (the full-size model) and
overrides the size fields it has (``TINY``: hidden 32, 2 layers, 4 heads, vocabulary 128, ...),
then the family's own fields (``FAMILY``): layer patterns that must hold both kinds of layer of a
hybrid, dimensions that must divide each other, sub-configs. Passing everything to the config's
constructor (rather than setting attributes afterwards) lets each config derive its dependent
fields (``layer_types``, ``head_dim``, ...) from the tiny sizes.
"""

from __future__ import annotations

from typing import Any

import transformers as tf
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

H, LAYERS, HEADS, VOCAB = 32, 2, 4, 128

# Size fields, overridden wherever a family's default config has them (OPTIONAL ones only where
# they default to a value: None means "off" there, as an absent query LoRA).
TINY: dict[str, Any] = {
    **dict.fromkeys(["hidden_size", "d_model", "n_embd", "dim", "emb_dim", "embed_dim", "embedding_dim"], H),
    **dict.fromkeys(
        [
            "num_hidden_layers",
            "num_layers",
            "n_layer",
            "n_layers",
            "encoder_layers",
            "decoder_layers",
            "num_decoder_layers",
            "num_encoder_layers",
            "num_blocks",
        ],
        LAYERS,
    ),
    **dict.fromkeys(
        [
            "num_attention_heads",
            "n_head",
            "n_heads",
            "num_heads",
            "encoder_attention_heads",
            "decoder_attention_heads",
            "swa_num_attention_heads",
        ],
        HEADS,
    ),
    **dict.fromkeys(["num_key_value_heads", "swa_num_key_value_heads", "num_kv_heads"], 2),
    **dict.fromkeys(
        ["intermediate_size", "d_ff", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "n_inner", "hidden_dim"], 2 * H
    ),
    **dict.fromkeys(
        [
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
            "shared_intermediate_size",
            "shared_experts_intermediate_size",
            "expert_ffn_hidden_size",
            "mlp_only_intermediate_size",
            "first_dense_intermediate_size",
            "prefix_dense_intermediate_size",
            "dense_intermediate_size",
            "moe_shared_expert_intermediate_size",
        ],
        H,
    ),
    **dict.fromkeys(["head_dim", "d_kv", "swa_head_dim", "attention_head_dim", "d_head"], 8),
    **dict.fromkeys(["qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "index_head_dim"], 8),
    **dict.fromkeys(["kv_lora_rank", "q_lora_rank", "qk_head_dim"], 16),
    **dict.fromkeys(["num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"], 4),
    **dict.fromkeys(["num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_k", "top_k_experts"], 2),
    **dict.fromkeys(["n_group", "topk_group", "num_expert_group"], 1),
    **dict.fromkeys(["index_n_heads", "index_num_heads", "indexer_n_heads"], 2),
    **dict.fromkeys(["index_topk"], 4),
    **dict.fromkeys(["linear_key_head_dim", "linear_value_head_dim", "linear_head_dim"], 8),
    **dict.fromkeys(["linear_num_key_heads", "linear_num_heads"], 2),
    **dict.fromkeys(["linear_num_value_heads"], 4),
    **dict.fromkeys(["mamba_d_state", "state_size", "ssm_state_size"], 8),
    **dict.fromkeys(["mamba_dt_rank", "time_step_rank"], 4),
    **dict.fromkeys(["mamba_chunk_size", "chunk_size"], 8),
    **dict.fromkeys(["max_position_embeddings", "n_positions", "max_seq_len", "n_ctx"], 64),
    "rotary_dim": 4,
    # Windows shorter than the 8 test tokens, so that sliding-window masks matter.
    **dict.fromkeys(["sliding_window", "attention_window_size"], 4),
    "dim_ff": 2 * H,
    "dim_head": 8,
    "vocab_size": VOCAB,
    "type_vocab_size": 2,
}
OPTIONAL = {"q_lora_rank", "rotary_dim", "sliding_window", "attention_window_size"}
SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 0}


SUB = object()  # FAMILY value: shrink this sub-config of a composite config the same way


def _mamba(n_heads: int = 4, d_head: int = 16, **more: Any) -> dict[str, Any]:
    # Mamba-2 mixers: expand * hidden == n_heads * d_head.
    return {"mamba_n_heads": n_heads, "mamba_d_head": d_head, "mamba_expand": 2, "mamba_n_groups": 1, **more}


# Family fields on top of TINY. Each entry says why it is needed.
FAMILY: dict[str, dict[str, Any]] = {
    # 2 layers of the default pattern would be mamba/linear only: one of each kind instead.
    "bailing_hybrid": {"layer_types": ["linear_attention", "full_attention"], "mlp_layer_types": ["dense", "sparse"]},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1},
    "qwen3_next": {"layer_types": ["linear_attention", "full_attention"]},
    "qwen3_5_text": {"layer_types": ["linear_attention", "full_attention"]},
    "qwen3_5_moe_text": {"layer_types": ["linear_attention", "full_attention"]},
    "kimi_linear": {"layer_types": ["linear_attention", "full_attention"], "mlp_layer_types": ["dense", "sparse"]},
    "recurrent_gemma": {"block_types": ["recurrent", "attention"], "lru_width": H},
    "bamba": {**_mamba(), "attn_layer_indices": [1]},
    "granitemoehybrid": {**_mamba(), "layer_types": ["mamba", "attention"]},
    "nemotron_h": {**_mamba(), "layers_block_type": ["mamba", "attention"]},
    "falcon_h1": {**_mamba(), "mamba_d_ssm": 64},
    "zamba2": {
        "layers_block_type": ["mamba", "hybrid"],
        "hybrid_layer_ids": [1],
        "n_mamba_heads": 4,
        "mamba_headdim": 16,
        "attention_hidden_size": 2 * H,
        "adapter_rank": 4,
    },
    "mamba2": {"num_heads": 4, "head_dim": 16, "n_groups": 1},
    # Fields that must agree with the tiny sizes.
    "codegen": {"rotary_dim": 4},
    "gptj": {"rotary_dim": 4},
    "gpt_neo": {"attention_types": [[["global", "local"], 1]], "window_size": 4},
    "esmc": {"num_key_value_heads": HEADS},
    "dots3_note_text": {"num_key_value_heads": HEADS, "per_layer_config": {}},
    "zaya": {"num_experts_per_tok": 1},
    "dots1": {"n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
    "lfm2": {"layer_types": ["conv", "full_attention"]},
    "lfm3": {"layer_types": ["conv", "full_attention"]},
    # Dory: input, looped and output stages of (attention, MLP) layer pairs.
    "dory": {
        "num_hidden_layers": 6,
        "layer_types": ["full_attention", "mlp"] * 3,
        **dict(n_input_layers=2, n_recurrent_layers=2, n_output_layers=2, n_recurrent_loops=2),
    },
    "funnel": {"block_sizes": [1, 1], "block_repeats": [1, 1], "d_inner": 2 * H},
    # MobileBERT's MLM head projects hidden - embedding_size extra features: keep it non-empty.
    "mobilebert": {
        "embedding_size": H // 2,
        "true_hidden_size": H,
        "intra_bottleneck_size": H,
        "num_feedforward_networks": 1,
    },
    "neomme": {"head_dim": 16, "embedding_rank": 16, "per_layer_config": {}},
    "reformer": {
        "attn_layers": ["local", "lsh"],
        "axial_pos_shape": [2, 4],  # in training its product must be the sequence length (8)
        "axial_pos_embds_dim": [16, 16],
        "attention_head_size": 8,
        "feed_forward_size": 2 * H,
        "local_attn_chunk_length": 4,
        "lsh_attn_chunk_length": 4,
        "num_buckets": 2,
        "max_position_embeddings": 8,
    },
    "roc_bert": {
        "pronunciation_embed_dim": H,
        "pronunciation_vocab_size": 16,
        "shape_embed_dim": H,
        "shape_vocab_size": 16,
    },
    "squeezebert": {"embedding_size": H},
    "luke": {"entity_vocab_size": 16, "entity_emb_size": 16},
    "fsmt": {"src_vocab_size": VOCAB, "tgt_vocab_size": VOCAB},
    "perceiver": {
        "num_latents": 8,
        "d_latents": H,
        "num_self_attends_per_block": 2,
        "num_self_attention_heads": 2,
        "num_cross_attention_heads": 2,
        "max_position_embeddings": 16,
    },
    "gemma3n_text": {
        "num_kv_shared_layers": 0,
        "layer_types": ["sliding_attention", "full_attention"],
        "intermediate_size": [2 * H, 2 * H],
        "activation_sparsity_pattern": [0.0, 0.0],
        "vocab_size_per_layer_input": VOCAB,
        "hidden_size_per_layer_input": 8,
        "laurel_rank": 4,
    },
    "gemma4_text": {
        "layer_types": ["sliding_attention", "full_attention"],
        "vocab_size_per_layer_input": VOCAB,
        "hidden_size_per_layer_input": 8,
        "per_layer_config": {},
    },
    # xLSTM rounds its query/key and value widths up to multiples of 64: hidden 128 keeps the
    # cell state and the projections the same size.
    "xlstm": {"hidden_size": 128, "embedding_dim": 128},
    # Default rope_parameters are empty: the text half of a multimodal model gets them from its parent.
    "cohere_compass_text": {
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 1, 1]}}
    },
    "kolibri1_1": {
        "head_dim": 16,
        "layer_types": ["sliding_attention", "indexed_attention"],
        "index_layers": [1],
        "kv_source_layers": [0, 1],
        "mlp_only_layers": [0],
    },
    "qwen4_exp_text": {
        "layer_types": ["linear_attention", "full_attention"],
        **dict(indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=8, indexer_budget=8, indexer_compress_ratio=2),
    },
    "zamba": {"num_hidden_layers": 3, "layers_block_type": ["mamba", "hybrid", "hybrid"], "n_mamba_heads": 2},
    # At 8 tokens BigBird runs full attention anyway; block-sparse reports no attention maps.
    "big_bird": {"attention_type": "original_full"},
    "bigbird_pegasus": {"attention_type": "original_full"},
    "esm": {"pad_token_id": 1, "mask_token_id": 3},
    # DbrxAttention reads attn_config.rope_theta and clamps with clip_qkv, which the default
    # DbrxAttentionConfig lacks (None); real checkpoints' configs carry both.
    "dbrx": {
        "attn_config": {"kv_n_heads": 2, "rope_theta": 1e4, "clip_qkv": 8.0},
        "ffn_config": {"ffn_hidden_size": 2 * H, "moe_num_experts": 4, "moe_top_k": 2},
    },
    "inkling2_text": {
        **dict(unpadded_vocab_size=VOCAB, rel_extent=16, sliding_window_size=8, d_rel=4),
        "layer_types": ["hybrid_sliding", "hybrid"],
    },
    "inkling2_loop_text": {
        **dict(unpadded_vocab_size=VOCAB, rel_extent=16, sliding_window_size=8, d_rel=4),
        "layer_types": ["hybrid_sliding", "hybrid"],
        **dict(loop_layer_index_start=1, loop_layer_index_end=2, loop_num_passes=2, loop_gate_rank=4),
        "n_layers_per_attn_res_block": 1,
    },
    # Composite text models: every sub-config shrunk.
    "t5gemma": {"encoder": SUB, "decoder": SUB},
    "blt": {
        **dict.fromkeys(["patcher_config", "encoder_config", "decoder_config", "global_config"], SUB),
        "encoder_hash_byte_group_vocab": 64,
        "local_attention_window_len": 8,
        "use_cache": False,  # its DynamicCache asks BltConfig for num_hidden_layers, which it lacks
    },
    "blt_local_encoder": {"hidden_size_global": H},
    "blt_local_decoder": {"hidden_size_global": H},
    # OPT-350m's layout, the unusual one: post-LN blocks and a projection around the embeddings.
    "opt": {"do_layer_norm_before": False, "word_embed_proj_dim": H // 2},
    "longcat_flash": {"ffn_hidden_size": 2 * H, "zero_expert_num": 2},
    "hy_v4": {"indexer_types": ["full", "shared"], "hc_mult": 2},
}


def _sized(cls: Any, family: str) -> dict[str, Any]:
    """TINY and SPECIAL_IDS restricted to the fields ``cls``'s default config has, plus FAMILY."""
    try:
        defaults = cls().to_dict()
    except (ValueError, TypeError):  # some defaults fail their own validation (gemma4_assistant)
        defaults = dict.fromkeys(TINY, 1) | dict.fromkeys(SPECIAL_IDS, 0)
    kw = {k: v for k, v in TINY.items() if k in defaults and (k not in OPTIONAL or defaults[k] is not None)}
    kw |= {k: v for k, v in SPECIAL_IDS.items() if defaults.get(k) is not None}
    types = defaults.get("layer_types") or ()
    if "sliding_attention" in types and "full_attention" in types:  # keep one layer of each
        kw["layer_types"] = ["sliding_attention", "full_attention"]
    if "kv_lora_rank" in defaults:  # multi-head latent attention has no grouped key/value heads
        kw["num_key_value_heads"] = HEADS
    kw |= FAMILY.get(family, {})
    for name, value in kw.items():
        if value is SUB:
            sub = cls.sub_configs[name]
            kw[name] = _sized(sub, getattr(sub, "model_type", "") or family)
    return kw


def tiny_config(family: str) -> Any:
    """The tiny config of ``family`` (a transformers model_type, or a text sub-config's)."""
    if family == "encoder-decoder":
        # Two configs: from_encoder_decoder_configs turns the decoder's into a cross-attending one.
        encoder, decoder = (tf.BertConfig(**_sized(tf.BertConfig, "bert")) for _ in range(2))
        return tf.EncoderDecoderConfig.from_encoder_decoder_configs(
            encoder, decoder, decoder_start_token_id=0, pad_token_id=0
        )
    cls = CONFIG_MAPPING[family]
    return cls(**_sized(cls, family))
