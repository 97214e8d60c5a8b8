"""Detectors of :func:`llmdbg.watch`: online rules over the numbers the tiers collect.

Definitions and thresholds follow REFERENCE.md §4 (values marked "ours" are our own choices):

* **Loss spike**: robust z of ``log loss`` against the trailing window,
  ``z = (x - median_W) / (1.4826 · MAD_W) > 6`` with ``W = 200``, taken on the residual from the
  median of the last 20 values (ours: detrending, so a falling loss neither hides spikes nor
  raises alarms); one event per run of flagged steps. A spike with a simultaneous grad-norm
  spike (z > 6) is high severity.
* **Divergence**: non-finite loss, or the loss EMA rising at 3 consecutive window ends (by more
  than 1 % each, ours).
* **Exploding gradients**: non-finite global norm; robust z of ``log g`` > 6 (W = 200); clip rate
  > 5 % over 300 steps when the clipping threshold is known.
* **Vanishing gradients** (logged steps): a layer's grad RMS < 1e-8; a layer's norm < 1e-4 × the
  largest layer's for 50 consecutive logged steps; update/weight ratio < 1e-6 (healthy ≈ 1e-3).
* **Overfitting**: the validation loss has not improved by ``min_delta`` for ``patience``
  evaluations while the training loss fell; **generalization gap**: (val − train)/train > 10 %.
* **Underfitting** (ours): training loss improved by < 1 % over 5 evaluations while still above
  0.9 × a trivial baseline (``ln V`` for a language model, ``ln K`` for a K-class classifier).
* **Dead units**: feed-forward units inactive on every probed token (≥ 1000 tokens, ours), an
  event when a layer has ≥ 10 % of them (ours). **Outlier features**: ``|a| >= 6`` on ≥ 6 % of
  positions in ≥ 25 % of blocks (LLM.int8).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["DEFAULTS", "DetectorSuite", "Event", "find_spikes", "robust_z"]

SEVERITIES = ("info", "low", "medium", "high", "critical")


@dataclasses.dataclass(frozen=True)
class Event:
    """One detected problem.

    Attributes
    ----------
    step : int
        Optimizer step (0-based) at which it was detected.
    module : str
        Module or parameter path (``""`` for the whole model).
    kind : str
        ``loss_spike``, ``divergence``, ``exploding_gradients``, ``vanishing_gradients``,
        ``nonfinite_forward``, ``nonfinite_backward``, ``overfitting``, ``generalization_gap``,
        ``underfitting``, ``dead_units``, ``outlier_features``, ``frozen_parameters``, ...
    severity : str
        One of ``info``, ``low``, ``medium``, ``high``, ``critical``.
    message : str
        Human-readable description with the numbers behind it.
    rank : int or None
        Under ``torch.distributed``, the rank where it was found (for a NaN/Inf, the rank whose
        forward or backward made it first); None in a single process.
    batch : BatchRef or None
        The step's batch: its ids when the batch carried them, its shapes, and the file it was
        saved to when batches are kept (:class:`~llmdbg.training.batches.BatchRef`).
    advice : tuple of str
        What to try, computed from the run's own numbers (:mod:`llmdbg.training.advice`).
    """

    step: int
    module: str
    kind: str
    severity: str
    message: str
    rank: int | None = None
    batch: Any = None
    advice: tuple[str, ...] = ()


#: Every detector and its thresholds; pass ``detectors={"loss_spike": {"z": 8}}`` to change one.
DEFAULTS: dict[str, dict[str, Any]] = {
    "loss_spike": {"z": 6.0, "window": 200, "min_history": 20},
    "divergence": {"window": 50, "rises": 3, "min_rise": 0.01},
    "exploding_gradients": {
        "z": 6.0,
        "window": 200,
        "min_history": 20,
        "clip_rate": 0.05,
        "clip_window": 300,
        "max_grad_norm": None,
    },
    "vanishing_gradients": {"rms": 1e-8, "relative": 1e-4, "patience": 50, "update_ratio": 1e-6},
    "overfitting": {"patience": 3, "min_delta": 0.0, "gap": 0.10},
    "underfitting": {"evals": 5, "min_improvement": 0.01, "baseline_fraction": 0.9, "baseline": None},
    "nonfinite": {},
    "dead_units": {"fraction": 0.10, "min_tokens": 1000},
    "outlier_features": {"threshold": 6.0, "positions": 0.06, "layers": 0.25},
}


def _median(values: Iterable[float]) -> float:
    """Median as :func:`numpy.median` computes it (mean of the two middle values when even);
    plain Python, several times faster than NumPy on the short windows of the per-step tier."""
    v = sorted(values)
    n = len(v)
    if n == 0:
        return math.nan
    h = n // 2
    return float(v[h]) if n % 2 else (v[h - 1] + v[h]) / 2.0


def robust_z(window: Iterable[float], x: float) -> float:
    """``(x - median) / (1.4826 · MAD)`` of ``x`` against ``window`` (0 when MAD is 0 and
    ``x`` equals the median; ``inf`` when MAD is 0 and it does not)."""
    w = [float(v) for v in window]
    med = _median(w)
    mad = 1.4826 * _median([abs(v - med) for v in w])
    if mad == 0.0:
        return 0.0 if x == med else math.copysign(math.inf, x - med)
    return (x - med) / mad


def find_spikes(values: Iterable[float], z: float = 6.0, window: int = 200, min_history: int = 20) -> list[int]:
    """Indices where a spike *starts* in a curve (the offline form of the online detector)."""
    det = _SpikeState(z, window, min_history)
    return [i for i, v in enumerate(values) if det.update(float(v))[1]]


class _SpikeState:
    """Robust z of log values against the trailing window, detrended; reports the first step of
    each flagged run.

    A training loss falls, so the raw window median lags behind it and the trend inflates the
    MAD. The level is therefore the median of the last ``short`` values, and the z score is taken
    of the residual ``x - level`` against the residuals of the trailing ``window`` (median and
    1.4826 · MAD): a flat noisy curve gives the plain robust z, a falling one is not penalised.
    """

    def __init__(self, z: float, window: int, min_history: int, short: int = 20) -> None:
        self.z, self.min_history = z, min_history
        self.recent: deque[float] = deque(maxlen=short)
        self.resid: deque[float] = deque(maxlen=window)
        self.in_spike = False

    def update(self, v: float) -> tuple[float, bool]:
        if not (math.isfinite(v) and v > 0):
            return math.nan, False
        x = math.log(v)
        score = 0.0
        if self.recent:
            r = x - _median(self.recent)
            if len(self.resid) >= self.min_history:
                score = robust_z(self.resid, r)
            self.resid.append(r)
        self.recent.append(x)
        flagged = score > self.z
        start = flagged and not self.in_spike
        self.in_spike = flagged
        return score, start


def _resolve(spec: Any) -> dict[str, dict[str, Any]]:
    if spec is None or spec is False:
        return {}
    if isinstance(spec, str):
        if spec != "default":
            raise ValueError(f"detectors: expected 'default', None, a list of names or a dict, got {spec!r}")
        return {k: dict(v) for k, v in DEFAULTS.items()}
    items: Iterable[tuple[Any, Any]]
    if isinstance(spec, Mapping):
        items = spec.items()
    elif isinstance(spec, Iterable):
        items = ((name, {}) for name in spec)
    else:
        raise TypeError(f"detectors: expected 'default', None, a list of names or a dict, got {type(spec).__name__}")
    out = {}
    for name, overrides in items:
        if name not in DEFAULTS:
            raise ValueError(f"detectors: unknown detector {name!r}; known: {sorted(DEFAULTS)}")
        unknown = set(overrides or {}) - set(DEFAULTS[name])
        if unknown:
            raise ValueError(
                f"detectors[{name!r}]: unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS[name])}"
            )
        out[name] = {**DEFAULTS[name], **(overrides or {})}
    return out


class DetectorSuite:
    """The enabled detectors and their running state; each ``on_*`` returns new events."""

    def __init__(self, spec: Any = "default") -> None:
        self.cfg = _resolve(spec)
        c = self.cfg
        self._loss = (
            _SpikeState(**{k: c["loss_spike"][k] for k in ("z", "window", "min_history")})
            if "loss_spike" in c
            else None
        )
        g = c.get("exploding_gradients", DEFAULTS["exploding_gradients"])
        self._grad = _SpikeState(g["z"], g["window"], g["min_history"])
        self._clipped: deque[bool] = deque(maxlen=g["clip_window"])
        self._clip_alarm = False
        self._ema: float | None = None
        self._window_emas: list[float] = []
        self._n = 0
        self._diverged = False
        self._small_layers: dict[str, int] = {}
        self._reported: set[tuple[str, str]] = set()
        self._evals: list[tuple[int, float, float]] = []  # (step, train, val)
        self._overfit_since: int | None = None
        self._gap_on = False
        self._underfit_on = False

    def enabled(self, name: str) -> bool:
        return name in self.cfg

    def _once(self, kind: str, module: str) -> bool:
        key = (kind, module)
        if key in self._reported:
            return False
        self._reported.add(key)
        return True

    # -- every step -----------------------------------------------------------------------------
    def on_step(self, step: int, loss: float, grad_norm: float | None) -> list[Event]:
        ev: list[Event] = []
        gz, _ = self._grad.update(grad_norm) if grad_norm is not None else (math.nan, False)
        if "exploding_gradients" in self.cfg and grad_norm is not None:
            c = self.cfg["exploding_gradients"]
            if not math.isfinite(grad_norm):
                ev.append(
                    Event(
                        step,
                        "",
                        "exploding_gradients",
                        "critical",
                        f"global gradient norm is {grad_norm} at step {step}",
                    )
                )
            elif gz > c["z"]:
                ev.append(
                    Event(
                        step,
                        "",
                        "exploding_gradients",
                        "high",
                        f"gradient norm {grad_norm:.4g} at step {step}: robust z of log norm = {gz:.1f} > {c['z']:g}",
                    )
                )
            if c["max_grad_norm"] is not None and math.isfinite(grad_norm):
                self._clipped.append(grad_norm > c["max_grad_norm"])
                rate = sum(self._clipped) / len(self._clipped)
                if len(self._clipped) >= min(100, c["clip_window"]) and rate > c["clip_rate"] and not self._clip_alarm:
                    self._clip_alarm = True
                    ev.append(
                        Event(
                            step,
                            "",
                            "exploding_gradients",
                            "medium",
                            f"{rate:.1%} of the last {len(self._clipped)} steps were clipped "
                            f"(max_grad_norm={c['max_grad_norm']:g}) > {c['clip_rate']:.0%}",
                        )
                    )
        if self._loss is not None:
            lz, start = self._loss.update(loss)
            if start:
                co = math.isfinite(gz) and gz > self._grad.z
                ev.append(
                    Event(
                        step,
                        "",
                        "loss_spike",
                        "high" if co else "medium",
                        f"loss {loss:.4g} at step {step}: robust z of log loss = {lz:.1f}"
                        + (f", with a gradient-norm spike (z = {gz:.1f})" if co else ""),
                    )
                )
        if "divergence" in self.cfg:
            ev += self._divergence(step, loss)
        return ev

    def _divergence(self, step: int, loss: float) -> list[Event]:
        c = self.cfg["divergence"]
        if not math.isfinite(loss):
            if self._diverged:
                return []
            self._diverged = True
            return [Event(step, "", "divergence", "critical", f"loss is {loss} at step {step}")]
        alpha = 2.0 / (c["window"] + 1)
        self._ema = loss if self._ema is None else self._ema + alpha * (loss - self._ema)
        self._n += 1
        if self._n % c["window"]:
            return []
        self._window_emas.append(self._ema)
        e = self._window_emas[-(c["rises"] + 1) :]
        rising = len(e) == c["rises"] + 1 and all(b > a * (1 + c["min_rise"]) for a, b in itertools.pairwise(e))
        if rising and not self._diverged:
            self._diverged = True
            return [
                Event(
                    step,
                    "",
                    "divergence",
                    "high",
                    f"loss EMA rose over {c['rises']} consecutive windows of {c['window']} steps: "
                    + " -> ".join(f"{v:.4g}" for v in e),
                )
            ]
        if not rising:
            self._diverged = False
        return []

    # -- logged steps -----------------------------------------------------------------------------
    def on_layers(self, step: int, layers: list[dict[str, Any]]) -> list[Event]:
        """``layers``: dicts with layer, grad_norm, grad_rms, update_ratio (may be NaN)."""
        if "vanishing_gradients" not in self.cfg or not layers:
            return []
        c = self.cfg["vanishing_gradients"]
        ev = []
        norms = [r["grad_norm"] for r in layers if math.isfinite(r["grad_norm"])]
        top = max(norms) if norms else 0.0
        for r in layers:
            name, rms, ratio = r["layer"], r["grad_rms"], r.get("update_ratio", math.nan)
            if math.isfinite(rms) and rms < c["rms"] and self._once("vanishing_rms", name):
                ev.append(Event(step, name, "vanishing_gradients", "medium", f"gradient RMS {rms:.3g} < {c['rms']:g}"))
            small = top > 0 and math.isfinite(r["grad_norm"]) and r["grad_norm"] < c["relative"] * top
            self._small_layers[name] = self._small_layers.get(name, 0) + 1 if small else 0
            if self._small_layers[name] >= c["patience"] and self._once("vanishing_rel", name):
                ev.append(
                    Event(
                        step,
                        name,
                        "vanishing_gradients",
                        "medium",
                        f"gradient norm below {c['relative']:g} x the largest layer's for {c['patience']} logged steps",
                    )
                )
            if math.isfinite(ratio) and ratio < c["update_ratio"] and self._once("vanishing_update", name):
                ev.append(
                    Event(
                        step,
                        name,
                        "vanishing_gradients",
                        "low",
                        f"update/weight ratio {ratio:.3g} < {c['update_ratio']:g} (healthy ~1e-3)",
                    )
                )
        return ev

    def on_activations(
        self, step: int, dead: dict[str, tuple[float, float]], outliers: dict[str, np.ndarray]
    ) -> list[Event]:
        """``dead``: module -> (dead fraction, tokens seen); ``outliers``: block -> per-feature
        fraction of positions with ``|a| >= 6``."""
        ev = []
        if "dead_units" in self.cfg:
            c = self.cfg["dead_units"]
            for name, (frac, tokens) in dead.items():
                if tokens >= c["min_tokens"] and frac >= c["fraction"] and self._once("dead_units", name):
                    ev.append(
                        Event(
                            step,
                            name,
                            "dead_units",
                            "medium",
                            f"{frac:.1%} of units inactive on all {int(tokens)} probed tokens",
                        )
                    )
        if "outlier_features" in self.cfg and outliers:
            c = self.cfg["outlier_features"]
            # Outlier features live in the residual stream, whose width every block shares; blocks of
            # other widths (a plain nn.Sequential, adapters) are left out of the comparison.
            widths = [np.asarray(v).shape for v in outliers.values()]
            common = max(set(widths), key=widths.count)
            flagged = np.stack([np.asarray(v) >= c["positions"] for v in outliers.values() if np.shape(v) == common])
            share = flagged.mean(0)
            new = [int(f) for f in np.flatnonzero(share >= c["layers"]) if self._once("outlier_features", str(f))]
            if new:
                ev.append(
                    Event(
                        step,
                        "",
                        "outlier_features",
                        "info",
                        f"{len(new)} hidden feature(s) with |a| >= {c['threshold']:g} on >= "
                        f"{c['positions']:.0%} of positions in >= {c['layers']:.0%} of blocks: "
                        + ", ".join(str(f) for f in new[:12])
                        + (" ..." if len(new) > 12 else ""),
                    )
                )
        return ev

    # -- evaluations ------------------------------------------------------------------------------
    def on_eval(self, step: int, train_loss: float, val_loss: float) -> list[Event]:
        self._evals.append((step, train_loss, val_loss))
        ev = []
        if "overfitting" in self.cfg and math.isfinite(val_loss):
            c = self.cfg["overfitting"]
            vals = [v for _, _, v in self._evals]
            trains = [t for _, t, _ in self._evals]
            best_before = min(vals[: -c["patience"]]) if len(vals) > c["patience"] else math.inf
            stalled = len(vals) > c["patience"] and min(vals[-c["patience"] :]) > best_before - c["min_delta"]
            falling = len(trains) > c["patience"] and trains[-1] < trains[-c["patience"] - 1]
            if stalled and falling:
                if self._overfit_since is None:
                    self._overfit_since = step
                    ev.append(
                        Event(
                            step,
                            "",
                            "overfitting",
                            "high",
                            f"validation loss has not improved on {best_before:.4g} for "
                            f"{c['patience']} evaluations while the training loss fell "
                            f"{trains[-c['patience'] - 1]:.4g} -> {trains[-1]:.4g}",
                        )
                    )
            else:
                self._overfit_since = None
            gap = (val_loss - train_loss) / train_loss if train_loss > 0 else math.nan
            if math.isfinite(gap) and gap > c["gap"]:
                if not self._gap_on:
                    self._gap_on = True
                    ev.append(
                        Event(
                            step, "", "generalization_gap", "low", f"(val - train) / train = {gap:.1%} > {c['gap']:.0%}"
                        )
                    )
            else:
                self._gap_on = False
        if "underfitting" in self.cfg:
            c = self.cfg["underfitting"]
            trains = [t for _, t, _ in self._evals]
            base = c["baseline"]
            if len(trains) > c["evals"] and base is not None and math.isfinite(trains[-1]):
                old = trains[-c["evals"] - 1]
                improved = (old - trains[-1]) / old if old > 0 else 0.0
                if improved < c["min_improvement"] and trains[-1] > c["baseline_fraction"] * base:
                    if not self._underfit_on:
                        self._underfit_on = True
                        ev.append(
                            Event(
                                step,
                                "",
                                "underfitting",
                                "medium",
                                f"training loss improved {improved:.2%} over {c['evals']} evaluations "
                                f"and is {trains[-1]:.4g} > {c['baseline_fraction']:g} x baseline {base:.4g}",
                            )
                        )
                else:
                    self._underfit_on = False
        return ev
