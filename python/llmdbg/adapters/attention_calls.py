"""Recording the queries and keys that a transformers model hands its own attention kernel.

transformers >= 5 dispatches every attention call through ``ALL_ATTENTION_FUNCTIONS``, a mapping
from the implementation name in the config (``"sdpa"``, ``"flash_attention_2"``, ``"eager"``, ...)
to a function ``f(module, query, key, value, attention_mask, **kwargs)``. While
:func:`recording_attention` is active, the entry of the model's implementation is replaced by a
dispatcher that, for the modules being recorded, passes the call to a recorder and then to the
original function with the very same arguments: the model's outputs are bit for bit those of an
unrecorded run. Calls from any other module (another model in the process) go straight through.

Why the entry is replaced rather than a new name registered (as ``AttentionInterface.register``
with ``model.set_attn_implementation(new_name)`` would do): transformers builds masks per
implementation name and tests the name in several places (``"flash" in name`` for packed
sequences, ``== "sdpa"`` for causal-mask skipping), so a new name changes the masks the model
builds; keeping the name keeps every one of those decisions. The entry is installed once per
name with a reference count, so nested and concurrent recordings on different models compose,
and the original is restored when the last one ends, also on exceptions.

:func:`kernel_problem` turns a recorded call into the exact softmax problem the kernel solved:
queries, keys, scaling, soft-cap, causal structure, sliding window, mask or position bias, and
sink logits, following each implementation's own rules (see the function).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import re
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "AttentionCall",
    "KernelProblem",
    "implementation_of",
    "kernel_problem",
    "recording_attention",
    "recording_unsupported_reason",
    "reported_problem",
]

# Implementations whose semantics kernel_problem reproduces. flex_attention passes a BlockMask
# (a compressed block-sparse mask with a Python mask_mod) that cannot be read back exactly.
_SUPPORTED = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4")


@dataclasses.dataclass
class AttentionCall:
    """One attention call as the kernel received it.

    ``query`` is ``(B, H_q, T_q, d)`` after rotary embedding; ``key`` ``(B, H_kv, T_k, d)``
    before the grouped-query repeat (query head ``h`` reads key head ``h // (H_q / H_kv)``);
    ``mask`` is whatever the model passed (additive float, boolean, or None); ``kwargs`` are the
    remaining keyword arguments (``scaling``, ``sliding_window``, ``softcap``, ``s_aux``,
    ``position_bias``, ``is_causal``, ...)."""

    module: nn.Module
    name: str
    layer: int
    implementation: str
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    kwargs: dict[str, Any]


@dataclasses.dataclass
class KernelProblem:
    """The softmax a recorded call computed, in the form the recompute kernels take.

    For query row ``i`` (absolute position ``i + offset``) and key ``j``:
    ``w = (q_i · k_j) * scaling``, then ``softcap * tanh(w / softcap)`` when ``softcap > 0``,
    then ``+ add_mask[b, h, i, j]``; key ``j`` is excluded when ``causal`` and
    ``j > i + offset``, when ``window > 0`` and ``j <= i + offset - window``, or where
    ``bool_mask`` is False; ``sinks[h]`` joins the softmax denominator only. Masks keep size-1
    batch and head dimensions (broadcast), and are never expanded."""

    query: torch.Tensor  # (B, Hq, Tq, d) float32, contiguous
    key: torch.Tensor  # (B, Hkv, Tk, d) float32, contiguous
    scaling: float
    softcap: float = 0.0
    causal: bool = False
    window: int = 0
    offset: int = 0
    bool_mask: torch.Tensor | None = None  # (1|B, 1|Hq, Tq, Tk) bool
    add_mask: torch.Tensor | None = None  # (1|B, 1|Hq, Tq, Tk) float32
    sinks: torch.Tensor | None = None  # (Hq,) float32

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, H_q, T_q, T_k)."""
        b, h, tq, _ = self.query.shape
        return b, h, tq, self.key.shape[2]


def implementation_of(model: nn.Module) -> str | None:
    """The attention implementation name of a transformers model's config, or None."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


def _attention_module_calls_interface(module: nn.Module) -> bool:
    """Whether the module's forward dispatches through ALL_ATTENTION_FUNCTIONS (read from its
    source; modules without readable source are assumed to, and checked after the forward)."""
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return True
    return "ALL_ATTENTION_FUNCTIONS" in source or "attention_interface" in source


def _passes_token_sinks(module: nn.Module) -> bool:
    """Whether the module hands the kernel a ``sinks=`` argument (per-query sink logits), rather
    than the per-head ``s_aux`` that :func:`kernel_problem` reads."""
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return False
    return re.search(r"\bsinks\s*=", source) is not None


def recording_unsupported_reason(model: nn.Module, modules: dict[str, nn.Module]) -> str | None:
    """Why the attention calls of ``modules`` cannot be recorded, or None when they can."""
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: F401
    except ImportError:  # pragma: no cover - transformers < 5
        return "this transformers version has no AttentionInterface"
    impl = implementation_of(model)
    if impl is None:
        return f"{type(model).__name__} has no config._attn_implementation"
    if impl not in _SUPPORTED:
        return (
            f"{type(model).__name__} runs attention_implementation={impl!r}, whose mask cannot be read back "
            f"exactly (supported: {', '.join(_SUPPORTED)})"
        )
    for name, module in modules.items():
        if not _attention_module_calls_interface(module):
            return (
                f"{type(module).__name__} ({name}) computes attention itself instead of calling "
                "transformers' AttentionInterface"
            )
        if _passes_token_sinks(module):
            return (
                f"{type(module).__name__} ({name}) passes its own sink logits ('sinks', one per query in "
                "Inkling2) to the attention kernel, which the recompute kernels do not model"
            )
        if impl == "eager" and _eager_function(module) is None:
            return f"{type(module).__name__} ({name}) has no module-level eager_attention_forward to delegate to"
    return None


def _eager_function(module: nn.Module) -> Callable | None:
    """The eager attention function of a module's modeling file (what ``get_interface("eager",
    eager_attention_forward)`` falls back to there)."""
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


# -- the dispatcher -------------------------------------------------------------------------------

_LOCK = threading.Lock()
# implementation name -> [dispatcher, original entry or _ABSENT, reference count]
_INSTALLED: dict[str, list[Any]] = {}
# id(attention module) -> (module, recorder); recorder(module, query, key, value, mask, kwargs)
_RECORDERS: dict[int, tuple[nn.Module, Callable[..., None]]] = {}
_ABSENT = object()


def _make_dispatcher(implementation: str, original: Any) -> Callable[..., Any]:
    def dispatch(
        module: nn.Module, query: Any, key: Any, value: Any, attention_mask: Any, *args: Any, **kwargs: Any
    ) -> Any:
        entry = _RECORDERS.get(id(module))
        if implementation == "eager" or original is _ABSENT:
            target = _eager_function(module)
            if target is None:  # recording_unsupported_reason refuses recorded modules of this kind
                raise RuntimeError(
                    f"llmdbg: {type(module).__name__} has no eager_attention_forward in its modeling file"
                )
        else:
            target = original
        after = None
        if entry is not None and entry[0] is module:
            after = entry[1](module, query, key, value, attention_mask, kwargs)
        output = target(module, query, key, value, attention_mask, *args, **kwargs)
        if after is not None:
            after(output)
        return output

    dispatch.__llmdbg_original__ = original  # type: ignore[attr-defined]
    return dispatch


@contextlib.contextmanager
def recording_attention(
    model: nn.Module, modules: dict[str, nn.Module], recorder: Callable[[AttentionCall], Any]
) -> Iterator[None]:
    """Within the block, ``recorder`` receives an :class:`AttentionCall` for every attention call
    of ``modules`` (qualified name -> module, in layer order) before the model's own kernel runs.
    When it returns a callable, that callable receives the kernel's return value afterwards.

    Raises
    ------
    RuntimeError
        If :func:`recording_unsupported_reason` gives a reason.
    """
    reason = recording_unsupported_reason(model, modules)
    if reason is not None:
        raise RuntimeError(reason)
    from transformers.modeling_utils import AttentionInterface

    impl = implementation_of(model)
    assert impl is not None  # checked by recording_unsupported_reason
    layers = {id(m): (i, n) for i, (n, m) in enumerate(modules.items())}

    def record(module: nn.Module, query: Any, key: Any, value: Any, mask: Any, kwargs: dict[str, Any]) -> Any:
        layer, name = layers[id(module)]
        return recorder(AttentionCall(module, name, layer, impl, query, key, value, mask, kwargs))

    with _LOCK:
        busy = [n for n, m in modules.items() if id(m) in _RECORDERS]
        if busy:
            raise RuntimeError(f"attention calls of {busy[0]} are already being recorded")
        mapping = AttentionInterface._global_mapping
        slot = _INSTALLED.get(impl)
        if slot is None:
            original = mapping.get(impl, _ABSENT)
            slot = _INSTALLED[impl] = [_make_dispatcher(impl, original), original, 0]
            mapping[impl] = slot[0]
        slot[2] += 1
        for m in modules.values():
            _RECORDERS[id(m)] = (m, record)
    try:
        yield
    finally:
        with _LOCK:
            for m in modules.values():
                _RECORDERS.pop(id(m), None)
            slot[2] -= 1
            if slot[2] == 0:
                del _INSTALLED[impl]
                if mapping.get(impl) is slot[0]:
                    if slot[1] is _ABSENT:
                        del mapping[impl]
                    else:
                        mapping[impl] = slot[1]


# -- what the kernel computed ---------------------------------------------------------------------


def _squeeze_broadcast(mask: torch.Tensor) -> torch.Tensor:
    """Drop expanded (stride-0) batch and head dimensions back to size 1, so that a mask built
    with ``expand`` is never materialised."""
    index = tuple(slice(0, 1) if mask.shape[d] > 1 and mask.stride(d) == 0 else slice(None) for d in range(2))
    return mask[index]


def _as_4d(mask: torch.Tensor, tq: int, tk: int) -> torch.Tensor:
    if mask.dim() == 2:  # (B, T_k) key padding (flash attention)
        return mask[:, None, None, :tk].bool() if mask.dtype != torch.bool else mask[:, None, None, :tk]
    if mask.dim() != 4:
        raise RuntimeError(f"attention mask of shape {tuple(mask.shape)}: expected 2-D or 4-D")
    mask = _squeeze_broadcast(mask[..., -tq:, :tk])
    if mask.shape[2] == 1 and tq > 1:  # a (B, 1, 1, T_k) key-padding mask (LayoutLM's): one row per query
        mask = mask.expand(-1, -1, tq, -1)
    return mask


# Keyword arguments of attention calls that kernel_problem reads, or that cannot change the
# probabilities (the mask already carries what position_ids and cache positions imply for
# eager/SDPA). A tensor argument outside this list may carry a bias or a mask llmdbg does not
# know (ALiBi slopes, a head mask, ...): such calls are refused instead of recomputed wrong.
# token_type_ids reaches a decoder's attention only through **kwargs (a BERT-style tokenizer's
# output fed to a causal LM): the eager, SDPA and flash kernels ignore it, and the families that
# use it for attention (Gemma-3's bidirectional image tokens) fold it into the mask first.
_UNDERSTOOD = frozenset(
    {"dropout", "scaling", "is_causal", "sliding_window", "softcap", "s_aux", "position_bias", "position_ids",
     "cache_position", "output_attentions", "use_cache", "token_type_ids"}
)  # fmt: skip
_PACKED = ("cu_seq_lens_q", "cu_seq_lens_k", "cu_seqlens_q", "cu_seqlens_k", "block_table")


def _check_understood(call: AttentionCall) -> None:
    """Raise for a call whose probabilities kernel_problem would get wrong."""
    family = type(call.module).__name__
    for key, value in call.kwargs.items():
        if isinstance(value, torch.Tensor) and key not in _UNDERSTOOD and key not in _PACKED:
            raise RuntimeError(
                f"llmdbg cannot recompute the attention of {family} ({call.name}): its call passes "
                f"{key!r}, which may change the attention probabilities in a way llmdbg does not model; "
                "use attention_impl='eager'"
            )
    if call.implementation.startswith("flash_attention"):
        # Packed (padding-free) batches attend within each packed sequence only.
        position_ids = call.kwargs.get("position_ids")
        packed = any(call.kwargs.get(k) is not None for k in _PACKED) or (
            isinstance(position_ids, torch.Tensor)
            and position_ids.dim() == 2
            and position_ids.shape[-1] > 1
            and bool((position_ids.diff(dim=-1) != 1).any())
        )
        if packed:
            raise RuntimeError(
                f"{family} ({call.name}): packed sequences under {call.implementation} (cu_seq_lens or "
                "restarting position_ids) are not recomputed; use attention_impl='eager'"
            )


def kernel_problem(call: AttentionCall) -> KernelProblem:
    """The softmax problem of a recorded call, following its implementation's rules.

    - ``eager``: scores ``q·kᵀ·scaling``, soft-capped, plus ``position_bias`` and the mask as
      given (a missing mask means full attention); sink logits ``s_aux`` where given.
    - ``sdpa``: a missing mask means causal when ``T_q > 1`` and the module is causal (keys beyond
      ``T_q`` are cropped, as SDPA does); a boolean mask selects keys; a float mask adds;
      ``position_bias`` combines as ``create_position_bias_mask`` does. No soft-cap or sinks
      (SDPA ignores them).
    - ``flash_attention_*``: causal per module, bottom-right aligned (``offset = T_k - T_q``),
      ``sliding_window``, ``softcap``, ``s_aux`` sinks and a ``(B, T_k)`` padding mask.

    Raises
    ------
    RuntimeError
        For a call it cannot read exactly: an unknown tensor argument (a bias, mask or head mask
        llmdbg does not model), or packed sequences under flash attention.
    """
    q, k, mask, kw = call.query, call.key, call.mask, call.kwargs
    _check_understood(call)
    tq, d = q.shape[2], q.shape[3]
    tk = k.shape[2]
    scaling = kw.get("scaling")
    scaling = float(d**-0.5 if scaling is None else scaling)
    impl = call.implementation
    problem = KernelProblem(query=q, key=k, scaling=scaling)
    bias = kw.get("position_bias")
    if impl == "sdpa":
        is_causal = kw.get("is_causal")
        is_causal = getattr(call.module, "is_causal", True) if is_causal is None else is_causal
        problem.causal = bool(tq > 1 and mask is None and is_causal)
        if problem.causal and tk > tq:
            k, tk = k[:, :, :tq], tq
            problem.key = k
            bias = bias[..., :tq] if bias is not None else None
    elif impl.startswith("flash_attention"):
        is_causal = kw.get("is_causal")
        problem.causal = bool(call.module.is_causal if is_causal is None else is_causal)
        problem.offset = tk - tq
        window = kw.get("sliding_window")
        problem.window = int(window) if window else 0
    if impl != "sdpa":
        softcap = kw.get("softcap")
        problem.softcap = float(softcap) if softcap else 0.0
        sinks = kw.get("s_aux")
        if sinks is None and impl == "eager" and isinstance(getattr(call.module, "sinks", None), torch.Tensor):
            sinks = call.module.sinks  # gpt-oss's eager reads module.sinks
        if sinks is not None:
            problem.sinks = sinks.detach().to(torch.float32).reshape(-1).contiguous()
    if mask is not None:
        mask = _as_4d(mask.detach(), tq, tk)
    if bias is not None:
        bias = _squeeze_broadcast(bias.detach()[..., -tq:, :tk]).to(torch.float32)
        if mask is None:
            problem.add_mask = bias
        elif mask.dtype == torch.bool:
            problem.add_mask = torch.where(mask, bias, torch.tensor(float("-inf"), device=bias.device))
        else:
            problem.add_mask = bias + mask.to(torch.float32)
    elif mask is not None:
        if mask.dtype == torch.bool:
            problem.bool_mask = mask
        else:
            problem.add_mask = mask.to(torch.float32)
    for field in ("bool_mask", "add_mask"):
        value = getattr(problem, field)
        if value is not None:
            setattr(problem, field, value.contiguous())
    problem.query = q.detach().to(torch.float32).contiguous()
    problem.key = problem.key.detach().to(torch.float32).contiguous()
    return problem


# -- what the model reports -----------------------------------------------------------------------

_SINKS_REPORTED: dict[type, bool] = {}


def _eager_reports_sinks(call: AttentionCall, sinks: torch.Tensor) -> bool:
    """Whether the family's eager attention reports weights whose denominator holds the sink
    logits (gpt-oss: rows sum below 1) or the plain softmax over keys (GraniteSWA, which applies its
    sinks by rescaling the output instead). Answered once per module class by running the eager
    function on one zero query and key whose logit a mask puts 30 below every sink: with the sinks
    the row sums to at most e^-30, without them to exactly 1."""
    cls = type(call.module)
    if cls not in _SINKS_REPORTED:
        eager = _eager_function(call.module)
        reported = True  # without a readable answer: the kernel's own view, sinks included
        if eager is not None:
            q, k, v = (torch.zeros_like(t[:1, :, :1]) for t in (call.query, call.key, call.value))
            low = float(sinks.min()) - 30.0
            mask = torch.full((1, 1, 1, 1), low, dtype=q.dtype, device=q.device)
            extra = {key: value for key, value in call.kwargs.items() if key == "s_aux"}
            try:
                with torch.no_grad():
                    out = eager(call.module, q, k, v, mask, scaling=1.0, dropout=0.0, **extra)
                weights = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
                if isinstance(weights, torch.Tensor):
                    reported = not bool(((weights.double().sum(-1) - 1).abs() < 1e-3).all())
            except (RuntimeError, TypeError, ValueError, IndexError):
                reported = True
        _SINKS_REPORTED[cls] = reported
    return _SINKS_REPORTED[cls]


def reported_problem(call: AttentionCall, problem: KernelProblem) -> KernelProblem:
    """The problem whose probabilities the model's own eager attention reports as its weights: the
    kernel's problem, without the sink logits for families whose eager weights leave them out (the
    kernel's problem itself stays what ``verify`` checks the output against)."""
    if problem.sinks is None or _eager_reports_sinks(call, problem.sinks):
        return problem
    return dataclasses.replace(problem, sinks=None)
