"""Silent-wrong-result regressions of issue 19 that have no older home: attention maps of models
with learned attention sinks (gpt-oss), and the train/eval and requires_grad policy of every
attribution entry point under mixed modes and mid-call exceptions."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers as tf

import llmdbg
from test_attention_streaming import numpy_rollout
from tiny_models import IDS, VOCAB, minilm_tokenizer, one_thread, tiny_inputs, tiny_model  # noqa: F401

# ---- learned attention sinks ------------------------------------------------------------------


def _gpt_oss(vocab: int = VOCAB) -> torch.nn.Module:
    cfg = tf.GptOssConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=32,
        vocab_size=vocab,
        num_local_experts=2,
        num_experts_per_tok=1,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        **IDS,
    )
    torch.manual_seed(0)
    model = tf.GptOssForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # sink logits that take a large share of every row
            layer.self_attn.sinks.normal_(1.0, 0.5)
    return model


@pytest.fixture(scope="module")
def oss():
    """The tiny gpt-oss model, its inputs (one padded row), its own eager maps and a Trace."""
    model = _gpt_oss()
    inputs = tiny_inputs("llama", length=9)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        maps = [a.numpy() for a in eager(**inputs, output_attentions=True).attentions]
    with llmdbg.capture(model, attentions=True, attention_impl="eager") as trace, torch.no_grad():
        model(**inputs)
    return model, inputs, maps, trace


def test_gpt_oss_maps_have_rows_below_one(oss):
    _, inputs, maps, _ = oss
    real = inputs["attention_mask"].bool().numpy()
    sums = np.stack([a.sum(-1) for a in maps])  # (L, B, H, T)
    assert sums.transpose(0, 2, 1, 3)[:, :, real].max() < 0.95  # the sinks take mass on every row


def test_rollout_and_flow_of_a_gpt_oss_trace_keep_the_sink_mass_out(oss):
    """Stored-map rollout and flow refused gpt-oss ("row sums to 0.445, not 1"). The Trace's
    family says the maps have sinks; rows are used as they are, so rollout equals the recursion
    on the model's own eager maps (no renormalisation) with and without the residual."""
    _, inputs, maps, trace = oss
    mask = inputs["attention_mask"].numpy()
    for residual in (True, False):
        want = numpy_rollout(maps, residual=residual, mask=mask)
        got = llmdbg.attention_rollout(trace, residual=residual)
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose(
            llmdbg.attention_rollout(trace, rows=[2, -1], residual=residual), want[:, [2, -1]], atol=1e-6
        )
    no_residual = llmdbg.attention_rollout(trace, residual=False)[0]
    assert no_residual.sum(-1).max() < 0.9  # without the residual the sink's share is lost
    flow = llmdbg.attention_flow(trace, rows=[0, 4])
    np.testing.assert_allclose(flow.sum(-1)[0], 1.0, atol=1e-5)


@pytest.mark.parametrize("impl", ["recompute", "eager"])
def test_stored_map_functions_agree_with_streaming_rollout_on_gpt_oss(oss, impl):
    """streaming_rollout handles sinks from the queries, keys and sink logits; the stored-map
    functions must report the same rollout, entropy and max weight."""
    model, inputs, _, trace = oss
    stream = llmdbg.streaming_rollout(model, inputs, progress=False, attention_impl=impl)
    np.testing.assert_allclose(llmdbg.attention_rollout(trace), stream.rollout, atol=1e-6)
    rows = llmdbg.streaming_rollout(model, inputs, rows=[3, -1], progress=False, attention_impl=impl)
    np.testing.assert_allclose(llmdbg.attention_rollout(trace, rows=[3, -1]), rows.rollout, atol=1e-6)
    # streaming averages per sequence; the stored-map functions pool queries: compare sequence 0
    maps0 = [a[:1] for a in trace.attentions]
    np.testing.assert_allclose(llmdbg.head_entropy(maps0, sinks=True), stream.entropy[:, 0], rtol=1e-6)
    summary = llmdbg.attention_summary(maps0, sinks=True)
    np.testing.assert_allclose(summary["max_weight"].to_numpy().reshape(2, 4), stream.max_weight[:, 0], rtol=1e-6)
    assert np.isfinite(llmdbg.sink_scores(trace)).any()


def test_arrays_with_sinks_need_the_flag_and_stay_checked(oss):
    """Plain arrays carry no model family: rows below 1 are refused with a hint, accepted with
    sinks=True; rows above 1 and negative weights are still refused."""
    _, inputs, maps, _ = oss
    mask = inputs["attention_mask"].numpy()
    with pytest.raises(ValueError, match=r"not 1; pass renormalize=True.*or sinks=True"):
        llmdbg.attention_rollout(maps, attention_mask=mask)
    want = numpy_rollout(maps, mask=mask)
    np.testing.assert_allclose(llmdbg.attention_rollout(maps, attention_mask=mask, sinks=True), want, atol=1e-6)
    over = [a * np.float32(2.5) for a in maps]
    with pytest.raises(ValueError, match="not at most 1"):
        llmdbg.attention_rollout(over, attention_mask=mask, sinks=True)
    negative = [a.copy() for a in maps]
    negative[0][0, 0, 3, :2] = (0.5, -0.2)
    with pytest.raises(ValueError, match=r"weights must be >= 0"):
        llmdbg.attention_flow(negative, attention_mask=mask, sinks=True)
    with pytest.raises(TypeError, match="sinks must be True, False or None"):
        llmdbg.attention_rollout(maps, sinks="yes")


