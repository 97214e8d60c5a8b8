"""llmdbg.watch: the per-step and periodic tiers against independent references, the lifetime of
its hooks, and every bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers as tf

import llmdbg
from llmdbg.training.hooks import float_tensors
from tiny_models import (
    CONFIGS,
    one_thread,  # noqa: F401  (autouse fixture: tiny models on one thread)
    tiny_inputs,
    tiny_model,
)


def _lm(seed: int = 0):
    torch.manual_seed(seed)
    return tf.GPT2LMHeadModel(CONFIGS["gpt2"]()).train()


def _batch(seed: int):
    inp = tiny_inputs("gpt2", seed=seed)
    return {**inp, "labels": inp["input_ids"]}


def _hook_count(model) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def _np_hist(x: np.ndarray) -> np.ndarray:
    """Reference log2 magnitude histogram: bin b holds 2**(b-32) <= |x| < 2**(b-31)."""
    a = np.abs(x[np.isfinite(x) & (x != 0)].astype(np.float64))
    b = np.clip(np.floor(np.log2(a)).astype(np.int64) - llmdbg._core.HIST_MIN_EXP, 0, llmdbg._core.HIST_BINS - 1)
    return np.bincount(b, minlength=llmdbg._core.HIST_BINS).astype(np.float64)


# -- the per-step tier -------------------------------------------------------------------------------
@pytest.mark.parametrize("clip_before_step", [False, True])
def test_grad_norm_equals_clip_grad_norm(clip_before_step):
    model = _lm()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with llmdbg.watch(model, opt, every=3) as w:
        for i in range(6):
            model(**_batch(i)).loss.backward()
            if clip_before_step:  # the watch read the gradients at the end of backward
                ref = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                row = w.step()
            else:
                row = w.step()
                ref = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            assert row["grad_norm"] == pytest.approx(float(ref), rel=1e-6)
            opt.step()
            opt.zero_grad()
        assert w.history["grad_norm"].notna().all()
        assert w.history["lr"].eq(1e-2).all()


def test_gradient_accumulation_reads_the_accumulated_gradient():
    model = _lm()
    with llmdbg.watch(model) as w:
        losses = []
        for i in range(3):  # three micro-batches, one optimizer step
            out = model(**_batch(i))
            (out.loss / 3).backward()
            losses.append(out.loss.item())
        ref = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
        row = w.step()
        assert row["grad_norm"] == pytest.approx(float(ref), rel=1e-6)
        assert row["loss"] == pytest.approx(np.mean(losses), rel=1e-6)  # mean of the outputs' losses


def test_periodic_tier_against_references():
    model = _lm()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs = {}
    h = model.transformer.h[1].register_forward_hook(
        lambda m, a, o: outs.__setitem__("h1", (o[0] if isinstance(o, tuple) else o).detach().clone())
    )
    with llmdbg.watch(model, opt, every=2) as w:
        before = after = None
        for i in range(3):
            model(**_batch(i)).loss.backward()
            if i == 0:
                grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
                block_out = outs["h1"]
                before = {n: p.detach().clone() for n, p in model.named_parameters()}
            w.step()
            opt.step()
            opt.zero_grad()
            if i == 0:
                after = {n: p.detach().clone() for n, p in model.named_parameters()}
    h.remove()
    layers = w.layers
    assert sorted(layers["step"].unique()) == [0, 2]
    l0 = layers[layers["step"] == 0].set_index("layer")
    name = "transformer.h.0.mlp.c_fc.weight"
    g = grads[name]
    assert l0.loc[name, "grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)
    assert l0.loc[name, "grad_rms"] == pytest.approx(float(g.pow(2).mean().sqrt()), rel=1e-5)
    assert l0.loc[name, "weight_norm"] == pytest.approx(float(before[name].norm()), rel=1e-5)
    ratio = float((after[name] - before[name]).norm() / before[name].norm())
    assert l0.loc[name, "update_ratio"] == pytest.approx(ratio, rel=1e-4)
    np.testing.assert_array_equal(w.histograms["grads"][name][0], _np_hist(g.numpy()))
    # Activation statistics of block h.1 at step 0 against torch.
    acts = w.activations
    row = acts[(acts["step"] == 0) & (acts["module"] == "transformer.h.1")].iloc[0]
    x = block_out.double()
    assert row["mean"] == pytest.approx(float(x.mean()), rel=1e-9, abs=1e-12)
    assert row["std"] == pytest.approx(float(x.std(unbiased=False)), rel=1e-6)
    assert row["absmax"] == pytest.approx(float(x.abs().max()), rel=1e-6)
    np.testing.assert_array_equal(w.histograms["activations"]["transformer.h.1"][0], _np_hist(block_out.numpy()))


def test_dead_units_detected():
    model = _lm()
    c_fc = model.transformer.h[0].mlp.c_fc  # Conv1D: weight (in, out)
    with torch.no_grad():
        c_fc.weight[:, :16] = 0
        c_fc.bias[:16] = -100.0  # GELU(-100) = -0: these 16 of 128 units never fire
    det = {"dead_units": {"min_tokens": 10}}
    with llmdbg.watch(model, every=1, detectors=det) as w:
        for i in range(2):
            model(**_batch(i)).loss.backward()
            w.step()
            model.zero_grad()
    dead = [e for e in w.events if e.kind == "dead_units"]
    assert [e.module for e in dead] == ["transformer.h.0.mlp.act"]
    acts = w.activations.dropna(subset=["dead_fraction"])
    assert acts[acts["module"] == "transformer.h.0.mlp.act"]["dead_fraction"].iloc[-1] == pytest.approx(
        16 / c_fc.weight.shape[1]
    )
    assert acts[acts["module"] == "transformer.h.1.mlp.act"]["dead_fraction"].iloc[-1] == 0.0


# -- detectors on synthetic curves --------------------------------------------------------------------
def _curve(rng, n=2000, noise=0.02):
    t = np.arange(n)
    return (2.0 + 3.0 * np.exp(-t / 300)) * np.exp(rng.normal(0, noise, n))


@pytest.mark.parametrize("seed", range(5))
def test_loss_spikes_recall_and_no_false_alarm(seed):
    from llmdbg.training import find_spikes

    rng = np.random.default_rng(seed)
    clean = _curve(rng)
    assert find_spikes(clean) == []  # no alarm on a healthy run
    spiky = clean.copy()
    planted = np.sort(rng.choice(np.arange(60, 1990, 40), size=20, replace=False))
    spiky[planted] *= rng.uniform(1.3, 3.0, planted.size)
    found = find_spikes(spiky)
    recall = np.mean([any(s <= f <= s + 1 for f in found) for s in planted])
    assert recall >= 0.9
    assert all(any(s <= f <= s + 1 for s in planted) for f in found)  # no false alarm either


def test_step_level_detectors_through_watch():
    """Spike, co-spike and divergence events reach .events through the live path."""
    from llmdbg.training import DetectorSuite

    suite = DetectorSuite("default")
    rng = np.random.default_rng(0)
    events = []
    for step in range(700):
        loss = 2.0 * math.exp(rng.normal(0, 0.01))
        g = 1.0 * math.exp(rng.normal(0, 0.01))
        if step == 300:
            loss, g = loss * 3, g * 50
        if step >= 320:  # then diverges: the loss grows 0.5 % per step
            loss *= 1.005 ** (step - 320)
        events += suite.on_step(step, loss, g)
    kinds = {(e.kind, e.severity) for e in events if e.step == 300}
    assert ("loss_spike", "high") in kinds and ("exploding_gradients", "high") in kinds
    assert any(e.kind == "divergence" for e in events if e.step > 320)
    assert not [e for e in events if e.step < 300]


def test_overfitting_planted_and_clean():
    from llmdbg.training import DetectorSuite

    def run(val_curve):
        suite = DetectorSuite(["overfitting"])
        ev = []
        for i, v in enumerate(val_curve):
            ev += suite.on_eval(i * 100, 2.0 * 0.9**i, v)
        return ev

    healthy = [2.2 * 0.9**i for i in range(10)]
    overfit = [2.2 * 0.9**i for i in range(5)] + [2.2 * 0.9**4 * 1.05**k for k in range(1, 6)]
    assert not [e for e in run(healthy) if e.kind == "overfitting"]
    ev = [e for e in run(overfit) if e.kind == "overfitting"]
    assert len(ev) == 1 and ev[0].step == 700  # 3 evaluations without improvement after step 400


def test_overfitting_through_watch_eval_and_underfitting():
    model = _lm()
    with llmdbg.watch(model, every=100) as w:
        for i in range(8):
            model(**_batch(i)).loss.backward()
            w.step(loss=3.0 * 0.9**i)
            model.zero_grad()
            w.eval(i, val_loss=3.0 * 0.95 ** min(i, 2) * (1.1 ** max(i - 2, 0)), metrics={"acc": 0.5})
    assert any(e.kind == "overfitting" for e in w.events)
    assert "val_acc" in w.history and w.history["val_loss"].notna().sum() == 8
    from llmdbg.training import DetectorSuite

    suite = DetectorSuite({"underfitting": {"baseline": math.log(100)}})
    ev = [e for i in range(8) for e in suite.on_eval(i, math.log(100) * 0.99, math.log(100))]
    assert [e.kind for e in ev] == ["underfitting"]


# -- lifetime and bad input ---------------------------------------------------------------------------
def test_rewatching_never_stacks_hooks_and_close_removes_all():
    model = _lm()
    base = _hook_count(model)
    w = llmdbg.watch(model)
    once = _hook_count(model)
    assert once > base
    for _ in range(10):  # re-running a notebook cell
        w2 = llmdbg.watch(model)
    assert _hook_count(model) == once and w.closed and not w2.closed
    w2.close()
    assert _hook_count(model) == base


def test_forward_raising_mid_step_leaves_hooks_consistent():
    model = _lm()
    base = _hook_count(model)
    with llmdbg.watch(model, locate="always") as w:
        n = _hook_count(model)

        def boom(m, a, o):
            raise RuntimeError("boom")

        h = model.transformer.h[1].register_forward_hook(boom)
        with pytest.raises(RuntimeError, match="boom"):
            model(**_batch(0))
        h.remove()
        assert _hook_count(model) == n
        model(**_batch(1)).loss.backward()
        row = w.step()
        assert math.isfinite(row["loss"]) and not row["nonfinite"]
        assert not [e for e in w.events if e.severity == "critical"]
    assert _hook_count(model) == base


def test_bad_loss():
    model = _lm()
    with llmdbg.watch(model) as w:
        model(**_batch(0)).loss.backward()
        with pytest.raises(ValueError, match="loss: expected a scalar"):
            w.step(loss=torch.ones(3))
        with pytest.raises(TypeError, match="loss"):
            w.step(loss="0.5")
        w.step(loss=0.5)  # a float is fine


def test_step_before_backward():
    model = _lm()
    with llmdbg.watch(model) as w, pytest.raises(RuntimeError, match="before any backward"):
        w.step(loss=1.0)


def test_frozen_parameters_reported_not_crashed():
    model = _lm()
    for p in model.transformer.h[0].parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with llmdbg.watch(model, opt, every=1) as w:
        model(**_batch(0)).loss.backward()
        w.step()
    frozen = [e for e in w.events if e.kind == "frozen_parameters"]
    assert len(frozen) == 1 and "transformer.h.0" in frozen[0].module
    assert all(n.startswith("transformer.h.0.") for n in w.frozen)
    assert not w.layers["layer"].str.startswith("transformer.h.0.").any()


def test_optimizer_must_own_the_parameters():
    model, other = _lm(), _lm(1)
    with pytest.raises(ValueError, match="optimizer"):
        llmdbg.watch(model, torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="optimizer"):
        llmdbg.watch(model, object())


def test_log_dir_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    model = _lm()
    base = _hook_count(model)
    with pytest.raises(ValueError, match="log_dir"):
        llmdbg.watch(model, log_dir=blocker / "runs")
    assert _hook_count(model) == base  # nothing registered


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"every": 0}, ValueError),
        ({"track": ("grads", "x")}, ValueError),
        ({"on_nan": "ignore"}, ValueError),
        ({"locate": "x"}, ValueError),
        ({"detectors": ["nope"]}, ValueError),
        ({"detectors": {"loss_spike": {"zz": 1}}}, ValueError),
    ],
)
def test_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        llmdbg.watch(_lm(), **kwargs)
    with pytest.raises(TypeError, match="model"):
        llmdbg.watch("model")


def test_views_are_offline_and_plot(tmp_path):
    model = _lm()
    with llmdbg.watch(model, every=2) as w:
        for i in range(4):
            model(**_batch(i)).loss.backward()
            w.step()
            model.zero_grad()
        w.eval(3, val_loss=4.0)
        html = w._repr_html_()
        assert "llmdbg.watch" in html and "<svg" in html
        assert "http" not in html.replace("http://www.w3.org", "") and "<script" not in html
    fig = w.plot()
    assert len(fig.axes) >= 4
    from llmdbg.report.page import Report

    r = Report("t")
    w.add_to_report(r)
    page = r.to_html()
    assert "Training run" in page and 'data-llmdbg-view="training"' in page  # figure and view
    static = Report("t", views=False)
    w.add_to_report(static)
    assert "Training run" in static.to_html() and "data-llmdbg-view" not in static.to_html()
    assert list(w.events_frame().columns) == [
        "step",
        "module",
        "kind",
        "severity",
        "message",
        "rank",
        "advice",
        "batch",
    ]


def test_model_losses_are_used_and_float_outputs_walk():
    model = tiny_model("gpt2").train()
    with llmdbg.watch(model) as w:
        out = model(**tiny_inputs("gpt2"))
        with pytest.raises(ValueError, match="no loss"):
            out.last_hidden_state.sum().backward()
            w.step()
        assert len(list(float_tensors(out))) >= 1


def test_watch_works_on_a_plain_sequential():
    """watch on nn.Sequential(Linear, ReLU, Linear) raised at step 0 ("all input arrays must have
    the same shape"): its blocks differ in width. Any nn.Module must work."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = llmdbg.watch(model, opt, every=1)
    losses, norms = [], []
    for _ in range(3):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))))
        w.step(loss=loss)
        opt.step()
        losses.append(loss.item())
    w.close()
    np.testing.assert_allclose(w.history["loss"].to_numpy(), losses, rtol=1e-6)
    np.testing.assert_allclose(w.history["grad_norm"].to_numpy(), norms, rtol=1e-5)
    assert len(w.layers) > 0


