"""Attention maps on the families the model zoo found wrong or refused: every captured map equals the
model's own eager ``output_attentions`` (the tiny zoo models, ``zoo.families.build``), and families
whose attention is not a (B, H, T, T) softmax map are refused by name."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built from configs; never download

import llmdbg
from llmdbg.adapters.attention_impl import needs_output_attentions_flag
from llmdbg.adapters.layout import find_layout
from tiny_models import one_thread  # noqa: F401  (module fixture: tiny models on one thread)
from zoo.families import build, inputs

# Modules that compute attention themselves fall back to eager attention with this warning.
EAGER_FALLBACK = "ignore:llmdbg.capture. attention comes from eager attention:UserWarning"


def _eager_maps(model: torch.nn.Module, x: dict) -> list[torch.Tensor]:
    """The model's own weights under eager attention: self-attention, then cross-attention."""
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**x, output_attentions=True)
    finally:
        model.set_attn_implementation(impl)
    if getattr(out, "encoder_attentions", None) is not None:
        return [*out.encoder_attentions, *out.decoder_attentions, *(out.cross_attentions or ())]
    return [a for a in out.attentions if a is not None]


def _captured(model: torch.nn.Module, x: dict, **kwargs) -> list[np.ndarray]:
    with llmdbg.capture(model, attentions=True, **kwargs) as trace, torch.no_grad():
        model(**x)
    return trace.attentions


def _assert_maps_equal(got: list[np.ndarray], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected), f"{len(got)} captured maps, eager gives {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.shape == tuple(e.shape), f"map {i}: {g.shape} != {tuple(e.shape)}"
        np.testing.assert_allclose(g, e.numpy(), atol=1e-5, rtol=1e-4, err_msg=f"map {i}")


@pytest.mark.parametrize("family", ["granite_swa", "granitemoe_swa"])
def test_sink_rescaled_families_report_the_plain_softmax(family):
    """GraniteSWA applies its per-head sinks by rescaling the attention output: its weights are
    the plain softmax over keys (rows sum to 1), the sliding window of 4 biting at 8 tokens. The
    kernel problem keeps the sinks, so verify=True still reproduces the output."""
    model, x = build(family), inputs(family)
    got = _captured(model, x, attention_impl="recompute", verify=True)
    _assert_maps_equal(got, _eager_maps(model, x))
    np.testing.assert_allclose(got[0].sum(-1), 1.0, atol=1e-5)
    assert (got[0][..., 7, :4] == 0).all()  # keys outside the window of the last query


def test_gpt_oss_keeps_its_sinks_in_the_denominator():
    """gpt-oss reports weights whose denominator holds the sink logit (rows below 1); that stays."""
    model, x = build("gpt_oss"), inputs("gpt_oss")
    got = _captured(model, x, attention_impl="recompute")
    _assert_maps_equal(got, _eager_maps(model, x))


@pytest.mark.filterwarnings(EAGER_FALLBACK)
@pytest.mark.parametrize("family", ["openai-gpt", "tapas", "luke", "nystromformer", "ibert"])
def test_weights_gated_below_the_attention_module_are_asked_for(family):
    """The flag that gates the weights sits in a helper (OpenAI GPT's ``_attn``) or in a module
    inside the attention module (BERT-style ``attention.self``); I-BERT nests them in tuples."""
    model, x = build(family), inputs(family)
    names = list(find_layout(model).attention)
    assert needs_output_attentions_flag(model, names)
    _assert_maps_equal(_captured(model, x), _eager_maps(model, x))


