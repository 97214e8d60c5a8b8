"""capture around model.generate(): stitched activations and attention against one forward over
sequences[:, :-1], step scores against generate's own scores, the wrapper restored, and the
generated positions through logit_lens, patch and ablate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

import llmdbg
from tiny_models import CONFIGS

DECODERS = ["llama", "gpt2", "qwen2"]
MODES = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, top_k=5),
    "beam": dict(do_sample=False, num_beams=3, num_return_sequences=2),
}


def _lm(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()


def _prompt(batch: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(3, 100, (batch, length), generator=torch.Generator().manual_seed(3))


def _generate(model, ids, mode, n=5, **capture_kwargs):
    capture_kwargs.setdefault("modules", None if capture_kwargs.get("attentions") else "blocks")
    torch.manual_seed(11)
    with llmdbg.capture(model, **capture_kwargs) as trace:
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, pad_token_id=0, **MODES[mode])
    return trace, out


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("mode", list(MODES))
def test_stitched_activations_equal_one_forward(family, mode):
    model = _lm(family)
    ids = _prompt()
    trace, out = _generate(model, ids, mode, modules="blocks", attentions="stats", inputs=True)
    gen = trace.generation
    assert isinstance(out, torch.Tensor)  # generate's return type is what the caller asked for
    np.testing.assert_array_equal(gen.sequences, out.numpy())
    with torch.no_grad(), llmdbg.capture(model, "blocks", attentions="stats", inputs=True) as ref:
        model(**gen.inputs())
    t = out.shape[1]
    for name in trace.layout.blocks:
        ours = gen.activations[name]
        assert ours.shape == (out.shape[0], t - 1, 32)
        np.testing.assert_allclose(ours, ref.activations[name], atol=1e-5, rtol=0)
        np.testing.assert_allclose(gen.activations[name + ":input"], ref.inputs[name], atol=1e-5, rtol=0)
    for layer, stats in gen.attention_stats.items():
        for key, value in stats.items():
            assert value.shape == (out.shape[0], 4, t - 1)
            theirs = ref.attention_stats[layer][key]
            if key == "special_mass" and mode == "beam":  # unknown once beams reorder the cache
                assert np.isnan(value[..., ids.shape[1] :]).all()
                value, theirs = value[..., : ids.shape[1]], theirs[..., : ids.shape[1]]
            np.testing.assert_allclose(value, theirs, atol=1e-5)
    if mode == "beam":
        assert gen.beam_indices is not None and gen.beam_indices.shape == (4, 5)
    else:
        assert gen.beam_indices is None


@pytest.mark.parametrize("family", DECODERS)
def test_step_scores_equal_generate_output_scores(family):
    model = _lm(family)
    model.generation_config.eos_token_id = None  # no EOS: no logits processor reshapes the scores
    ids = _prompt()
    kwargs = dict(max_new_tokens=5, pad_token_id=0, do_sample=False)
    with llmdbg.capture(model, "blocks", reduce="stats") as trace:
        model.generate(ids, **kwargs)
    gen = trace.generation
    out = model.generate(ids, **kwargs, return_dict_in_generate=True, output_scores=True)
    probs = torch.stack(out.scores, 1).float().softmax(-1)  # (B, n, V)
    chosen = out.sequences[:, ids.shape[1] :]
    np.testing.assert_allclose(gen.probabilities, probs.gather(2, chosen[..., None])[..., 0].numpy(), rtol=1e-5)
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    np.testing.assert_allclose(gen.entropies, entropy.numpy(), rtol=1e-4)
    np.testing.assert_array_equal(gen.ranks, 1)  # greedy picks the most likely token
    np.testing.assert_array_equal(gen.top_ids[..., 0], chosen.numpy())
    np.testing.assert_allclose(gen.top_probs, probs.topk(5, -1).values.numpy(), rtol=1e-5)
    assert gen.activations == {} or len(gen.activations) == 0  # reduce="stats": no arrays to stitch
    frame = gen.to_frame()
    assert len(frame) == 10 and np.allclose(frame["surprisal"], -np.log(gen.probabilities.reshape(-1)))


def test_sampled_tokens_have_their_rank():
    model = _lm("llama")
    trace, _ = _generate(model, _prompt(), "sampling")
    gen = trace.generation
    with torch.no_grad():
        logits = model(**gen.inputs()).logits[:, gen.generated_positions].float()
    chosen = torch.from_numpy(gen.token_ids)
    picked = logits.gather(2, chosen[..., None])
    np.testing.assert_array_equal(gen.ranks, ((logits > picked).sum(-1) + 1).numpy())


def test_full_attention_maps_stitch_to_one_forward():
    model = _lm("llama")
    trace, out = _generate(model, _prompt(), "beam", attentions=True)
    gen = trace.generation
    with torch.no_grad(), llmdbg.capture(model, attentions=True) as ref:
        model(**gen.inputs())
    t = out.shape[1]
    assert len(gen.attentions) == 2
    for ours, theirs in zip(gen.attentions, ref.attentions):
        assert ours.shape == (out.shape[0], 4, t - 1, t - 1)
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_attention_query_rows_of_each_call():
    """AttentionQuery(rows=[-1]) keeps each call's last query: one row per generated token."""
    model = _lm("qwen2")
    query = llmdbg.AttentionQuery(layers=[-1], rows=[-1], reduce="mean")
    trace, out = _generate(model, _prompt(), "greedy", attentions=query)
    gen = trace.generation
    with torch.no_grad(), llmdbg.capture(model, attentions=True, reduce="head_mean") as ref:
        model(**gen.inputs())
    (maps,) = gen.attentions
    assert maps.shape == (2, 5, out.shape[1] - 1)
    np.testing.assert_allclose(maps, ref.attentions[-1][:, gen.generated_positions], atol=1e-6)


