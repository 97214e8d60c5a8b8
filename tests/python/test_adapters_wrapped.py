"""Wrapped models: a user's module around a transformers model, ``torch.compile`` (a compiled graph
skips hooks added after it was built) and PEFT LoRA; head interventions through LoRA-wrapped and
ModernBERT output projections. Each result is compared with the unwrapped model or a hand-written
hook."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built from configs; never download
import transformers as tf

import llmdbg
from llmdbg.adapters.heads import head_geometry
from llmdbg.adapters.modules import hf_model, unwrap
from tiny_models import HEADS, IDS, H, one_thread, tiny_inputs, tiny_model  # noqa: F401  (module fixture)

peft = pytest.importorskip("peft")  # a test extra (pyproject: test); every CI job installs it


class Outer(nn.Module):
    """A user's module that holds the transformers model as an attribute and forwards to it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, **kwargs):
        return self.inner(**kwargs)


def llama(seed: int = 0) -> nn.Module:
    return tiny_model("llama", tf.LlamaForCausalLM, seed=seed)


def wrap(kind: str, model: nn.Module) -> nn.Module:
    """``model`` inside a wrapper of ``kind``, in eval mode."""
    if kind == "outer":
        return Outer(model).eval()
    if kind == "compiled":
        return torch.compile(model, backend="eager")
    if kind == "compiled-inductor":  # the default backend: captures run it eagerly, never compiling
        with warnings.catch_warnings():  # importing inductor warns about torch.jit in torch 2.13
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.compile(model)
    config = peft.LoraConfig(target_modules=["q_proj", "o_proj"], r=2, lora_alpha=4, init_lora_weights=False)
    return peft.get_peft_model(model, config).eval()


def hooks_of(model: nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


KINDS = ["outer", "compiled", "compiled-inductor", "peft"]


@pytest.mark.parametrize("kind", KINDS)
def test_capture_through_a_wrapper_matches_the_model(kind):
    wrapped, inputs = wrap(kind, llama()), tiny_inputs("llama")
    inner = hf_model(wrapped)
    assert isinstance(inner, tf.LlamaForCausalLM) and hf_model(inner) is inner
    if kind == "compiled":
        with torch.no_grad():
            wrapped(**inputs)  # compiled once: later hooks are invisible to that graph
    before = hooks_of(wrapped)
    with llmdbg.capture(wrapped, "mlp", attentions=True, hidden_states=True) as trace, torch.no_grad():
        logits = wrapped(**inputs).logits
    assert hooks_of(wrapped) == before
    inner.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            want = inner(**inputs, output_attentions=True, output_hidden_states=True)
    finally:
        inner.set_attn_implementation("sdpa")
    np.testing.assert_allclose(logits.numpy(), want.logits.numpy(), rtol=0, atol=1e-5)
    assert len(trace.attentions) == len(want.attentions) == 2
    for got, ref in zip(trace.attentions, want.attentions):
        np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-6)
    for got, ref in zip(trace.hidden_states[:-1], want.hidden_states[:-1]):  # SDPA vs eager: rounding
        np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-6)
    assert len([k for k in trace.keys() if k.endswith(".mlp")]) == 2
    assert trace.input_ids is not None and (trace.input_ids == inputs["input_ids"].numpy()).all()
    assert inner.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("kind", ["outer", "compiled", "peft"])
def test_head_ablation_and_patching_reach_a_wrapped_model(kind):
    model, inputs = llama(), tiny_inputs("llama")
    wrapped = wrap(kind, model)
    if kind == "compiled":
        with torch.no_grad():
            wrapped(**inputs)
    base = llmdbg.ablate(model, inputs, [(1, 2)], progress=False)  # peft: the LoRA model itself
    got = llmdbg.ablate(wrapped, inputs, [(1, 2)], progress=False)
    np.testing.assert_array_equal(got.logits, base.logits)
    assert np.abs(got.logits - got.baseline_logits).max() > 1e-6  # the hook really ran

    corrupt = {**inputs, "input_ids": inputs["input_ids"].flip(1)}
    metric = llmdbg.interventions.logit_diff(5, 6)
    plain = llmdbg.patch(model, inputs, corrupt, metric=metric, positions=[2], progress=False)
    through = llmdbg.patch(wrapped, inputs, corrupt, metric=metric, positions=[2], progress=False)
    np.testing.assert_allclose(through.values, plain.values, rtol=0, atol=1e-6)
    assert np.abs(through.effects).max() > 1e-6


@pytest.mark.parametrize("kind", ["outer", "compiled", "peft"])
def test_integrated_gradients_through_a_wrapper_equal_the_model(kind):
    model, inputs = llama(), tiny_inputs("llama")
    wrapped = wrap(kind, model)
    want = llmdbg.integrated_gradients(model, inputs, n_steps=4, progress=False)
    got = llmdbg.integrated_gradients(wrapped, inputs, n_steps=4, progress=False)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got.target, want.target)


def test_unwrap_and_hf_model():
    model = llama()
    assert unwrap(nn.DataParallel(torch.compile(model, backend="eager"))) is model
    assert hf_model(Outer(Outer(model))) is model
    assert hf_model(nn.Linear(2, 2)) is None
    pair = nn.ModuleDict({"a": llama(), "b": llama(1)})
    assert hf_model(pair) is None  # two models: which one is meant is not ours to guess


def _zero_head_input(d: int, head: int):
    def hook(module, args):
        x = args[0].clone()
        x[..., head * d : (head + 1) * d] = 0
        return (x, *args[1:])

    return hook


