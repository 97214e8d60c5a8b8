"""What to try after an event, computed from the run's own numbers (``event.advice``).

Each rule reads the recorded run (:class:`~llmdbg.training.state.WatchState`: the per-step rows,
the per-layer rows of the logged steps, the activation and evaluation rows) and returns one
suggestion carrying the numbers behind it, or nothing when those numbers do not support it: a
clipping threshold needs at least 20 finite gradient norms, a "lower the learning rate" needs an
update/weight ratio far above the healthy ~1e-3 (CS231n) or a loss that was measurably rising,
early stopping needs an earlier evaluation that was better. Thresholds marked "ours" are our
own choices; the others follow REFERENCE.md §4.
"""

# Long because: one small function per rule (each with its own guard against claiming more than
# the numbers show) reads better than a table of lambdas; the run-reading helpers are shared.

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .detectors import DEFAULTS, Event

if TYPE_CHECKING:
    from .state import WatchState

__all__ = ["HEALTHY_UPDATE", "RULES", "advise"]

HEALTHY_UPDATE = 1e-3  # update/weight ratio of a healthy layer (CS231n)
HIGH_UPDATE = 1e-2  # ours: 10x the healthy ratio is "far above"
LOW_UPDATE = 1e-4  # ours: 10x below it is "barely moving"
CLIP_PERCENTILE = 99.0
RISE_STEPS = 20  # ours: a rising loss compares the medians of the two halves of these steps ...
RISE = 1.05  # ours: ... the later one at least 5 % higher
EARLY_STEPS = 1000  # ours: "the first steps" of a run, for the warm-up rule
FP16_MAX = 65504.0
_KEY_BIAS = re.compile(r"(^|\.)(key|k_proj|k|to_k|k_lin)\.bias$")

Rule = Callable[[Event, "WatchState", dict], "str | None"]


# -- reading the run ------------------------------------------------------------------------------
def _c(cfg: dict, name: str) -> dict[str, Any]:
    return {**DEFAULTS[name], **(cfg.get(name) or {})}


def _g(x: float) -> str:
    return f"{x:.3g}"


def _before(state: WatchState, step: int, n: int) -> list[dict[str, Any]]:
    """The last ``n`` per-step rows before ``step`` (rows are in step order)."""
    out: list[dict[str, Any]] = []
    for r in reversed(state.rows):
        if r["step"] < step:
            out.append(r)
            if len(out) == n:
                break
    return out[::-1]


def _row(state: WatchState, step: int) -> dict[str, Any] | None:
    return next((r for r in reversed(state.rows) if r["step"] == step), None)


def _finite(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) is not None and math.isfinite(r[key])]


def _lr_at(state: WatchState, step: int) -> float | None:
    return next((r["lr"] for r in reversed(state.rows) if r["step"] <= step and r.get("lr") is not None), None)


def _lr(state: WatchState, step: int) -> str:
    lr = _lr_at(state, step)
    return f" (now {lr:.3g})" if lr is not None else ""


def _layers(state: WatchState, step: int, key: str) -> list[dict[str, Any]]:
    """The layer rows of the latest logged step ``<= step`` where ``key`` was measured (update
    ratios are filled in one step after their logged step)."""
    at, out = None, []
    for r in reversed(state.layer_rows):  # the latest rows are at the end: stop at the step before
        if at is not None and r["step"] != at:
            break
        if (at is None and r["step"] <= step) or r["step"] == at:
            if math.isfinite(r.get(key, math.nan)):
                at = r["step"]
                out.append(r)
    return out[::-1]


def _module(state: WatchState, name: str) -> tuple[str, Any]:
    """(module path, module) for a module or parameter name; the module is None when unknown."""
    mods = dict(state.modules)
    if name in mods:
        return name, mods[name]
    if name in state.names:
        j = state.owner[state.names.index(name)]
        return state.modules[j]
    return name, None


def _rising_loss(state: WatchState, step: int) -> tuple[float, float, int] | None:
    """(earlier median, later median, steps) when the loss before ``step`` was rising."""
    losses = _finite(_before(state, step, RISE_STEPS), "loss")
    if len(losses) < RISE_STEPS:
        return None
    h = len(losses) // 2
    a, b = float(np.median(losses[:h])), float(np.median(losses[h:]))
    return (a, b, len(losses)) if a > 0 and b > RISE * a else None


