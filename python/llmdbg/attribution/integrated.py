"""Integrated gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks")
at the input embeddings of Hugging Face models.

IG_i = (x_i − b_i) · ∫₀¹ ∂F(b + α(x − b))/∂x_i dα, and completeness says Σ_i IG_i = F(x) − F(b):
the convergence delta Σ IG − (F(x) − F(b)) measures the quadrature error honestly. Only the word
embeddings are interpolated (position and token-type embeddings, the attention mask and every
other input stay as they are), like Captum's LayerIntegratedGradients on the word embedding.

The path is evaluated in chunks of α (never all n_steps × B inputs at once); gradients of each
chunk are folded into float32 accumulators by a C++ kernel, whatever the model's dtype. The
endpoint values F(x) and F(b) come from the rule's own nodes when it has them (trapezoid,
adaptive), else from one forward-only pass of both. ``method="adaptive"`` refines a nested
Gauss–Kronrod–Patterson rule (5, 11, 23, 47, 95 nodes, exact to degree 9, 16, 34, 70, 142, every
earlier evaluation reused), per example, until |delta| / |F(x) − F(b)| < tol.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from .. import _core
from .._internal.modes import gradient_mode
from .._internal.progress import progress_bar
from ..adapters.layout import check_module
from ..adapters.modules import hooks_fire
from ._assemble import assemble
from ._engine import forward_rows, rows_per_chunk, values_and_grads
from ._inputs import Prepared, find_embedding, model_batch, prepare
from ._targets import Target, build_target
from .result import Attribution

METHODS = (
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "trapezoid",
    "gausslegendre",
    "clenshaw_curtis",
    "captum_trapezoid",
    "adaptive",
)
REDUCTIONS = ("sum", "norm", "none")
DEFAULT_STEPS = 50
#: Adaptive: 2 endpoint evaluations + up to 95 Patterson nodes (level 4, the last).
DEFAULT_MAX_EVALS = 97
MIN_MAX_EVALS = 7  # 2 endpoints + the 5 nodes of level 0


class ConvergenceWarning(UserWarning):
    """The adaptive rule stopped at ``max_evals`` before |delta| / |F(x) − F(b)| < tol."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_options(method: str, n_steps: Any, tol: Any, max_evals: Any, reduce: str) -> tuple[int, int]:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduce!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
        raise ValueError(f"tol must be a positive number (relative delta), got {tol!r}")
    if method == "adaptive":
        if n_steps is not None:
            raise ValueError("n_steps does not apply to method='adaptive' (it refines until tol); set max_evals")
        cap = DEFAULT_MAX_EVALS if max_evals is None else max_evals
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < MIN_MAX_EVALS:
            raise ValueError(
                f"max_evals must be an int >= {MIN_MAX_EVALS} for method='adaptive' (2 endpoint "
                f"evaluations + the first level's 5 nodes), got {max_evals!r}"
            )
        return 0, cap
    steps = DEFAULT_STEPS if n_steps is None else n_steps
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise TypeError(f"n_steps must be an int, got {type(steps).__name__}")
    least = 2 if method in ("trapezoid", "captum_trapezoid", "clenshaw_curtis") else 1
    if steps < least:
        raise ValueError(f"n_steps must be >= {least} for method={method!r}, got {steps}")
    return int(steps), 0


def setup(model: Any, inputs: Any, target: Any, tokenizer: Any, baseline: Any, layer: Any):
    """Shared by every method: checked model, target, prepared inputs and continuation info."""
    check_module(model)
    embedding = find_embedding(model, layer)
    param = next(iter(embedding.parameters()), None)
    param = param if param is not None else next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    batch, word_ids = model_batch(inputs, tokenizer, device)
    tgt, run_batch, cont = build_target(model, batch, target, tokenizer)
    region = None if cont is None else cont[1].to(device)
    if cont is not None and not isinstance(baseline, str):
        baseline = _repack_baseline(baseline, cont, run_batch["input_ids"], device)
    prep = prepare(
        model,
        run_batch,
        tokenizer=tokenizer,
        baseline=baseline,
        layer=embedding,
        attributable=region,
        word_ids=word_ids,
    )
    return prep, tgt, cont, batch


