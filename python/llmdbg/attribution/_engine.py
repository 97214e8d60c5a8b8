"""Evaluate the model at a chunk of points along attribution paths: one forward over K points of
R examples (K·R rows, the embedding output replaced by the path), the target values, and their
gradients with respect to the path points (closed form at the LM head input for token targets, then
one backward per target through the body on the shared graph).
Also the chunk sizing shared by every method."""

from __future__ import annotations

import logging
import math
import os
import types
from collections.abc import Callable
from typing import Any

import torch

from ._activations import derivative_once
from ._head import cotangents, output_head, tap
from ._inputs import Prepared, model_config, replaced_output
from ._targets import Target

#: Token rows per forward on CPU when batch_size="auto": throughput saturates well below this,
#: and peak memory stays proportional to it rather than to n_steps (Captum's whole-path batch).
CPU_TOKENS_PER_CHUNK = 4096


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def _bytes_per_row(model: torch.nn.Module, t: int, n_out: int, dtype: torch.dtype) -> int:
    """A rough upper estimate of forward+backward activation memory of one row of T tokens."""
    cfg = model_config(model)
    d = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None) or getattr(cfg, "n_embd", 0) or 1024)
    layers = int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 0) or 12)
    heads = int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 0) or 16)
    elem = torch.finfo(dtype).bits // 8
    per_token = layers * (20 * d + 3 * heads * t) * elem
    return int(per_token * t * max(1.0, math.sqrt(n_out)))


