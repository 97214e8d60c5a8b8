"""One-shot gradient methods at the input embeddings: saliency (Simonyan et al. 2014),
input × gradient (Shrikumar et al. 2016) and SmoothGrad (Smilkov et al. 2017).

They share integrated gradients' inputs, targets and chunked evaluation; none of them has a
completeness property, so their ``Attribution.delta`` is None.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._internal.modes import gradient_mode
from .._internal.progress import progress_bar
from ..adapters.modules import hooks_fire
from ._assemble import assemble
from ._engine import rows_per_chunk, values_and_grads
from ._inputs import Prepared
from ._targets import Target
from .integrated import setup
from .result import Attribution

REDUCTIONS = ("sum", "norm", "none")


def _check_reduce(reduce: str) -> None:
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduce!r}")


def _gradients(prep: Prepared, target: Target, points: torch.Tensor, k: int, chunk_rows: int, bar: Any) -> torch.Tensor:
    """Mean over the K points per example of the target gradients: (G, B, T, d) float32.

    ``points`` is (K, B, T, d) float32; evaluated in chunks of whole points.
    """
    bsz, t, d = prep.x.shape
    acc = torch.zeros(target.n_out, bsz, t, d, dtype=torch.float32, device=prep.device)
    rows = torch.arange(bsz)
    groups = [rows[i : i + chunk_rows] for i in range(0, bsz, chunk_rows)]
    for sub in groups:
        step = max(1, chunk_rows // sub.shape[0])
        dev = sub.to(prep.device)
        for k0 in range(0, k, step):
            k1 = min(k, k0 + step)
            point = points[k0:k1][:, dev].reshape(-1, t, d).to(prep.dtype).requires_grad_(True)
            _, grads = values_and_grads(prep, target, point, sub, k1 - k0, resolve_at=0 if k0 == 0 else None)
            grads = grads.float().reshape(target.n_out, k1 - k0, sub.shape[0], t, d)
            acc[:, dev] += grads.sum(1) / k
            bar.update((k1 - k0) * sub.shape[0])
    return acc


def _reduce(attr: torch.Tensor, reduce: str, prep: Prepared) -> torch.Tensor:
    attr = attr * prep.attributable[None, ..., None]
    return attr.sum(-1) if reduce == "sum" else attr.norm(dim=-1) if reduce == "norm" else attr


def _run(
    kind: str,
    model: Any,
    inputs: Any,
    target: Any,
    tokenizer: Any,
    layer: Any,
    batch_size: Any,
    reduce: str,
    progress: bool,
    *,
    abs_: bool = False,
    n_samples: int = 1,
    noise: float = 0.0,
    seed: int = 0,
    multiply: bool = False,
) -> Attribution:
    _check_reduce(reduce)
    prep, tgt, cont, batch = setup(model, inputs, target, tokenizer, "zeros", layer)
    chunk_rows = rows_per_chunk(model, prep, tgt.n_out, batch_size)
    x = prep.x
    if n_samples > 1 or noise > 0:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        # σ relative to each example's embedding spread (Smilkov et al.: noise level × range).
        real = prep.attributable[..., None]
        scale = torch.stack(
            [
                x[i][prep.attributable[i]].std() if prep.attributable[i].any() else x.new_tensor(0.0)
                for i in range(x.shape[0])
            ]
        ).reshape(-1, 1, 1)
        eps = torch.randn((n_samples, *x.shape), generator=gen).to(x.device) * (noise * scale) * real
        points = x[None] + eps
        points[0] = x  # the clean input first: a "predicted" target is resolved on x itself
    else:
        points = x[None]
    with gradient_mode(model), hooks_fire(model), progress_bar(progress, points.shape[0] * x.shape[0], kind) as bar:
        grad = _gradients(prep, tgt, points, points.shape[0], chunk_rows, bar)
    if abs_:
        grad = grad.abs()
    attr = grad * x[None] if multiply else grad
    return assemble(prep, tgt, cont, batch, _reduce(attr, reduce, prep), kind, np.full(x.shape[0], points.shape[0]))


def saliency(
    model: torch.nn.Module,
    inputs: Any,
    *,
    target: Any = None,
    abs: bool = True,
    layer: Any = "embeddings",
    batch_size: int | str = "auto",
    reduce: str = "sum",
    tokenizer: Any = None,
    progress: bool = True,
) -> Attribution:
    """Gradient of the target with respect to the input embeddings (one forward and backward).

    Parameters not listed here are those of :func:`integrated_gradients`.

    Parameters
    ----------
    abs : bool
        Score |∂F/∂x| (Captum's ``Saliency(abs=True)`` default) or the signed gradient.
    reduce : {"sum", "norm", "none"}
        Per token: sum over the embedding dimension, L2 norm, or the full ``(..., T, d)``.

    Returns
    -------
    Attribution
        ``scores`` float32 ``(B, T)`` (``(B, T_out, T)`` for continuations), ``delta`` None.
    """
    return _run("saliency", model, inputs, target, tokenizer, layer, batch_size, reduce, progress, abs_=abs)


def input_x_gradient(
    model: torch.nn.Module,
    inputs: Any,
    *,
    target: Any = None,
    layer: Any = "embeddings",
    batch_size: int | str = "auto",
    reduce: str = "sum",
    tokenizer: Any = None,
    progress: bool = True,
) -> Attribution:
    """Input embeddings times the target's gradient, x ⊙ ∂F/∂x (IG with one node and a zero
    baseline). Parameters as :func:`saliency`."""
    return _run(
        "input_x_gradient", model, inputs, target, tokenizer, layer, batch_size, reduce, progress, multiply=True
    )


def smoothgrad(
    model: torch.nn.Module,
    inputs: Any,
    *,
    target: Any = None,
    n_samples: int = 16,
    noise: float = 0.15,
    abs: bool = True,
    multiply_by_inputs: bool = False,
    seed: int = 0,
    layer: Any = "embeddings",
    batch_size: int | str = "auto",
    reduce: str = "sum",
    tokenizer: Any = None,
    progress: bool = True,
) -> Attribution:
    """SmoothGrad: the gradient averaged over ``n_samples`` noisy copies of the input embeddings.

    Parameters
    ----------
    n_samples : int
        Points averaged, the clean input included (the first sample, which also fixes a
        "predicted" target).
    noise : float
        Gaussian noise σ relative to each example's embedding standard deviation (Smilkov et al.
        use 10–20 % of the input range). Only attributed positions are perturbed.
    abs : bool
        Average then take |·| of the mean gradient.
    multiply_by_inputs : bool
        Multiply the mean gradient by the input embeddings (SmoothGrad of input × gradient).
    seed : int
        Seed of the noise.

    Returns
    -------
    Attribution
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a non-negative float (σ relative to the embedding std), got {noise!r}")
    return _run(
        "smoothgrad",
        model,
        inputs,
        target,
        tokenizer,
        layer,
        batch_size,
        reduce,
        progress,
        abs_=abs,
        n_samples=n_samples,
        noise=float(noise),
        seed=seed,
        multiply=multiply_by_inputs,
    )