@pytest.mark.filterwarnings(EAGER_FALLBACK)
@pytest.mark.parametrize("family", ["albert", "perceiver"])
def test_a_module_run_several_times_gives_one_map_per_call(family):
    """ALBERT's shared layer and Perceiver's repeated self-attention block: one map per call, in
    call order; a second forward concatenates call by call along the batch."""
    model, x = build(family), inputs(family)
    expected = _eager_maps(model, x)
    with llmdbg.capture(model, attentions=True) as trace, torch.no_grad():
        model(**x)
        model(**x)
    got = trace.attentions
    _assert_maps_equal([g[: len(g) // 2] for g in got], expected)
    _assert_maps_equal([g[len(g) // 2 :] for g in got], expected)


def test_two_kernel_calls_on_the_same_queries_and_keys_give_one_map():
    """DiffLlama runs one softmax against the two halves of V (two kernel calls, same Q and K)."""
    model, x = build("diffllama"), inputs("diffllama")
    _assert_maps_equal(_captured(model, x, verify=True), _eager_maps(model, x))


@pytest.mark.filterwarnings(EAGER_FALLBACK)
@pytest.mark.parametrize("family", ["whisper", "trocr"])
def test_decoder_only_call_skips_cross_attention_that_never_ran(family):
    """A causal-LM decoder called without encoder states skips its cross-attention modules: their
    maps are absent, as in the model's output, not reported as an error."""
    model, x = build(family), inputs(family)
    _assert_maps_equal(_captured(model, x), _eager_maps(model, x))


def test_key_padding_mask_with_one_query_row_is_broadcast():
    """LayoutLM hands SDPA a (B, 1, 1, T) padding mask; padded keys get no weight."""
    model, x = build("layoutlm"), inputs("layoutlm")
    x = {**x, "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3])}
    got = _captured(model, x)
    _assert_maps_equal(got, _eager_maps(model, x))
    assert (got[0][1, :, :, 5:] == 0).all()


@pytest.mark.filterwarnings(EAGER_FALLBACK)
def test_per_query_sinks_fall_back_to_eager_with_a_reason():
    """Inkling2 passes one sink logit per query: auto takes eager attention (and says why);
    attention_impl='recompute' is refused naming the module."""
    model, x = build("inkling2_text"), inputs("inkling2_text")
    with pytest.warns(UserWarning, match="sink logits"):
        got = _captured(model, x)
    _assert_maps_equal(got, _eager_maps(model, x))
    with pytest.raises(RuntimeError, match=r"Inkling2\w*Attention .*sink logits"):
        _captured(model, x, attention_impl="recompute")


def test_attention_sublayers_of_one_layer_each_give_a_map():
    """LongCat-Flash runs two attention sublayers (``self_attn.0``, ``self_attn.1``) per layer."""
    model, x = build("longcat_flash"), inputs("longcat_flash")
    with llmdbg.capture(model, attentions=True) as trace, torch.no_grad():
        model(**x)
    assert trace.attention_modules[:2] == ["model.layers.0.self_attn.0", "model.layers.0.self_attn.1"]
    _assert_maps_equal(trace.attentions, _eager_maps(model, x))


@pytest.mark.parametrize("family", ["longformer", "led", "longt5", "pegasus_x", "mra", "reformer", "yoso"])
def test_attention_that_is_not_a_softmax_map_is_refused_by_family(family):
    """Banded, block-local, hashed or approximate attention: refused before any run, naming the
    class and the family (LED's encoder used to return (B, T, H, 2w + 1) banded scores as maps)."""
    model, x = build(family), inputs(family)
    cls = type(model).__name__
    with pytest.raises(ValueError, match=rf"{cls} \(model_type '{re.escape(family)}'\).*not a \(B, H, T, T\)"):
        _captured(model, x)


def test_token_type_ids_passed_to_a_decoder_are_recomputed_not_refused():
    """A BERT-style tokenizer's output (with token_type_ids) fed to Llama: the ids reach the
    attention only through **kwargs and the kernels ignore them; capture refused to recompute."""
    model = build("llama")
    x = dict(inputs("llama"))
    x["token_type_ids"] = torch.zeros_like(x["input_ids"])
    _assert_maps_equal(_captured(model, x, attention_impl="recompute"), _eager_maps(model, x))
