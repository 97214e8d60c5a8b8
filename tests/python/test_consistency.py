"""The calls the layout review found inconsistent now behave alike.

- every function that runs a model takes text together with ``tokenizer=`` and gives the same
  numbers as for the pre-encoded batch;
- every long operation takes ``progress=``;
- one thread spelling, ``n_jobs``, where -1 means all cores, and the old ``num_threads=`` warns;
- one eval-mode policy: every module's train/eval flag and every parameter's ``requires_grad``
  come back as they were, also when the call raises.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
import torch
import transformers as tf

import llmdbg
from llmdbg._internal.threads import resolve_n_jobs
from tiny_models import minilm_tokenizer

TEXTS = ["The cat sat on the mat.", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def tokenizer():
    return minilm_tokenizer()


def _bert(cls, tokenizer, **extra):
    torch.manual_seed(0)
    cfg = tf.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=len(tokenizer),
        **extra,
    )
    return cls(cfg).eval()


@pytest.fixture(scope="module")
def classifier(tokenizer):
    return _bert(tf.BertForSequenceClassification, tokenizer, num_labels=3)


@pytest.fixture(scope="module")
def masked_lm(tokenizer):
    return _bert(tf.BertForMaskedLM, tokenizer)


def _logit0(out):
    return out.logits[:, 0]


# name -> (fixture, call(model, inputs, tokenizer), how to read the numbers)
CALLS = {
    "integrated_gradients": (
        "classifier",
        lambda m, x, t: llmdbg.integrated_gradients(m, x, tokenizer=t, target=1, n_steps=8, progress=False),
        lambda r: r.scores,
    ),
    "saliency": (
        "classifier",
        lambda m, x, t: llmdbg.saliency(m, x, tokenizer=t, target=1, progress=False),
        lambda r: r.scores,
    ),
    "input_x_gradient": (
        "classifier",
        lambda m, x, t: llmdbg.input_x_gradient(m, x, tokenizer=t, target=1, progress=False),
        lambda r: r.scores,
    ),
    "smoothgrad": (
        "classifier",
        lambda m, x, t: llmdbg.smoothgrad(m, x, tokenizer=t, target=1, n_samples=2, progress=False),
        lambda r: r.scores,
    ),
    "occlusion": (
        "classifier",
        lambda m, x, t: llmdbg.occlusion(m, x, tokenizer=t, target=1, progress=False),
        lambda r: r.scores,
    ),
    "gradient_rollout": (
        "classifier",
        lambda m, x, t: llmdbg.gradient_rollout(m, x, tokenizer=t, target=1),
        lambda r: r.matrix,
    ),
    "streaming_rollout": (
        "classifier",
        lambda m, x, t: llmdbg.streaming_rollout(m, x, tokenizer=t, progress=False),
        lambda r: r.rollout,
    ),
    "logit_lens": (
        "masked_lm",
        lambda m, x, t: llmdbg.logit_lens(m, x, tokenizer=t, progress=False),
        lambda r: np.moveaxis(r.top_probs, 1, 0),
    ),
    "ablate": (
        "classifier",
        lambda m, x, t: llmdbg.ablate(m, x, [(0, 1)], tokenizer=t, progress=False),
        lambda r: r.logits,
    ),
    "head_importance": (
        "classifier",
        lambda m, x, t: llmdbg.head_importance(
            m, x, tokenizer=t, loss=lambda out, batch: out.logits[:, 0].sum(), progress=False
        ),
        lambda r: r.raw[None],
    ),
    "patch": (
        "classifier",
        lambda m, x, t: llmdbg.patch(m, x, x, metric=_logit0, tokenizer=t, progress=False),
        lambda r: r.values.T,
    ),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_text_with_a_tokenizer_equals_the_encoded_batch(name, request, tokenizer):
    fixture, call, read = CALLS[name]
    model = request.getfixturevalue(fixture)
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    from_text = read(call(model, TEXTS, tokenizer))
    # The tokenizer also goes with the batch: attributions read its special tokens for baselines.
    from_batch = read(call(model, enc, tokenizer))
    np.testing.assert_allclose(np.asarray(from_text), np.asarray(from_batch), rtol=1e-6, atol=1e-7)
    if name not in ("head_importance", "patch"):  # these two reduce over the batch
        one = read(call(model, TEXTS[0], tokenizer))  # a single string is a batch of one
        assert np.asarray(one).shape[0] == 1


@pytest.mark.parametrize(
    "name", ["integrated_gradients", "gradient_rollout", "streaming_rollout", "logit_lens", "ablate"]
)
def test_text_without_a_tokenizer_names_the_argument(name, request):
    fixture, call, _ = CALLS[name]
    with pytest.raises(TypeError, match="inputs is text: pass tokenizer="):
        call(request.getfixturevalue(fixture), TEXTS, None)


def test_one_dimensional_ids_are_one_example(classifier, tokenizer):
    ids = tokenizer(TEXTS[0], return_tensors="pt")["input_ids"]
    a = llmdbg.streaming_rollout(classifier, ids[0], progress=False).rollout
    b = llmdbg.streaming_rollout(classifier, ids.numpy(), progress=False).rollout
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, ids.shape[1], ids.shape[1])


LONG_OPERATIONS = [
    llmdbg.integrated_gradients,
    llmdbg.saliency,
    llmdbg.input_x_gradient,
    llmdbg.smoothgrad,
    llmdbg.occlusion,
    llmdbg.streaming_rollout,
    llmdbg.logit_lens,
    llmdbg.ablate,
    llmdbg.head_importance,
    llmdbg.patch,
    llmdbg.checks.perturbation_test,
    llmdbg.checks.counterfactual_test,
    llmdbg.suggest_edits,
    llmdbg.embed_tokens,
    llmdbg.embed_hidden_states,
    llmdbg.data.profile,
    llmdbg.TSNE,
]


@pytest.mark.parametrize("fn", LONG_OPERATIONS, ids=lambda f: f.__name__)
def test_every_long_operation_takes_progress(fn):
    param = inspect.signature(fn).parameters.get("progress")
    assert param is not None and param.default is True, f"{fn.__name__} has no progress=True parameter"


def test_progress_must_be_a_bool(classifier, tokenizer):
    with pytest.raises(TypeError, match="progress must be True or False"):
        llmdbg.streaming_rollout(classifier, TEXTS, tokenizer=tokenizer, progress="yes")


def test_progress_bar_is_drawn_and_closed(classifier, tokenizer, capsys):
    from llmdbg._internal.progress import progress_bar

    with progress_bar(True, 3, "unit test") as bar:
        bar.update(3)
    assert bar.disable or bar.n == 3  # tqdm turns itself off when stderr is not a terminal
    with progress_bar(False, 3, "off") as off:
        off.update(3)
    assert off.disable
    with pytest.raises(RuntimeError), progress_bar(True, 1, "failing") as bar:
        raise RuntimeError("boom")
    assert bar.disable or bar.last_print_n >= 0


# ---------------------------------------------------------------------------------------- threads


def _maps(seed=0, b=2, h=3, t=9, layers=3):
    rng = np.random.default_rng(seed)
    a = rng.random((layers, b, h, t, t)) + 0.05
    return (a / a.sum(-1, keepdims=True)).astype(np.float32)


THREADED = {
    "attention_rollout": lambda a, **k: llmdbg.attention_rollout(a, **k),
    "attention_flow": lambda a, **k: llmdbg.attention_flow(a, rows=[0], **k),
    "head_entropy": lambda a, **k: llmdbg.head_entropy(a, **k),
    "sink_scores": lambda a, **k: llmdbg.sink_scores(a, **k),
    "attention_drift": lambda a, **k: llmdbg.attention_drift(a, a[::-1].copy(), **k),
    "attention_summary": lambda a, **k: llmdbg.attention_summary(a, **k).to_numpy(dtype=float),
    "summarize": lambda a, **k: np.array(list(llmdbg.summarize(a, **k).as_dict().values()), dtype=object),
    "data.profile": lambda a, **k: llmdbg.data.profile(["a b c", "b c d", "a b c"], progress=False, **k).token_counts,
}


@pytest.mark.parametrize("name", list(THREADED))
def test_n_jobs_minus_one_means_all_cores_and_results_do_not_change(name):
    fn, a = THREADED[name], _maps()
    ref = fn(a, n_jobs=1)
    np.testing.assert_array_equal(fn(a, n_jobs=-1), ref)
    np.testing.assert_array_equal(fn(a, n_jobs=None), ref)
    with pytest.raises(ValueError, match="n_jobs must be None, a positive integer or a negative one"):
        fn(a, n_jobs=0)
    with pytest.warns(DeprecationWarning, match=r"num_threads=\.\.\.\) is deprecated; pass n_jobs"):
        old = fn(a, num_threads=1)
    np.testing.assert_array_equal(old, ref)
    with pytest.raises(TypeError, match="both n_jobs and its old name num_threads"):
        fn(a, n_jobs=1, num_threads=1)


def test_one_resolver():
    cores = os.cpu_count() or 1
    assert resolve_n_jobs(-1) == cores
    assert resolve_n_jobs(-2) == max(1, cores - 1)
    assert resolve_n_jobs(3) == 3
    assert resolve_n_jobs(100_000) == 4 * cores  # huge requests used to reach OpenMP and crash it
    assert llmdbg._core.openmp_team_size(100_000) <= 4 * cores
    assert llmdbg.summarize(np.arange(10.0), n_jobs=100_000).mean == 4.5
    assert resolve_n_jobs(None) == torch.get_num_threads()
    for bad in (0, True, 1.5, "2"):
        with pytest.raises(ValueError, match="n_jobs"):
            resolve_n_jobs(bad)
    assert llmdbg.TSNE(n_jobs=-1).get_params()["n_jobs"] == -1
    assert "num_threads" not in inspect.signature(llmdbg.TSNE).parameters


# -------------------------------------------------------------------------------- eval-mode policy


def _mixed(model):
    """Put every other submodule in train mode and freeze a few parameters."""
    for i, m in enumerate(model.modules()):
        m.training = bool(i % 2)
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 3 != 0)
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


MODE_CALLS = [
    "integrated_gradients",
    "saliency",
    "occlusion",
    "gradient_rollout",
    "streaming_rollout",
    "logit_lens",
    "ablate",
    "head_importance",
    "patch",
]


@pytest.mark.parametrize("name", MODE_CALLS)
def test_modes_and_requires_grad_are_restored(name, tokenizer):
    fixture, call, _ = CALLS[name]
    cls = tf.BertForMaskedLM if fixture == "masked_lm" else tf.BertForSequenceClassification
    model = _bert(cls, tokenizer, **({} if fixture == "masked_lm" else {"num_labels": 3}))
    modes, grads = _mixed(model)
    with (
        pytest.warns(UserWarning)
        if name in ("integrated_gradients", "saliency", "occlusion", "gradient_rollout")
        else _no_warning()
    ):
        call(model, TEXTS, tokenizer)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads


@pytest.mark.parametrize("name", ["integrated_gradients", "gradient_rollout", "logit_lens", "ablate"])
def test_modes_are_restored_when_the_forward_raises(name, tokenizer):
    fixture, call, _ = CALLS[name]
    cls = tf.BertForMaskedLM if fixture == "masked_lm" else tf.BertForSequenceClassification
    model = _bert(cls, tokenizer, **({} if fixture == "masked_lm" else {"num_labels": 3}))
    model.bert.encoder.layer[1].register_forward_hook(_boom)
    modes, grads = _mixed(model)
    with pytest.raises(RuntimeError, match="planted"), _ignore_train_warning():
        call(model, TEXTS, tokenizer)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads


def _boom(module, args, output):
    raise RuntimeError("planted failure in layer 1")


class _no_warning:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


class _ignore_train_warning:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.filterwarnings("ignore", message="the model is in train mode")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)
