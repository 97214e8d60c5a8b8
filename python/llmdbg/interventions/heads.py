"""Head ablation and head importance, by gating each head's output before the output projection.

Every attention layer ends in a projection whose input is the concatenation of the head outputs,
(B, T, H · d). A forward pre-hook on that projection multiplies head h's slice by a gate ξ_h
(ablation: 0, or replacement by the head's mean output), so this works with every attention
kernel, SDPA and flash included (they reject ``head_mask``). Head importance (Michel, Levy &
Neubig 2019, "Are Sixteen Heads Really Better than One?") is the gradient of the loss with
respect to ξ_h at ξ = 1: I_h = Σ_batches |∂L/∂ξ_h| / tokens, then normalised per layer to unit
L2 norm and min-max over all heads, as in the authors' ``run_bertology.py``.

Layers are attention layers: on a hybrid (Jamba, Bamba, Qwen3-Next, ...) layer ``i`` is the
``i``-th attention layer (``find_layout(model).attention_blocks[i]``), and state-space models
(Mamba) raise. A projection wrapped by LoRA is gated at its input, so the adapter sees the gated
heads too. Compiled models run eagerly while the hooks are in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .._internal.inputs import as_inputs, token_shape
from .._internal.modes import device_of, eval_mode
from .._internal.progress import progress_bar
from ..adapters.heads import head_geometry
from ..adapters.layout import check_module, find_layout
from ..adapters.modules import hooks_fire

__all__ = ["AblationResult", "HeadImportance", "ablate", "ablation", "head_importance"]


@dataclasses.dataclass
class AblationResult:
    """Output of :func:`ablate`.

    Attributes
    ----------
    heads : list of (layer, head)
    mode : str
    logits, baseline_logits : numpy.ndarray of float32, shape (B, T, V)
        Model output with and without the ablation.
    metric, baseline_metric : float or None
        ``metric(outputs)`` of each run when a metric was given.
    """

    heads: list[tuple[int, int]]
    mode: str
    logits: np.ndarray
    baseline_logits: np.ndarray
    metric: float | None = None
    baseline_metric: float | None = None

    @property
    def kl(self) -> np.ndarray:
        """(B, T) KL(baseline ‖ ablated) of the next-token distributions, in nats (float64)."""
        a = torch.log_softmax(torch.as_tensor(self.baseline_logits, dtype=torch.float64), -1)
        b = torch.log_softmax(torch.as_tensor(self.logits, dtype=torch.float64), -1)
        return (a.exp() * (a - b)).sum(-1).numpy()


@dataclasses.dataclass
class HeadImportance:
    """Output of :func:`head_importance`.

    Attributes
    ----------
    scores : numpy.ndarray of float64, shape (L, H)
        Normalised importance (per-layer L2, then min-max over all heads) or raw if not normalised.
    raw : numpy.ndarray of float64, shape (L, H)
        Σ |∂L/∂ξ_h| / tokens.
    """

    scores: np.ndarray
    raw: np.ndarray

    @property
    def ranking(self) -> list[tuple[int, int]]:
        """All heads as (layer, head), most important first."""
        order = np.argsort(-self.scores, axis=None, kind="stable")
        return [
            (int(np.unravel_index(k, self.scores.shape)[0]), int(np.unravel_index(k, self.scores.shape)[1]))
            for k in order
        ]

    def plot(self, **kwargs: Any):
        """Layers × heads heatmap (see :func:`llmdbg.plot.head_importance`)."""
        from ..plot.interventions import head_importance as plot_importance

        return plot_importance(self, **kwargs)


def _check_heads(heads: Any, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    out = []
    for item in heads:
        try:
            layer, head = item
        except (TypeError, ValueError):
            raise TypeError(f"heads must be (layer, head) pairs, got {item!r}") from None
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(
                f"head ({layer}, {head}) is out of range: the model has {n_layers} attention layers of "
                f"{n_heads} heads (layers count attention layers only)"
            )
        out.append((int(layer), int(head)))
    return out


@contextlib.contextmanager
def ablation(
    model: torch.nn.Module,
    heads: Sequence[tuple[int, int]],
    *,
    mode: str = "zero",
    means: np.ndarray | torch.Tensor | None = None,
    gates: torch.Tensor | None = None,
) -> Iterator[None]:
    """Run the body with heads ablated (pre-hooks removed on exit, also on exceptions).

    Parameters
    ----------
    heads : sequence of (layer, head)
    mode : "zero" or "mean"
        Zero the head outputs, or replace them with ``means``.
    means : array of shape (L, H, d), required for ``mode="mean"``
        Mean output of every head (see :func:`head_means`).
    gates : tensor of shape (L, H), optional
        Multiply every head output by its gate (used by :func:`head_importance`); applied
        before the ablation.
    """
    names, n_heads, d = head_geometry(model)
    heads = _check_heads(heads, len(names), n_heads)
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    if mode == "mean" and heads:
        if means is None:
            raise ValueError("mode='mean' needs means of shape (L, H, d)")
        means = torch.as_tensor(means)
        if tuple(means.shape) != (len(names), n_heads, d):
            raise ValueError(f"means has shape {tuple(means.shape)}; expected ({len(names)}, {n_heads}, {d})")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def hook_for(layer: int):
        hs = by_layer.get(layer, [])

        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            y = x.reshape(*x.shape[:-1], n_heads, d)
            if gates is not None:
                y = y * gates[layer].to(y.dtype)[:, None]
            if hs:
                y = y.clone() if gates is None else y
                y[..., hs, :] = 0 if mode == "zero" else torch.as_tensor(means[layer, hs]).to(y.dtype).to(y.device)  # type: ignore[index]
            y = y.reshape(x.shape)
            return ((y, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": y})

        return hook

    layers = sorted(by_layer) if gates is None else range(len(names))
    handles = []
    try:
        for layer in layers:
            handles.append(
                model.get_submodule(names[layer]).register_forward_pre_hook(hook_for(layer), with_kwargs=True)
            )
        with hooks_fire(model):
            yield
    finally:
        for h in handles:
            h.remove()


def head_means(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """(L, H, d) mean output of every head over the batch's real (non-padding) tokens, float32.

    An encoder-decoder's decoder layers average over the decoder tokens
    (``decoder_attention_mask``), its encoder layers over the input tokens."""
    names, n_heads, d = head_geometry(model)
    decoder = _decoder_layers(model)
    sums: dict[int, torch.Tensor] = {}

    def keep(layer):
        mask = inputs.get("decoder_attention_mask" if layer in decoder else "attention_mask")

        def hook(module, args, kwargs):
            x = (args[0] if args else kwargs["hidden_states"]).detach().float()
            w = torch.ones(x.shape[:2], device=x.device) if mask is None else mask.to(x.device).float()
            sums[layer] = (x * w[..., None]).sum((0, 1)).view(n_heads, d) / w.sum()

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(keep(i), with_kwargs=True) for i, n in enumerate(names)]
    try:
        with eval_mode(model), torch.no_grad(), hooks_fire(model):
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([sums[i] for i in range(len(names))])


def _decoder_layers(model: torch.nn.Module) -> set[int]:
    """Attention-layer indices in an encoder-decoder's decoder stack (empty for one stack)."""
    layout = find_layout(model)
    if not {"encoder", "decoder"} <= set(layout.stacks):
        return set()
    decoder = set(layout.stacks["decoder"])
    return {i for i, block in enumerate(layout.attention_blocks) if block in decoder}


