"""One shard of a run: tokenise, sort by length, batch, compute, and assemble the records.

A shard is a contiguous range of example ids. Its examples are checked one by one (empty and
undecodable texts are recorded as skipped, over-long ones truncated with a flag), batched by
length so padding stays small, and the records come back in example-id order whatever the
batching was. A batch that fails is retried one example at a time, so one bad example costs
its own record (``status="error"`` with the reason) and never the job.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .._internal.modes import device_of
from .tasks import BatchOutput, Plan, compute_batch

__all__ = ["ShardOutput", "conform", "max_length_of", "preflight", "process_shard"]

#: Types of scalar columns that may hold only nulls in a shard (no label, every example skipped).
SCALAR_TYPES = {
    "loss": pa.float64(),
    "perplexity": pa.float64(),
    "probability": pa.float64(),
    "prediction": pa.int64(),
    "prediction_text": pa.string(),
    "correct": pa.bool_(),
    "first_nonfinite_layer": pa.int64(),
    "attribution_target": pa.int64(),
}
#: Vector columns whose length varies between examples (top-k of a short text): variable lists.
VARIABLE_WIDTH = ("attribution_positions", "attribution_scores", "attribution_tokens")
#: Examples tried by :func:`preflight` before a failure is taken to be the job's, not the data's.
PREFLIGHT_TRIES = 3


@dataclasses.dataclass
class ShardOutput:
    """Records of one shard (one row per example, ``example_id`` order), the activations cached
    for it (module -> ``(rows, D)`` tensor, rows in record order), the logical shapes of the
    flattened vector columns, and the number of real tokens the model saw."""

    table: pa.Table
    activations: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    tokens: int


def max_length_of(model: torch.nn.Module, tokenizer: Any, max_length: int | None) -> int:
    """The longest input the run feeds the model: ``max_length`` if given, else the smaller of
    the tokenizer's ``model_max_length`` and the config's ``max_position_embeddings`` (values
    over 10^7 are the tokenizer's "no limit" placeholder and are ignored)."""
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        return max_length
    limits = [getattr(tokenizer, "model_max_length", None)]
    config = getattr(model, "config", None)
    limits += [getattr(config, "max_position_embeddings", None), getattr(config, "n_positions", None)]
    real = [int(v) for v in limits if isinstance(v, int) and 1 < v < 10**7]
    return min(real) if real else 512


def process_shard(
    model: torch.nn.Module,
    tokenizer: Any,
    ids: list[int],
    texts: list[Any],
    labels: list[Any] | None,
    plan: Plan,
    *,
    batch_size: int,
    max_length: int,
    on_batch: Callable[[int, int], None] = lambda examples, tokens: None,
) -> ShardOutput:
    """Compute the records of one shard (see the module docstring).

    Parameters
    ----------
    ids, texts, labels
        The shard's example ids, texts and labels (or None), aligned.
    on_batch : callable
        Called after each batch with (examples, real tokens), for progress bars.
    """
    n = len(ids)
    status, reason = ["ok"] * n, [""] * n
    n_tokens, truncated = [0] * n, [False] * n
    good: list[int] = []
    for i, text in enumerate(texts):
        why = _bad_text(text)
        if why:
            status[i], reason[i] = "skipped", why
        else:
            good.append(i)
    lengths = _token_lengths(tokenizer, [texts[i] for i in good])
    for i, length in zip(good, lengths):
        n_tokens[i] = min(length, max_length)
        truncated[i] = length > max_length
        if truncated[i]:
            reason[i] = f"truncated from {length} to {max_length} tokens"
    # Longest first: the largest batch (memory peak) comes first, and equal lengths pad little.
    order = sorted(good, key=lambda i: (-n_tokens[i], i))
    per_example: dict[int, dict[str, Any]] = {}
    acts: dict[int, dict[str, torch.Tensor]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    compute = functools.partial(
        _encode_and_compute, model, tokenizer, texts, labels, plan, max_length, device_of(model)
    )
    tokens_seen = 0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        results = _run_chunk(compute, chunk)
        for i, res in zip(chunk, results):
            if isinstance(res, Exception):
                status[i], reason[i] = "error", f"{type(res).__name__}: {res}"
                continue
            out, k = res
            per_example[i] = {name: values[k] for name, values in out.columns.items()}
            acts[i] = {name: rows[k] for name, rows in out.activations.items()}
            shapes.update(out.shapes)
            tokens_seen += n_tokens[i]
        on_batch(len(chunk), sum(n_tokens[i] for i in chunk))
    table = _assemble(ids, status, reason, n_tokens, truncated, labels, per_example)
    if plan.tasks.count("activations"):
        table = _with_activation_offsets(table, acts, n)
    return ShardOutput(table, _stack_activations(acts, n), shapes, tokens_seen)


def _bad_text(text: Any) -> str:
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            return "not UTF-8 text"
        return "bytes, not str: decode the data first"
    if not isinstance(text, str):
        return f"not text ({type(text).__name__})"
    if not text.strip():
        return "empty text"
    return ""


def _token_lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    if not texts:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sequence longer than the maximum": we truncate ourselves
        enc = tokenizer(texts, truncation=False, padding=False, verbose=False)
    return [len(x) for x in enc["input_ids"]]


def _run_chunk(
    compute: Callable[[list[int]], BatchOutput], chunk: list[int]
) -> list[tuple[BatchOutput, int] | Exception]:
    """Outputs of one batch as ``(batch output, row)`` per example; when the batch fails, each
    example alone, so a failing example costs only its own record (its exception)."""
    out = _attempt(compute, chunk)
    if not isinstance(out, Exception):
        return [(out, k) for k in range(len(chunk))]
    if len(chunk) == 1:
        return [out]
    alone = [_attempt(compute, [i]) for i in chunk]
    return [r if isinstance(r, Exception) else (r, 0) for r in alone]


def _attempt(compute: Callable[[list[int]], BatchOutput], chunk: list[int]) -> BatchOutput | Exception:
    try:
        return compute(chunk)
    except MemoryError:  # the machine's problem, not the example's
        raise
    except Exception as exc:  # recorded per example; the job goes on
        return exc


def _encode_and_compute(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: list[Any],
    labels: list[Any] | None,
    plan: Plan,
    max_length: int,
    device: torch.device,
    chunk: list[int],
) -> BatchOutput:
    enc = tokenizer(
        [texts[i] for i in chunk], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    batch = {k: v.to(device) for k, v in enc.items()}
    return compute_batch(model, tokenizer, batch, plan, None if labels is None else [labels[i] for i in chunk])


def _assemble(
    ids: list[int],
    status: list[str],
    reason: list[str],
    n_tokens: list[int],
    truncated: list[bool],
    labels: list[Any] | None,
    per_example: dict[int, dict[str, Any]],
) -> pa.Table:
    n = len(ids)
    cols: dict[str, pa.Array] = {
        "example_id": pa.array(ids, pa.int64()),
        "status": pa.array(status, pa.string()),
        "reason": pa.array(reason, pa.string()),
        "n_tokens": pa.array(n_tokens, pa.int64()),
        "truncated": pa.array(truncated, pa.bool_()),
    }
    if labels is not None:
        cols["label"] = _label_array(labels)
    names = list(dict.fromkeys(k for rec in per_example.values() for k in rec))
    for name in names:
        values = [per_example[i].get(name) if i in per_example else None for i in range(n)]
        cols[name] = _column(name, values)
    return pa.table(cols)


def _label_array(labels: list[Any]) -> pa.Array:
    if all(lab is None or (isinstance(lab, (int, np.integer)) and not isinstance(lab, bool)) for lab in labels):
        return pa.array([None if lab is None else int(lab) for lab in labels], pa.int64())
    return pa.array([None if lab is None else str(lab) for lab in labels], pa.string())


def _column(name: str, values: list[Any]) -> pa.Array:
    """A record column: vectors become fixed-size lists (DuckDB, Ray and pandas read them as
    arrays), scalars their natural type; a missing entry (a skipped example) is null."""
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, np.ndarray):
        width = sample.shape[0]
        typ = pa.from_numpy_dtype(sample.dtype)
        if name not in VARIABLE_WIDTH and all(v is None or v.shape == (width,) for v in values):
            flat = np.concatenate([np.zeros(width, sample.dtype) if v is None else v for v in values])
            missing = [v is None for v in values]
            mask = pa.array(missing, pa.bool_()) if any(missing) else None
            return pa.FixedSizeListArray.from_arrays(pa.array(flat, typ), width, mask=mask)
        return pa.array([None if v is None else v.tolist() for v in values], pa.list_(typ))
    if isinstance(sample, list):
        return pa.array(values, pa.list_(pa.string()))
    if name in SCALAR_TYPES:
        return pa.array(values, SCALAR_TYPES[name])
    return pa.array(values)


def _stack_activations(acts: dict[int, dict[str, torch.Tensor]], n: int) -> dict[str, torch.Tensor]:
    """Module -> one ``(rows, D)`` tensor, the examples' rows in example order (see the record's
    ``activations_offset``/``activations_rows``)."""
    names = list(dict.fromkeys(k for a in acts.values() for k in a))
    return {name: torch.cat([acts[i][name] for i in range(n) if i in acts]) for name in names} if acts else {}


def _with_activation_offsets(table: pa.Table, acts: dict[int, dict[str, torch.Tensor]], n: int) -> pa.Table:
    """Add ``activations_offset`` (first row of the example in the shard's activation tensors)
    and ``activations_rows`` (its row count); null for examples without activations."""
    offsets: list[int | None] = []
    rows: list[int | None] = []
    at = 0
    for i in range(n):
        if acts.get(i):
            c = int(next(iter(acts[i].values())).shape[0])
            offsets.append(at)
            rows.append(c)
            at += c
        else:
            offsets.append(None)
            rows.append(None)
    table = table.append_column("activations_offset", pa.array(offsets, pa.int64()))
    return table.append_column("activations_rows", pa.array(rows, pa.int64()))


def preflight(
    model: torch.nn.Module,
    tokenizer: Any,
    ids: list[int],
    texts: list[Any],
    labels: list[Any] | None,
    plan: Plan,
    *,
    max_length: int,
) -> ShardOutput:
    """Run the tasks on the first valid examples, one at a time, before the job starts.

    Returns the first success (its table's schema is the schema of every shard). When the first
    :data:`PREFLIGHT_TRIES` valid examples all fail, the tasks cannot run on this model (a
    masked LM asked for ``"loss"``, a model without a head asked for ``"lens"``): raise the first
    failure as a ValueError naming it, instead of recording the same error for every example.

    Raises
    ------
    ValueError
        No valid text in the data, or the tasks fail on this model.
    """
    tried: list[str] = []
    for i, text in enumerate(texts):
        if _bad_text(text):
            continue
        lab = None if labels is None else [labels[i]]
        out = process_shard(model, tokenizer, [ids[i]], [text], lab, plan, batch_size=1, max_length=max_length)
        if out.table.column("status")[0].as_py() == "ok":
            return out
        tried.append(f"example {ids[i]}: {out.table.column('reason')[0].as_py()}")
        if len(tried) >= PREFLIGHT_TRIES:
            break
    if not tried:
        raise ValueError("data holds no usable text: every example is empty, None or not UTF-8")
    raise ValueError(f"tasks {list(plan.tasks)} fail on this model ({type(model).__name__}): {tried[0]}")


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in its order and types: a shard whose
    examples were all skipped lacks the task columns, and Parquet readers take one file's
    schema for the whole directory."""
    cols = []
    for field in schema:
        if field.name in table.column_names:
            cols.append(table.column(field.name).cast(field.type))
        else:
            cols.append(pa.nulls(table.num_rows, field.type))
    extra = [n for n in table.column_names if n not in schema.names]
    if extra:  # a task's bug: every shard must have the preflight's columns
        raise AssertionError(f"shard columns {extra} are not in the run's schema")
    return pa.table(cols, schema=schema)
