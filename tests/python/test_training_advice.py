"""event advice: every rule fires on numbers that support it, and stays silent on numbers that don't.

The runs are built by hand (rows, layer rows, evaluation and activation rows of a WatchState) and
the events come from the real detectors wherever one produces them; the expected numbers are
computed here independently with numpy. A few cases also go through a real ``llmdbg.watch`` run.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import transformers as tf

import llmdbg
from llmdbg.training import DEFAULTS, DetectorSuite, Event
from llmdbg.training.advice import RULES, advise
from llmdbg.training.batches import BatchRef
from llmdbg.training.state import WatchState
from tiny_models import CONFIGS, one_thread  # noqa: F401  (autouse fixture)

CFG = {k: dict(v) for k, v in DEFAULTS.items()}


def _state(model=None, losses=(), norms=None, lr=3e-4) -> WatchState:
    s = WatchState.for_model(model) if model is not None else WatchState(names=[], params=[], modules=[], owner=[])
    norms = [1.0] * len(losses) if norms is None else norms
    for i, (x, g) in enumerate(zip(losses, norms)):
        lr_i = lr(i) if callable(lr) else lr
        s.rows.append({"step": i, "loss": x, "grad_norm": g, "lr": lr_i, "nonfinite": not math.isfinite(x)})
    return s


def _noise(n, seed=0, sd=0.05):
    return np.exp(np.random.default_rng(seed).normal(0, sd, n))


def _with(adv, needle):
    return [a for a in adv if needle in a]


def _gpt2():
    torch.manual_seed(0)
    return tf.GPT2LMHeadModel(CONFIGS["gpt2"]()).train()


def test_every_detected_kind_has_rules():
    assert set(RULES) >= {
        "exploding_gradients",
        "loss_spike",
        "divergence",
        "vanishing_gradients",
        "nonfinite_forward",
        "nonfinite_backward",
        "overfitting",
        "generalization_gap",
        "underfitting",
        "dead_units",
        "outlier_features",
    }
    assert advise(Event(0, "", "frozen_parameters", "info", "x"), _state(), CFG) == ()


# -- gradient spikes: clipping ----------------------------------------------------------------------
def _spike_run(n=260, at=250, factor=40.0, cfg=CFG):
    norms = list(1.2 * _noise(n, 1))
    losses = list(2.0 * _noise(n, 2, 0.01))
    norms[at] *= factor
    losses[at] *= 4
    suite, events = DetectorSuite(cfg), []
    for i in range(at + 1):
        events += suite.on_step(i, losses[i], norms[i])
    return _state(losses=losses[: at + 1], norms=norms[: at + 1]), events, norms


def test_clip_at_the_99th_percentile():
    state, events, norms = _spike_run()
    ev = next(e for e in events if e.kind == "exploding_gradients")
    p = np.percentile(norms[50:250], 99)  # the 200 steps before the spike
    adv = _with(advise(ev, state, CFG), "clip ")
    assert adv == [
        f"clip the gradient norm at {p:.3g} (torch.nn.utils.clip_grad_norm_), the 99th percentile of the last "
        f"200 steps' finite global norms; step 250's norm {norms[250]:.3g} is {norms[250] / p:.1f}x that"
    ]
    spike = next(e for e in events if e.kind == "loss_spike")
    assert spike.severity == "high" and _with(advise(spike, state, CFG), f"clip the gradient norm at {p:.3g}")


def test_no_clip_without_enough_history_or_when_already_clipped():
    state, _, _ = _spike_run(n=40, at=19)  # 19 finite norms before the spike
    state.rows[19]["grad_norm"] = 50.0
    ev = Event(19, "", "exploding_gradients", "high", "gradient norm 50 at step 19: robust z of log norm = 9 > 6")
    assert not _with(advise(ev, state, CFG), "clip")
    state, events, _norms = _spike_run()
    ev = next(e for e in events if e.kind == "exploding_gradients")
    clipped = {**CFG, "exploding_gradients": {**CFG["exploding_gradients"], "max_grad_norm": 1.0}}
    assert not _with(advise(ev, state, clipped), "clip")  # already clipped below the percentile
    loose = {**CFG, "exploding_gradients": {**CFG["exploding_gradients"], "max_grad_norm": 30.0}}
    assert _with(advise(ev, state, loose), "lower max_grad_norm from 30 to")  # the spike (47) went past it
    under = {**CFG, "exploding_gradients": {**CFG["exploding_gradients"], "max_grad_norm": 100.0}}
    assert not _with(advise(ev, state, under), "clip")  # 47 is under the user's own threshold: no claim
    state.rows[250]["grad_norm"] = math.inf  # clipping cannot make a non-finite norm finite
    assert not _with(advise(Event(250, "", "exploding_gradients", "critical", "inf"), state, CFG), "clip")
    plain = Event(250, "", "loss_spike", "medium", "loss 8 at step 250: robust z of log loss = 9")
    state.rows[250]["grad_norm"] = 50.0
    assert not _with(advise(plain, state, CFG), "clip")  # a loss spike without a gradient spike


def test_clip_rate():
    cfg = {**CFG, "exploding_gradients": {**CFG["exploding_gradients"], "max_grad_norm": 1.0}}
    norms = list(2.0 * _noise(300, 3))
    suite = DetectorSuite(cfg)
    events = [e for i, g in enumerate(norms) for e in suite.on_step(i, 2.0, g)]
    ev = next(e for e in events if "were clipped" in e.message)
    state = _state(losses=[2.0] * 300, norms=norms)
    med = np.median(norms[: ev.step + 1])
    assert _with(advise(ev, state, cfg), f"median global gradient norm of the last {ev.step + 1} steps is {med:.3g}")
    state = _state(losses=[2.0] * 300, norms=[0.5] * 280 + [3.0] * 20)
    adv = advise(Event(299, "", "exploding_gradients", "medium", "6.7% of the last 300 steps were clipped"), state, cfg)
    assert _with(adv, "7% of the last 300 steps had a global gradient norm above max_grad_norm=1 (median 0.5")
    assert not advise(Event(299, "", "exploding_gradients", "medium", "were clipped"), state, CFG)  # no threshold


# -- update/weight ratios ------------------------------------------------------------------------------
def _layers(state, step, ratios, lr=3e-4):
    for name, r in ratios.items():
        state.layer_rows.append(
            {"step": step, "layer": name, "grad_norm": 1.0, "grad_rms": 0.1, "weight_norm": 1.0, "update_ratio": r}
        )


def test_update_ratio_far_above_healthy():
    state, events, _ = _spike_run()
    _layers(state, 200, {"h.3.w": 4e-2, "h.2.w": 2e-2, "h.1.w": 1e-3})
    _layers(state, 250, {"h.3.w": math.nan, "h.2.w": math.nan, "h.1.w": math.nan})  # not measured yet
    ev = next(e for e in events if e.kind == "exploding_gradients")
    assert _with(advise(ev, state, CFG), "update/weight ratio") == [
        "the update/weight ratio of h.3.w is 4.0e-02 after step 200, ~40x the healthy 1e-03 "
        "(1 more layers above 1e-02): lower the learning rate (now 0.0003)"
    ]


def test_update_ratio_advice_leaves_biases_and_norms_out():
    state, events, _ = _spike_run()
    ev = next(e for e in events if e.kind == "exploding_gradients")
    _layers(state, 200, {"h.1.ln_1.bias": 5e-2, "h.1.attn.c_attn.bias": 4e-2, "h.1.ln_1.weight": 3e-2})
    assert not _with(advise(ev, state, CFG), "update/weight")  # 1-D parameters start near 0 or 1


def test_no_update_ratio_advice_when_healthy_or_unmeasured():
    state, events, _ = _spike_run()
    ev = next(e for e in events if e.kind == "exploding_gradients")
    _layers(state, 200, {"a": math.nan, "b": math.nan})
    assert not _with(advise(ev, state, CFG), "update/weight")
    _layers(state, 201, {"a": 3e-3, "b": 9e-3})
    assert not _with(advise(ev, state, CFG), "update/weight")


# -- loss spikes: the batch -------------------------------------------------------------------------
def test_loss_spike_names_the_ratio_and_the_batch():
    losses = list(0.41 * _noise(300, 4, 0.02))
    losses[290] = 0.41 * 9.0
    suite = DetectorSuite(CFG)
    ev = next(e for i in range(291) for e in suite.on_step(i, losses[i], 1.0) if e.kind == "loss_spike")
    state = _state(losses=losses[:291])
    med = np.median(losses[90:290])
    head = f"the loss at step 290 is {losses[290] / med:.1f}x the running median of the last 200 steps ({med:.3g})"
    assert (
        advise(ev, state, CFG)[0]
        == f"{head}: inspect that step's batch (keep_batches=True keeps it for w.replay(event))"
    )
    saved = BatchRef(290, 0, "/runs/b.safetensors", (3, 17), {}, True, "")
    kept = Event(ev.step, ev.module, ev.kind, ev.severity, ev.message, batch=saved)
    assert (
        advise(kept, state, CFG)[0]
        == f"{head}: inspect the batch (examples 3, 17) with w.replay(event) (saved at /runs/b.safetensors)"
    )
    lost = Event(
        290, "", "loss_spike", "medium", ev.message, batch=BatchRef(290, 0, None, None, {}, False, "not saved: cap")
    )
    assert advise(lost, state, CFG)[0].endswith("it was not kept for w.replay(event): not saved: cap")


def test_no_spike_advice_without_history():
    state = _state(losses=[1.0] * 10 + [9.0])
    assert advise(Event(10, "", "loss_spike", "medium", "loss 9"), state, CFG) == ()


# -- divergence, warm-up, rising loss ------------------------------------------------------------------
def _diverging(n=400, start=150, lr=3e-4):
    losses = [2.0 * x * (1.004 ** max(i - start, 0)) for i, x in enumerate(_noise(n, 5, 0.005))]
    suite = DetectorSuite(CFG)
    ev = next(e for i, x in enumerate(losses) for e in suite.on_step(i, x, 1.0) if e.kind == "divergence")
    return _state(losses=losses[: ev.step + 1], lr=lr), ev, losses


def test_divergence_lower_the_learning_rate_with_the_ema():
    state, ev, _ = _diverging()
    detector_emas = [float(v) for v in ev.message.split(": ")[1].split(" -> ")]  # the detector's own numbers
    adv = _with(advise(ev, state, CFG), "EMA")
    assert len(adv) == 1 and adv[0].endswith("over the last 150 steps: lower the learning rate (now 0.0003)")
    ours = [float(v) for v in adv[0].split("rose ")[1].split(" (")[0].split(" -> ")]
    np.testing.assert_allclose(ours, detector_emas, rtol=2e-3)
    flat = _state(losses=[2.0] * (ev.step + 1))
    assert not _with(advise(ev, flat, CFG), "EMA")  # the numbers show no rise


def test_warmup_only_for_a_constant_peak_from_step_0():
    state, ev, _ = _diverging()
    assert _with(advise(ev, state, CFG), "warm-up") == [
        f"the learning rate started at its peak 0.0003 at step 0 (no warm-up) and the run went wrong at step {ev.step}: warm it up "
        f"(e.g. linearly from 0) so that it reaches 0.0003 only after step {ev.step}"
    ]
    ramp, ev, _ = _diverging(lr=lambda i: 3e-4 * min(1.0, (i + 1) / 100))
    assert not _with(advise(ev, ramp, CFG), "warm")
    late = Event(1500, "", "divergence", "high", ev.message)
    assert not _with(advise(late, _state(losses=[2.0] * 1501), CFG), "warm")


def test_nonfinite_loss_divergence_and_rising_loss():
    losses = [1.0] * 10 + [1.0 * 1.05**i for i in range(20)] + [math.nan]
    state = _state(losses=losses)
    ev = Event(30, "", "divergence", "critical", "loss is nan at step 30")
    a, b = np.median(losses[10:20]), np.median(losses[20:30])
    assert _with(advise(ev, state, CFG), "lower the learning rate") == [
        f"the loss rose from {a:.3g} to {b:.3g} over the 20 steps before step 30: lower the learning rate (now 0.0003)"
    ]
    flat = _state(losses=[1.0] * 30 + [math.nan])
    assert not _with(advise(ev, flat, CFG), "lower the learning rate")
    short = _state(losses=[1.0, 2.0, 4.0, math.nan])
    assert not _with(advise(Event(3, "", "divergence", "critical", "loss is nan"), short, CFG), "rose")


# -- vanishing gradients ----------------------------------------------------------------------------------
def test_vanishing_subcases():
    suite = DetectorSuite(CFG)
    state = _state(losses=[2.0] * 3, lr=0.1)
    rows = [
        {"layer": "enc.k.bias", "grad_norm": 0.0, "grad_rms": 0.0, "update_ratio": math.nan},
        {"layer": "enc.q.weight", "grad_norm": 1e-7, "grad_rms": 1e-9, "update_ratio": 1e-3},
        {"layer": "enc.v.weight", "grad_norm": 2.0, "grad_rms": 1e-2, "update_ratio": 2e-3},
        {"layer": "enc.o.weight", "grad_norm": 1.0, "grad_rms": 5e-3, "update_ratio": 3e-7},
    ]
    for r in rows:
        state.layer_rows.append({"step": 2, "weight_norm": 1.0, **r})
    events = suite.on_layers(2, rows)
    adv = {(e.module, e.message.split(" ")[0]): advise(e, state, CFG) for e in events}
    assert adv[("enc.k.bias", "gradient")][0].startswith(
        "the gradient of enc.k.bias is exactly 0, as for every attention key bias"
    )
    assert adv[("enc.q.weight", "gradient")] == (
        "the gradient RMS of enc.q.weight is 1.0e-09 at step 2 vs the median layer's 2.5e-03: check that its output "
        "reaches the loss (a detached path, a saturated activation or an all-zero layer after it)",
    )
    med = np.median([1e-3, 2e-3, 3e-7])
    assert adv[("enc.o.weight", "update/weight")] == (
        f"the update/weight ratio of enc.o.weight is 3.0e-07, 3333x below the healthy 1e-03 while the median "
        f"layer's is {med:.1e}: check its optimizer group (learning rate, weight decay) and that the optimizer holds it",
    )
    state.rows[-1]["lr"] = 0.0
    e_o = next(e for e in events if e.module == "enc.o.weight")
    assert advise(e_o, state, CFG)[0].endswith(": the learning rate is 0")
    relative = Event(
        2,
        "enc.q.weight",
        "vanishing_gradients",
        "medium",
        "gradient norm below 0.0001 x the largest layer's for 50 logged steps",
    )
    assert advise(relative, state, CFG)[0].startswith(
        "the gradient norm of enc.q.weight (1.0e-07) is 5e-08x the largest layer's (enc.v.weight: 2.0e+00) at step 2"
    )


def test_vanishing_silent_without_layer_numbers():
    state = _state(losses=[2.0])
    ev = Event(0, "x.weight", "vanishing_gradients", "medium", "gradient RMS 1e-09 < 1e-08")
    assert advise(ev, state, CFG) == ()
    ev = Event(0, "x.weight", "vanishing_gradients", "low", "update/weight ratio 1e-07 < 1e-06 (healthy ~1e-3)")
    _layers(state, 0, {"x.weight": math.nan})
    assert advise(ev, state, CFG) == ()


def test_vanishing_update_ratio_all_low_raise_the_learning_rate():
    state = _state(losses=[2.0], lr=1e-6)
    _layers(state, 0, {"a": 3e-7, "b": 2e-7})
    ev = DetectorSuite(CFG).on_layers(0, [r for r in state.layer_rows if r["layer"] == "b"])[0]
    assert advise(ev, state, CFG)[0].endswith("(median layer 2.5e-07): raise the learning rate (now 1e-06)")


# -- non-finite: module type, fp16, rising loss ----------------------------------------------------------
def test_nonfinite_module_types_and_dtype():
    model = _gpt2()
    state = _state(model, losses=[2.0] * 5, lr=None)  # no optimizer: no learning-rate numbers
    fwd = Event(
        4,
        "transformer.h.0.attn",
        "nonfinite_forward",
        "critical",
        "first non-finite output in the forward pass: input abs-max 3.2e+04, output abs-max inf",
    )
    adv = advise(fwd, state, CFG)
    assert adv == (
        "the first NaN/Inf came from transformer.h.0.attn (GPT2Attention, attention): compute the attention softmax "
        "in float32 and check the 1/sqrt(d) scale and the masks; its input abs-max was 3.2e+04",
    )  # fp32, a flat loss, no learning rate: neither the float16 nor a learning-rate rule fires
    ln = Event(4, "transformer.h.1.ln_2", "nonfinite_backward", "critical", "first non-finite gradient")
    assert (
        "(LayerNorm, a normalisation): compute it in float32; a near-constant input divides by ~sqrt(eps) (eps=1e-05)"
        in advise(ln, state, CFG)[0]
    )
    emb = Event(4, "transformer.wte", "nonfinite_forward", "critical", "first non-finite output")
    assert (
        "transformer.wte (Embedding, an embedding): its weights were already non-finite" in advise(emb, state, CFG)[0]
    )
    emb_b = Event(4, "transformer.wte", "nonfinite_backward", "critical", "gradient of its parameters")
    assert advise(emb_b, state, CFG) == ()  # a non-finite weight gradient says nothing of the weights
    grad = Event(
        4, "transformer.ln_f.bias", "nonfinite_gradients", "critical", "28 parameters have non-finite gradients"
    )
    assert advise(grad, state, CFG) == ()  # the first parameter the backward reached: not where the NaN was made
    loss = Event(4, "(loss)", "nonfinite_backward", "critical", "x")
    assert advise(loss, state, CFG)[0].startswith("the gradient was already non-finite leaving the loss")
    for silent in ("transformer.h.0", "no.such.module"):  # a block: no type-specific advice
        assert advise(Event(4, silent, "nonfinite_forward", "critical", "x"), state, CFG) == ()

    class RotaryEmbedding(torch.nn.Module):  # no weights: not an embedding table to blame
        def forward(self, x):
            return x

    rope = _state(torch.nn.Sequential(RotaryEmbedding(), torch.nn.Embedding(4, 2)), losses=[2.0], lr=None)
    assert advise(Event(0, "0", "nonfinite_forward", "critical", "x"), rope, CFG) == ()
    assert "(Embedding, an embedding)" in advise(Event(0, "1", "nonfinite_forward", "critical", "x"), rope, CFG)[0]
    half = _state(model.half(), losses=[2.0] * 5, lr=None)
    adv = advise(fwd, half, CFG)
    assert adv[1] == (
        "100% of the trainable parameters are float16 (largest finite value 65504): train in bfloat16 "
        "(float32's range) or run transformer.h.0.attn in float32"
    )


def test_nonfinite_after_a_rising_loss():
    state = _state(losses=[2.0 * 1.03**i for i in range(40)] + [math.nan], lr=1e-3)
    ev = Event(40, "nowhere", "nonfinite_forward", "critical", "x")
    a, b = (
        np.median(state.rows[20]["loss"] * 1.03 ** np.arange(10)),
        np.median(state.rows[30]["loss"] * 1.03 ** np.arange(10)),
    )
    adv = advise(ev, state, CFG)
    assert (
        adv[0]
        == f"the loss rose from {a:.3g} to {b:.3g} over the 20 steps before step 40: lower the learning rate (now 0.001)"
    )
    assert adv[1].startswith("the learning rate started at its peak 0.001 at step 0 (no warm-up)")  # and a constant one
    noisy = _state(losses=list(2.0 * _noise(40, 7, 0.02)) + [math.nan], lr=lambda i: 1e-3 * (i + 1) / 41)
    assert advise(ev, noisy, CFG) == ()  # no rise, a warmed-up learning rate


# -- evaluations ---------------------------------------------------------------------------------------
def _evals(pairs, state=None):
    state = state or _state()
    suite, events = DetectorSuite(CFG), []
    for i, (t, v) in enumerate(pairs):
        state.eval_rows.append({"step": 100 * i, "train_loss": t, "val_loss": v})
        events += suite.on_eval(100 * i, t, v)
    return state, events


def test_overfitting_early_stop_and_regularisation():
    pairs = [(2.0 * 0.9**i, 2.1 * 0.95**i) for i in range(5)] + [
        (2.0 * 0.9 ** (5 + k), 2.1 * 0.95**4 * 1.04 ** (k + 1)) for k in range(3)
    ]
    state, events = _evals(pairs)
    ev = next(e for e in events if e.kind == "overfitting")
    adv = advise(ev, state, CFG)
    best = 2.1 * 0.95**4
    last_t, last_v = pairs[ev.step // 100]
    assert adv[0] == (
        f"the validation loss was lowest at step 400 ({best:.3g}) and is {last_v:.3g} at step {ev.step} "
        f"(+{last_v / best - 1:.1%}): stop early at step 400 and keep its checkpoint (transformers' "
        "EarlyStoppingCallback with load_best_model_at_end=True)"
    )
    assert adv[1].startswith(f"(val - train)/train is {(last_v - last_t) / last_t:.1%} at step {ev.step}")
    assert (
        f"since step 400 the training loss fell {pairs[4][0]:.3g} -> {last_t:.3g} while the validation loss rose"
        in adv[1]
    )


def test_gap_without_an_earlier_best_gets_no_early_stopping():
    state, events = _evals([(2.0 * 0.9**i, 2.6 * 0.9**i) for i in range(4)])
    ev = next(e for e in events if e.kind == "generalization_gap")
    adv = advise(ev, state, CFG)
    assert len(adv) == 1 and adv[0].startswith("(val - train)/train is 30.0% at step 0 (train 2, val 2.6)")
    state, _ = _evals([(2.0, 1.9), (1.9, 1.8)])
    assert advise(Event(100, "", "overfitting", "high", "x"), state, CFG) == ()  # improving, val below train


def test_underfitting_learning_rate_or_capacity():
    model = torch.nn.Linear(4, 3)
    n = 15
    base = math.log(100)
    cfg = {**CFG, "underfitting": {**CFG["underfitting"], "baseline": base}}
    state = _state(model, losses=[base * 0.99] * 601, lr=1e-6)
    suite, events = DetectorSuite(cfg), []
    for i in range(7):
        state.eval_rows.append({"step": 100 * i, "train_loss": base * 0.99, "val_loss": base})
        events += suite.on_eval(100 * i, base * 0.99, base)
    ev = next(e for e in events if e.kind == "underfitting")
    head = f"the training loss went {base * 0.99:.3g} -> {base * 0.99:.3g} (0.0%) over the last 5 evaluations and is 99% of the trivial baseline {base:.3g}"
    assert advise(ev, state, cfg) == (
        f"{head}: raise the learning rate (now 1e-06) if the update/weight ratios (track 'weights') are below ~1e-3, else add capacity ({n} trainable parameters)",
    )
    _layers(state, 500, {"weight": 2e-7, "bias": 1e-7})
    assert advise(ev, state, cfg)[0].endswith(
        "the median update/weight ratio is 1.5e-07, below the healthy 1e-03: raise the learning rate (now 1e-06)"
    )
    _layers(state, 600, {"weight": 2e-3, "bias": 1e-3})
    assert advise(ev, state, cfg)[0].endswith("raise the learning rate (now 1e-06)")  # step 600 is after the event
    assert advise(dataclasses.replace(ev, step=600), state, cfg)[0].endswith(
        "while the weights move (median update/weight ratio 1.5e-03): add capacity (15 trainable parameters) or check that the labels are learnable"
    )
    assert advise(ev, state, CFG) == ()  # no baseline known
    assert advise(ev, _state(model), cfg) == ()  # no evaluations recorded


# -- activations --------------------------------------------------------------------------------------
def test_dead_units_advice_by_activation_type():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4), torch.nn.GELU())
    state = _state(model, losses=[1.0] * 3)
    state.act_rows += [
        {"step": 0, "module": "1", "dead_fraction": 0.5, "tokens": 800},
        {"step": 2, "module": "1", "dead_fraction": 0.25, "tokens": 1600},
        {"step": 2, "module": "3", "dead_fraction": 0.5, "tokens": 1600},
    ]
    ev = DetectorSuite(CFG).on_activations(2, {"1": (0.25, 1600), "3": (0.5, 1600)}, {})
    adv = {e.module: advise(e, state, CFG) for e in ev}
    assert adv["1"] == (
        "25% of the units of 1 (ReLU) never fired on 1,600 probed tokens (steps 0-2): lower the learning rate "
        "(now 0.0003), use LeakyReLU/GELU, or re-initialise or prune them",
    )
    assert (
        adv["3"][0].startswith("50% of the units of 3 (GELU) never fired")
        and "pre-activations far below 0); re-initialise the weights and bias of the layer feeding them" in adv["3"][0]
    )
    few = _state(model)
    few.act_rows.append({"step": 0, "module": "1", "dead_fraction": 1.0, "tokens": 10})
    assert advise(Event(0, "1", "dead_units", "medium", "x"), few, CFG) == ()  # too few tokens to claim it
    assert advise(Event(0, "9", "dead_units", "medium", "x"), state, CFG) == ()


def test_outlier_features_advice():
    model = torch.nn.Linear(2, 2)
    state = _state(model, losses=[1.0] * 4)
    state.act_rows += [
        {"step": 3, "module": "h.0", "absmax": 12.0, "outlier_features": 1},
        {"step": 3, "module": "h.1", "absmax": 3100.0, "outlier_features": 2},
    ]
    ev = DetectorSuite(CFG).on_activations(3, {}, {"h.0": np.array([0.1, 0.0]), "h.1": np.array([0.5, 0.0])})[0]
    adv = advise(ev, state, CFG)
    assert adv[0].startswith("the largest block output abs-max at step 3 is 3.1e+03 (h.1)") and "float16" not in adv[0]
    state.params[0].data = state.params[0].data.half()
    assert advise(ev, state, CFG)[0].endswith("in float16 the headroom to 65504 is only 21x: prefer bfloat16")
    assert advise(Event(9, "", "outlier_features", "info", "x"), state, CFG) == ()  # no block numbers at that step


# -- through a real watch --------------------------------------------------------------------------------
def test_through_watch_dead_units_and_nonfinite_forward():
    model = _gpt2()
    c_fc = model.transformer.h[0].mlp.c_fc
    with torch.no_grad():
        c_fc.weight[:, :16] = 0
        c_fc.bias[:16] = -100.0  # GELU(-100) = -0: 16 of 128 units never fire
    ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    with llmdbg.watch(
        model, every=1, detectors={"dead_units": {"min_tokens": 10}, "nonfinite": {}}, on_nan="skip"
    ) as w:
        for _i in range(2):
            model(input_ids=ids, labels=ids).loss.backward()
            w.step()
            model.zero_grad()
        dead = next(e for e in w.events if e.kind == "dead_units")
        assert advise(dead, w.state, w.detectors.cfg)[0].startswith(
            "12% of the units of transformer.h.0.mlp.act (NewGELUActivation) never fired on 14 probed tokens (step 0)"
        )
        handle = model.transformer.h[1].ln_1.register_forward_hook(lambda m, a, out: out * math.inf)
        model(input_ids=ids, labels=ids).loss.backward()
        w.step()  # on_nan="skip": logged, the gradients dropped
        handle.remove()
    ev = [e for e in w.events if e.kind == "nonfinite_forward"]
    assert [e.module for e in ev] == ["transformer.h.1.ln_1"]
    assert "(LayerNorm, a normalisation)" in advise(ev[0], w.state, w.detectors.cfg)[0]


def test_through_watch_gradient_spike_on_a_tiny_linear():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    with llmdbg.watch(model, opt, every=1000, track=("loss", "grads")) as w:
        for i in range(40):
            scale = 300.0 if i == 35 else 1.0
            loss = scale * torch.nn.functional.mse_loss(model(x[i % 8 :: 8]), y[i % 8 :: 8])
            loss.backward()
            w.step(loss=loss)
            opt.zero_grad()
        norms = [r["grad_norm"] for r in w.state.rows[:35]]
    ev = next(e for e in w.events if e.kind == "loss_spike" and e.step == 35)
    p = np.percentile(norms, 99)
    adv = advise(ev, w.state, w.detectors.cfg)
    assert adv[0].startswith("the loss at step 35 is") and _with(adv, f"clip the gradient norm at {p:.3g} (torch")