def _repack_baseline(baseline: Any, cont: Any, run_ids: torch.Tensor, device: torch.device) -> Any:
    """A baseline given in the user's prompt layout, moved to the re-packed (prompt, continuation)
    layout; positions outside the prompt keep the real ids (they are not interpolated)."""
    positions, _, t_orig = cont
    base = (
        baseline.detach().to(device)
        if isinstance(baseline, torch.Tensor)
        else torch.as_tensor(np.asarray(baseline), device=device)
    )
    if base.dim() == 0 or base.shape[min(1, base.dim() - 1) if base.dim() <= 2 else 1] != t_orig:
        return baseline  # let prepare() report the shape error
    bsz = run_ids.shape[0]
    if base.dim() in (1, 2) and not base.dtype.is_floating_point:
        base = base.expand(bsz, t_orig) if base.dim() == 1 else base
        out = run_ids.clone()
    elif base.dim() in (2, 3) and base.dtype.is_floating_point:
        base = base.expand(bsz, *base.shape[-2:]) if base.dim() == 2 else base
        out = torch.zeros((bsz, run_ids.shape[1], base.shape[-1]), dtype=base.dtype, device=device)
    else:
        return baseline
    if base.shape[0] != bsz:
        return baseline
    for i, pos in enumerate(positions):
        out[i, : pos.numel()] = base[i, pos.to(device)]
    return out


def _endpoint_values(
    prep: Prepared, target: Target, alphas: list[float], rows: torch.Tensor
) -> dict[float, torch.Tensor]:
    """F at α ∈ alphas for ``rows`` in one forward-only pass; {α: (R, G)}."""
    with torch.no_grad():
        a = torch.tensor(alphas, dtype=torch.float64)
        point = _core.ig_path(prep.b[rows], prep.diff[rows], a, _dtype_name(prep.dtype))
        resolve = alphas.index(1.0) if 1.0 in alphas else None
        vals = forward_rows(prep.model, prep, target, point, rows, len(alphas), resolve_at=resolve)
    r = rows.shape[0]
    return {alpha: vals[i * r : (i + 1) * r].detach() for i, alpha in enumerate(alphas)}


