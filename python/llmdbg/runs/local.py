"""The local engine: every shard in this process, one model, a progress bar."""

from __future__ import annotations

import time
from typing import Any

import torch

from .._internal.modes import eval_mode
from .._internal.progress import progress_bar
from .data import Examples
from .shard import conform, process_shard
from .store import RunStore, write_shard
from .tasks import Plan

__all__ = ["run_local"]


def run_local(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Examples,
    plan: Plan,
    store: RunStore,
    shards: list[tuple[int, int, int]],
    *,
    batch_size: int,
    max_length: int,
    progress: bool,
) -> None:
    """Compute and write ``shards`` (``(shard, start, stop)`` ranges of example positions) in order."""
    total = sum(stop - start for _, start, stop in shards)
    t0, tokens = time.perf_counter(), 0
    with progress_bar(progress, total, "llmdbg.run", unit="ex") as bar, eval_mode(model):

        def on_batch(n: int, t: int) -> None:
            nonlocal tokens
            tokens += t
            bar.update(n)
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(tok_s=f"{tokens / elapsed:,.0f}", refresh=False)

        for shard, start, stop in shards:
            out = process_shard(
                model,
                tokenizer,
                examples.ids[start:stop],
                examples.texts[start:stop],
                None if examples.labels is None else examples.labels[start:stop],
                plan,
                batch_size=batch_size,
                max_length=max_length,
                on_batch=lambda n, t: on_batch(n, t),
            )
            # Skipped examples never reach a batch: count them too, so the bar ends at the total.
            skipped = out.table.num_rows - sum(1 for s in out.table.column("status").to_pylist() if s != "skipped")
            if skipped:
                bar.update(skipped)
            assert store.schema is not None
            info = write_shard(store.out, shard, conform(out.table, store.schema), out.activations)
            info["tokens"] = out.tokens
            store.record_shard(shard, info, out.shapes)
