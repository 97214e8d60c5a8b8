"""capture(): forward/backward hooks in, numpy out.

The hooks are thin: each hands the tensor to the C++ capture store (``llmdbg._core``), which
detaches it, computes its statistics in one fused pass, reduces it on its own device if asked
(head mean, token slice), converts the dtype and copies it to host memory (pinned and
asynchronous for CUDA tensors) under a byte budget. Python never touches elements.

Every hook is removed and the attention implementation restored when the ``with`` block ends,
also when the forward raises; what was captured until then stays readable.
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
import re
import warnings
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from .. import _core
from .._internal.threads import resolve_n_jobs
from ..adapters.attention_calls import recording_attention, recording_unsupported_reason
from ..adapters.attention_impl import eager_attention, needs_output_attentions_flag
from ..adapters.layout import ROLES, check_module, closest_names, find_layout, is_hf_model, resolve_role
from .attention_recorder import AttentionRecorder, stats_from_weights
from .query import ATTENTION_IMPLS, AttentionQuery, LayerShape, estimate, resolve_attentions
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


def _special_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    """Token ids counted by the ``special_mass`` statistic: the tokenizer's special tokens, or
    without one the config's bos/eos/pad/cls/sep/unk ids."""
    ids = getattr(tokenizer, "all_special_ids", None) if tokenizer is not None else None
    if ids:
        return {int(i) for i in ids}
    config = getattr(model, "config", None)
    found = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id", "sep_token_id", "unk_token_id"):
        value = getattr(config, key, None)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and not isinstance(v, bool):
                found.add(v)
    return found


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
        if attention_impl not in ATTENTION_IMPLS:
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
        self._stats_only, self._head_mean, self._tokens = _parse_reduce(reduce)
        if self._head_mean and not attentions:
            raise ValueError("reduce='head_mean' averages attention heads; pass attentions=True")
        self._attn_mode, self._attn_query = resolve_attentions(attentions, self._head_mean)
        if attentions is not True and attentions is not False and attention_consumer is not None:
            raise ValueError("attention_consumer needs attentions=True")
        if attentions is not False and attentions is not None and not is_hf_model(model):
            raise TypeError(
                f"attentions={attentions!r} needs a Hugging Face transformers model (it records the queries "
                f"and keys of its attention calls, or switches it to eager attention); {type(model).__name__} "
                f"is not one. "
                f"Capture the attention modules' outputs with modules=... instead."
            )
        self._flags = dict(
            attentions=self._attn_mode != "off", hidden_states=hidden_states, inputs=inputs, grads=grads, stats=stats
        )
        self._attention_impl = attention_impl
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
        self._recompute = False
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
            elif self._recorder is not None:
                if self._active:
                    self._recorder.add_eager(layer, name, weights)
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
            if self._recorder is not None:
                self._prepare_attention(bound)
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
            self._recompute = bool(attention) and self._use_recompute(attention, named)
            ask = bool(attention) and not self._recompute and needs_output_attentions_flag(self.model, attention)
            reg(self.model.register_forward_pre_hook(self._model_input_hook(ask), with_kwargs=True))
            for name in input_modules:
                reg(named[name].register_forward_pre_hook(self._input_hook(name), with_kwargs=True))
            for name in selected:
                reg(named[name].register_forward_hook(self._output_hook(name), with_kwargs=True))
            if attention:
                self._start_attention(attention, named)
        except BaseException:
            self._close(None, None, None)
            raise
        self._active = True
        return self.trace

    # -- attention ---------------------------------------------------------------------------
    def _use_recompute(self, attention: list[str], named: dict[str, torch.nn.Module]) -> bool:
        """Decide between recomputing from recorded queries/keys and switching to eager."""
        impl = self._attention_impl
        if impl == "eager":
            return False
        needs_weights = self._flags["grads"] or self._consumer is not None
        if needs_weights:
            if impl == "recompute":
                raise ValueError(
                    "attention_impl='recompute' cannot give gradients of attention maps or feed an "
                    "attention_consumer (both need the weights inside the forward); use attention_impl='eager'"
                )
            return False
        reason = recording_unsupported_reason(self.model, {n: named[n] for n in attention})
        if reason is None:
            return True
        if impl == "recompute":
            raise RuntimeError(f"attention_impl='recompute' is not possible: {reason}; use attention_impl='eager'")
        warnings.warn(
            f"llmdbg.capture: attention maps come from eager attention instead of the model's own kernel: {reason}",
            stacklevel=4,
        )
        return False

    def _start_attention(self, attention: list[str], named: dict[str, torch.nn.Module]) -> None:
        layout = self.trace.layout if self.trace is not None else None
        if self._attn_query is not None:
            self._attn_query.layer_indices(len(attention))  # a layer that does not exist fails here
        if self._attn_mode != "maps" or self._attn_query != AttentionQuery(
            reduce="mean" if self._head_mean else None
        ) or self._recompute:
            self._recorder = AttentionRecorder(
                self._attn_mode,
                self._attn_query,
                attention,
                self._add_map,
                verify=self._verify and self._recompute,
                row_slice=self._tokens,
            )
            self._recorder.stream_of = self._streams_of(attention)
            assert self.trace is not None
            self.trace._attention_stats = self._recorder.stats
            self._special_ids = _special_ids(self.model, self._tokenizer)
        if self._recompute:
            self._recording = recording_attention(self.model, {n: named[n] for n in attention}, self._recorder)
            self._recording.__enter__()
            return
        for layer, name in enumerate(attention):
            hook = self._attention_hook(name, layout.attention_index if layout else 1, layer)
            self._handles.append(named[name].register_forward_hook(hook, with_kwargs=True))
        self._eager = eager_attention(self.model)
        self._eager.__enter__()

    def _streams_of(self, attention: list[str]) -> dict[str, str]:
        """Which input sequence each attention module's keys are: decoder self-attention of an
        encoder-decoder reads decoder_input_ids, everything else input_ids."""
        layout = self.trace.layout if self.trace is not None else None
        if layout is None or "decoder" not in layout.stacks or "encoder" not in layout.stacks:
            return {}
        decoder_blocks = set(layout.stacks["decoder"])
        cross = set(layout.cross_attention)
        return {
            a: "decoder_input_ids"
            for b, a in zip(layout.blocks, layout.attention)
            if b in decoder_blocks and a not in cross
        }

    def _add_map(self, name: str, maps: np.ndarray) -> None:
        if not self._active:
            return
        self._synced = False
        self._store.add(name + ATTN_SUFFIX, torch.from_numpy(maps), keep=not self._stats_only, stats=self._flags["stats"])

    def _prepare_attention(self, bound: dict[str, Any]) -> None:
        """Before each forward: the special-token flags and first real position of each input
        stream, and the memory estimate checked against max_bytes."""
        recorder = self._recorder
        assert recorder is not None
        shapes: dict[str, tuple[int, int]] = {}
        for stream, mask_key in (("input_ids", "attention_mask"), ("decoder_input_ids", "decoder_attention_mask")):
            ids, mask = bound.get(stream), bound.get(mask_key)
            embeds = bound.get("inputs_embeds" if stream == "input_ids" else "decoder_inputs_embeds")
            source = ids if isinstance(ids, torch.Tensor) else embeds if isinstance(embeds, torch.Tensor) else None
            if source is None or source.dim() < 2:
                continue
            b, t = int(source.shape[0]), int(source.shape[1])
            shapes[stream] = (b, t)
            special = None
            if isinstance(ids, torch.Tensor) and self._special_ids:
                special = np.isin(ids.detach().cpu().numpy(), list(self._special_ids))
            first = None
            if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape == (b, t):
                first = (mask.detach().cpu().numpy() != 0).argmax(axis=1).astype(np.int64)
            recorder.streams[stream] = (special, first)
        if self._max_bytes is None or "input_ids" not in shapes:
            return
        enc = shapes["input_ids"]
        dec = shapes.get("decoder_input_ids", enc)
        cross = set(self.trace.layout.cross_attention) if self.trace and self.trace.layout else set()
        layers = []
        for name in recorder.names:
            b, tq = dec if recorder.stream_of.get(name) == "decoder_input_ids" or name in cross else enc
            tk = enc[1] if name in cross else tq
            layers.append(LayerShape(b, tq, tk))
        est = estimate(
            self.model,
            self._attn_mode,
            self._attn_query,
            layers,
            recompute=self._recompute,
            itemsize=self._itemsize,
            threads=resolve_n_jobs(None),
            row_slice=self._tokens,
        )
        held = self._store.nbytes
        if held + est.stored_bytes > self._max_bytes:
            suggestion = (
                "attentions='stats' (per-query statistics only) or an llmdbg.AttentionQuery with fewer layers, "
                "heads or rows"
                if self._attn_mode == "maps"
                else "fewer layers (llmdbg.AttentionQuery(layers=...)) or a larger max_bytes"
            )
            raise _core.CaptureBudgetError(
                f"this forward's attention capture needs {est} on top of {held / 2**30:.3g} GiB already held, "
                f"more than max_bytes={self._max_bytes:,} bytes; pass {suggestion}. "
                "llmdbg.estimate_memory(model, inputs, attentions=...) gives the figure beforehand."
            )

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
            if self._recording is not None:
                recording, self._recording = self._recording, None
                recording.__exit__(exc_type, exc, tb)
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
    attentions : bool, "stats" or AttentionQuery
        Attention of every layer (Hugging Face models only), recomputed from the queries and keys
        the model's own kernel (SDPA, flash, eager) receives, so the model's outputs are bit for
        bit those of an uncaptured run (see ``attention_impl``):

        - ``True``: full maps ``(B, H, T_q, T_k)`` in ``trace.attentions`` (``(B, T_q, T_k)`` with
          ``reduce="head_mean"``; a token selection in ``reduce`` keeps those query rows);
        - ``"stats"``: per-query statistics only, ``trace.attention_stats[layer]`` maps
          ``entropy``, ``max_prob``, ``sink_mass`` and ``special_mass`` to ``(B, H, T_q)``
          float32 arrays (O(L·B·H·T) memory instead of O(L·B·H·T²));
        - :class:`llmdbg.AttentionQuery`: maps of chosen layers, heads and query rows only,
          optionally fused over heads.

        Probabilities are recomputed in float32 with float64 sums; they match eager attention's
        to about 1e-7 in float32. The memory needed is checked against ``max_bytes`` before the
        forward (see :func:`llmdbg.estimate_memory`).
    attention_impl : {"auto", "recompute", "eager"}
        ``"recompute"`` records each attention call through transformers' ``AttentionInterface``
        and recomputes what was asked in C++ (CPU) or torch (GPU) tiles; it raises when the model
        cannot be recorded. ``"eager"`` switches the model to eager attention inside the block
        (restored afterwards) and reads the weights it returns; eager and SDPA logits differ by
        about 1e-7 to 1e-3. ``"auto"`` recomputes wherever the model supports it and falls back
        to eager with a warning naming why; it also takes eager when the weights must be in the
        autograd graph (``grads=True``) or go to an ``attention_consumer``.
    verify : bool
        With the recompute path, check each call: a sample of 8 query rows of the recomputed
        probabilities times the values must reproduce the kernel's own output within 1e-4
        (float32) or 2e-2 (bfloat16/float16) of ``max |V|``; raises
        :class:`llmdbg.VerificationError` otherwise.
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
        ``model`` is not a ``torch.nn.Module``; ``attentions`` on a non-HF model; bad dtype.
    ValueError
        A pattern matches nothing; nothing to capture; meta-device or offloaded parameters;
        bad ``reduce`` or ``max_bytes``; ``attentions="stats"`` with ``reduce="head_mean"``; an
        AttentionQuery layer, head or row that does not exist (the layer before the forward, heads
        and rows when the call shows the sizes).
    RuntimeError
        A capture is already active on this model (hooks would stack);
        ``attention_impl="recompute"`` on a model whose attention calls cannot be recorded.
    llmdbg.CaptureBudgetError
        Before the forward, when the estimate of the attention capture exceeds ``max_bytes``.
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
        attention_impl=attention_impl,
        verify=verify,
    )