def rows_per_chunk(model: torch.nn.Module, prep: Prepared, n_out: int, batch_size: Any) -> int:
    """Model rows (path points × examples) per forward."""
    if batch_size != "auto":
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
        return batch_size
    t = prep.ids.shape[1]
    budget = _available_bytes(prep.device) // (2 if prep.device.type == "cuda" else 4)
    rows = max(1, budget // max(1, _bytes_per_row(model, t, n_out, prep.dtype)))
    if prep.device.type != "cuda":
        rows = min(rows, max(1, CPU_TOKENS_PER_CHUNK // t))
    return int(rows)


def expand_batch(batch: dict[str, Any], rows: torch.Tensor, k: int, n_examples: int) -> dict[str, Any]:
    """Every per-example tensor of ``batch`` indexed by ``rows`` and repeated K times (step-major)."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n_examples:
            picked = value[rows.to(value.device)]
            out[key] = picked.repeat(k, *([1] * (picked.dim() - 1))) if k > 1 else picked
        else:
            out[key] = value
    return out


Fold = Callable[[int, torch.Tensor], None]


def vjp(values: torch.Tensor, point: torch.Tensor, fold: Fold | None = None) -> torch.Tensor | None:
    """Gradients of each of the G columns of ``values`` (N, G) w.r.t. ``point``: (G, *point.shape)."""
    g = values.shape[1]
    eye = torch.eye(g, dtype=values.dtype, device=values.device)
    return batched_vjp(values, eye[:, None, :].expand(g, *values.shape), point, fold)


def batched_vjp(
    out: torch.Tensor, cotangents: torch.Tensor, point: torch.Tensor, fold: Fold | None = None
) -> torch.Tensor | None:
    """Σ cotangents[j] · ∂out/∂point for each j: (G, *point.shape).

    With ``fold``, each gradient is handed to ``fold(j, grad)`` as soon as it exists and nothing is
    returned: the G gradients are never held at once (long prompts).

    G = 1 is one backward. G > 1 runs one backward per cotangent on the retained graph: vmap over
    the backward (``is_grads_batched``) hits slow fallbacks (concatenations) in attention and
    layer-norm backward on CPU; on the benchmark's 16-target GPT-2 case it took 1.35x the CPU time
    of the loop. ``LLMDBG_IG_VJP=batched`` selects it (a batching failure falls back to the loop).
    """
    g = cotangents.shape[0]
    if g == 1:
        (grad,) = torch.autograd.grad(out, point, grad_outputs=cotangents[0])
        return grad[None] if fold is None else fold(0, grad)
    if os.environ.get("LLMDBG_IG_VJP", "loop") == "batched":
        try:
            (grads,) = torch.autograd.grad(
                out, point, grad_outputs=cotangents.contiguous(), is_grads_batched=True, retain_graph=True
            )
            if fold is None:
                return grads
            for j in range(g):
                fold(j, grads[j])
            return None
        except RuntimeError as err:  # an op without a batching rule
            logging.getLogger("llmdbg").debug("batched VJP unavailable (%s); one backward per target", err)
    kept: torch.Tensor | None = None
    if fold is None:
        kept = torch.empty((g, *point.shape), dtype=point.dtype, device=point.device)
    for j in range(g):
        (grad,) = torch.autograd.grad(out, point, grad_outputs=cotangents[j], retain_graph=j < g - 1)
        if kept is not None:
            kept[j] = grad
        elif fold is not None:
            fold(j, grad)
    return kept


def values_and_grads(
    prep: Prepared,
    target: Target,
    point: torch.Tensor,
    rows: torch.Tensor,
    k: int,
    *,
    resolve_at: int | None = None,
    fold: Fold | None = None,
) -> tuple[torch.Tensor, Any]:
    """Target values (K·R, G) float32 at ``point`` and their gradients (G, *point.shape), or with
    ``fold`` each target's gradient handed to ``fold(j, grad)`` (then None is returned for them).

    Token log-probabilities of language models take the closed-form gradient at the LM head's
    input (see ``_head``) so autograd differentiates only the body; everything else goes through
    autograd end to end.
    """
    head = output_head(prep.model, target)
    # G > 1 targets: G backward passes share this forward; differentiate activations once here.
    with tap(head) as seen, derivative_once(prep.model, enabled=target.n_out > 1):
        vals, outputs = forward_rows(
            prep.model, prep, target, point, rows, k, resolve_at=resolve_at, return_outputs=True
        )
    closed = cotangents(target, outputs, rows.repeat(k), head, seen) if head is not None else None
    del outputs, seen
    if closed is None:
        return vals.detach() if fold is not None else vals, vjp(vals, point, fold)
    h, cot = closed
    return vals.detach(), batched_vjp(h, cot, point, fold)


def forward_rows(
    model: torch.nn.Module,
    prep: Prepared,
    target: Target,
    point: torch.Tensor,
    rows: torch.Tensor,
    k: int,
    *,
    batch: dict[str, Any] | None = None,
    resolve_at: int | None = None,
    return_outputs: bool = False,
) -> Any:
    """Run the model on ``point`` (K·R, T, d) as the embedding output for examples ``rows`` (R,),
    K points each (step-major). Returns the target values (K·R, G) float32.

    ``resolve_at``: index of the point that is the input itself (α = 1), used to fix "predicted"
    targets on first use. ``return_outputs``: also return the model outputs, ``(values, outputs)``.
    """
    n_examples = prep.ids.shape[0]
    kwargs = expand_batch(batch if batch is not None else prep.batch, rows, k, n_examples)
    with replaced_output(prep.embedding) as slot:
        slot["value"] = point
        outputs = prep.model(**kwargs, **target.model_kwargs())
        if not slot["fired"]:
            raise RuntimeError(
                "the attributed embedding was not called by the model's forward; pass "
                "layer=<the module that embeds input_ids>"
            )
    all_rows = rows.repeat(k)
    if target.needs(rows):
        if resolve_at is None:
            raise RuntimeError("internal: a predicted target must be resolved on the input itself")
        r = rows.shape[0]
        sl = slice(resolve_at * r, (resolve_at + 1) * r)
        target.resolve(_slice_outputs(outputs, sl), rows)
    values = target(outputs, all_rows, kwargs)
    return (values, outputs) if return_outputs else values


def _slice_outputs(outputs: Any, sl: slice) -> Any:
    logits = outputs.logits if hasattr(outputs, "logits") else outputs
    return types.SimpleNamespace(logits=logits[sl])
