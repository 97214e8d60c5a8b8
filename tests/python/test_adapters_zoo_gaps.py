"""Hybrid (attention + state-space/convolution/linear-attention) and pure state-space families:
every decoder layer is a block, checked against the model's own ``output_hidden_states`` and eager
``output_attentions``; attention features address the attention layers only, and a model without
attention says so, naming its family."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built from configs; never download
import transformers as tf

import llmdbg
from llmdbg.adapters.heads import head_geometry
from tiny_models import one_thread  # noqa: F401  (module fixture: tiny models on one thread)

SIZE = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    vocab_size=100,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
MAMBA2_HEADS = dict(mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=4, mamba_d_conv=4)
ALTERNATE = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
LINEAR = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8)
MOE = dict(num_experts_per_tok=1, moe_intermediate_size=32)
# Every hybrid family of transformers 5.25 that instantiates tiny on CPU, with two layers of each
# kind (Falcon-H1 runs attention and Mamba side by side in every layer).
HYBRIDS = {
    "jamba": dict(
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=2,
        num_experts_per_tok=1,
        mamba_d_state=4,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_dt_rank=4,
    ),
    "zamba": dict(
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
        attention_hidden_size=64,
        attention_head_dim=16,
        n_mamba_heads=2,
        mamba_d_state=4,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_dt_rank=4,
        tie_word_embeddings=False,
    ),
    "zamba2": dict(
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
        n_mamba_heads=4,
        mamba_ngroups=1,
        mamba_d_state=4,
        mamba_d_conv=4,
        mamba_expand=2,
        use_mem_eff_path=False,
        num_mem_blocks=1,
        tie_word_embeddings=False,
    ),
    "bamba": dict(attn_layer_indices=[1, 3], mamba_expand=2, **MAMBA2_HEADS),
    "falcon_h1": dict(mamba_d_ssm=64, mamba_expand=2, mamba_chunk_size=8, **MAMBA2_HEADS),
    "granitemoehybrid": dict(
        layer_types=["mamba", "attention", "mamba", "attention"],
        num_local_experts=2,
        num_experts_per_tok=1,
        shared_intermediate_size=64,
        mamba_expand=2,
        **MAMBA2_HEADS,
    ),
    "lfm2": dict(layer_types=["conv", "full_attention", "conv", "full_attention"], block_ff_dim=64, conv_L_cache=3),
    "qwen3_next": dict(
        layer_types=ALTERNATE, num_experts=2, shared_expert_intermediate_size=32, head_dim=8, **LINEAR, **MOE
    ),
    "nemotron_h": dict(
        layers_block_type=["mamba", "attention", "mlp", "mamba"],
        mamba_num_heads=4,
        mamba_head_dim=16,
        n_groups=1,
        ssm_state_size=4,
        conv_kernel=4,
        expand=2,
        head_dim=8,
    ),
    "olmo_hybrid": dict(layer_types=ALTERNATE, **LINEAR),
    # MiniMax's "lightning" layers are linear attention that its table lists as attention: not maps.
    "minimax": dict(layer_types=ALTERNATE, num_local_experts=2, num_experts_per_tok=1, head_dim=8),
    "recurrent_gemma": dict(lru_width=32, attention_window_size=16, block_types=["recurrent", "attention"], head_dim=8),
}
STATE_SPACE = {
    "mamba": dict(state_size=4, expand=2, conv_kernel=4),
    "mamba2": dict(state_size=4, expand=2, conv_kernel=4, num_heads=4, head_dim=16, n_groups=1),
    "falcon_mamba": dict(state_size=4, expand=2, conv_kernel=4),
    "rwkv": dict(attention_hidden_size=32, context_length=64),
}
# Families whose output_hidden_states leave out the embedding output (theirs: every layer's
# output, then the final norm of the last).
NO_EMBEDDING_STATE = {"mamba", "falcon_mamba", "rwkv"}
N_ATTENTION = {"falcon_h1": 4, "nemotron_h": 1, "recurrent_gemma": 2}


def build(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    extra = {**HYBRIDS, **STATE_SPACE}[family]
    config = tf.AutoConfig.for_model(family, **{**SIZE, **extra})
    with warnings.catch_warnings():  # "falling back to the PyTorch implementation" of the kernels
        warnings.simplefilter("ignore")
        return tf.AutoModelForCausalLM.from_config(config).eval()


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(seed))


def check_hidden_states(model: torch.nn.Module, family: str, x: torch.Tensor) -> None:
    """trace.hidden_states (embedding output, then every block's raw output) against the model's own
    output_hidden_states, entry by entry; the model's last entry is the final norm of the last."""
    layout = llmdbg.find_layout(model)
    with llmdbg.capture(model, hidden_states=True) as trace, torch.no_grad():
        model(input_ids=x)
    with torch.no_grad():
        theirs = [h.numpy() for h in model(input_ids=x, output_hidden_states=True).hidden_states]
        embedded = model.get_input_embeddings()(x).numpy()
    ours = trace.hidden_states
    assert len(ours) == len(layout.blocks) + 1 == 5
    if family in NO_EMBEDDING_STATE:  # these models add nothing to their embedding output
        theirs = [embedded, *theirs]
    assert len(theirs) == len(ours) + (family in NO_EMBEDDING_STATE)
    for i, (got, want) in enumerate(zip(ours[:-1], theirs)):
        np.testing.assert_array_equal(got, want, err_msg=f"{family} hidden state {i}")
    with torch.no_grad():
        normed = model.get_submodule(layout.final_norm)(torch.from_numpy(ours[-1])).numpy()
    np.testing.assert_allclose(normed, theirs[-1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", sorted(HYBRIDS))
def test_hybrid_blocks_are_every_layer_and_attention_only_the_attention_layers(family):
    model, x = build(family), ids()
    layout = llmdbg.find_layout(model)
    assert layout.family == family
    assert layout.blocks == tuple(f"model.layers.{i}" for i in range(4))
    assert list(layout.attention_blocks) == [b for b in layout.blocks if b in layout.attention_blocks]  # in order
    assert len(layout.attention) == len(layout.attention_blocks) == N_ATTENTION.get(family, 2)
    assert all(a.startswith(b + ".") for a, b in zip(layout.attention, layout.attention_blocks))
    check_hidden_states(model, family, x)

    # Attention maps of the attention layers only, against the model's own eager output_attentions
    # (which some families give per layer, with None or a linear-attention state elsewhere).
    with llmdbg.capture(model, attentions=True) as trace, torch.no_grad():
        model(input_ids=x)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            theirs = list(model(input_ids=x, output_attentions=True).attentions)
    finally:
        model.set_attn_implementation("sdpa")
    if len(theirs) == len(layout.blocks):
        theirs = [theirs[layout.blocks.index(b)] for b in layout.attention_blocks]
    assert trace.attention_modules == list(layout.attention)
    assert len(trace.attentions) == len(theirs) == len(layout.attention)
    for got, want in zip(trace.attentions, theirs):
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", sorted(STATE_SPACE))
def test_state_space_blocks_match_output_hidden_states(family):
    model = build(family)
    layout = llmdbg.find_layout(model)
    assert (layout.family, layout.attention, layout.attention_blocks) == (family, (), ())
    assert len(layout.blocks) == 4 and layout.final_norm is not None
    check_hidden_states(model, family, ids())


@pytest.mark.parametrize("family", ["mamba", "mamba2", "rwkv"])
def test_attention_features_on_a_state_space_model_name_the_family(family):
    model, x = build(family), ids()
    name = type(model).__name__
    with pytest.raises(ValueError, match=f"{name} has no attention"):
        with llmdbg.capture(model, attentions=True):
            model(input_ids=x)
    with pytest.raises(ValueError, match=f"{name} has no attention"):
        llmdbg.ablate(model, x, [(0, 0)], progress=False)
    with pytest.raises(ValueError, match=f"{name} has no attention"):
        llmdbg.gradient_rollout(model, x)
    with pytest.raises(ValueError, match=f"{name} has no attention"):
        llmdbg.streaming_rollout(model, x)
    with pytest.raises(ValueError, match=f"{name} has no attention"):
        llmdbg.estimate_memory(model, x)
    with pytest.raises(ValueError, match=f"{name} has no attention"):
        with llmdbg.capture(model, "attention"):
            pass
    assert all(not h for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks))


def test_lens_and_patching_cover_the_mamba_layers_of_a_hybrid():
    model, x = build("jamba"), ids()
    lens = llmdbg.logit_lens(model, x, progress=False)
    np.testing.assert_array_equal(lens.layers, np.arange(5))  # embeddings + 4 layers, 2 of them Mamba
    with torch.no_grad():
        logits = model(input_ids=x).logits
    np.testing.assert_array_equal(lens.top_ids[-1, ..., 0], logits.argmax(-1).numpy())

    metric = llmdbg.interventions.logit_diff(5, 6)
    result = llmdbg.patch(model, x, x, metric=metric, positions=[0, 5], progress=False)
    assert result.modules == [f"model.layers.{i}" for i in range(4)]
    np.testing.assert_array_equal(result.values, np.full((4, 2), result.clean_metric))


def test_head_ablation_on_a_hybrid_counts_attention_layers_and_matches_zeroing_by_hand():
    model, x = build("jamba"), ids()
    names, n_heads, d = head_geometry(model)
    assert names == ["model.layers.1.self_attn.o_proj", "model.layers.3.self_attn.o_proj"] and n_heads == 4
    got = llmdbg.ablate(model, x, [(1, 2)], progress=False)

    def zero_head(module, args):
        y = args[0].clone()
        y[..., 2 * d : 3 * d] = 0
        return (y, *args[1:])

    handle = model.get_submodule("model.layers.3.self_attn.o_proj").register_forward_pre_hook(zero_head)
    try:
        with torch.no_grad():
            want = model(input_ids=x).logits.numpy()
    finally:
        handle.remove()
    np.testing.assert_array_equal(got.logits, want)
    assert np.abs(got.logits - got.baseline_logits).max() > 0
    with pytest.raises(ValueError, match="2 attention layers"):
        llmdbg.ablate(model, x, [(2, 0)], progress=False)


def test_report_layout_table_puts_attention_beside_its_own_block():
    from types import SimpleNamespace

    from llmdbg.report.sections import model_section

    model = build("jamba")
    sections = []
    report = SimpleNamespace(add_section=lambda title, table: sections.append(table))
    trace = SimpleNamespace(layout=llmdbg.find_layout(model))
    model_section(SimpleNamespace(report=report, model=model, trace=trace, name="tiny-jamba"))
    rows = sections[0][1]
    assert [(r["block"], r["attention"]) for r in rows] == [
        ("model.layers.0", "-"),
        ("model.layers.1", "model.layers.1.self_attn"),
        ("model.layers.2", "-"),
        ("model.layers.3", "model.layers.3.self_attn"),
    ]


def test_recorded_attention_that_delegates_its_softmax_is_kept():
    # MT5's table records MT5LayerSelfAttention, which calls the module that computes the softmax;
    # MiniMax's lightning layers (also in its table) compute none and are left out (see above).
    torch.manual_seed(0)
    config = tf.MT5Config(
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=100, decoder_start_token_id=0
    )
    layout = llmdbg.find_layout(tf.MT5ForConditionalGeneration(config).eval())
    assert layout.family == "mt5" and len(layout.attention) == len(layout.blocks) == 4
    assert layout.attention[0] == "encoder.block.0.layer.0" and len(layout.cross_attention) == 2


# --------------------------------------------------------------------------- layouts without a block list


def _zoo_model(family: str, **overrides) -> torch.nn.Module:
    """The zoo's tiny model of ``family`` (tests/python/zoo/configs.py), with config overrides."""
    from zoo.configs import tiny_config
    from zoo.families import enumerate_families

    config = tiny_config(family)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return getattr(tf, enumerate_families()[family].cls_name)(config).float().eval()


@pytest.mark.parametrize("family", ["xlm", "flaubert"])
def test_parallel_module_lists_are_blocks_with_the_stack_input_at_the_first_attention(family):
    model, x = _zoo_model(family), ids()
    layout = llmdbg.find_layout(model)
    n = model.config.n_layers
    assert layout.blocks == tuple(f"transformer.layer_norm2.{i}" for i in range(n))
    assert layout.attention == tuple(f"transformer.attentions.{i}" for i in range(n))
    assert layout.mlp == tuple(f"transformer.ffns.{i}" for i in range(n))
    assert layout.stack_input(next(iter(layout.stacks))) == "transformer.attentions.0"
    with llmdbg.capture(model, hidden_states=True) as trace, torch.no_grad():
        model(input_ids=x)
    with torch.no_grad():
        theirs = model(input_ids=x, output_hidden_states=True).hidden_states
    assert len(trace.hidden_states) == len(theirs) == n + 1
    for i, (got, want) in enumerate(zip(trace.hidden_states, theirs)):
        np.testing.assert_array_equal(got, want.numpy(), err_msg=f"{family} hidden state {i}")
    lens = llmdbg.logit_lens(model, x, top_k=3, progress=False)  # XLM's pred_layer returns (scores,)
    with torch.no_grad():
        logits = model(input_ids=x).logits
    np.testing.assert_array_equal(lens.top_ids[-1], logits.topk(3, dim=-1).indices.numpy())


def test_pre_norm_flaubert_is_refused_naming_the_family():
    model = _zoo_model("flaubert", pre_norm=True)
    with pytest.raises(ValueError, match=r"FlaubertModel \(model_type 'flaubert'\) with pre_norm=True"):
        llmdbg.find_layout(model)


def test_fnet_blocks_are_found_and_its_maps_refused_as_fourier_mixing():
    model, x = _zoo_model("fnet"), ids()
    layout = llmdbg.find_layout(model)
    assert layout.blocks == ("fnet.encoder.layer.0", "fnet.encoder.layer.1") and layout.attention == ()
    with pytest.raises(ValueError, match=r"FNetForMaskedLM has no attention .*Fourier"):
        with llmdbg.capture(model, attentions=True):
            model(input_ids=x)


def test_window_padded_blocks_are_cut_to_the_input_length_by_position():
    """Longformer pads to its attention window inside the model: hidden states and per-position
    patching see the T input positions (the raw activations keep the padded length)."""
    model, x = _zoo_model("longformer"), ids()
    t = x.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Input ids are automatically padded"
        with llmdbg.capture(model, "blocks", hidden_states=True) as trace, torch.no_grad():
            model(input_ids=x)
        with torch.no_grad():
            theirs = model(input_ids=x, output_hidden_states=True).hidden_states
        for i, (got, want) in enumerate(zip(trace.hidden_states, theirs)):
            np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6, err_msg=f"hidden state {i}")
        assert trace.activations["longformer.encoder.layer.0"].shape[1] > t  # what the module returned
        metric = lambda out: out.logits[:, -1, 5].mean()
        corrupted = x.flip(-1)
        result = llmdbg.patch(model, x, corrupted, metric=metric, positions="all", progress=False)
        assert result.values.shape == (len(result.modules), t)
        # Restoring every position of the last block gives the clean run back; position by
        # position only the last one moves the metric read at the last position.
        last = model.get_submodule(result.modules[-1])
        with torch.no_grad():
            model(input_ids=x)
            clean_out = []
            h = last.register_forward_hook(lambda m, a, o: clean_out.append(o[0].clone()))
            model(input_ids=x)
            h.remove()

            def restore(m, a, o):
                out = o[0].clone()
                out[:, t - 1] = clean_out[0][:, t - 1]
                return (out, *o[1:])

            h = last.register_forward_hook(restore)
            by_hand = float(metric(model(input_ids=corrupted)))
            h.remove()
    np.testing.assert_allclose(result.values[-1, -1], by_hand, rtol=1e-5, atol=1e-6)


def test_xlm_hidden_states_are_zero_at_padding_as_the_model_makes_them():
    """XLM multiplies each layer's output by the mask in place, after layer_norm2 returned it."""
    model, x = _zoo_model("xlm"), ids()
    mask = torch.ones_like(x)
    mask[0, -2:] = 0
    with llmdbg.capture(model, hidden_states=True) as trace, torch.no_grad():
        model(input_ids=x, attention_mask=mask)
    with torch.no_grad():
        theirs = model(input_ids=x, attention_mask=mask, output_hidden_states=True).hidden_states
    for i, (got, want) in enumerate(zip(trace.hidden_states, theirs)):
        np.testing.assert_array_equal(got, want.numpy(), err_msg=f"hidden state {i}")