def _mamba():
    torch.manual_seed(0)
    cfg = tf.MambaConfig(hidden_size=32, num_hidden_layers=2, vocab_size=100, state_size=8, expand=2, conv_kernel=4)
    return tf.MambaForCausalLM(cfg).train()


NOT_TRANSFORMERS = {
    # a state-space LM: no attention, blocks of one width
    "mamba": (_mamba, lambda: torch.randint(3, 100, (2, 8)), lambda m, x: m(input_ids=x, labels=x).loss),
    # no blocks at all: a CNN whose layers change width and rank (N, C, H, W) -> (N, F)
    "cnn": (
        lambda: torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3),
            torch.nn.BatchNorm2d(4),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(4 * 6 * 6, 2),
        ),
        lambda: torch.randn(4, 3, 8, 8),
        lambda m, x: m(x).pow(2).mean(),
    ),
    "embedding_bag": (
        lambda: torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 1)),
        lambda: torch.randint(0, 10, (5, 3)),
        lambda m, x: m(x).pow(2).mean(),
    ),
}


@pytest.mark.parametrize("name", list(NOT_TRANSFORMERS))
@pytest.mark.parametrize("every", [1, 50])
def test_watch_works_on_models_without_transformer_blocks(name, every):
    """watch at default settings raised at step 0 on every model whose modules differ in output
    shape ("all input arrays must have the same shape"); the per-step norm must be exactly what
    clip_grad_norm_ returns, with the periodic tier on (every=1) or only at step 0."""
    make, batch, loss_fn = NOT_TRANSFORMERS[name]
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = llmdbg.watch(model, opt, every=every)
    losses, norms = [], []
    for _ in range(3):
        loss = loss_fn(model, batch())
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))))
        w.step(loss=loss)
        opt.step()
        losses.append(loss.item())
    w.close()
    np.testing.assert_allclose(w.history["loss"].to_numpy(), losses, rtol=1e-6)
    np.testing.assert_allclose(w.history["grad_norm"].to_numpy(), norms, rtol=1e-5)
    assert len(w.layers) > 0 and _hook_count(model) == 0