# -- rules ----------------------------------------------------------------------------------------
def clip_norm(event: Event, state: WatchState, cfg: dict) -> str | None:
    """Gradient-norm spike (or loss spike with one): clip at the 99th percentile of the window.
    Not for a non-finite norm, which clipping cannot make finite."""
    if event.kind == "loss_spike" and "gradient-norm spike" not in event.message:
        return None
    c = _c(cfg, "exploding_gradients")
    row = _row(state, event.step)
    g = row.get("grad_norm") if row else None
    norms = _finite(_before(state, event.step, c["window"]), "grad_norm")
    if g is None or not math.isfinite(g) or len(norms) < c["min_history"]:
        return None
    p = float(np.percentile(norms, CLIP_PERCENTILE))
    t = c["max_grad_norm"]
    if g <= p or (t is not None and (t <= p or g <= t)):
        return None  # not above the percentile, already clipped below it, or under the clip (it did not act)
    verb = f"lower max_grad_norm from {_g(t)} to" if t is not None else "clip the gradient norm at"
    return (
        f"{verb} {_g(p)} (torch.nn.utils.clip_grad_norm_), the 99th percentile of the last {len(norms)} steps' "
        f"finite global norms; step {event.step}'s norm {_g(g)} is {g / p:.1f}x that"
    )


def clip_rate(event: Event, state: WatchState, cfg: dict) -> str | None:
    """Clipping active on many steps: the norms against the threshold."""
    c = _c(cfg, "exploding_gradients")
    t = c["max_grad_norm"]
    norms = _finite(_before(state, event.step + 1, c["clip_window"]), "grad_norm")
    if "were clipped" not in event.message or t is None or not norms:
        return None
    med, p = float(np.median(norms)), float(np.percentile(norms, CLIP_PERCENTILE))
    share = sum(n > t for n in norms) / len(norms)
    if med > t:
        return (
            f"the median global gradient norm of the last {len(norms)} steps is {_g(med)}, {med / t:.1f}x "
            f"max_grad_norm={_g(t)}: the clip sets the size of most updates; lower the learning rate"
            f"{_lr(state, event.step)} or raise max_grad_norm towards the 99th percentile {_g(p)}"
        )
    return (
        f"{share:.0%} of the last {len(norms)} steps had a global gradient norm above max_grad_norm={_g(t)} "
        f"(median {_g(med)}, 99th percentile {_g(p)}): if fewer clipped steps are wanted, raise it to {_g(p)}"
    )


def _matrix(state: WatchState, name: str) -> bool:
    """Whether parameter ``name`` is a weight matrix: biases and normalisation gains start near 0
    or 1 and are 1-D, so their update/weight ratio says nothing of the learning rate. A loaded
    history has no parameters: then the name decides."""
    for n, p in zip(state.names, state.params):
        if n == name:
            return p.dim() >= 2
    last = name.rsplit(".", 1)[-1]
    return last not in ("bias", "b") and not any(k in name.lower() for k in ("norm", "ln_", ".ln"))


def update_ratio(event: Event, state: WatchState, cfg: dict) -> str | None:
    """A weight matrix's latest update/weight ratio far above the healthy 1e-3: lower the learning
    rate (biases and normalisation parameters are left out, see :func:`_matrix`)."""
    rows = [r for r in _layers(state, event.step, "update_ratio") if _matrix(state, r["layer"])]
    if not rows:
        return None
    top = max(rows, key=lambda r: r["update_ratio"])
    x = top["update_ratio"]
    if x <= HIGH_UPDATE:
        return None
    more = sum(r["update_ratio"] > HIGH_UPDATE for r in rows) - 1
    return (
        f"the update/weight ratio of {top['layer']} is {x:.1e} after step {top['step']}, ~{x / HEALTHY_UPDATE:.0f}x "
        f"the healthy {HEALTHY_UPDATE:.0e}"
        + (f" ({more} more layers above {HIGH_UPDATE:.0e})" if more else "")
        + f": lower the learning rate{_lr(state, event.step)}"
    )


