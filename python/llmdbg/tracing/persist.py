"""``trace.save(path)`` and loading it back: a :class:`Trace` over arrays read from disk.

A trace reads the C++ capture store through five calls (``keys``, ``tensors``, ``has_stats``,
``summary``, ``nbytes``). Saving writes what they return: every store key with each of its calls
and its merged statistics (histogram included), plus what the trace keeps beside the store (the
model's inputs and tokens, the layout, the attention modules and their per-query statistics, and
every ``generate()`` call). Loading puts the same arrays behind :class:`SavedStore`, a pure-Python
store with that interface, so every function that accepts a Trace gives the same numbers on the
loaded one; no model is needed.

The format (``_internal/archive.py``): ``meta.json`` holds names, tokens, the layout and scalars;
``arrays.safetensors`` holds the arrays under the names below (``i`` the store key's index in
``meta["store"]``, ``j`` the call, ``g`` the generation)::

    store/<i>/<j>                       one call of store key i, as captured
    stats/<i>/ints, stats/<i>/floats    the statistics' integer and float fields (order in meta)
    stats/<i>/<field>                   array fields of the statistics (the histogram)
    masks/<j>, input_ids/<j>            the model's inputs, one per forward
    attention_stats/<layer>/<stat>/<j>  per-query attention statistics, one per call
    generations/<g>/<name>              sequences, the mask, beam indices, the step scores
    generations/<g>/encoder/<name>      an encoder-decoder's encoder inputs
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._internal.archive import read_archive, write_archive
from ..adapters.layout import ModelLayout
from .generation import Generation, _Stitched
from .trace import Trace

__all__ = ["SavedStore", "load_trace", "save_trace"]

KIND = "trace"
_SCORES = ("probabilities", "ranks", "entropies", "top_ids", "top_probs")


class _SavedCall:
    """One call of a saved store key: what a captured tensor offers the trace (``numpy()``)."""

    __slots__ = ("_array",)

    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    def numpy(self) -> np.ndarray:
        return self._array


class SavedStore:
    """A read-only capture store over loaded arrays, with the interface :class:`Trace` reads.

    Parameters
    ----------
    calls : dict of str to list of numpy.ndarray
        Store key -> its calls in order (empty when only statistics were kept), in the order the
        hooks first fired.
    summaries : dict of str to dict
        Store key -> the statistics dict :meth:`ActivationStats.from_dict` reads.
    nbytes : int
        Bytes the original capture held on the host.
    """

    saw_device_tensor = False

    def __init__(self, calls: dict[str, list[np.ndarray]], summaries: dict[str, dict[str, Any]], nbytes: int) -> None:
        self._calls = calls
        self._summaries = summaries
        self._nbytes = int(nbytes)

    def keys(self) -> list[str]:
        return list(self._calls)

    def tensors(self, key: str) -> list[_SavedCall]:
        if key not in self._calls:
            raise KeyError(f"nothing was captured under {key!r}")
        return [_SavedCall(a) for a in self._calls[key]]

    def has_stats(self, key: str) -> bool:
        return key in self._summaries

    def summary(self, key: str) -> dict[str, Any]:
        if key not in self._summaries:
            raise KeyError(f"no statistics were captured under {key!r}")
        # A fresh dict and arrays each time, as the C++ store returns: callers may keep or change them.
        return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in self._summaries[key].items()}

    @property
    def nbytes(self) -> int:
        return self._nbytes


# -- saving ------------------------------------------------------------------------------------------
def _stat_fields(summary: Mapping[str, Any]) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {"int": [], "float": [], "array": []}
    for name, value in summary.items():
        if isinstance(value, np.ndarray):
            fields["array"].append(name)
        elif isinstance(value, (bool, np.bool_)):
            raise TypeError(f"statistic {name!r} is a bool; the trace format has no place for it")
        elif isinstance(value, (int, np.integer)):
            fields["int"].append(name)
        elif isinstance(value, (float, np.floating)):
            fields["float"].append(name)
        else:
            raise TypeError(f"statistic {name!r} is a {type(value).__name__}; the trace format has no place for it")
    return fields


def _save_store(trace: Trace, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    store = trace._store
    keys, fields = [], None
    for i, key in enumerate(store.keys()):
        calls = [t.numpy() for t in store.tensors(key)]
        for j, a in enumerate(calls):
            arrays[f"store/{i}/{j}"] = a
        has = bool(store.has_stats(key))
        if has:
            s = store.summary(key)
            if fields is None:
                fields = _stat_fields(s)
            elif _stat_fields(s) != fields:
                raise ValueError(f"the statistics of {key!r} have other fields than the first key's")
            arrays[f"stats/{i}/ints"] = np.array([int(s[f]) for f in fields["int"]], dtype=np.int64)
            arrays[f"stats/{i}/floats"] = np.array([float(s[f]) for f in fields["float"]], dtype=np.float64)
            for f in fields["array"]:
                arrays[f"stats/{i}/{f}"] = np.asarray(s[f])
        keys.append({"key": key, "calls": len(calls), "stats": has})
    return {"store": keys, "stat_fields": fields, "nbytes": int(store.nbytes)}


def _save_generation(gen: Generation, g: int, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """A generation's arrays and fields. The raw step logits are not kept: what the Generation
    offers from them (probabilities, ranks, entropies, top-k) is computed here and saved."""
    gen._score("probabilities")  # computes every step score from the logits on first read
    assert gen._scores is not None
    prefix = f"generations/{g}/"
    arrays[prefix + "sequences"] = gen.sequences
    arrays[prefix + "attention_mask"] = gen._mask
    for name in _SCORES:
        arrays[prefix + name] = gen._scores[name]
    if gen.beam_indices is not None:
        arrays[prefix + "beam_indices"] = gen.beam_indices
    encoder = gen._encoder or {}
    for name, tensor in encoder.items():
        arrays[f"{prefix}encoder/{name}"] = tensor.detach().cpu().numpy()
    return {
        "prompt_length": gen.prompt_length,
        "n_generated": gen.n_generated,
        "beams": gen.beam_indices is not None,
        "encoder": list(encoder) if gen._encoder is not None else None,
        "unstitchable": gen._unstitchable,
        "before": _marks_to_json(gen._before),
        "after": _marks_to_json(gen._after),
    }


def _marks_to_json(marks: dict[str, Any]) -> dict[str, Any]:
    return {
        "keys": {str(k): int(v) for k, v in marks["keys"].items()},
        "stats": {str(k): int(v) for k, v in marks["stats"].items()},
        "forwards": int(marks["forwards"]),
    }


def save_trace(trace: Trace, path: Any, *, overwrite: bool = False) -> Path:
    """Save ``trace`` to the directory ``path`` (see :meth:`llmdbg.Trace.save`)."""
    if not isinstance(trace, Trace):
        raise TypeError(f"trace must be an llmdbg.Trace, got {type(trace).__name__}")
    # Device copies are asynchronous; inside the with block this also makes the snapshot complete
    # up to the last call that returned.
    trace._finalize()
    arrays: dict[str, np.ndarray] = {}
    meta = _save_store(trace, arrays)
    for name, parts in (("masks", trace._masks), ("input_ids", trace._input_ids)):
        for j, a in enumerate(parts):
            arrays[f"{name}/{j}"] = a
    attention_stats: dict[str, dict[str, int]] = {}
    for layer, stats in trace._attention_stats.items():
        attention_stats[str(layer)] = {}
        for stat, parts in stats.items():
            attention_stats[str(layer)][stat] = len(parts)
            for j, a in enumerate(parts):
                arrays[f"attention_stats/{layer}/{stat}/{j}"] = a
    meta.update(
        masks=len(trace._masks),
        input_ids=len(trace._input_ids),
        tokens=[list(row) for row in trace._tokens],
        layout=dataclasses.asdict(trace.layout) if trace.layout is not None else None,
        attention_modules=list(trace.attention_modules),
        hidden_state_modules=list(trace.hidden_state_modules),
        attention_order=list(trace._attention_order),
        attention_stats=attention_stats,
        attention_causal={str(k): bool(v) for k, v in trace._attention_causal.items()},
        generations=[_save_generation(gen, g, arrays) for g, gen in enumerate(trace._generations)],
    )
    return write_archive(path, KIND, meta, arrays, overwrite=overwrite)


# -- loading -----------------------------------------------------------------------------------------
def _layout_from_json(d: dict[str, Any] | None) -> ModelLayout | None:
    """The ModelLayout ``dataclasses.asdict`` wrote: JSON lists back to tuples."""
    if d is None:
        return None
    known = {f.name for f in dataclasses.fields(ModelLayout)}
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        if name not in known:
            continue  # a field this llmdbg does not know; the format version guards real changes
        if isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, dict):
            value = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        kwargs[name] = value
    return ModelLayout(**kwargs)


def _load_store(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> SavedStore:
    calls: dict[str, list[np.ndarray]] = {}
    summaries: dict[str, dict[str, Any]] = {}
    fields = meta["stat_fields"]
    for i, entry in enumerate(meta["store"]):
        key = entry["key"]
        calls[key] = [arrays[f"store/{i}/{j}"] for j in range(entry["calls"])]
        if entry["stats"]:
            ints, floats = arrays[f"stats/{i}/ints"], arrays[f"stats/{i}/floats"]
            s: dict[str, Any] = {f: int(v) for f, v in zip(fields["int"], ints.tolist(), strict=True)}
            s.update({f: float(v) for f, v in zip(fields["float"], floats.tolist(), strict=True)})
            s.update({f: arrays[f"stats/{i}/{f}"] for f in fields["array"]})
            summaries[key] = s
    return SavedStore(calls, summaries, meta["nbytes"])


def _marks_from_json(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "keys": {str(k): int(v) for k, v in d["keys"].items()},
        "stats": {int(k): int(v) for k, v in d["stats"].items()},
        "forwards": int(d["forwards"]),
    }


def _load_generation(trace: Trace, g: int, entry: dict[str, Any], arrays: dict[str, np.ndarray]) -> Generation:
    """A Generation rebuilt field by field, as ``Generation.__init__`` sets them, with the step
    scores already computed (the logits they came from were not saved)."""
    prefix = f"generations/{g}/"
    gen = Generation.__new__(Generation)
    gen._trace = trace
    gen._before, gen._after = _marks_from_json(entry["before"]), _marks_from_json(entry["after"])
    gen.n_generated = int(entry["n_generated"])
    gen.sequences = arrays[prefix + "sequences"]
    gen.prompt_length = int(entry["prompt_length"])
    gen.beam_indices = arrays[prefix + "beam_indices"] if entry["beams"] else None
    gen._rows = None if gen.beam_indices is None else torch.from_numpy(gen.beam_indices)
    gen.token_ids = gen.sequences[:, gen.prompt_length :]
    gen._logits = None
    gen._scores = {name: arrays[prefix + name] for name in _SCORES}
    names = entry["encoder"]
    gen._encoder = None if names is None else {n: torch.from_numpy(arrays[f"{prefix}encoder/{n}"]) for n in names}
    gen._unstitchable = entry["unstitchable"]
    gen._mask = arrays[prefix + "attention_mask"]
    gen.activations = _Stitched(gen._array_keys, gen._stitch_key)
    gen._stats_cache = None
    return gen


def load_trace(path: Any) -> Trace:
    """Load a trace saved with :meth:`llmdbg.Trace.save`; no model is needed.

    Parameters
    ----------
    path : str or os.PathLike
        The directory ``trace.save`` wrote.

    Returns
    -------
    Trace
        The same arrays, statistics, inputs, tokens, layout and generations as the saved trace;
        every function that accepts a Trace works on it.

    Raises
    ------
    ValueError
        ``path`` is not a saved trace, was saved by a newer llmdbg, or is corrupted.
    """
    meta, arrays = read_archive(path, [KIND])
    try:
        trace = Trace(
            _load_store(meta, arrays),
            layout=_layout_from_json(meta["layout"]),
            attention_modules=meta["attention_modules"],
            hidden_state_modules=meta["hidden_state_modules"],
            finalize=lambda: None,
        )
        trace._masks = [arrays[f"masks/{j}"] for j in range(meta["masks"])]
        trace._input_ids = [arrays[f"input_ids/{j}"] for j in range(meta["input_ids"])]
        trace._tokens = [list(row) for row in meta["tokens"]]
        trace._attention_stats = {
            int(layer): {
                stat: [arrays[f"attention_stats/{layer}/{stat}/{j}"] for j in range(n)] for stat, n in s.items()
            }
            for layer, s in meta["attention_stats"].items()
        }
        trace._attention_causal = {int(k): bool(v) for k, v in meta["attention_causal"].items()}
        trace._attention_order = list(meta["attention_order"])
        trace._generations = [_load_generation(trace, g, e, arrays) for g, e in enumerate(meta["generations"])]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{str(path)!r} is a corrupted saved trace: {type(e).__name__}: {e}") from None
    return trace
