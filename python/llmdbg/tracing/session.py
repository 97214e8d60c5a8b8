"""capture(): forward/backward hooks in, numpy out.

The hooks are thin: each hands the tensor to the C++ capture store (``llmdbg._core``), which
detaches it, computes its statistics in one fused pass, reduces it on its own device if asked
(head mean, token slice), converts the dtype and copies it to host memory (pinned and
asynchronous for CUDA tensors) under a byte budget. Python never touches elements.

Attention goes through :mod:`.attention_recorder` (recomputed from the model's own attention
calls, or read from eager weights). Every hook, the attention implementation and the attention
dispatch are restored when the ``with`` block ends, also when the forward raises.

Wrapped models (``torch.compile``, DDP, PEFT, a user's module around a transformers model) are
captured with names relative to what the user passed; the transformers model inside gives the
config and sees the model-level hook. Compiled code runs eagerly inside the block, since a compiled
graph would skip hooks registered after it was built (:func:`llmdbg.adapters.modules.hooks_fire`).
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any, Literal

import numpy as np
import torch

from .. import _core
from .._internal.threads import resolve_n_jobs
from ..adapters.attention_calls import recording_attention
from ..adapters.attention_impl import eager_attention, needs_output_attentions_flag
from ..adapters.layout import check_module, find_layout, hf_model, require_attention, require_support
from ..adapters.modules import hooks_fire, unwrap
from .attention_recorder import AttentionRecorder
from .attention_setup import check_budget, choose_recompute, record_streams, special_ids
from .generation import GenerateWrapper
from .memory import decoder_self_attention, layer_shapes
from .query import ATTENTION_IMPLS, AttentionQuery, estimate, resolve_attentions
from .selection import first_input, first_tensor, parse_reduce, select_modules, with_sibling_attention
from .trace import ATTN_GRAD_SUFFIX, ATTN_SUFFIX, GRAD_SUFFIX, INPUT_SUFFIX, Trace

# Models with a capture in progress: a second capture on the same model would stack hooks.
_ACTIVE: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()

_DTYPES = {np.dtype(np.float16): "float16", np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}
_MAX_BYTES = 2**63  # the store's budget is an int64
_INT64_MAX = 2**63 - 1


def _weights_in(output: Any, index: int) -> torch.Tensor | None:
    """The ``(B, H, T_q, T_k)`` weights at ``index`` of an attention module's output tuple, or of
    its first item when that is itself the tuple (I-BERT returns ``((output, weights), (scales,
    weight_scales))``), or the one 4-D tensor after a None there; None when there is none."""
    if not isinstance(output, (tuple, list)) or not output:
        return None
    if isinstance(output[0], (tuple, list)):
        return _weights_in(output[0], index)
    weights = output[index] if len(output) > index else None
    if weights is None:  # LUKE: (word output, entity output or None, weights)
        later = [t for t in output[index + 1 :] if isinstance(t, torch.Tensor) and t.dim() == 4]
        weights = later[0] if len(later) == 1 else None
    return weights if isinstance(weights, torch.Tensor) and weights.dim() == 4 else None


def _entered_hook(entered: set[str], name: str) -> Any:
    def hook(module: torch.nn.Module, args: tuple) -> None:
        entered.add(name)

    return hook


class Capture:
    """Context manager returned by :func:`capture`; ``__enter__`` returns the :class:`Trace`."""

    def __init__(
        self,
        model: torch.nn.Module,
        modules: Any = None,
        *,
        attentions: bool | str | AttentionQuery = False,
        hidden_states: bool = False,
        inputs: bool = False,
        grads: bool = False,
        reduce: Any = None,
        dtype: Any = np.float32,
        max_bytes: int | None = None,
        tokenizer: Any = None,
        stats: bool = True,
        attention_consumer: Any = None,
        attention_impl: str = "auto",
        verify: bool = False,
    ) -> None:
        self.model = check_module(model)
        # The transformers model doing the work (the model itself, or inside a wrapper): its
        # config, its forward's keywords, and the key that keeps two captures from stacking hooks.
        self._hf = hf_model(self.model)
        self._key = self._hf if self._hf is not None else unwrap(self.model)
        if attention_impl not in ATTENTION_IMPLS:  # choose_recompute checks it too, but after hooks exist
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {attention_impl!r}")
        if not isinstance(verify, bool):
            raise TypeError(f"verify must be True or False, got {verify!r}")
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
        self._stats_only, self._head_mean, self._tokens = parse_reduce(reduce)
        if self._head_mean and not attentions:
            raise ValueError("reduce='head_mean' averages attention heads; pass attentions=True")
        self._attn_mode, self._attn_query = resolve_attentions(attentions, self._head_mean)
        if attentions is not True and attentions is not False and attention_consumer is not None:
            raise ValueError("attention_consumer needs attentions=True")
        if attentions is not False and attentions is not None and self._hf is None:
            raise TypeError(
                f"attentions={attentions!r} needs a Hugging Face transformers model (it records the queries "
                f"and keys of its attention calls, or switches it to eager attention); {type(model).__name__} "
                f"neither is one nor wraps exactly one. "
                f"Capture the attention modules' outputs with modules=... instead."
            )
        self._flags = dict(
            attentions=self._attn_mode != "off", hidden_states=hidden_states, inputs=inputs, grads=grads, stats=stats
        )
        self._attention_impl = attention_impl
        self._plain_spec = {"keep": not self._stats_only, "stats": stats}
        self._verify = verify
        self._max_bytes = None if max_bytes is None else int(max_bytes)
        self._itemsize = np.dtype(dtype).itemsize
        self._recorder: AttentionRecorder | None = None
        self._recording: Any = None
        self._special_ids: set[int] | None = None
        self._modules_spec = modules
        self._tokenizer = tokenizer
        self._store = _core.CaptureStore(0 if max_bytes is None else int(max_bytes), dtype_name)
        self._handles: list[Any] = []
        self._eager: Any = None
        self._uncompiled: Any = None
        self._generate: GenerateWrapper | None = None
        self._forwards = 0  # model forwards seen, to tell generate()'s calls apart
        self._specs: dict[tuple[str, int], dict[str, Any]] = {}
        self._generating, self._generate_start = False, 0
        self._recompute = False
        self._entered = False
        self._active = False
        self._synced = True
        self.trace: Trace | None = None

    # -- hooks -----------------------------------------------------------------------------
    def _spec(self, kind: str, tensor: torch.Tensor) -> dict[str, Any]:
        cached = self._specs.get((kind, tensor.dim()))  # generate(): the same spec every step
        if cached is not None:
            return cached
        spec: dict[str, Any] = dict(self._plain_spec)
        token_dim = 2 if kind == "attn" else 1
        if self._tokens is not None and tensor.dim() > token_dim:
            start, stop = self._tokens.start, self._tokens.stop
            stop = _INT64_MAX if stop is None else stop
            spec.update(token_dim=token_dim, token_start=0 if start is None else start, token_stop=stop)
        if kind == "attn" and self._head_mean:
            spec["head_dim"] = 1
        self._specs[(kind, tensor.dim())] = spec
        return spec

    def _add(self, key: str, tensor: torch.Tensor, kind: str = "act") -> None:
        if not self._active:
            return  # e.g. a backward run after the with block: the trace is closed
        self._synced = False
        plain = kind == "act" and self._tokens is None  # most calls: no per-call spec to build
        self._store.add(key, tensor, **(self._plain_spec if plain else self._spec(kind, tensor)))

    def _grad_hook(self, key: str, kind: str) -> Any:
        def hook(grad: torch.Tensor) -> None:
            self._add(key, grad, kind)

        return hook

    def _output_hook(self, name: str) -> Any:
        grads = self._flags["grads"]

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            t = first_tensor(output)
            if t is None:
                return
            self._add(name, t)
            if grads and t.requires_grad:
                t.register_hook(self._grad_hook(name + GRAD_SUFFIX, "act"))

        return hook

    def _input_hook(self, name: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            t = first_input(args, kwargs)
            if t is not None:
                self._add(name + INPUT_SUFFIX, t)

        return hook

    def _attention_hook(self, name: str, index: int, layer: int) -> Any:
        grads = self._flags["grads"]

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            weights = _weights_in(output, index)
            if weights is None:
                raise RuntimeError(
                    f"attention module {name!r} returned no attention weights under eager "
                    f"attention (it returned {type(output).__name__}); this architecture needs an adapter "
                    "rule in llmdbg.adapters.layout"
                )
            if self._consumer is not None:
                if self._active:
                    self._consumer(layer, name, weights)
            elif self._recorder is not None:
                if self._active:
                    self._recorder.add_eager(layer, name, weights, module)
            else:
                self._add(name + ATTN_SUFFIX, weights, "attn")
            if grads and weights.requires_grad:
                weights.register_hook(self._grad_hook(name + ATTN_GRAD_SUFFIX, "attn"))

        return hook

    def _model_input_hook(self, target: torch.nn.Module, ask_for_weights: bool) -> Any:
        signature = inspect.signature(target.forward)
        params = signature.parameters
        ask_for_weights = ask_for_weights and (
            "output_attentions" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        )

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            if not self._active:
                return None
            self._forwards += 1
            try:  # generate() passes keywords only: no binding needed
                bound = signature.bind_partial(*args, **kwargs).arguments if args else kwargs
            except TypeError:
                bound = kwargs
            ids, mask = bound.get("input_ids"), bound.get("attention_mask")
            assert self.trace is not None  # hooks exist only between __enter__ and __exit__
            if self._recorder is not None:
                self._prepare_attention(bound)
            if not self._generating or self._forwards == self._generate_start + 1:  # decode steps: in .generation
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
        if self._key in _ACTIVE:
            raise RuntimeError(
                f"llmdbg.capture is already active on this {type(self.model).__name__}; nested "
                "captures on one model would stack hooks. Capture everything in one call "
                "(modules=[...], attentions=True, ...) instead."
            )
        self._entered = True
        flags = self._flags
        layout = None
        if flags["attentions"] or flags["hidden_states"] or self._hf is not None:
            try:
                layout = find_layout(self.model)
            except ValueError:
                if flags["attentions"] or flags["hidden_states"]:
                    raise
        selected = select_modules(self.model, self._modules_spec, layout)
        if layout is None and (flags["attentions"] or flags["hidden_states"]):  # find_layout raised above
            raise AssertionError("unreachable: attentions and hidden states need a layout")
        if flags["attentions"]:
            require_attention(self.model, layout, "capture(attentions=...)")  # type: ignore[arg-type]
            require_support(self.model, "maps")
        if flags["hidden_states"]:
            require_support(self.model, "blocks")
        input_modules = list(selected) if flags["inputs"] else []
        hidden: list[str] = []
        if flags["hidden_states"]:
            # Per stack: the first block's input (the embedding output, as in HF's
            # hidden_states[0]; layout.stack_input names it), then every block's output.
            for stack, blocks in layout.stacks.items():  # type: ignore[union-attr]  # checked above
                first = layout.stack_input(stack)  # type: ignore[union-attr]
                hidden += [first + INPUT_SUFFIX, *blocks]
                input_modules += [] if first in input_modules else [first]
                selected.extend(n for n in blocks if n not in selected)
        attention = (
            with_sibling_attention(self.model, list(layout.attention)) + list(layout.cross_attention)
            if layout and flags["attentions"]
            else []
        )
        if not (selected or attention):
            raise ValueError("nothing to capture: pass modules=..., attentions=True or hidden_states=True")

        self.trace = Trace(
            self._store,
            layout=layout,
            attention_modules=attention,
            hidden_state_modules=hidden,
            finalize=self._finalize,
        )
        _ACTIVE.add(self._key)
        hf = self._hf if self._hf is not None else self.model
        try:
            self._uncompiled = hooks_fire(self.model)
            self._uncompiled.__enter__()
            wanted = {*input_modules, *selected, *attention}  # one traversal, not get_submodule per name
            named, reg = {n: m for n, m in self.model.named_modules() if n in wanted}, self._handles.append
            weights = self._flags["grads"] or self._consumer is not None  # only eager has them in the forward
            because = "it cannot give gradients of attention maps or feed an attention_consumer" if weights else None
            self._recompute = bool(attention) and choose_recompute(
                hf, self._attention_impl, {n: named[n] for n in attention}, eager_because=because
            )
            ask = bool(attention) and not self._recompute and needs_output_attentions_flag(self.model, attention)
            # On the transformers model: a wrapper's forward may not name input_ids or take output_attentions.
            reg(hf.register_forward_pre_hook(self._model_input_hook(hf, ask), with_kwargs=True))
            for name in input_modules:
                reg(named[name].register_forward_pre_hook(self._input_hook(name), with_kwargs=True))
            for name in selected:
                reg(named[name].register_forward_hook(self._output_hook(name), with_kwargs=True))
            if attention:
                self._start_attention(attention, named)
            self._generate = GenerateWrapper(self.model, self.trace, self._marks, self._on_generate).__enter__()
        except BaseException:
            self._close(None, None, None)
            raise
        self._active = True
        return self.trace

    # -- attention ---------------------------------------------------------------------------
    def _start_attention(self, attention: list[str], named: dict[str, torch.nn.Module]) -> None:
        layout = self.trace.layout if self.trace is not None else None
        if self._attn_query is not None:
            self._attn_query.layer_indices(len(attention))  # a layer that does not exist fails here
        # One recorder for both paths: it recomputes from recorded calls or reads eager weights.
        verify = self._verify and self._recompute
        self._recorder = AttentionRecorder(self._attn_mode, self._attn_query, attention, self._add_map, verify=verify)
        self._recorder.row_slice = self._tokens
        self._recorder.stream_of = dict.fromkeys(decoder_self_attention(layout), "decoder_input_ids")
        assert self.trace is not None
        self.trace._attention_stats = self._recorder.stats
        self.trace._attention_causal = self._recorder.causal
        hf = self._hf if self._hf is not None else self.model
        self._special_ids = special_ids(hf, self._tokenizer)
        entered = self._recorder.entered
        for name in attention:
            hook = _entered_hook(entered, name)
            self._handles.append(named[name].register_forward_pre_hook(hook))
        self.trace._attention_order = self._recorder.sequence
        if self._recompute:
            self._recording = recording_attention(hf, {n: named[n] for n in attention}, self._recorder)
            self._recording.__enter__()
            return
        for layer, name in enumerate(attention):
            hook = self._attention_hook(name, layout.attention_index if layout else 1, layer)
            self._handles.append(named[name].register_forward_hook(hook, with_kwargs=True))
        self._eager = eager_attention(self.model)
        self._eager.__enter__()

    def _add_map(self, name: str, maps: np.ndarray) -> None:
        if not self._active:
            return
        self._synced = False
        keep, stats = not self._stats_only, self._flags["stats"]
        self._store.add(name + ATTN_SUFFIX, torch.from_numpy(maps), keep=keep, stats=stats)

    def _prepare_attention(self, bound: dict[str, Any]) -> None:
        """Before each forward: key-token flags per input stream, and the budget check."""
        assert self._recorder is not None and self.trace is not None
        shapes = record_streams(self._recorder, bound, self._special_ids)
        if self._max_bytes is None or "input_ids" not in shapes:
            return
        layers = layer_shapes(
            self.trace.layout, self._recorder.names, shapes["input_ids"], shapes.get("decoder_input_ids")
        )
        est = estimate(
            self._hf if self._hf is not None else self.model,
            self._attn_mode,
            self._attn_query,
            layers,
            recompute=self._recompute,
            itemsize=self._itemsize,
            threads=resolve_n_jobs(None),
            row_slice=self._tokens,
        )
        check_budget(est, self._store.nbytes, self._max_bytes, self._attn_mode)

    def _on_generate(self, mode: str | None) -> None:
        self._generating = mode is not None
        self._generate_start = self._forwards  # the prefill is the next forward
        if self._recorder is not None:
            self._recorder.cache_reordered = mode == "beams"

    def _marks(self) -> dict[str, Any]:
        """Calls recorded so far per store key and attention layer, and forwards seen."""
        stats = self._recorder.stats if self._recorder is not None else {}
        return {
            "keys": {k: len(self._store.tensors(k)) for k in self._store.keys()},
            "stats": {layer: len(s["entropy"]) for layer, s in stats.items()},
            "forwards": self._forwards,
        }

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
            _ACTIVE.discard(self._key)
            if self._generate is not None:
                self._generate.__exit__(exc_type, exc, tb)
                self._generate = None
            if self._recording is not None:
                recording, self._recording = self._recording, None
                recording.__exit__(exc_type, exc, tb)
            if self._eager is not None:
                eager, self._eager = self._eager, None
                eager.__exit__(exc_type, exc, tb)
            if self._uncompiled is not None:
                uncompiled, self._uncompiled = self._uncompiled, None
                uncompiled.__exit__(exc_type, exc, tb)
        return False

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        try:
            self._close(exc_type, exc, tb)
        finally:
            self._finalize()
        if exc_type is None and self._recorder is not None and self._consumer is None:
            self._recorder.check_complete(self._recompute)
        return False