def _run_nodes(
    prep: Prepared, target: Target, nodes: np.ndarray, rows: torch.Tensor, chunk_rows: int, bar: Any, on_chunk: Any
) -> dict[float, torch.Tensor]:
    """Evaluate value and gradients at ``nodes`` for ``rows`` in chunks; calls
    ``on_chunk(k0, k1, sub_rows, grads (G, K*R, T, d))`` and returns values at the endpoints."""
    ends: dict[float, torch.Tensor] = {}
    groups = [rows[i : i + chunk_rows] for i in range(0, rows.shape[0], chunk_rows)]
    for sub in groups:
        k_max = max(1, chunk_rows // sub.shape[0])
        for k0 in range(0, len(nodes), k_max):
            k1 = min(len(nodes), k0 + k_max)
            alphas = torch.from_numpy(np.ascontiguousarray(nodes[k0:k1]))
            point = _core.ig_path(prep.b[sub], prep.diff[sub], alphas, _dtype_name(prep.dtype)).requires_grad_(True)
            resolve = next((i for i, a in enumerate(nodes[k0:k1]) if a == 1.0), None)
            vals, grads = values_and_grads(prep, target, point, sub, k1 - k0, resolve_at=resolve)
            r = sub.shape[0]
            for i, a in enumerate(nodes[k0:k1]):
                if a in (0.0, 1.0):
                    part = vals[i * r : (i + 1) * r].detach()
                    ends[float(a)] = part if float(a) not in ends else torch.cat([ends[float(a)], part])
            del vals, point
            on_chunk(k0, k1, sub, grads)
            bar.update((k1 - k0) * r)
    return ends


def _fixed(prep: Prepared, target: Target, method: str, n_steps: int, chunk_rows: int, progress: bool):
    nodes, weights = _core.quadrature(method, n_steps)
    # Endpoints first: their values give F(x), F(b) and a "predicted" target before any backward.
    order = np.argsort([0 if a == 1.0 else 1 if a == 0.0 else 2 for a in nodes], kind="stable")
    nodes, weights = nodes[order], weights[order]
    bsz, t, d = prep.x.shape
    rows = torch.arange(bsz)
    missing = [a for a in (1.0, 0.0) if a not in set(nodes.tolist())]
    ends = _endpoint_values(prep, target, missing, rows) if missing else {}
    acc = torch.zeros(target.n_out, bsz, t, d, dtype=torch.float32, device=prep.device)
    w = torch.from_numpy(weights)

    def fold(k0: int, k1: int, sub: torch.Tensor, grads: torch.Tensor) -> None:
        _core.ig_accumulate(acc, grads, w[k0:k1], sub.to(prep.device))

    with progress_bar(progress, len(nodes) * bsz, "integrated gradients") as bar:
        ends.update(_run_nodes(prep, target, nodes, rows, chunk_rows, bar, fold))
    attr = acc.mul_(prep.diff[None])  # (G, B, T, d) float32
    n_evals = np.full(bsz, len(nodes) + len(missing), dtype=np.int64)
    return attr, ends[1.0], ends[0.0], n_evals, None


def _patterson(level: int) -> tuple[np.ndarray, np.ndarray]:
    return _core.patterson_quadrature(level)


def _adaptive(prep: Prepared, target: Target, tol: float, max_evals: int, chunk_rows: int, reduce: str, progress: bool):
    """Nested Gauss–Kronrod–Patterson refinement (5, 11, 23, 47, 95 nodes), per example.

    F(x) and F(b) come first from one forward-only pass (2 evaluations per example); then each
    level adds its new nodes for the examples whose relative delta is still >= tol, reusing every
    earlier node. ``n_evals`` counts the 2 endpoint evaluations plus the gradient nodes.
    """
    bsz, t, d = prep.x.shape
    g = target.n_out
    diff = prep.diff
    store: list[torch.Tensor] = []  # per node: (G, B, T) or (G, B, T, d) contribution diff ⊙ grad
    final_level = np.zeros(bsz, dtype=np.int64)
    valid = (
        target.valid.to(prep.device)
        if target.valid is not None
        else torch.ones(bsz, g, dtype=torch.bool, device=prep.device)
    )
    converged = np.zeros(bsz, dtype=bool)
    active = torch.arange(bsz)
    ends = _endpoint_values(prep, target, [1.0, 0.0], active)
    fx, fb = ends[1.0].to(prep.device), ends[0.0].to(prep.device)
    with progress_bar(progress, None, "integrated gradients (adaptive)") as bar:
        level = 0
        while True:
            nodes, weights = _patterson(level)
            start = 0 if level == 0 else _patterson(level - 1)[0].shape[0]
            new = nodes[start:]
            new_store = [
                torch.zeros((g, bsz, t) if reduce == "sum" else (g, bsz, t, d), device=prep.device) for _ in new
            ]

            def keep(k0: int, k1: int, sub: torch.Tensor, grads: torch.Tensor, new_store=new_store) -> None:
                r = sub.shape[0]
                dev_sub = sub.to(prep.device)
                contrib = grads.float().reshape(g, k1 - k0, r, t, d) * diff[dev_sub][None, None]
                if reduce == "sum":
                    contrib = contrib.sum(-1)
                for i in range(k1 - k0):
                    new_store[k0 + i][:, dev_sub] = contrib[:, i]

            _run_nodes(prep, target, new, active, chunk_rows, bar, keep)
            store.extend(new_store)
            w = torch.from_numpy(weights).float().to(prep.device)
            idx = active.to(prep.device)
            total = sum(w[i] * (s[:, idx] if s.dim() == 3 else s[:, idx].sum(-1)).sum(-1) for i, s in enumerate(store))
            gap = (fx[idx] - fb[idx]).T  # (G, R)
            rel = (total - gap).abs() / gap.abs().clamp_min(1e-12)
            ok = ((rel < tol) | ~valid[idx].T).all(0).cpu()
            final_level[active.numpy()] = level
            converged[active[ok].numpy()] = True
            active = active[~ok]
            if (
                active.numel() == 0
                or level == _core.PATTERSON_MAX_LEVEL
                or 2 + _patterson(level + 1)[0].shape[0] > max_evals
            ):
                break
            level += 1
    attr = torch.zeros((g, bsz, t) if reduce == "sum" else (g, bsz, t, d), device=prep.device)
    for lvl in np.unique(final_level):
        sel = torch.from_numpy(np.nonzero(final_level == lvl)[0]).to(prep.device)
        _, node_w = _patterson(int(lvl))
        for i, wi in enumerate(node_w):
            attr[:, sel] += float(wi) * store[i][:, sel]
    sizes = np.array([2 + _patterson(int(lvl))[0].shape[0] for lvl in final_level], dtype=np.int64)
    if not converged.all():
        bad = np.nonzero(~converged)[0].tolist()
        warnings.warn(
            f"adaptive integrated gradients did not reach |delta| / |F(x) - F(b)| < {tol} within "
            f"max_evals={max_evals} for examples {bad[:10]}; see Attribution.converged and .delta",
            ConvergenceWarning,
            stacklevel=3,
        )
    return attr, fx, fb, sizes, converged


def integrated_gradients(
    model: torch.nn.Module,
    inputs: Any,
    *,
    target: Any = None,
    baseline: Any = "pad",
    n_steps: int | None = None,
    method: str = "gausslegendre",
    tol: float = 0.01,
    max_evals: int | None = None,
    layer: Any = "embeddings",
    batch_size: int | str = "auto",
    reduce: str = "sum",
    tokenizer: Any = None,
    progress: bool = True,
) -> Attribution:
    """Integrated gradients of a Hugging Face model's output with respect to its input embeddings.

    Parameters
    ----------
    model : torch.nn.Module
        A transformers model (sequence classifier, causal/masked LM, encoder-decoder, bare encoder
        with a callable target) or any module with an input embedding. Its mode, hooks and
        ``requires_grad`` flags are left as they were (a model in train mode is warned about and
        evaluated in eval mode).
    inputs : str, list of str, dict, BatchEncoding or torch.Tensor
        Text (with ``tokenizer=``), a tokenizer encoding / dict of tensors, or ``(B, T)`` ids.
    target : None, "predicted", int, sequence of int, str, 2-D ids or callable
        What is explained. Sequence classifiers: the class logit (default: the predicted class).
        Causal LMs: the log-probability of the next token (an id, default the most likely one), or
        of every token of a continuation (text or ``(B, T_out)`` ids; scores then have shape
        ``(B, T_out, T)``, all targets from one teacher-forced forward per chunk). Masked LMs: the
        log-probability of a token at the first mask position. Encoder-decoders: the continuation's
        log-probabilities (source attributions). ``"predicted"`` is the same as None (to explain
        the literal text "predicted" as a continuation, pass ``[" predicted"]``). A callable ``f(outputs)`` or
        ``f(outputs, batch)`` returning ``(N,)`` values for the N rows of a forward (``batch`` holds
        those rows' inputs and ``batch["example"]``, each row's example index) explains anything
        else, e.g. a sentence similarity (see :func:`similarity_target`).
    baseline : {"pad", "mask", "unk", "zeros"} or array
        Token baselines keep special tokens (CLS, SEP, BOS, ...) in place; "pad" falls back to EOS
        for models without a pad token. Arrays: ``(B, T)``/``(T,)`` ids or ``(B, T, d)``/``(T, d)``
        float embeddings.
    n_steps : int, optional
        Nodes of a fixed rule (default 50, as Captum). Not used by ``method="adaptive"``.
    method : str
        ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``, ``"trapezoid"`` (correct:
        weights sum to 1), ``"gausslegendre"``, ``"clenshaw_curtis"``, ``"captum_trapezoid"``
        (Captum's riemann_trapezoid, weights summing to 1 − 1/n, for comparisons only) or
        ``"adaptive"``.
    tol : float
        Relative delta |delta| / |F(x) − F(b)| the adaptive rule stops at (and which
        ``Attribution.converged`` reports for every rule).
    max_evals : int, optional
        Adaptive only: most model evaluations per example, endpoints included (default 97: all
        five levels; at least 7). Levels cost 2 + 5, 11, 23, 47, 95 evaluations in total.
    layer : "embeddings", str or torch.nn.Module
        The word embedding whose output is interpolated.
    batch_size : int or "auto"
        Model rows (path points × examples) per forward. "auto": from free memory (GPU) or
        4096 tokens per forward (CPU).
    reduce : {"sum", "norm", "none"}
        Per-token score: sum over the embedding dimension (keeps completeness; Captum's LLM
        convention), L2 norm, or the full ``(..., T, d)`` attribution.
    tokenizer : transformers tokenizer, optional
        Needed for text inputs and continuations; gives token strings.
    progress : bool
        Show a progress bar (disabled automatically when not interactive).

    Returns
    -------
    Attribution
        ``scores`` float32 ``(B, T)`` or ``(B, T_out, T)``, with ``delta``, ``n_evals``,
        ``converged`` and the explained ``target``.

    Examples
    --------
    >>> attr = llmdbg.integrated_gradients(model, "a great movie", tokenizer=tok, target=1)
    >>> attr.words()[0]
    """
    steps, cap = check_options(method, n_steps, tol, max_evals, reduce)
    prep, tgt, cont, batch = setup(model, inputs, target, tokenizer, baseline, layer)
    chunk_rows = rows_per_chunk(model, prep, tgt.n_out, batch_size)
    with gradient_mode(model), hooks_fire(model):
        if method == "adaptive":
            attr, fx, fb, n_evals, converged = _adaptive(prep, tgt, float(tol), cap, chunk_rows, reduce, progress)
            if reduce == "sum":
                total, scores = attr.sum(-1), attr
            else:
                total = attr.sum((-1, -2))
                scores = attr.norm(dim=-1) if reduce == "norm" else attr
            name = "integrated_gradients/adaptive"
        else:
            attr, fx, fb, n_evals, converged = _fixed(prep, tgt, method, steps, chunk_rows, progress)
            total = attr.sum((-1, -2))
            scores = attr.sum(-1) if reduce == "sum" else attr.norm(dim=-1) if reduce == "norm" else attr
            name = f"integrated_gradients/{method}"
    delta = total.T - (fx - fb)  # (B, G)
    if converged is None:
        rel = delta.abs() / (fx - fb).abs().clamp_min(1e-12)
        ok = (rel < tol) | ~tgt.valid.to(rel.device)
        converged = ok.all(1).cpu().numpy()
    return assemble(
        prep, tgt, cont, batch, scores, name, n_evals, delta=delta, value=fx, baseline_value=fb, converged=converged
    )
