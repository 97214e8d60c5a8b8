"""capture(): forward/backward hooks in, numpy out.

The hooks are thin: each hands the tensor to the C++ capture store (``llmdbg._core``), which
detaches it, computes its statistics in one fused pass, reduces it on its own device if asked
(head mean, token slice), converts the dtype and copies it to host memory (pinned and
asynchronous for CUDA tensors) under a byte budget. Python never touches elements.

Every hook is removed and the attention implementation restored when the ``with`` block ends,
also when the forward raises; what was captured until then stays readable.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from .. import _core
from ..adapters.attention_impl import eager_attention, needs_output_attentions_flag
from ..adapters.layout import ROLES, check_module, closest_names, find_layout, is_hf_model, resolve_role
from .trace import ATTN_GRAD_SUFFIX, ATTN_SUFFIX, GRAD_SUFFIX, INPUT_SUFFIX, Trace

# Models with a capture in progress: a second capture on the same model would stack hooks.
_ACTIVE: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()

_DTYPES = {np.dtype(np.float16): "float16", np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}
_MAX_BYTES = 2**63  # the store's budget is an int64
_TOKEN_WORDS = {"last_token": slice(-1, None), "first_token": slice(0, 1)}
_REDUCE_WORDS = ("stats", "head_mean", *_TOKEN_WORDS)
_INT64_MAX = 2**63 - 1


def _parse_reduce(reduce: Any) -> tuple[bool, bool, slice | None]:
    """-> (stats_only, head_mean, token slice)."""
    if reduce is None:
        return False, False, None
    items = list(reduce) if isinstance(reduce, (tuple, list)) else [reduce]
    stats_only = head_mean = False
    tokens: slice | None = None
    for item in items:
        if isinstance(item, str) and item in _REDUCE_WORDS:
            if item == "stats":
                stats_only = True
            elif item == "head_mean":
                head_mean = True
            else:
                tokens = _TOKEN_WORDS[item]
        elif isinstance(item, slice):
            if item.step not in (None, 1):
                raise ValueError(f"reduce: token slices must have step 1, got {item}")
            for bound in (item.start, item.stop):
                if bound is not None and (
                    isinstance(bound, bool) or not isinstance(bound, (int, np.integer)) or not -(2**62) < bound < 2**62
                ):
                    raise ValueError(f"reduce: token slice bounds must be integers in (-2**62, 2**62), got {item}")
            tokens = item
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not -(2**62) < item < 2**62:  # the store indexes tokens with int64
                raise ValueError(f"reduce: token position {item} is out of range")
            tokens = slice(int(item), int(item) + 1 if item != -1 else None)
        else:
            raise ValueError(
                f"reduce must be None, one of {_REDUCE_WORDS}, an int or slice of token positions, "
                f"or a tuple of these; got {item!r}"
            )
    return stats_only, head_mean, tokens


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The main tensor of a module's output: the tensor itself, the first tensor of a tuple, or
    the first tensor field of a ModelOutput/dict (HF blocks return tensors or tuples)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for v in value:
            if isinstance(v, torch.Tensor):
                return v
    return None


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for v in args:
        if isinstance(v, torch.Tensor):
            return v
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    return _first_tensor(list(kwargs.values()))


def _select_modules(model: torch.nn.Module, modules: Any, layout: Any = None) -> list[str]:
    """Qualified names selected by roles, globs ('*.mlp') or regexes ('re:...' or re.Pattern)."""
    if modules is None:
        return []
    specs = [modules] if isinstance(modules, (str, re.Pattern)) else list(modules)
    names: list[str] = []
    selected: list[str] = []
    for spec in specs:
        if not (isinstance(spec, str) and spec in ROLES) and not names:
            names = [n for n, _ in model.named_modules() if n]  # only patterns need every name
        if isinstance(spec, str) and spec in ROLES:
            found = resolve_role(model, spec, layout)
        elif isinstance(spec, re.Pattern) or (isinstance(spec, str) and spec.startswith("re:")):
            pattern = spec if isinstance(spec, re.Pattern) else re.compile(spec[3:])
            found = [n for n in names if pattern.fullmatch(n)]
        elif isinstance(spec, str):
            found = [n for n in names if fnmatch.fnmatchcase(n, spec)]
        else:
            raise TypeError(f"modules entries must be str or re.Pattern, got {type(spec).__name__}")
        if not found:
            label = spec.pattern if isinstance(spec, re.Pattern) else spec
            raise ValueError(
                f"modules pattern {label!r} matches no module of {type(model).__name__}; "
                f"closest names: {closest_names(model, str(label))}. Roles: {list(ROLES)}"
            )
        selected.extend(n for n in found if n not in selected)
    return selected


class Capture:
    """Context manager returned by :func:`capture`; ``__enter__`` returns the :class:`Trace`."""

    def __init__(
        self,
        model: torch.nn.Module,
        modules: Any = None,
        *,
        attentions: bool = False,
        hidden_states: bool = False,
        inputs: bool = False,
        grads: bool = False,
        reduce: Any = None,
        dtype: Any = np.float32,
        max_bytes: int | None = None,
        tokenizer: Any = None,
        stats: bool = True,
        attention_consumer: Any = None,
    ) -> None:
        self.model = check_module(model)
        if attention_consumer is not None and not callable(attention_consumer):
            raise TypeError("attention_consumer must be callable as f(layer, module_name, weights)")
        if attention_consumer is not None and not attentions:
            raise ValueError("attention_consumer needs attentions=True")
        self._consumer = attention_consumer
        if max_bytes is not None:
            if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, float, np.integer, np.floating)):
                raise TypeError(f"max_bytes must be a positive number of bytes or None, got {max_bytes!r}")
            if not (0 < max_bytes < _MAX_BYTES):
                raise ValueError(f"max_bytes must be a positive number of bytes below 2**63 or None, got {max_bytes!r}")
        try:
            dtype_name = _DTYPES[np.dtype(dtype)]
        except (TypeError, KeyError):
            raise TypeError(f"dtype must be numpy.float16, float32 or float64, got {dtype!r}") from None
        self._stats_only, self._head_mean, self._tokens = _parse_reduce(reduce)
        if self._head_mean and not attentions:
            raise ValueError("reduce='head_mean' averages attention heads; pass attentions=True")
        if attentions and not is_hf_model(model):
            raise TypeError(
                f"attentions=True needs a Hugging Face transformers model (it switches the attention "
                f"implementation to eager to get the weights); {type(model).__name__} is not one. "
                f"Capture the attention modules' outputs with modules=... instead."
            )
        self._flags = dict(attentions=attentions, hidden_states=hidden_states, inputs=inputs, grads=grads, stats=stats)
        self._modules_spec = modules
        self._tokenizer = tokenizer
        self._store = _core.CaptureStore(0 if max_bytes is None else int(max_bytes), dtype_name)
        self._handles: list[Any] = []
        self._eager: Any = None
        self._entered = False
        self._active = False
        self._synced = True
        self.trace: Trace | None = None

    # -- hooks -----------------------------------------------------------------------------
    def _spec(self, kind: str, tensor: torch.Tensor) -> dict[str, Any]:
        spec: dict[str, Any] = {"keep": not self._stats_only, "stats": self._flags["stats"]}
        token_dim = 2 if kind == "attn" else 1
        if self._tokens is not None and tensor.dim() > token_dim:
            start, stop = self._tokens.start, self._tokens.stop
            spec.update(
                token_dim=token_dim,
                token_start=0 if start is None else start,
                token_stop=_INT64_MAX if stop is None else stop,
            )
        if kind == "attn" and self._head_mean:
            spec["head_dim"] = 1
        return spec

    def _add(self, key: str, tensor: torch.Tensor, kind: str = "act") -> None:
        if not self._active:
            return  # e.g. a backward run after the with block: the trace is closed
        self._synced = False
        self._store.add(key, tensor, **self._spec(kind, tensor))

    def _grad_hook(self, key: str, kind: str) -> Any:
        def hook(grad: torch.Tensor) -> None:
            self._add(key, grad, kind)

        return hook

    def _output_hook(self, name: str) -> Any:
        grads = self._flags["grads"]

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            t = _first_tensor(output)
            if t is None:
                return
            self._add(name, t)
            if grads and t.requires_grad:
                t.register_hook(self._grad_hook(name + GRAD_SUFFIX, "act"))

        return hook

    def _input_hook(self, name: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            t = _first_input(args, kwargs)
            if t is not None:
                self._add(name + INPUT_SUFFIX, t)

        return hook

    def _attention_hook(self, name: str, index: int, layer: int) -> Any:
        grads = self._flags["grads"]

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            weights = output[index] if isinstance(output, (tuple, list)) and len(output) > index else None
            if not isinstance(weights, torch.Tensor) or weights.dim() != 4:
                raise RuntimeError(
                    f"attention module {name!r} returned no attention weights under eager "
                    f"attention (got {type(weights).__name__}); this architecture needs an adapter "
                    "rule in llmdbg.adapters.layout"
                )
            if self._consumer is not None:
                if self._active:
                    self._consumer(layer, name, weights)
            else:
                self._add(name + ATTN_SUFFIX, weights, "attn")
            if grads and weights.requires_grad:
                weights.register_hook(self._grad_hook(name + ATTN_GRAD_SUFFIX, "attn"))

        return hook

    def _model_input_hook(self, ask_for_weights: bool) -> Any:
        signature = inspect.signature(self.model.forward)
        params = signature.parameters
        ask_for_weights = ask_for_weights and (
            "output_attentions" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        )

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            if not self._active:
                return None
            try:
                bound = signature.bind_partial(*args, **kwargs).arguments
            except TypeError:
                bound = kwargs
            ids, mask = bound.get("input_ids"), bound.get("attention_mask")
            assert self.trace is not None  # hooks exist only between __enter__ and __exit__
            self.trace._record_inputs(
                ids if isinstance(ids, torch.Tensor) else None,
                mask if isinstance(mask, torch.Tensor) else None,
                self._tokenizer,
            )
            if ask_for_weights and "output_attentions" not in bound and "output_attentions" not in kwargs:
                # Older-style attention modules only return weights when asked; the model's
                # output then also carries them (outputs.attentions).
                return args, {**kwargs, "output_attentions": True}
            return None

        return hook

    # -- context ---------------------------------------------------------------------------
    def __enter__(self) -> Trace:
        if self._entered:
            raise RuntimeError("this capture was already used; call llmdbg.capture(...) again")
        if self.model in _ACTIVE:
            raise RuntimeError(
                f"llmdbg.capture is already active on this {type(self.model).__name__}; nested "
                "captures on one model would stack hooks. Capture everything in one call "
                "(modules=[...], attentions=True, ...) instead."
            )
        self._entered = True
        flags = self._flags
        layout = None
        if flags["attentions"] or flags["hidden_states"] or is_hf_model(self.model):
            try:
                layout = find_layout(self.model)
            except ValueError:
                if flags["attentions"] or flags["hidden_states"]:
                    raise
        selected = _select_modules(self.model, self._modules_spec, layout)
        if layout is None and (flags["attentions"] or flags["hidden_states"]):  # find_layout raised above
            raise AssertionError("unreachable: attentions and hidden states need a layout")
        input_modules = list(selected) if flags["inputs"] else []
        hidden: list[str] = []
        if flags["hidden_states"]:
            # Per stack: the first block's input (the embedding output, as in HF's
            # hidden_states[0]), then every block's output.
            for blocks in layout.stacks.values():  # type: ignore[union-attr]  # checked above
                hidden += [blocks[0] + INPUT_SUFFIX, *blocks]
                input_modules += [] if blocks[0] in input_modules else [blocks[0]]
                selected.extend(n for n in blocks if n not in selected)
        attention = list(layout.attention) + list(layout.cross_attention) if layout and flags["attentions"] else []
        if not (selected or attention):
            raise ValueError("nothing to capture: pass modules=..., attentions=True or hidden_states=True")

        self.trace = Trace(
            self._store,
            layout=layout,
            attention_modules=attention,
            hidden_state_modules=hidden,
            finalize=self._finalize,
        )
        _ACTIVE.add(self.model)
        try:
            named = {n: self.model.get_submodule(n) for n in {*input_modules, *selected, *attention}}
            reg = self._handles.append
            ask = bool(attention) and needs_output_attentions_flag(self.model, attention)
            reg(self.model.register_forward_pre_hook(self._model_input_hook(ask), with_kwargs=True))
            for name in input_modules:
                reg(named[name].register_forward_pre_hook(self._input_hook(name), with_kwargs=True))
            for name in selected:
                reg(named[name].register_forward_hook(self._output_hook(name), with_kwargs=True))
            for layer, name in enumerate(attention):
                reg(
                    named[name].register_forward_hook(
                        self._attention_hook(name, layout.attention_index if layout else 1, layer), with_kwargs=True
                    )
                )
            if attention:
                self._eager = eager_attention(self.model)
                self._eager.__enter__()
        except BaseException:
            self._close(None, None, None)
            raise
        self._active = True
        return self.trace

    def _finalize(self) -> None:
        # Device copies and summaries were queued asynchronously into pinned memory.
        if not self._synced and self._store.saw_device_tensor and torch.cuda.is_available():
            torch.cuda.synchronize()
        self._synced = True

    def _close(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._active = False
        try:
            for h in self._handles:
                h.remove()
            self._handles.clear()
        finally:
            _ACTIVE.discard(self.model)
            if self._eager is not None:
                eager, self._eager = self._eager, None
                eager.__exit__(exc_type, exc, tb)
        return False

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            return self._close(exc_type, exc, tb)
        finally:
            self._finalize()


def capture(
    model: torch.nn.Module,
    modules: str | re.Pattern | Iterable[str | re.Pattern] | None = None,
    *,
    attentions: bool = False,
    hidden_states: bool = False,
    inputs: bool = False,
    grads: bool = False,
    reduce: Any = None,
    dtype: Any = np.float32,
    max_bytes: int | None = None,
    tokenizer: Any = None,
    stats: bool = True,
    attention_consumer: Any = None,
) -> Capture:
    """Record activations, attention maps and gradients of a model's modules into numpy.

    Use it as a context manager around the forward (and optionally backward) passes you want
    to look at::

        with llmdbg.capture(model, "*.mlp", attentions=True) as trace:
            model(**batch)
        trace.activations["model.layers.3.mlp"]   # numpy array
        trace.attentions[0]                        # (B, H, T, T) float32
        trace.stats["model.layers.3.mlp"].absmax

    Parameters
    ----------
    model : torch.nn.Module
        Any module; Hugging Face ``transformers`` models get roles and attention maps.
    modules : str, re.Pattern or list of them, optional
        Which modules' outputs to keep: a role (``"blocks"``, ``"attention"``, ``"mlp"``,
        ``"embeddings"``, ``"final_norm"``, ``"unembedding"``, ...), a glob on qualified names
        (``"*.mlp"``, ``"encoder.layer.*"``), or a regular expression (``"re:..."`` or a compiled
        pattern, matched against the whole name). A pattern that matches nothing is an error
        listing the closest names.
    attentions : bool
        Capture every layer's attention weights ``(B, H, T_q, T_k)`` (Hugging Face models only).
        The attention implementation is switched to ``"eager"`` inside the block and restored
        afterwards; eager and SDPA logits differ by about 1e-3 in float32.
    hidden_states : bool
        Capture the embedding output and every block output (the residual stream).
    inputs : bool
        Also capture the first tensor input of each selected module (key ``name + ":input"``).
    grads : bool
        Also capture gradients of the selected outputs (and of attention maps) when a backward
        pass runs inside the block (keys ``name + ":grad"``).
    reduce : str, int, slice or tuple of these, optional
        Reduce before copying to host: ``"head_mean"`` (average attention heads),
        ``"last_token"`` / ``"first_token"`` / an int / a slice (keep those token positions; the
        query axis for attention maps), ``"stats"`` (keep statistics only, no arrays).
        Statistics always describe the unreduced tensor.
    dtype : numpy dtype
        float16, float32 (default) or float64 for the host copies.
    max_bytes : int, optional
        Budget for host copies; exceeding it raises :class:`llmdbg.CaptureBudgetError` naming
        the module and the size, instead of exhausting memory.
    tokenizer : optional
        A Hugging Face tokenizer; the token strings of ``input_ids`` are recorded in
        ``trace.tokens``.
    stats : bool
        Compute statistics of every captured tensor (one fused C++ pass, float64 accumulation).
    attention_consumer : callable, optional
        ``f(layer, module_name, weights)`` called inside each attention hook with the layer's
        ``(B, H, T_q, T_k)`` weights on their own device (still attached to the autograd graph;
        the consumer must not modify them), instead of storing them: for
        streaming analyses that keep only a running result (see :func:`llmdbg.rollout`).
        ``layer`` counts the captured attention modules in layout order.

    Returns
    -------
    Capture
        A context manager whose ``__enter__`` returns the :class:`Trace`.

    Raises
    ------
    TypeError
        ``model`` is not a ``torch.nn.Module``; ``attentions=True`` on a non-HF model; bad dtype.
    ValueError
        A pattern matches nothing; nothing to capture; meta-device or offloaded parameters;
        bad ``reduce`` or ``max_bytes``.
    RuntimeError
        A capture is already active on this model (hooks would stack).
    """
    return Capture(
        model,
        modules,
        attentions=attentions,
        hidden_states=hidden_states,
        inputs=inputs,
        grads=grads,
        reduce=reduce,
        dtype=dtype,
        max_bytes=max_bytes,
        tokenizer=tokenizer,
        stats=stats,
        attention_consumer=attention_consumer,
    )