def test_report_on_gpt_oss_writes_its_attention_section(tmp_path):
    """`llmdbg report` runs rollout, flow and the head summary on the captured maps: it refused
    a gpt-oss model's rows (sums 0.3 to 0.5)."""
    from llmdbg.report.job import run_report

    tok = copy.deepcopy(minilm_tokenizer())
    tok.model_input_names = ["input_ids", "attention_mask"]  # a decoder takes no token_type_ids
    model = _gpt_oss(vocab=tok.vocab_size)
    page = run_report(model, tok, ["the cat sat on the mat", "a dog"], tmp_path / "r", progress=False)
    assert "attention <b>rollout</b>" in page.read_text()
    saved = np.load(tmp_path / "r" / "arrays.npz")
    maps, mask = [saved["attentions_0"], saved["attentions_1"]], saved["attention_mask"]
    assert (maps[0].sum(-1) * mask[:, None]).max() < 0.95  # the maps the report rolled out have sinks
    np.testing.assert_allclose(saved["rollout"], numpy_rollout(maps, mask=mask), atol=1e-5)


# ---- train/eval flags and requires_grad under every attribution entry point ---------------------


def _mixed(model: torch.nn.Module) -> tuple[list[bool], list[bool]]:
    """Every third submodule in train mode (dropout on), every other parameter frozen."""
    for i, m in enumerate(model.modules()):
        m.training = i % 3 == 0
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 2 == 0)
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def _boom(module, args, output):
    raise RuntimeError("planted failure in block 1")


ATTRIBUTION_CALLS = {
    "integrated_gradients": lambda m, x: llmdbg.integrated_gradients(m, x, n_steps=4, progress=False),
    "saliency": lambda m, x: llmdbg.saliency(m, x, progress=False),
    "input_x_gradient": lambda m, x: llmdbg.input_x_gradient(m, x, progress=False),
    "smoothgrad": lambda m, x: llmdbg.smoothgrad(m, x, n_samples=2, progress=False),
    "occlusion": lambda m, x: llmdbg.occlusion(m, x, progress=False),
    "attribute_generation": lambda m, x: llmdbg.attribute_generation(
        m, None, x["input_ids"][:1], max_new_tokens=2, method="saliency", progress=False
    ),
    "attribute_generation_ig": lambda m, x: llmdbg.attribute_generation(
        m, None, x["input_ids"][:1], target=x["input_ids"][:1, :2], n_steps=4, progress=False
    ),
    "attribute_generation_occlusion": lambda m, x: llmdbg.attribute_generation(
        m, None, x["input_ids"][:1], target=x["input_ids"][:1, :2], method="occlusion", progress=False
    ),
}


@pytest.mark.parametrize("name", list(ATTRIBUTION_CALLS))
@pytest.mark.parametrize("fails", [False, True])
def test_attribution_restores_every_module_mode_and_requires_grad(name, fails):
    """Attribution used to restore only the root's train/eval flag (13 submodules of a mixed-mode
    model came back flipped); every submodule's flag and every parameter's requires_grad must come
    back as they were, also when the forward raises in the middle of the call."""
    model = tiny_model("gpt2", tf.GPT2LMHeadModel)
    if fails:
        model.transformer.h[1].register_forward_hook(_boom)
    modes, grads = _mixed(model)
    with pytest.warns(UserWarning, match="train mode"):
        if fails:
            with pytest.raises(RuntimeError, match="planted failure"):
                ATTRIBUTION_CALLS[name](model, tiny_inputs("gpt2"))
        else:
            ATTRIBUTION_CALLS[name](model, tiny_inputs("gpt2"))
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())  # the weights never got gradients


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "occlusion"])
def test_the_word_predicted_as_text_is_a_continuation_in_a_list(method):
    """ "predicted" is the reserved keyword (the model's own next token); the documented way to
    explain the text "predicted" is a one-element list, which must give a continuation target
    of its tokens, not the argmax."""
    tok = copy.deepcopy(minilm_tokenizer())
    tok.model_input_names = ["input_ids", "attention_mask"]
    torch.manual_seed(0)
    cfg = tf.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=tok.vocab_size, pad_token_id=0, bos_token_id=101, eos_token_id=102
    )
    model = tf.GPT2LMHeadModel(cfg).eval()
    inputs = tok(["the cat sat", "a dog ran far"], return_tensors="pt", padding=True)
    fn = getattr(llmdbg, method)
    kwargs = {"n_steps": 4} if method == "integrated_gradients" else {}
    keyword = fn(model, dict(inputs), target="predicted", progress=False, **kwargs)
    with torch.no_grad():
        logits = model(**inputs).logits
    last = inputs["attention_mask"].sum(1) - 1
    np.testing.assert_array_equal(np.asarray(keyword.target).reshape(-1), logits[[0, 1], last].argmax(-1).numpy())
    text = fn(model, dict(inputs), target=[" predicted"], tokenizer=tok, progress=False, **kwargs)
    word = tok(" predicted", add_special_tokens=False)["input_ids"]
    assert np.asarray(text.target).reshape(2, -1).tolist() == [word, word]
    assert text.scores.shape[:2] == (2, len(word)) and keyword.scores.shape == (2, inputs["input_ids"].shape[1])