def ablate(
    model: torch.nn.Module,
    inputs: Any,
    heads: Sequence[tuple[int, int]],
    *,
    mode: str = "zero",
    metric: Callable[[Any], Any] | None = None,
    tokenizer: Any = None,
    progress: bool = True,
) -> AblationResult:
    """Run ``inputs`` with and without the listed heads.

    Parameters
    ----------
    model : transformers model (any attention implementation)
    inputs : dict of tensors, input_ids (B, T), or text with ``tokenizer``
    heads : sequence of (layer, head)
        Empty: nothing changes (the ablated run equals the baseline exactly).
    mode : "zero" or "mean"
        Zero each head's output, or replace it with its mean over this batch's real tokens.
    metric : callable, optional
        ``metric(outputs) -> scalar`` evaluated on both runs.
    tokenizer : transformers tokenizer, optional
        Encodes text ``inputs``.
    progress : bool
        Show a progress bar (off when output is not interactive).

    Returns
    -------
    AblationResult

    Raises
    ------
    ValueError
        A head out of range, an unknown mode.
    """
    check_module(model)
    names, n_heads, _ = head_geometry(model)
    heads = _check_heads(heads, len(names), n_heads)
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    inputs = as_inputs(inputs, tokenizer, device=device_of(model))
    means = head_means(model, inputs) if mode == "mean" and heads else None

    def run():
        out = model(**inputs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        m = None if metric is None else _scalar(metric(out))
        return logits.float().cpu().numpy(), m

    with eval_mode(model), torch.no_grad(), progress_bar(progress, 2, "ablate", unit="run") as bar:
        base, base_m = run()
        bar.update(1)
        with ablation(model, heads, mode=mode, means=means):
            abl, abl_m = run()
        bar.update(1)
    return AblationResult(
        heads=heads, mode=mode, logits=abl, baseline_logits=base, metric=abl_m, baseline_metric=base_m
    )


def _scalar(v: Any) -> float:
    return float(v.float().mean()) if isinstance(v, torch.Tensor) else float(np.mean(v))


def lm_loss(outputs: Any, inputs: dict) -> torch.Tensor:
    """Mean next-token cross-entropy over real tokens (the default loss of head_importance)."""
    logits = outputs.logits[:, :-1]
    logits = logits if logits.dtype == torch.float64 else logits.float()
    target = inputs["input_ids"][:, 1:]
    mask = inputs.get("attention_mask")
    valid = torch.ones_like(target, dtype=torch.bool) if mask is None else mask[:, 1:].bool()
    return torch.nn.functional.cross_entropy(logits[valid], target[valid])


def head_importance(
    model: torch.nn.Module,
    inputs: Any,
    *,
    loss: Callable[[Any, dict], torch.Tensor] | None = None,
    normalize: bool = True,
    tokenizer: Any = None,
    progress: bool = True,
) -> HeadImportance:
    """Importance of every attention head (Michel et al. 2019).

    Parameters
    ----------
    model : transformers model
    inputs : one batch (dict of tensors, input_ids, text with ``tokenizer``) or a list of batches
    loss : callable, optional
        ``loss(outputs, inputs) -> scalar tensor``. Default: ``outputs.loss`` when the batch has
        ``labels``, else the mean next-token cross-entropy of a causal LM (:func:`lm_loss`).
    normalize : bool
        Per-layer L2 normalisation, then min-max over all heads (as the reference code).

    Returns
    -------
    HeadImportance
        ``scores`` and ``raw`` of shape (L, H), float64.
    """
    from tqdm.auto import tqdm

    check_module(model)
    names, n_heads, _ = head_geometry(model)
    batches = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], str) else [inputs]
    dev = device_of(model)
    total = torch.zeros(len(names), n_heads, dtype=torch.float64)
    tokens = 0
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with eval_mode(model):
            for batch in tqdm(batches, desc="head importance", disable=None if progress else True, leave=False):
                batch = as_inputs(batch, tokenizer, device=dev)
                gates = torch.ones(len(names), n_heads, device=dev, requires_grad=True)
                with ablation(model, [], gates=gates):
                    out = model(**batch)
                    value = (
                        loss(out, batch)
                        if loss is not None
                        else (out.loss if getattr(out, "loss", None) is not None else _default_loss(model, out, batch))
                    )
                (grad,) = torch.autograd.grad(value, gates)
                total += grad.abs().double().cpu()
                mask = batch.get("attention_mask")
                tokens += int(mask.sum()) if mask is not None else int(np.prod(token_shape(batch)))
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(grads_before[n])
    raw = (total / max(tokens, 1)).numpy()
    scores = raw.copy()
    if normalize:
        norm = np.linalg.norm(scores, axis=1, keepdims=True)
        scores = scores / np.where(norm > 0, norm, 1.0)
        lo, hi = scores.min(), scores.max()
        scores = (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)
    return HeadImportance(scores=scores, raw=raw)


def _default_loss(model, out, batch):
    if not hasattr(out, "logits") or "input_ids" not in batch:
        raise ValueError(f"{type(model).__name__}: no default loss; pass labels in the inputs or loss=callable")
    from ..adapters.unembedding import find_unembedding

    if find_unembedding(model).kind != "causal":
        raise ValueError("head_importance: a masked LM needs labels in the inputs or loss=callable")
    return lm_loss(out, batch)