def test_last_token_reduce_keeps_the_predicting_positions():
    model = _lm("gpt2")
    trace, _ = _generate(model, _prompt(), "greedy", modules="blocks", reduce="last_token")
    full, _ = _generate(model, _prompt(), "greedy", modules="blocks")
    name = trace.layout.blocks[-1]
    np.testing.assert_array_equal(trace.input_ids, _prompt().numpy())  # the prefill; decode steps are in .generation
    last = trace.generation.activations[name]
    assert last.shape == (2, 5, 32)
    np.testing.assert_allclose(last, full.generation.activations[name][:, trace.generation.generated_positions])


def test_left_padded_prompt_uses_generate_position_ids():
    model = _lm("llama")
    ids = _prompt()
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with llmdbg.capture(model, "blocks") as trace:
        model.generate(ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    gen = trace.generation
    inputs = gen.inputs()
    assert "position_ids" in inputs and inputs["position_ids"][1, 2] == 0
    np.testing.assert_array_equal(gen.attention_mask[:, : ids.shape[1]], mask.numpy())
    with torch.no_grad(), llmdbg.capture(model, "blocks") as ref:
        model(**inputs)
    name = trace.layout.blocks[-1]
    real = gen.attention_mask[:, :-1].astype(bool)
    np.testing.assert_allclose(gen.activations[name][real], ref.activations[name][real], atol=1e-5)


def test_return_dict_keeps_only_what_was_asked():
    model = _lm("llama")
    with llmdbg.capture(model, "blocks") as trace:
        out = model.generate(_prompt(), max_new_tokens=3, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
        again = model.generate(
            _prompt(), max_new_tokens=3, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
            output_scores=True,
        )  # fmt: skip
    assert out.scores is None and out.logits is None
    assert again.scores is not None and again.logits is None
    assert len(trace.generations) == 2
    with pytest.raises(ValueError, match="2 generate"):
        _ = trace.generation


def test_wrapper_is_removed_also_after_errors():
    model = _lm("llama")
    assert "generate" not in model.__dict__
    with pytest.raises(RuntimeError, match="boom"), llmdbg.capture(model, "blocks"):
        assert "generate" in model.__dict__
        raise RuntimeError("boom")
    assert "generate" not in model.__dict__
    with llmdbg.capture(model, "blocks") as trace:
        model(input_ids=_prompt())
    with pytest.raises(ValueError, match="0 generate"):
        _ = trace.generation


def test_encoder_modules_are_not_stitched():
    torch.manual_seed(0)
    model = tf.T5ForConditionalGeneration(CONFIGS["t5"]()).eval()
    with llmdbg.capture(model, "blocks") as trace:
        model.generate(_prompt(), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    gen = trace.generation
    decoder = [n for n in gen.activations if n.startswith("decoder.")]
    encoder = [n for n in gen.activations if n.startswith("encoder.")]
    assert decoder and encoder
    assert gen.activations[decoder[-1]].shape[:2] == (2, 3)  # decoder start token + 2 fed back
    with pytest.raises(ValueError, match="ran 1 times during generate"):
        _ = gen.activations[encoder[0]]
    inputs = gen.inputs()
    assert set(inputs) >= {"input_ids", "decoder_input_ids"}
    with torch.no_grad(), llmdbg.capture(model, "blocks") as ref:
        model(**inputs)
    for name in decoder:
        np.testing.assert_allclose(gen.activations[name], ref.activations[name], atol=1e-5)


def test_logit_lens_patch_and_ablate_on_generated_positions():
    model = _lm("llama")
    trace, _ = _generate(model, _prompt(batch=1), "greedy", modules="blocks")
    gen = trace.generation
    lens = llmdbg.logit_lens(model, gen.inputs(), target=gen.sequences[:, 1:], progress=False)
    np.testing.assert_allclose(lens.target_prob[-1][:, gen.generated_positions], gen.probabilities, rtol=1e-5)
    np.testing.assert_array_equal(lens.target_rank[-1][:, gen.generated_positions], gen.ranks)
    metric = gen.metric()
    result = llmdbg.ablate(model, gen.inputs(), [], metric=metric, progress=False)
    assert result.baseline_metric == pytest.approx(float(np.log(gen.probabilities).mean()), rel=1e-5)
    one = gen.metric(step=2)
    with torch.no_grad():
        assert float(one(model(**gen.inputs()))) == pytest.approx(float(np.log(gen.probabilities[0, 2])), rel=1e-5)
    corrupted = {k: v.clone() for k, v in gen.inputs().items()}
    corrupted["input_ids"][0, 0] = 5
    patched = llmdbg.patch(
        model, gen.inputs(), corrupted, metric=metric, positions=[0], modules="blocks", progress=False
    )
    assert patched.clean_metric == pytest.approx(result.baseline_metric, rel=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        gen.metric(step=5)


def test_generations_that_are_not_one_forward_refuse_to_stitch():
    """A KV cache passed in (the prefill sees only the new tokens) or inputs_embeds (sequences hold
    only the new tokens): stitching would silently misalign, so it raises; step scores stay."""
    model = _lm("llama")
    ids = _prompt(batch=1)
    with torch.no_grad():
        cache = model(input_ids=ids[:, :4], use_cache=True).past_key_values
    with llmdbg.capture(model, "blocks") as trace:
        model.generate(ids, cache=cache, max_new_tokens=3, do_sample=False, pad_token_id=0)
        embeds = model.get_input_embeddings()(ids).detach()
        model.generate(inputs_embeds=embeds, max_new_tokens=3, do_sample=False, pad_token_id=0)
    cached, from_embeds = trace.generations
    name = trace.layout.blocks[-1]
    for gen, why in ((cached, "continued a KV cache"), (from_embeds, "without input_ids")):
        with pytest.raises(ValueError, match=why):
            _ = gen.activations[name]
        with pytest.raises(ValueError, match=why):
            gen.inputs()
        assert np.isfinite(gen.probabilities).all()