def inspect_batch(event: Event, state: WatchState, cfg: dict) -> str | None:
    """A loss spike: how far above the running median, and how to look at the batch."""
    c = _c(cfg, "loss_spike")
    row = _row(state, event.step)
    losses = _finite(_before(state, event.step, c["window"]), "loss")
    if row is None or not math.isfinite(row["loss"]) or len(losses) < c["min_history"]:
        return None
    med = float(np.median(losses))
    if med <= 0 or row["loss"] <= med:
        return None
    head = (
        f"the loss at step {event.step} is {row['loss'] / med:.1f}x the running median of the last "
        f"{len(losses)} steps ({_g(med)})"
    )
    batch = getattr(event, "batch", None)
    ids = getattr(batch, "ids", None)
    which = f" (examples {', '.join(map(str, ids[:8]))}{' ...' if len(ids) > 8 else ''})" if ids else ""
    if batch is not None and getattr(batch, "saved", False):
        return f"{head}: inspect the batch{which} with w.replay(event) (saved at {batch.path})"
    if batch is not None:
        return f"{head}: inspect the batch{which}; it was not kept for w.replay(event): {batch.reason}"
    return f"{head}: inspect that step's batch (keep_batches=True keeps it for w.replay(event))"


def diverging_lr(event: Event, state: WatchState, cfg: dict) -> str | None:
    """Divergence of the loss EMA, recomputed as the detector does: lower the learning rate."""
    if "EMA" not in event.message:
        return None
    c = _c(cfg, "divergence")
    alpha, ema, ends = 2.0 / (c["window"] + 1), None, []
    for n, x in enumerate(_finite([r for r in state.rows if r["step"] <= event.step], "loss"), 1):
        ema = x if ema is None else ema + alpha * (x - ema)
        if n % c["window"] == 0:
            ends.append(ema)
    e = ends[-(c["rises"] + 1) :]
    if len(e) < 2 or not all(b > a for a, b in itertools.pairwise(e)):
        return None
    return (
        f"the loss EMA rose {' -> '.join(_g(v) for v in e)} (+{e[-1] / e[0] - 1:.0%}) over the last "
        f"{(len(e) - 1) * c['window']} steps: lower the learning rate{_lr(state, event.step)}"
    )


def warmup(event: Event, state: WatchState, cfg: dict) -> str | None:
    """Trouble in the first steps with the learning rate at its peak from step 0: warm it up."""
    if event.step >= EARLY_STEPS:
        return None
    lrs = [r["lr"] for r in state.rows if r["step"] <= event.step and r.get("lr") is not None]
    if len(lrs) < 2 or lrs[0] <= 0 or lrs[0] < max(lrs):
        return None
    return (
        f"the learning rate started at its peak {_g(lrs[0])} at step 0 (no warm-up) and the run went wrong at step "
        f"{event.step}: warm it up (e.g. linearly from 0) so that it reaches {_g(lrs[0])} only after step {event.step}"
    )


_KINDS = (  # (type-name pattern, what it is, what to try)
    (
        "attention|attn|softmax",
        "attention",
        "compute the attention softmax in float32 and check the 1/sqrt(d) scale and the masks",
    ),
    ("norm", "a normalisation", "compute it in float32; a near-constant input divides by ~sqrt(eps)"),
    ("embedding", "an embedding", "its weights were already non-finite: look at the previous update"),
    ("linear|conv1d|conv", "a linear map", "its input or weights are too large: see their abs-max"),
    (
        "gelu|silu|relu|tanh|sigmoid|softplus|exp|activation|mlp|ffn|feedforward",
        "an activation or MLP",
        "its input is too large",
    ),
)


