"""The read side of a capture: numpy views of what the hooks stored.

A :class:`Trace` is what ``with llmdbg.capture(...) as trace:`` hands you. Arrays are views of the
C++ capture store's host buffers (no extra copy) when a module ran once; when it ran several times
(several forward passes inside one capture) the calls are concatenated along the batch axis on
first access, and :meth:`Trace.calls` gives them one by one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .stats import ActivationStats

if TYPE_CHECKING:
    from ..adapters.layout import ModelLayout
    from .generation import Generation

# Suffixes that separate the kinds of tensors captured for one module.
INPUT_SUFFIX = ":input"
GRAD_SUFFIX = ":grad"
ATTN_SUFFIX = ":attn"
ATTN_GRAD_SUFFIX = ":attn_grad"
_SUFFIXES = (INPUT_SUFFIX, GRAD_SUFFIX, ATTN_SUFFIX, ATTN_GRAD_SUFFIX)


class _ArrayMapping(Mapping):
    """name -> array for one kind of captured tensor (outputs, inputs or gradients)."""

    def __init__(self, trace: Trace, suffix: str) -> None:
        self._trace = trace
        self._suffix = suffix

    def _names(self) -> list[str]:
        keys = self._trace._store.keys()
        if self._suffix:
            return [k[: -len(self._suffix)] for k in keys if k.endswith(self._suffix)]
        return [k for k in keys if not k.endswith(_SUFFIXES) and self._trace._has_arrays(k)]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names():
            raise KeyError(_missing_message(name, self._names()))
        return self._trace._array(name + self._suffix)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"<{len(self)} arrays: {', '.join(self._names()[:6])}{', ...' if len(self) > 6 else ''}>"


class _StatsMapping(Mapping):
    def __init__(self, trace: Trace) -> None:
        self._trace = trace

    def _names(self) -> list[str]:
        store = self._trace._store
        return [k for k in store.keys() if store.has_stats(k)]

    def __getitem__(self, key: str) -> ActivationStats:
        if key not in self._names():
            raise KeyError(_missing_message(key, self._names()))
        return ActivationStats.from_dict(self._trace._store.summary(key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def _missing_message(name: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, names, n=5, cutoff=0.3)
    hint = f"; closest: {close}" if close else (f"; captured: {names[:8]}" if names else "; nothing was captured")
    return f"nothing captured under {name!r}{hint}"


class Trace:
    """What one :func:`llmdbg.capture` recorded.

    Attributes
    ----------
    activations : Mapping[str, numpy.ndarray]
        Module output by qualified module name, e.g. ``trace.activations["encoder.layer.3"]``,
        shape as the module returned it (typically ``(B, T, D)``) after any ``reduce``.
    inputs : Mapping[str, numpy.ndarray]
        Module inputs (first tensor argument), when captured with ``inputs=True``.
    grads : Mapping[str, numpy.ndarray]
        Gradients of module outputs, when captured with ``grads=True`` and a backward pass ran
        inside the ``with`` block.
    stats : Mapping[str, ActivationStats]
        Statistics of every captured tensor before reduction, merged over calls, by store key:
        the module name for outputs, ``name + ":input"``, ``name + ":grad"``, and
        ``attention_module + ":attn"`` for attention maps.
    layout : ModelLayout or None
        The model's blocks, attention modules, etc., when the adapter recognised it.
    """

    def __init__(
        self,
        store: Any,
        *,
        layout: ModelLayout | None,
        attention_modules: list[str],
        hidden_state_modules: list[str],
        finalize: Callable[[], None],
    ) -> None:
        self._store = store
        self._finalize = finalize
        self._cache: dict[str, np.ndarray] = {}
        self._masks: list[np.ndarray] = []
        self._input_ids: list[np.ndarray] = []
        self._tokens: list[list[str]] = []
        self.layout = layout
        self.attention_modules = list(attention_modules)
        self.hidden_state_modules = list(hidden_state_modules)
        self.activations: Mapping[str, np.ndarray] = _ArrayMapping(self, "")
        self.inputs: Mapping[str, np.ndarray] = _ArrayMapping(self, INPUT_SUFFIX)
        self.grads: Mapping[str, np.ndarray] = _ArrayMapping(self, GRAD_SUFFIX)
        self.stats: Mapping[str, ActivationStats] = _StatsMapping(self)
        # layer -> statistic -> one (B, H, T_q) array per call; filled by the attention recorder
        self._attention_stats: dict[int, dict[str, list[np.ndarray]]] = {}
        self._attention_causal: dict[int, bool] = {}
        # Attention modules in the call order of one forward, set by the capture (a module called
        # several times per forward appears once per call).
        self._attention_order: list[str] = []
        self._generations: list[Generation] = []

    # -- recording (called by the capture hooks) -------------------------------------------
    def _record_inputs(self, input_ids: Any, attention_mask: Any, tokenizer: Any) -> None:
        if attention_mask is not None:
            self._masks.append(attention_mask.detach().to("cpu").numpy().copy())
        if input_ids is not None:
            ids = input_ids.detach().to("cpu").numpy().copy()
            self._input_ids.append(ids)
            if tokenizer is not None:
                self._tokens.extend(tokenizer.convert_ids_to_tokens(row) for row in ids.tolist())
        self._cache.clear()

    # -- reading ---------------------------------------------------------------------------
    def _has_arrays(self, key: str) -> bool:
        return len(self._store.tensors(key)) > 0

    def calls(self, key: str) -> list[np.ndarray]:
        """The arrays captured under ``key``, one per call of the module, in call order."""
        self._finalize()
        if key not in self._store.keys():
            raise KeyError(_missing_message(key, self._store.keys()))
        return [t.numpy() for t in self._store.tensors(key)]

    def _array(self, key: str) -> np.ndarray:
        if key in self._cache:
            return self._cache[key]
        parts = self.calls(key)
        if not parts:
            raise KeyError(f"only statistics were captured under {key!r} (reduce='stats')")
        if len(parts) == 1:
            out = parts[0]
        else:
            shapes = {p.shape[1:] for p in parts}
            if len(shapes) != 1 or parts[0].ndim == 0:
                raise ValueError(
                    f"{key!r} ran {len(parts)} times with different shapes "
                    f"{[p.shape for p in parts]}; read them one by one with trace.calls({key!r})"
                )
            out = np.concatenate(parts, axis=0)
        self._cache[key] = out
        return out

    @property
    def attentions(self) -> list[np.ndarray]:
        """Attention maps per layer, in layer order: ``(B, H, T_q, T_k)`` float arrays, or
        ``(B, T_q, T_k)`` with ``reduce="head_mean"``. Rows (queries) sum to 1 over keys. A module
        that runs several times in one forward (ALBERT's shared layer, Perceiver's repeated
        self-attention block) gives one entry per call, in call order, as the model's own
        ``output_attentions`` does."""
        order = self._attention_order
        if len(set(order)) < len(order):
            return self._attentions_per_call(order)
        return [
            self._array(m + ATTN_SUFFIX)
            for m in self.attention_modules
            if m + ATTN_SUFFIX in self._store.keys() and self._has_arrays(m + ATTN_SUFFIX)
        ]

    def _attentions_per_call(self, order: list[str]) -> list[np.ndarray]:
        """Entry ``i`` of ``order`` (the ``j``-th call of its module in a forward, of ``n``): calls
        ``j, j + n, ...`` of the module, one per forward, concatenated along the batch."""
        out, seen = [], dict.fromkeys(order, 0)
        for m in order:
            j, n = seen[m], order.count(m)
            seen[m] += 1
            key = m + ATTN_SUFFIX
            if key not in self._store.keys() or not self._has_arrays(key):
                continue
            parts = self.calls(key)[j::n]
            if len({p.shape[1:] for p in parts}) > 1:
                raise ValueError(
                    f"{key!r} ran with different shapes {[p.shape for p in parts]}; read them one by one "
                    f"with trace.calls({key!r})"
                )
            out.append(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0))
        return out

    @property
    def attention_stats(self) -> dict[int, dict[str, np.ndarray]]:
        """With ``attentions="stats"``: per attention layer (index in ``attention_modules``), the
        per-query statistics as ``(B, H, T_q)`` float32 arrays (calls concatenated along the batch):

        - ``entropy``: ``-Σ_j p_ij log p_ij`` in nats;
        - ``max_prob``: ``max_j p_ij``;
        - ``sink_mass``: ``p_ij`` at the first real token (key 0 without padding);
        - ``special_mass``: ``Σ p_ij`` over special-token keys (NaN when they are unknown).

        Fully masked query rows (left padding under a causal mask) are NaN."""
        out = {}
        for layer, stats in sorted(self._attention_stats.items()):
            shapes = {p.shape[1:] for p in stats["entropy"]}
            if len(shapes) > 1:  # e.g. generate(): a prefill, then one query per step
                raise ValueError(
                    f"attention layer {layer} ran {len(stats['entropy'])} times with different shapes "
                    f"{sorted(shapes)}; read the calls one by one with trace.attention_stats_calls({layer})"
                )
            out[layer] = {
                name: parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0) for name, parts in stats.items()
            }
        return out

    def attention_stats_calls(self, layer: int) -> list[dict[str, np.ndarray]]:
        """With ``attentions="stats"``: the statistics of each call of attention layer ``layer``, in
        call order, each a mapping of name to a ``(B, H, T_q)`` array."""
        if layer not in self._attention_stats:
            raise KeyError(f"no attention statistics for layer {layer}; layers: {sorted(self._attention_stats)}")
        stats = self._attention_stats[layer]
        return [{name: parts[i] for name, parts in stats.items()} for i in range(len(stats["entropy"]))]

    @property
    def generations(self) -> list[Generation]:
        """Every ``model.generate()`` call made inside the capture, in order (see
        :class:`llmdbg.Generation`)."""
        self._finalize()
        return list(self._generations)

    @property
    def generation(self) -> Generation:
        """The one ``model.generate()`` call made inside the capture: stitched activations and
        attention, per-step probabilities, ranks, entropies and top-k (:class:`llmdbg.Generation`)."""
        if len(self._generations) != 1:
            raise ValueError(
                f"the capture saw {len(self._generations)} generate() calls; "
                + (
                    "call model.generate(...) inside the with block"
                    if not self._generations
                    else "read trace.generations[i]"
                )
            )
        self._finalize()
        return self._generations[0]

    @property
    def attention_grads(self) -> list[np.ndarray]:
        """Gradients of the attention maps (same shapes), with ``grads=True`` and a backward."""
        return [
            self._array(m + ATTN_GRAD_SUFFIX)
            for m in self.attention_modules
            if m + ATTN_GRAD_SUFFIX in self._store.keys()
        ]

    @property
    def hidden_states(self) -> list[np.ndarray]:
        """With ``hidden_states=True``: per stack, the embedding output (the first block's
        input, as Hugging Face's ``hidden_states[0]``), then every block's output, each
        ``(B, T, D)``; encoder-decoders give the encoder stack, then the decoder stack. Unlike
        some models' ``hidden_states[-1]`` (GPT-2 applies ``ln_f`` there), the last entry is the
        raw block output, before any final norm. Blocks that run on a window-padded sequence
        (Longformer, LED's encoder) are cut back to the input length, and XLM's and Flaubert's
        padding positions zeroed, as the model does."""
        length = self._input_ids[-1].shape[1] if self._input_ids else None
        fix = self.layout.as_hidden_state if self.layout is not None else lambda _, a, __, ___: a
        same = len({m.shape[1:] for m in self._masks}) == 1
        mask = self.attention_mask if same else None  # XLM zeroes padding after each block
        return [fix(m, self._array(m), length, mask) for m in self.hidden_state_modules if m in self._store.keys()]

    @property
    def attention_mask(self) -> np.ndarray | None:
        """The ``attention_mask`` the model was called with, ``(B, T)``, or None."""
        return np.concatenate(self._masks, axis=0) if self._masks else None

    @property
    def input_ids(self) -> np.ndarray | None:
        """The ``input_ids`` the model was called with, ``(B, T)``, or None."""
        if not self._input_ids:
            return None
        if len({a.shape[1:] for a in self._input_ids}) != 1:
            raise ValueError("the forward calls had different sequence lengths; see trace.calls")
        return np.concatenate(self._input_ids, axis=0)

    @property
    def tokens(self) -> list[list[str]] | None:
        """Token strings per sequence, when ``capture(..., tokenizer=...)`` was given."""
        return list(self._tokens) if self._tokens else None

    @property
    def nbytes(self) -> int:
        """Bytes held by the captured host copies."""
        return int(self._store.nbytes)

    def keys(self) -> list[str]:
        """Every store key, in the order the hooks first fired."""
        return list(self._store.keys())

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save everything this trace holds to the directory ``path``, for :func:`llmdbg.load`.

        The format is open and pickle-free (``docs/saving.md``): ``meta.json`` (module names,
        tokens, the layout, scalars) and ``arrays.safetensors`` (every call of every captured
        tensor, the statistics with their histograms, the inputs, the attention statistics and
        each ``generate()`` call), bit for bit. Loading needs no model. Called inside the ``with``
        block, it saves what was recorded so far.

        Parameters
        ----------
        path : str or os.PathLike
            A directory to create (an existing empty one is filled). It is written next to its
            place and renamed into it, so it never holds half a trace.
        overwrite : bool
            Replace an existing saved llmdbg object at ``path`` (only once the new one is
            complete). Anything else already there is never replaced.

        Returns
        -------
        pathlib.Path
            ``path``.

        Examples
        --------
        >>> trace.save("runs/before")  # doctest: +SKIP
        >>> again = llmdbg.load("runs/before")  # doctest: +SKIP
        """
        from .persist import save_trace

        return save_trace(self, path, overwrite=overwrite)

    def stats_table(self) -> Any:
        """One row per captured tensor with its statistics, as a pandas DataFrame."""
        import pandas as pd

        rows = []
        for key, s in self.stats.items():
            row = {"key": key, **s.as_dict()}
            row.pop("histogram")
            rows.append(row)
        return pd.DataFrame(rows).set_index("key") if rows else pd.DataFrame()

    def __repr__(self) -> str:
        return (
            f"<llmdbg.Trace: {len(self.activations)} activations, "
            f"{len(self.attention_modules)} attention modules, {self.nbytes / 2**20:.1f} MiB>"
        )

    #: Rows shown by the notebook display; the full table is :meth:`stats_table`.
    _HTML_ROWS = 12

    def _repr_html_(self) -> str:
        """A compact notebook view: what was captured, then statistics of the first tensors,
        with non-finite values in red. Inline HTML only (no script, works offline)."""
        from .._internal import html as h

        stats = list(self.stats.items())
        mask = self.attention_mask
        shape = f"batch {mask.shape[0]} × {mask.shape[1]} tokens, " if mask is not None else ""
        bad = sum(1 for _, s in stats if s.nan_count or s.inf_count)
        alarm = f', <span style="{h.BAD}">{bad} with NaN/Inf</span>' if bad else ", all finite"
        summary = (
            f"{shape}{len(self.activations)} activations, {len(self.attentions)} attention maps, "
            f"{len(self._attention_stats)} layers of attention statistics, "
            f"{len(self.hidden_states)} hidden states, {self.nbytes / 2**20:.1f} MiB on the host; "
            f"statistics of {len(stats)} tensors{alarm}"
        )
        rows = []
        for key, s in stats[: self._HTML_ROWS]:
            nonfinite = s.nan_count + s.inf_count
            rows.append(
                [
                    f"<code>{h.esc(key)}</code>",
                    h.fmt(s.count),
                    h.fmt(s.mean),
                    h.fmt(s.std),
                    h.fmt(s.absmax),
                    f"{100 * s.zero_fraction:.1f}%",
                    f'<span style="{h.BAD}">{nonfinite:,}</span>' if nonfinite else "0",
                ]
            )
        body = h.table(["key", "count", "mean", "std", "absmax", "zeros", "NaN/Inf"], rows) if rows else ""
        more = len(stats) - len(rows)
        footer = (
            f"… {more} more; " if more > 0 else ""
        ) + "<code>trace.stats_table()</code> gives every row as a DataFrame"
        return h.box("llmdbg.Trace", summary, body, footer if rows else "")
