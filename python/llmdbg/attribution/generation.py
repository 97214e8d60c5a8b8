"""Attribution of generated text: why did the model say that?

:func:`attribute_generation` generates a continuation (or takes a forced one) and explains every
generated token k by the sources it saw: the prompt and, with ``source="prompt+generated"``, the
tokens generated before it (inseq's convention for decoder-only models). The target of step k is
log p(y_k | x, y_<k), or with a contrast log p(y_k) − log p(f_k) in the same context.

**One teacher-forced run serves every target.** In a causal model, target k depends only on
positions ≤ P − 1 + k. A path that moves every source position at once therefore restricts, for
target k, to exactly target k's own path, so one forward per path point gives all n targets, and
one backward per target on the shared graph gives their gradients (closed form at the LM head,
see ``_head``). Captum's ``LLMGradientAttribution`` runs a full integrated-gradients call per
target instead.

**Where the KV cache is used.** Only inside ``generate()``. Gradient methods at the input
embeddings cannot reuse it: every point of the path changes every position's embedding, hence
every cached key and value. Occlusion batches occluded copies of the whole sequence (reusing the
cache before the occluded token would save at most half of the work).

**Memory.** Before running, the bytes of the gradient buffers and of the forward/backward
activations are estimated; targets are split into groups and path points into chunks until the
estimate fits ``max_bytes`` (default: a quarter of the available memory). A request that cannot
fit even one target and one path point raises :class:`llmdbg.CaptureBudgetError` with the
estimate, before any model call.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from .. import _core
from .._internal.modes import gradient_mode
from .._internal.progress import progress_bar
from ..adapters.modules import hooks_fire
from ..tracing.api import capture
from ..tracing.query import AttentionQuery
from ._engine import _available_bytes, forward_rows, values_and_grads
from ._generation_inputs import _as_ids, _check_model, _encode_text, _foil, _generate, _prompt_ids
from ._inputs import Prepared, find_embedding, model_config, prepare, token_strings
from ._targets import Target, _takes
from .generation_result import GenerationAttribution
from .integrated import METHODS as IG_RULES
from .integrated import ConvergenceWarning, _adaptive, _endpoint_values, check_options

__all__ = ["GenerationAttribution", "attribute_generation"]

METHODS = ("integrated_gradients", "saliency", "input_x_gradient", "attention", "occlusion")
SOURCES = ("prompt+generated", "prompt")
ATTENTION_MODES = ("last_layer", "rollout")


def _step_scores(model: Any, ids: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> dict:
    """Probability, surprisal and entropy of each target from one no-grad forward (float32)."""
    extra = {"logits_to_keep": int(ids.shape[1] - positions.min())} if _takes(model, "logits_to_keep") else {}
    with torch.no_grad():
        logits = model(input_ids=ids, **extra).logits[0]
    pos = positions - (ids.shape[1] - logits.shape[0])
    logp = torch.log_softmax(logits[pos.to(logits.device)].float(), dim=-1)
    lp = logp.gather(1, targets.to(logp.device)[:, None])[:, 0]
    entropy = -(logp.exp() * logp).nan_to_num().sum(-1)
    return {
        "probability": lp.exp().cpu().numpy().astype(np.float32),
        "surprisal": (-lp).cpu().numpy().astype(np.float32),
        "entropy": entropy.cpu().numpy().astype(np.float32),
    }


def _graph_bytes(model: Any, t: int, dtype: torch.dtype, grad: bool) -> int:
    """Bytes of the activations one row of T tokens keeps for the backward (or, without grad, the
    largest transient of a forward): per layer and token about 12·d + 4·d_ff values, plus T per
    head for eager attention (SDPA and flash keep no T × T map)."""
    cfg: Any = model_config(model)
    cfg = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    d = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or 1024)
    layers = int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None) or 12)
    heads = int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or 16)
    ff = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d)
    item = torch.finfo(dtype).bits // 8
    per_token = (12 * d + 4 * ff) * item
    if getattr(cfg, "_attn_implementation", "eager") == "eager":
        per_token += 2 * heads * t * item
    return t * per_token * (layers if grad else 2)


def embedding_width(model: Any) -> int:
    weight = getattr(find_embedding(model), "weight", None)
    return int(weight.shape[1]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else 1


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _plan(
    model: Any,
    shape: tuple[int, int],
    dtype: torch.dtype,
    n: int,
    method: str,
    batch_size: Any,
    max_bytes: Any,
    adaptive: bool,
) -> tuple[int, int]:
    """(targets per group, path points per forward) whose estimated bytes fit the budget:
    the activations of ``rows`` path points, the (G, T) float32 sums (one per node for the
    adaptive rule, which keeps every node), and one target's gradient (rows, T, d)."""
    t, d = shape
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes <= 0
    ):
        raise ValueError(f"max_bytes must be a positive int or None, got {max_bytes!r}")
    budget = int(max_bytes) if max_bytes is not None else _available_bytes(next(model.parameters()).device) // 4
    gradient = method in ("integrated_gradients", "saliency", "input_x_gradient")

    def need(g: int, rows: int) -> int:
        if method == "attention":
            return 0
        act = rows * _graph_bytes(model, t, dtype, gradient)
        if not gradient:
            return act
        nodes = 97 if adaptive else 1
        return act + g * t * 4 * nodes + 2 * rows * t * d * 4 + (g * rows * t * d * 4 if adaptive else 0)

    if batch_size != "auto":
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
        rows = batch_size
    else:
        on_gpu = next(model.parameters()).device.type == "cuda"
        rows = max(1, min(64, (1 << 20 if on_gpu else 4096) // t))
    group = n
    while need(group, rows) > budget and rows > 1:
        rows = max(1, rows // 2)
    while need(group, rows) > budget and group > 1:
        group = max(1, group // 2)
    if need(group, rows) > budget:
        raise _core.CaptureBudgetError(
            f"attribute_generation({method!r}) needs about {_size(need(group, rows))} for one target and one "
            f"path point at {t} tokens (d = {d}), over max_bytes = {_size(budget)}; raise max_bytes or "
            "shorten the prompt"
        )
    return group, rows


def _subset(target: Target, cols: slice, foil: torch.Tensor | None) -> Target:
    assert target.ids is not None and target.positions is not None and target.valid is not None
    sub = Target(
        "token",
        len(range(*cols.indices(target.n_out))),
        target.ids[:, cols],
        target.positions[:, cols],
        target.valid[:, cols],
        vocab=target.vocab,
        keep=None if target.keep is None else int(target.length - target.positions[:, cols].min()),  # type: ignore[operator]
        length=target.length,
    )
    sub.foil = None if foil is None else foil[None, cols]
    return sub


def _path_sums(
    prep: Prepared, target: Target, nodes: np.ndarray, weights: np.ndarray, rows: int, bar: Any, reduce: Any
) -> tuple[torch.Tensor, dict[float, torch.Tensor]]:
    """Σ_i w_i · reduce(∂F_g/∂e at node i) as (G, T) float32, each target's gradient folded in as
    soon as its backward pass ends (the G gradients of a chunk are never held at once); and the
    target values (G,) at the nodes 0 and 1."""
    g, t = target.n_out, prep.x.shape[1]
    acc = torch.zeros(g, t, dtype=torch.float32, device=prep.device)
    ends: dict[float, torch.Tensor] = {}
    one = torch.zeros(1, dtype=torch.long)
    for k0 in range(0, len(nodes), rows):
        k1 = min(len(nodes), k0 + rows)
        alphas = torch.from_numpy(np.ascontiguousarray(nodes[k0:k1], dtype=np.float64))
        point = _core.ig_path(prep.b[:1], prep.diff[:1], alphas, str(prep.dtype).removeprefix("torch."))
        w = torch.as_tensor(weights[k0:k1], dtype=torch.float32, device=prep.device)

        def fold(j: int, grad: torch.Tensor, w: torch.Tensor = w) -> None:
            acc[j] += reduce((grad.float() * w[:, None, None]).sum(0))

        resolve = next((i for i, a in enumerate(nodes[k0:k1]) if a == 1.0), None)
        vals, _ = values_and_grads(
            prep, target, point.requires_grad_(True), one, k1 - k0, resolve_at=resolve, fold=fold
        )
        for i, a in enumerate(nodes[k0:k1]):
            if a in (0.0, 1.0):
                ends[float(a)] = vals[i].detach()
        bar.update(k1 - k0)
    return acc, ends


def _gradient_scores(method: str, prep: Prepared, target: Target, rows: int, ig: dict, progress: bool) -> dict:
    """(G, T) scores and, for integrated gradients, per-target delta and endpoint values."""
    x, diff, region = prep.x[0], prep.diff[0], prep.attributable[0]
    if method == "integrated_gradients" and ig["rule"] == "adaptive":
        attr, fx, fb, n_evals, _ = _adaptive(prep, target, ig["tol"], ig["cap"], rows, "sum", progress)
        scores = attr[:, 0]  # (G, T)
        delta = scores.sum(-1) - (fx[0] - fb[0])
        return dict(scores=scores, delta=delta, value=fx[0], baseline_value=fb[0], n_evals=int(n_evals[0]))
    if method == "integrated_gradients":
        nodes, weights = _core.quadrature(ig["rule"], ig["steps"])
        with progress_bar(progress, len(nodes), "integrated gradients") as bar:
            scores, ends = _path_sums(prep, target, nodes, weights, rows, bar, lambda g: (g * diff).sum(-1))
        missing = [a for a in (1.0, 0.0) if a not in ends]
        if missing:
            found = _endpoint_values(prep, target, missing, torch.zeros(1, dtype=torch.long))
            ends.update({a: v[0] for a, v in found.items()})
        fx, fb = ends[1.0].to(prep.device), ends[0.0].to(prep.device)
        delta = scores.sum(-1) - (fx - fb)
        return dict(scores=scores, delta=delta, value=fx, baseline_value=fb, n_evals=len(nodes) + len(missing))
    reduce = (lambda g: g.abs().sum(-1)) if method == "saliency" else (lambda g: (g * x).sum(-1))
    with progress_bar(progress, 1, method) as bar:
        scores, _ = _path_sums(prep, target, np.ones(1), np.ones(1), 1, bar, reduce)
    return dict(scores=scores * region, n_evals=1)


def _occlusion_scores(model: Any, prep: Prepared, target: Target, rows: int, progress: bool) -> dict:
    """(G, T): F(x) − F(x with source j replaced by the baseline token), every target at once."""
    positions = torch.nonzero(prep.attributable[0]).reshape(-1).tolist()
    zero = torch.zeros(1, dtype=torch.long)
    g, t = target.n_out, prep.x.shape[1]
    scores = torch.zeros(g, t, dtype=torch.float64)
    with torch.no_grad(), progress_bar(progress, 1 + len(positions), "occlusion") as bar:
        fx = forward_rows(model, prep, target, prep.x.to(prep.dtype), zero, 1)[0].double().cpu()
        bar.update(1)
        for i in range(0, len(positions), rows):
            part = positions[i : i + rows]
            point = prep.x.expand(len(part), -1, -1).clone()
            for r, j in enumerate(part):
                point[r, j] = prep.b[0, j]
            vals = forward_rows(model, prep, target, point.to(prep.dtype), zero.repeat(len(part)), 1)
            scores[:, part] = (fx[None] - vals.double().cpu()).T
            bar.update(len(part))
    return dict(scores=scores.float(), value=fx.float(), n_evals=1 + len(positions))


def _attention_scores(model: Any, ids: torch.Tensor, positions: torch.Tensor, mode: str, max_bytes: Any) -> dict:
    """Head-mean attention of each target's query row: the last layer's, or rolled out top down
    (r ← r·Â_l, Â_l = ½(Ā_l + I), l = L … 1) from every layer's head-mean map, in float64."""
    rows = positions.tolist()
    query = (
        AttentionQuery(layers=(-1,), rows=tuple(rows), reduce="mean")
        if mode == "last_layer"
        else AttentionQuery(reduce="mean")
    )
    with torch.no_grad(), capture(model, attentions=query, max_bytes=max_bytes) as trace:
        model(input_ids=ids)
    maps = trace.attentions  # (1, R, T) or per layer (1, T, T)
    if mode == "last_layer":
        return dict(scores=torch.from_numpy(maps[-1][0]).float(), n_evals=1)
    t = ids.shape[1]
    r = np.zeros((len(rows), t))
    r[np.arange(len(rows)), rows] = 1.0
    for fused in reversed(maps):
        a = 0.5 * fused[0].astype(np.float64) + 0.5 * np.eye(t)
        a /= a.sum(1, keepdims=True)
        r = r @ a
    return dict(scores=torch.from_numpy(r).float(), n_evals=1)


def _warn_zero_baseline(prep: Prepared, converged: np.ndarray, tol: float) -> None:
    """A baseline whose embeddings are all zero (an embedding's ``padding_idx`` row, or
    ``baseline="zeros"``) makes the path start where RMSNorm/LayerNorm divide by ~sqrt(eps): the
    integrand is nearly singular near α = 0 and more steps do not help. Say so when it bites."""
    region = prep.attributable[0]
    if converged.all() or not bool(region.any()) or float(prep.b[0][region].abs().max()) > 0:
        return
    warnings.warn(
        f"integrated gradients did not reach |delta| / |F(x) - F(b)| < {tol} for {int((~converged).sum())} of "
        f"{converged.size} targets, and the baseline's embeddings are all zero (the pad token's row of an embedding "
        "with padding_idx, or baseline='zeros'): normalization layers make the integrand nearly singular near the "
        "baseline, so more steps do not help. Use baseline='unk' or a token id with a non-zero embedding",
        ConvergenceWarning,
        stacklevel=3,
    )


def attribute_generation(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: Any,
    *,
    max_new_tokens: int | None = None,
    target: Any = None,
    method: str = "integrated_gradients",
    n_steps: int | None = None,
    rule: str = "gausslegendre",
    tol: float = 0.01,
    max_evals: int | None = None,
    source: str = "prompt+generated",
    contrast: Any = None,
    baseline: Any = "pad",
    attention: str = "last_layer",
    generation_kwargs: dict[str, Any] | None = None,
    max_bytes: int | None = None,
    batch_size: int | str = "auto",
    layer: Any = "embeddings",
    progress: bool = True,
) -> GenerationAttribution:
    """Generate a continuation (or force one) and attribute every generated token to its sources.

    Parameters
    ----------
    model : transformers causal LM
        ``AutoModelForCausalLM`` of any family (GPT-2, Llama, Qwen2, Mistral, ...). Its mode,
        hooks and ``requires_grad`` flags are restored afterwards, also on errors.
    tokenizer : transformers tokenizer or None
        Encodes text prompts, targets and foils; gives token strings. None with id inputs.
    prompt : str, sequence of int or (1, P) tensor
        One prompt (special tokens as the tokenizer adds them).
    max_new_tokens : int
        Tokens to generate (greedy unless ``generation_kwargs`` says otherwise). Not used with
        ``target``.
    target : str or sequence of int, optional
        A forced continuation to explain instead of generating (teacher forcing).
    method : {"integrated_gradients", "saliency", "input_x_gradient", "attention", "occlusion"}
        Gradient methods work at the input embeddings (``layer``) and sum over the embedding
        dimension (saliency: of |gradient|). ``"attention"``: the head-mean attention of each
        target's query, recomputed from the queries and keys the model's own kernel received
        (``attention="last_layer"`` or ``"rollout"``). ``"occlusion"``: drop of each target when
        one source token is replaced by the baseline token.
    n_steps, rule, tol, max_evals
        Integrated gradients: the quadrature rule (every rule of
        :func:`llmdbg.integrated_gradients`, ``"adaptive"`` included) and its nodes.
    source : {"prompt+generated", "prompt"}
        ``"prompt+generated"`` (inseq's convention): every source the step saw, the earlier
        generated tokens interpolated too. ``"prompt"`` (Captum's ``LLMGradientAttribution``):
        only the prompt; the generated prefix stays at its real embeddings.
    contrast : int, str or sequence of int, optional
        Contrastive attribution: the target becomes log p(y_k) − log p(f_k), the foil f_k scored in
        the same context. One id for every step, or a text / ids of the target's length.
    baseline : {"pad", "unk", "mask", "zeros"} or int
        Integrated gradients' baseline (and occlusion's replacement): special tokens are kept by
        the named baselines; an int id replaces every attributed position.
    attention : {"last_layer", "rollout"}
        Which attention rows ``method="attention"`` reads.
    generation_kwargs : dict, optional
        Passed to ``model.generate`` (``num_return_sequences`` must stay 1).
    max_bytes : int, optional
        Budget for the gradient buffers and activations (default: a quarter of the available
        memory); targets and path points are chunked to fit, or
        :class:`llmdbg.CaptureBudgetError` is raised with the estimate before running.
    batch_size : int or "auto"
        Path points per forward.
    layer : "embeddings", str or module
        The word embedding attributed to.
    progress : bool
        Progress bars (off when not interactive).

    Returns
    -------
    GenerationAttribution
        ``scores`` float32 ``(n, S)``, sources and targets, ``step_scores``, and for integrated
        gradients per-target ``delta`` and ``converged``. Accumulation is in float32 whatever
        the model's dtype (float64 for occlusion differences and rollout).

    Raises
    ------
    ValueError
        Not a causal LM (encoder-decoders are named), ``max_new_tokens < 1``, a foil of another
        length than the target, a target the tokenizer cannot encode, several prompts,
        ``num_return_sequences > 1``, an unknown method, source or rule.
    llmdbg.CaptureBudgetError
        The estimate exceeds ``max_bytes`` even for one target and one path point.
    """
    _check_model(model)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}, got {source!r}")
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {', '.join(map(repr, ATTENTION_MODES))}, got {attention!r}")
    if method == "attention" and contrast is not None:
        raise ValueError("contrast needs a method that scores the target (gradients or occlusion), not 'attention'")
    if generation_kwargs is not None and not isinstance(generation_kwargs, dict):
        raise TypeError(f"generation_kwargs must be a dict, got {type(generation_kwargs).__name__}")
    ig: dict[str, Any] = {}
    if method == "integrated_gradients":
        if rule not in IG_RULES:
            raise ValueError(f"rule must be one of {', '.join(map(repr, IG_RULES))}, got {rule!r}")
        steps, cap = check_options(rule, n_steps, tol, max_evals, "sum")
        ig = dict(rule=rule, steps=steps, cap=cap, tol=float(tol))
    # Generation and attribution in eval mode with untracked parameters, restored afterwards.
    with gradient_mode(model), hooks_fire(model):
        prompt_ids = _prompt_ids(prompt, tokenizer)
        vocab = getattr(model_config(model), "vocab_size", None)
        adaptive = ig.get("rule") == "adaptive"
        if target is None:
            if (
                isinstance(max_new_tokens, (int, np.integer))
                and not isinstance(max_new_tokens, bool)
                and max_new_tokens > 0
            ):
                # Refuse a request that cannot fit before generating (n is at most max_new_tokens).
                width = embedding_width(model)
                dtype = next(model.parameters()).dtype
                shape = (prompt_ids.numel() + int(max_new_tokens), int(width))
                _plan(model, shape, dtype, int(max_new_tokens), method, batch_size, max_bytes, adaptive)
            gen = _generate(model, prompt_ids, max_new_tokens, tokenizer, dict(generation_kwargs or {}))
        else:
            gen = _encode_text(target, tokenizer, "target") if isinstance(target, str) else _as_ids(target, "target")
            if (gen < 0).any() or (vocab is not None and (gen >= vocab).any()):
                raise ValueError(f"target ids must be in [0, {vocab}), got {gen.tolist()}")
        p, n = prompt_ids.numel(), gen.numel()
        foil = _foil(contrast, n, tokenizer, vocab)
        embedding = find_embedding(model, layer)
        device = next(model.parameters()).device
        ids = torch.cat([prompt_ids, gen])[None].to(device)
        t = p + n
        positions = torch.arange(p - 1, p - 1 + n)
        tgt = Target(
            "token",
            n,
            gen[None],
            positions[None],
            torch.ones(1, n, dtype=torch.bool),
            vocab=vocab,
            keep=n + 1 if _takes(model, "logits_to_keep") else None,
            length=t,
        )
        tgt.foil = None if foil is None else foil[None]
        n_source = p + n - 1 if source == "prompt+generated" else p
        region = torch.zeros(1, t, dtype=torch.bool, device=device)
        region[0, :n_source] = True
        if isinstance(baseline, (int, np.integer)) and not isinstance(baseline, bool):
            baseline = torch.full((1, t), int(baseline), dtype=torch.long)
        if method in ("saliency", "input_x_gradient", "attention"):
            baseline = "zeros"  # no baseline: every source (special tokens too) is scored
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        prep = prepare(model, batch, tokenizer=tokenizer, baseline=baseline, layer=embedding, attributable=region)
        shape = (int(prep.x.shape[1]), int(prep.x.shape[2]))
        group, rows = _plan(model, shape, prep.dtype, n, method, batch_size, max_bytes, adaptive)

        steps_scores = _step_scores(model, ids, positions, gen)
        if method == "attention":
            parts = [_attention_scores(model, ids, positions.to(device), attention, max_bytes)]
        else:
            parts = []
            for g0 in range(0, n, group):
                sub = _subset(tgt, slice(g0, min(n, g0 + group)), foil)
                if method == "occlusion":
                    parts.append(_occlusion_scores(model, prep, sub, rows, progress))
                else:
                    parts.append(_gradient_scores(method, prep, sub, rows, ig, progress))
        scores = torch.cat([q["scores"].float().cpu() for q in parts])[:, :n_source].numpy()
        for k in range(n):  # step k sees sources 0 .. p - 1 + k (causal): exactly 0 beyond
            scores[k, p + k :] = 0.0

        def joined(key: str) -> np.ndarray | None:
            if key not in parts[0]:
                return None
            return torch.cat([q[key].reshape(-1).float().cpu() for q in parts]).numpy().astype(np.float32)

        delta = joined("delta")
        value, base_value = joined("value"), joined("baseline_value")
        converged = None
        if delta is not None and value is not None and base_value is not None:
            converged = np.abs(delta) / np.maximum(np.abs(value - base_value), 1e-12) < tol
            _warn_zero_baseline(prep, converged, tol)
        run_ids = ids[0].cpu()
        tokens = token_strings(run_ids[None], tokenizer)[0]
        name = f"integrated_gradients/{rule}" if method == "integrated_gradients" else method
        if method == "attention":
            name = f"attention/{attention}"
        return GenerationAttribution(
            scores=np.ascontiguousarray(scores, dtype=np.float32),
            source_tokens=tokens[:n_source],
            target_tokens=tokens[p:],
            source_ids=run_ids[:n_source].numpy().astype(np.int64),
            target_ids=gen.numpy().astype(np.int64),
            prompt_length=p,
            step_scores=steps_scores,
            method=name,
            source=source,
            n_evals=int(sum(q["n_evals"] for q in parts)),
            delta=delta,
            value=value,
            baseline_value=base_value,
            converged=converged,
            contrast_ids=None if foil is None else foil.numpy().astype(np.int64),
        )