def nonfinite_module(event: Event, state: WatchState, cfg: dict) -> str | None:
    """Name the type of the first non-finite module and what usually overflows there."""
    if event.module == "(loss)":
        return (
            "the gradient was already non-finite leaving the loss: check the loss for log(0) or 0/0 "
            "(e.g. a mean cross-entropy over a batch whose labels are all -100)"
        )
    path, mod = _module(state, event.module)
    if mod is None:
        return None
    tname = type(mod).__name__
    found = next(((w, h) for p, w, h in _KINDS if re.search(p, tname.lower())), None)
    if found is None:
        return None
    what, hint = found
    if what == "an embedding" and (
        event.kind != "nonfinite_forward" or not isinstance(getattr(mod, "weight", None), torch.Tensor)
    ):
        return None  # only a lookup's output proves its table non-finite (a rotary one has no table)
    eps = getattr(mod, "eps", getattr(mod, "variance_epsilon", None))
    if what == "a normalisation" and isinstance(eps, float):
        hint += f" (eps={eps:g})"
    seen = re.search(r"input abs-max ([-+0-9.e]+|inf|nan)", event.message)
    if seen:
        hint += f"; its input abs-max was {seen.group(1)}"
    return f"the first NaN/Inf came from {path} ({tname}, {what}): {hint}"


def fp16(event: Event, state: WatchState, cfg: dict) -> str | None:
    """Float16 parameters overflow at 65504: bfloat16 or a float32 upcast."""
    n16 = sum(p.numel() for p in state.params if p.dtype == torch.float16)
    if not n16:
        return None
    n = sum(p.numel() for p in state.params)
    path = _module(state, event.module)[0] if event.kind != "nonfinite_gradients" else "the failing layers"
    return (
        f"{n16 / n:.0%} of the trainable parameters are float16 (largest finite value {FP16_MAX:.0f}): "
        f"train in bfloat16 (float32's range) or run {'the loss' if path == '(loss)' else path} in float32"
    )


def rising_loss(event: Event, state: WatchState, cfg: dict) -> str | None:
    """The loss was climbing before the step that went non-finite: lower the learning rate."""
    rise = _rising_loss(state, event.step)
    if rise is None or "EMA" in event.message:  # an EMA divergence has its own rule
        return None
    return (
        f"the loss rose from {_g(rise[0])} to {_g(rise[1])} over the {rise[2]} steps before step {event.step}: "
        f"lower the learning rate{_lr(state, event.step)}"
    )


def vanishing(event: Event, state: WatchState, cfg: dict) -> str | None:
    """Per sub-case of the vanishing-gradients event (RMS, relative norm, update ratio)."""
    name = event.module
    if "update/weight ratio" in event.message:
        rows = _layers(state, event.step, "update_ratio")
        mine = next((r for r in rows if r["layer"] == name), None)
        if mine is None:
            return None
        x, med = mine["update_ratio"], float(np.median([r["update_ratio"] for r in rows]))
        below = HEALTHY_UPDATE / max(x, 1e-30)
        head = f"the update/weight ratio of {name} is {x:.1e}, {below:.0f}x below the healthy {HEALTHY_UPDATE:.0e}"
        if _lr_at(state, event.step) == 0:
            return f"{head}: the learning rate is 0"
        if med >= LOW_UPDATE:
            return (
                f"{head} while the median layer's is {med:.1e}: check its optimizer group (learning rate, "
                "weight decay) and that the optimizer holds it"
            )
        return f"{head} (median layer {med:.1e}): raise the learning rate{_lr(state, event.step)}"
    rows = _layers(state, event.step, "grad_norm")
    mine = next((r for r in rows if r["layer"] == name), None)
    if mine is None or len(rows) < 2:
        return None
    if "gradient RMS" in event.message:
        rms, med = mine["grad_rms"], float(np.median([r["grad_rms"] for r in rows]))
        if rms == 0 and _KEY_BIAS.search(name):
            return (
                f"the gradient of {name} is exactly 0, as for every attention key bias (the softmax ignores a shift "
                f"shared by all keys): nothing to fix; freeze it to save the optimizer state"
            )
        return (
            f"the gradient RMS of {name} is {rms:.1e} at step {mine['step']} vs the median layer's {med:.1e}: check "
            f"that its output reaches the loss (a detached path, a saturated activation or an all-zero layer after it)"
        )
    top = max(rows, key=lambda r: r["grad_norm"])
    return (
        f"the gradient norm of {name} ({mine['grad_norm']:.1e}) is {mine['grad_norm'] / top['grad_norm']:.0e}x the "
        f"largest layer's ({top['layer']}: {top['grad_norm']:.1e}) at step {mine['step']}: if it should learn, check "
        f"the path from it to the loss, or give it its own learning rate"
    )