def test_ablation_of_a_lora_wrapped_o_proj_gates_the_adapter_too():
    config = peft.LoraConfig(target_modules=["o_proj"], r=2, lora_alpha=4, init_lora_weights=False)
    model, inputs = peft.get_peft_model(llama(), config), tiny_inputs("llama")
    names, n_heads, d = head_geometry(model)
    assert names[0].endswith("layers.0.self_attn.o_proj") and (n_heads, d) == (HEADS, H // HEADS)
    got = llmdbg.ablate(model, inputs, [(0, 3)], progress=False)
    # By hand: zero head 3's slice where it enters the base weight and where it enters LoRA's A.
    proj = model.get_submodule(names[0])
    targets = [proj.base_layer, proj.lora_A["default"]]
    handles = [m.register_forward_pre_hook(_zero_head_input(d, 3)) for m in targets]
    try:
        with torch.no_grad():
            want = model(**inputs).logits.numpy()
        handles.pop().remove()  # the base weight alone: LoRA still sees the head
        with torch.no_grad():
            base_only = model(**inputs).logits.numpy()
    finally:
        for h in handles:
            h.remove()
    np.testing.assert_allclose(got.logits, want, rtol=0, atol=1e-6)
    assert np.abs(base_only - want).max() > 1e-5


class LowRank(nn.Module):
    """A LoRA-style wrapper written by hand: no ``in_features`` or ``weight`` of its own."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base
        self.down = nn.Linear(base.in_features, 2, bias=False)
        self.up = nn.Linear(2, base.out_features, bias=False)

    def forward(self, x):
        return self.base_layer(x) + self.up(self.down(x))


def test_head_geometry_sees_through_a_base_layer_without_in_features():
    model, inputs = llama(), tiny_inputs("llama")
    for layer in model.model.layers:
        layer.self_attn.o_proj = LowRank(layer.self_attn.o_proj)
    names, n_heads, d = head_geometry(model)  # was "input width None"
    assert (names[1], n_heads, d) == ("model.layers.1.self_attn.o_proj", HEADS, H // HEADS)
    got = llmdbg.ablate(model, inputs, [(1, 0)], progress=False)
    handle = model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(_zero_head_input(d, 0))
    try:
        with torch.no_grad():
            want = model(**inputs).logits.numpy()
    finally:
        handle.remove()
    np.testing.assert_array_equal(got.logits, want)


def modernbert() -> nn.Module:
    torch.manual_seed(0)
    config = tf.ModernBertConfig(
        hidden_size=H,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=2 * H,
        vocab_size=100,
        cls_token_id=1,
        sep_token_id=2,
        global_attn_every_n_layers=1,
        **IDS,
    )
    return tf.ModernBertForMaskedLM(config).eval()


def test_modernbert_ablation_and_head_importance_match_hooks_on_wo():
    model = modernbert()
    x = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    names, n_heads, d = head_geometry(model)
    assert names == ["model.layers.0.attn.Wo", "model.layers.1.attn.Wo"]
    got = llmdbg.ablate(model, x, [(1, 2)], progress=False)
    handle = model.get_submodule(names[1]).register_forward_pre_hook(_zero_head_input(d, 2))
    try:
        with torch.no_grad():
            want = model(input_ids=x).logits.numpy()
    finally:
        handle.remove()
    np.testing.assert_array_equal(got.logits, want)

    # Head importance: |d loss / d gate| per head, gates multiplying each head's slice of Wo's input.
    batch = {"input_ids": x, "labels": x}
    imp = llmdbg.head_importance(model, batch, normalize=False, progress=False)
    gates = torch.ones(2, n_heads, requires_grad=True)

    def gate(layer):
        def hook(module, args):
            y = args[0].unflatten(-1, (n_heads, d)) * gates[layer][:, None]
            return (y.flatten(-2), *args[1:])

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(gate(i)) for i, n in enumerate(names)]
    try:
        loss = model(**batch).loss
    finally:
        for h in handles:
            h.remove()
    (grad,) = torch.autograd.grad(loss, gates)
    np.testing.assert_allclose(imp.raw, grad.abs().double().numpy() / x.numel(), rtol=1e-5, atol=1e-12)
    assert all(p.requires_grad for p in model.parameters())


# dynamo reads .grad of non-leaf tensors while tracing T5 and warns (an error under pytest's filter)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.parametrize("kind", ["outer", "compiled"])
def test_wrapped_encoder_decoder_with_a_continuation_target_equals_the_model(kind):
    """The target parser read ``model.config`` of the wrapper itself (an AttributeError on a
    user's wrapper around T5 with a continuation target)."""
    model = tiny_model("t5", tf.T5ForConditionalGeneration)
    inputs = {k: v for k, v in tiny_inputs("t5").items() if k != "decoder_input_ids"}
    target = [[5, 6], [7, 8]]
    want = llmdbg.integrated_gradients(model, inputs, target=target, n_steps=4, progress=False)
    got = llmdbg.integrated_gradients(wrap(kind, model), inputs, target=target, n_steps=4, progress=False)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-7)


def test_logit_lens_of_a_compiled_model_that_already_ran_equals_the_model():
    """A compiled graph built before the lens added its hooks skipped them ("blocks did not all
    run"): the lens runs compiled code eagerly while its hooks are in place."""
    model, inputs = llama(), tiny_inputs("llama")
    want = llmdbg.logit_lens(model, inputs, progress=False)
    compiled = wrap("compiled", model)
    with torch.no_grad():
        compiled(**inputs)  # the graph is built here, without the lens's hooks
    got = llmdbg.logit_lens(compiled, inputs, progress=False)
    np.testing.assert_allclose(got.top_probs, want.top_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.top_ids, want.top_ids)
