"""Validation shared by every attention analysis: one place that turns what users pass (a Trace,
a list of per-layer (B, H, T, T) arrays or tensors, one (L, B, H, T, T) array) into checked
numpy arrays, so every function gives the same clear errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._internal.threads import resolve_n_jobs

FORMS = (
    "a Trace from llmdbg.capture(..., attentions=True), a sequence of per-layer (B, H, T, T) "
    "arrays or tensors, or one (L, B, H, T, T) array"
)


@dataclass(frozen=True)
class AttentionStack:
    """Checked attention maps of one stack of self-attention layers.

    Attributes
    ----------
    layers : list of numpy.ndarray
        One C-contiguous ``(B, H, T, T)`` float32 or float64 array per layer, bottom layer first
        (head-mean maps from ``reduce="head_mean"`` appear as ``H = 1``).
    mask : numpy.ndarray or None
        ``(B, T)`` bool, True for real tokens, or None when every token is real.
    tokens : list of list of str or None
        Token strings per sequence when known (from a Trace captured with a tokenizer).
    sinks : bool
        The maps come from a model with learned attention sinks: real rows sum to at most 1, the
        rest of each row's mass went to the sink (see :data:`SINK_FAMILIES`).
    """

    layers: list[np.ndarray]
    mask: np.ndarray | None
    tokens: list[list[str]] | None
    sinks: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        """(L, B, T)."""
        b, _, t, _ = self.layers[0].shape
        return len(self.layers), b, t


#: ``config.model_type`` of the transformers families whose attention adds a learned sink logit
#: per head to the softmax denominator (``s_aux``, ``module.sinks``; gpt-oss and its relatives).
#: The sink is a virtual key outside the sequence: it takes part of each row's mass, so the
#: stored rows sum to less than 1. A Trace of one of these families is read with ``sinks=True``.
SINK_FAMILIES = frozenset(
    {
        "gpt_oss",
        "deepseek_v4",
        "flint",
        "granite_swa",
        "granitemoe_swa",
        "hy_v4",
        "hy_v4_vl",
        "mimo_v2_flash",
        "openai_privacy_filter",
    }
)


def _trace_has_sinks(attentions: Any) -> bool:
    layout = getattr(attentions, "layout", None)
    return getattr(layout, "family", None) in SINK_FAMILIES


# Row-sum tolerance for maps whose every weight is a bfloat16 or float16 number: softmax rows
# computed and rounded in that dtype sum to 1 only within a few units of its precision
# (bf16: 2**-8, e.g. 0.998047 seen on real checkpoints).
_LOW_PRECISION_ATOL = {"bfloat16": 2.0**-8 * 4, "float16": 2.0**-11 * 4}


def _rounding_tolerance(a: np.ndarray) -> float:
    """The row-sum tolerance of the lowest-precision dtype that holds every value of ``a`` exactly
    (0 for maps that are genuinely float32/float64)."""
    if a.dtype != np.float32:
        return 0.0
    bits = a.view(np.uint32)
    if not (bits & np.uint32(0xFFFF)).any():  # the low 16 bits of a bfloat16 widened to float32
        return _LOW_PRECISION_ATOL["bfloat16"]
    if np.array_equal(a.astype(np.float16).astype(np.float32), a):
        return _LOW_PRECISION_ATOL["float16"]
    return 0.0


def _to_numpy(x: Any, what: str) -> np.ndarray:
    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        return (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{what} must be numeric arrays; expected {FORMS}")
    return arr


def stack_attention_modules(layout: Any, stack: str | None) -> list[str]:
    """The self-attention modules of one stack of ``layout``, bottom layer first.

    ``stack`` is required for encoder-decoder models (each stack's self-attention is analysed on
    its own; cross-attention is not propagated) and must name an existing stack otherwise.
    """
    names = list(layout.stacks)
    if stack is None and len(names) > 1:
        raise ValueError(
            f"the model has {' and '.join(names)} stacks; pass stack='{names[0]}' or "
            f"stack='{names[-1]}' (each stack's self-attention is rolled out on its own; "
            "cross-attention is exposed in the Trace but not rolled out)"
        )
    if stack is not None and stack not in layout.stacks:
        raise ValueError(f"stack must be one of {names}, got {stack!r}")
    blocks = set(layout.stacks[stack]) if stack else set(layout.blocks)
    # attention_blocks names each attention module's own block (hybrids have fewer attention
    # modules than blocks, so pairing with layout.blocks would misassign them).
    owners = layout.attention_blocks or layout.blocks
    return [a for b, a in zip(owners, layout.attention, strict=False) if b in blocks]


def query_rows(rows: Any, t: int) -> np.ndarray | None:
    """Query indices as an int64 array in [0, T) (negative ones count from the end)."""
    if rows is None:
        return None
    arr = np.asarray(rows)
    if arr.ndim == 0:
        raise TypeError(f"rows must be a sequence of query indices, e.g. rows=[{rows}]; got {rows!r}")
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"rows must be integers, got {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"rows must be a 1-D sequence of query indices, got shape {arr.shape}")
    bad = (arr < -t) | (arr >= t)
    if bad.any():
        raise ValueError(f"rows must be in [-{t}, {t}) for sequences of T = {t} tokens; got {arr[bad][0]}")
    return np.ascontiguousarray(np.where(arr < 0, arr + t, arr), dtype=np.int64)


def _from_trace(trace: Any, stack: str | None) -> tuple[list[Any], Any, Any]:
    layout = trace.layout
    modules = list(trace.attention_modules)
    if not modules:
        raise ValueError("this Trace holds no attention maps: capture with attentions=True")
    if layout is not None:
        wanted = stack_attention_modules(layout, stack)
    elif stack is not None:
        raise ValueError(f"stack={stack!r} needs a model llmdbg.find_layout understands")
    else:
        wanted = modules
    maps = [trace._array(m + ":attn") for m in wanted if m in modules]
    if not maps:
        raise ValueError("this Trace holds no self-attention maps for the requested stack")
    mask = trace.attention_mask
    if stack == "decoder":
        mask = None  # the recorded mask belongs to the encoder input
    return maps, mask, trace.tokens if stack != "decoder" else None


def _row_sums(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums and minima over the last axis, in float64, in one parallel pass of the C++ core
    (numpy's isfinite, sum and min would cost about as much as a whole rollout)."""
    from .. import _core

    return _core.attention_row_sums(a, num_threads=resolve_n_jobs(None), with_min=True)