def _evals(state: WatchState, step: int) -> list[dict[str, Any]]:
    return [r for r in state.eval_rows if r["step"] <= step and math.isfinite(r.get("val_loss", math.nan))]


def early_stop(event: Event, state: WatchState, cfg: dict) -> str | None:
    """Overfitting: the best evaluation was earlier and better than the latest one."""
    ev = _evals(state, event.step)
    if len(ev) < 2:
        return None
    best, last = min(ev, key=lambda r: r["val_loss"]), ev[-1]
    if best is last or last["val_loss"] <= best["val_loss"]:
        return None
    return (
        f"the validation loss was lowest at step {best['step']} ({_g(best['val_loss'])}) and is {_g(last['val_loss'])} "
        f"at step {last['step']} (+{last['val_loss'] / best['val_loss'] - 1:.1%}): stop early at step {best['step']} "
        f"and keep its checkpoint (transformers' EarlyStoppingCallback with load_best_model_at_end=True)"
    )


def regularise(event: Event, state: WatchState, cfg: dict) -> str | None:
    """Validation well above training (the gap detector's threshold), or rising while it falls."""
    ev = _evals(state, event.step)
    if not ev or not math.isfinite(ev[-1].get("train_loss", math.nan)) or ev[-1]["train_loss"] <= 0:
        return None
    last, best = ev[-1], min(ev, key=lambda r: r["val_loss"])
    t, v = last["train_loss"], last["val_loss"]
    gap = (v - t) / t
    apart = best is not last and v > best["val_loss"] and t < best.get("train_loss", math.nan)
    if not (gap > _c(cfg, "overfitting")["gap"] or apart):
        return None
    how = f"(val - train)/train is {gap:.1%} at step {last['step']} (train {_g(t)}, val {_g(v)})"
    if apart:
        how += (
            f"; since step {best['step']} the training loss fell {_g(best['train_loss'])} -> {_g(t)} "
            "while the validation loss rose"
        )
    return f"{how}: add regularisation (weight decay, dropout) or more training data"


def underfit(event: Event, state: WatchState, cfg: dict) -> str | None:
    """Flat training loss near the trivial baseline: learning rate or capacity, by the update ratios."""
    c = _c(cfg, "underfitting")
    trains = [
        r["train_loss"]
        for r in state.eval_rows
        if r["step"] <= event.step and math.isfinite(r.get("train_loss", math.nan))
    ]
    base = c["baseline"]
    if len(trains) <= c["evals"] or base is None or base <= 0:
        return None
    old, new = trains[-c["evals"] - 1], trains[-1]
    head = (
        f"the training loss went {_g(old)} -> {_g(new)} ({(old - new) / old:.1%}) over the last {c['evals']} "
        f"evaluations and is {new / base:.0%} of the trivial baseline {_g(base)}"
    )
    n = sum(p.numel() for p in state.params)
    ratios = [r["update_ratio"] for r in _layers(state, event.step, "update_ratio")]
    if not ratios:
        return (
            f"{head}: raise the learning rate{_lr(state, event.step)} if the update/weight ratios (track "
            f"'weights') are below ~1e-3, else add capacity ({n:,} trainable parameters)"
        )
    med = float(np.median(ratios))
    if med < LOW_UPDATE:
        return (
            f"{head}; the median update/weight ratio is {med:.1e}, below the healthy {HEALTHY_UPDATE:.0e}: "
            f"raise the learning rate{_lr(state, event.step)}"
        )
    return (
        f"{head} while the weights move (median update/weight ratio {med:.1e}): add capacity ({n:,} "
        "trainable parameters) or check that the labels are learnable"
    )