def attention_stack(
    attentions: Any,
    *,
    attention_mask: Any = None,
    stack: str | None = None,
    renormalize: bool = False,
    atol: float = 1e-3,
    name: str = "attentions",
    check_negative: bool = True,
    sinks: bool | None = None,
) -> AttentionStack:
    """Check and normalise attention maps for the analysis functions.

    Raises ``ValueError`` for a wrong number of dimensions or mismatched shapes (naming the
    accepted forms), non-square maps, sequence lengths that differ between layers, NaN/Inf
    values, negative weights, rows of real queries that do not sum to 1 within the tolerance
    (unless ``renormalize=True``, which divides every such row by its sum), and a bad mask.
    ``TypeError`` for non-numeric input.

    The tolerance is ``atol`` (1e-3), widened for maps whose every weight is a bfloat16 (float16)
    number, i.e. eager maps of a bf16 (fp16) model: a softmax computed in float32 and rounded to
    that dtype carries a relative error of at most its unit roundoff u (bf16: 2**-8, fp16:
    2**-11) in every weight, so a row's sum is off by at most u whatever T; 4u is accepted.

    ``sinks`` (None: True for a Trace of a :data:`SINK_FAMILIES` model, else False) accepts real
    rows summing to anything in [0, 1] (+ the tolerance): the missing mass went to the model's
    learned sink, a virtual key outside the sequence. Rows are kept as they are, not
    renormalised, so rollout and flow treat that mass the way :func:`llmdbg.streaming_rollout`
    does (see :func:`llmdbg.attention_rollout`).
    """
    from ..tracing.trace import Trace  # local: the trace module imports numpy only, no cycle

    if sinks is not None and not isinstance(sinks, (bool, np.bool_)):
        raise TypeError(f"sinks must be True, False or None (detect from a Trace), got {sinks!r}")
    has_sinks = bool(sinks) if sinks is not None else _trace_has_sinks(attentions)
    tokens = None
    if isinstance(attentions, Trace):
        raw, trace_mask, tokens = _from_trace(attentions, stack)
        attention_mask = trace_mask if attention_mask is None else attention_mask
    elif stack is not None:
        raise ValueError("stack= only applies to a Trace; pass that stack's maps directly instead")
    elif isinstance(attentions, (list, tuple)):
        raw = list(attentions)
    else:
        arr = _to_numpy(attentions, name)
        if arr.ndim != 5:
            raise ValueError(f"{name} must be {FORMS}; got one array of shape {arr.shape}")
        raw = list(arr)
    if not raw:
        raise ValueError(f"{name} is empty; expected {FORMS}")

    layers: list[np.ndarray] = []
    row_sums: list[np.ndarray] = []
    for i, a in enumerate(raw):
        a = _to_numpy(a, name)
        if a.ndim == 3:  # head-mean maps: one fused head
            a = a[:, None]
        if a.ndim != 4:
            raise ValueError(
                f"{name}[{i}] has shape {a.shape}; expected (B, H, T, T) per layer "
                f"(or (B, T, T) head-mean maps), i.e. {FORMS}"
            )
        if a.shape[-1] != a.shape[-2]:
            raise ValueError(
                f"{name}[{i}] has shape {a.shape}: maps must be square (T, T) "
                "self-attention; cross-attention is not supported here"
            )
        if a.dtype.kind != "f":
            raise TypeError(f"{name}[{i}] must be floating point, got {a.dtype}")
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float32)
        if layers and (a.shape[0], a.shape[2]) != (layers[0].shape[0], layers[0].shape[2]):
            raise ValueError(
                f"{name}[{i}] has shape {a.shape} but layer 0 has "
                f"{layers[0].shape}: batch size and T must agree across layers"
            )
        a = np.ascontiguousarray(a)
        sums, mins = _row_sums(a)  # a row holding NaN/Inf sums to NaN/Inf
        if not np.isfinite(sums).all() and not np.isfinite(a).all():
            raise ValueError(f"{name}[{i}] contains NaN or Inf values")
        # Rows of +x and -x can sum to 1 too; rollout of such "weights" is meaningless.
        low = float(mins.min()) if check_negative and mins.size else 0.0
        if low < -atol:
            bi, hi, qi, ki = np.argwhere(a < -atol)[0]
            raise ValueError(
                f"{name}[{i}] weights must be >= 0: layer {i} (batch {bi}, head {hi}, query {qi}, key {ki}) "
                f"is {a[bi, hi, qi, ki]:.6g}; attention weights are probabilities"
            )
        layers.append(a)
        row_sums.append(sums)

    b, _, t, _ = layers[0].shape
    mask = None
    if attention_mask is not None:
        mask = _to_numpy(attention_mask, "attention_mask")
        if mask.shape != (b, t):
            raise ValueError(f"attention_mask has shape {mask.shape}; expected (B, T) = {(b, t)}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
        mask = mask.astype(bool)
        if not mask.any(axis=1).all():
            raise ValueError("attention_mask has a sequence with no real token")
        if mask.all():
            mask = None

    for i, a in enumerate(layers):
        sums = row_sums[i]  # (B, H, T)
        real = np.ones((b, t), bool) if mask is None else mask
        # With sinks a row may give up to all of its mass to the sink: only sums above 1 are off.
        off = (sums - 1.0) if has_sinks else np.abs(sums - 1.0)
        bad = off > atol
        bad &= real[:, None, :]
        if bad.any():  # maps of a bf16/fp16 model carry that dtype's rounding in every weight
            bad &= off > max(atol, _rounding_tolerance(a))
        if bad.any():
            if not renormalize:
                bi, hi, qi = np.argwhere(bad)[0]
                low = sums[bi, hi, qi] < 1.0 and not has_sinks
                raise ValueError(
                    f"{name}[{i}] row (batch {bi}, head {hi}, query {qi}) sums to "
                    f"{sums[bi, hi, qi]:.6g}, not {'at most ' if has_sinks else ''}1; pass renormalize=True to "
                    "divide rows by their sums"
                    + (" (or sinks=True for maps of a model with learned attention sinks, e.g. gpt-oss)" if low else "")
                )
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = np.where(sums > 0, 1.0 / sums, 0.0)
            layers[i] = np.ascontiguousarray(a * scale[..., None].astype(a.dtype))
    return AttentionStack(layers, mask, tokens, has_sinks)