def dead(event: Event, state: WatchState, cfg: dict) -> str | None:
    """Units that never fired on the probed tokens: what to try for their activation type."""
    rows = [
        r
        for r in state.act_rows
        if r.get("module") == event.module and r["step"] <= event.step and "dead_fraction" in r
    ]
    if not rows or rows[-1]["tokens"] < _c(cfg, "dead_units")["min_tokens"]:
        return None
    last = rows[-1]
    _, mod = _module(state, event.module)
    tname = type(mod).__name__ if mod is not None else "activation"
    span = f"steps {rows[0]['step']}-{last['step']}" if len(rows) > 1 else f"step {last['step']}"
    head = (
        f"{last['dead_fraction']:.0%} of the units of {event.module} ({tname}) never fired on {last['tokens']:,} "
        f"probed tokens ({span})"
    )
    if tname in ("ReLU", "ReLU6", "Hardtanh"):  # dead means a <= 0 on every token (probes.py)
        lr = _lr(state, event.step)
        return f"{head}: lower the learning rate{lr}, use LeakyReLU/GELU, or re-initialise or prune them"
    return (
        f"{head}: their outputs stayed below 1e-6 in magnitude (for GELU/SiLU: pre-activations far below 0); "
        "re-initialise the weights and bias of the layer feeding them, or prune the units"
    )


def outliers(event: Event, state: WatchState, cfg: dict) -> str | None:
    """Outlier features: the largest block abs-max, and what they matter for."""
    rows = [r for r in state.act_rows if r["step"] == event.step and math.isfinite(r.get("absmax", math.nan))]
    if not rows:
        return None
    top = max(rows, key=lambda r: r["absmax"])
    a = top["absmax"]
    text = (
        f"the largest block output abs-max at step {event.step} is {_g(a)} ({top['module']}): such features "
        "break naive 8-bit quantisation: keep them in 16-bit (LLM.int8, llm_int8_threshold=6.0) or use "
        "per-channel scales"
    )
    if any(p.dtype == torch.float16 for p in state.params):
        text += f"; in float16 the headroom to {FP16_MAX:.0f} is only {FP16_MAX / a:.0f}x: prefer bfloat16"
    return text


#: The rules that apply to each event kind, in the order their advice is listed.
RULES: dict[str, tuple[Rule, ...]] = {
    "exploding_gradients": (clip_norm, clip_rate, update_ratio),
    "loss_spike": (inspect_batch, clip_norm, update_ratio),
    "divergence": (diverging_lr, rising_loss, warmup, update_ratio),
    "vanishing_gradients": (vanishing,),
    "nonfinite_forward": (nonfinite_module, fp16, rising_loss, update_ratio, warmup),
    "nonfinite_backward": (nonfinite_module, fp16, rising_loss, update_ratio, warmup),
    # nonfinite_gradients names the first parameter the backward reached, not where the NaN was made
    "nonfinite_gradients": (fp16, rising_loss, update_ratio, warmup),
    "overfitting": (early_stop, regularise),
    "generalization_gap": (early_stop, regularise),
    "underfitting": (underfit,),
    "dead_units": (dead,),
    "outlier_features": (outliers,),
}


def advise(event: Event, state: WatchState, cfg: dict) -> tuple[str, ...]:
    """Concrete suggestions for ``event``, each carrying the numbers that support it.

    Parameters
    ----------
    event : Event
        A detected problem (its ``kind``, ``step``, ``module`` and ``message`` are read, and
        ``batch`` when present).
    state : WatchState
        The recorded run: ``rows``, ``layer_rows``, ``act_rows``, ``eval_rows``, the modules and
        parameters (read only).
    cfg : dict
        The detectors' settings (:attr:`DetectorSuite.cfg`: DEFAULTS merged with the user's);
        a detector missing from it counts with its defaults.

    Returns
    -------
    tuple of str
        One suggestion per rule of :data:`RULES` that the numbers support; ``()`` when none does.
        A rule that fails on odd data is skipped: advice never breaks the training step.
    """
    out = []
    for rule in RULES.get(event.kind, ()):
        try:
            text = rule(event, state, cfg)
        except (ArithmeticError, KeyError, LookupError, TypeError, ValueError):
            text = None
        if text:
            out.append(text)
    return tuple(out)
