"""The Ray engine: the same shard function, run by an actor pool through Ray Data.

The dataset handed to Ray has one row per shard (its id and its examples). ``map_batches`` with a
callable class creates ``num_workers`` actors; each builds the model once in ``__init__`` (from a
name, a factory, or the model object Ray ships it), then computes whole shards with
:func:`~llmdbg.runs.shard.process_shard` and writes them to ``out`` itself, atomically, exactly
as the local engine does. The driver only collects each shard's manifest entry. ``out`` must
therefore be a path every worker can write: any directory on one machine, a shared filesystem
(NFS, Lustre, a mounted bucket) on a cluster.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from .._internal.modes import eval_mode
from .._internal.progress import progress_bar
from .data import Examples
from .identity import model_identity
from .shard import PREFLIGHT_TRIES, _bad_text, conform, max_length_of, preflight, process_shard
from .store import RunStore, write_shard
from .tasks import Plan

__all__ = ["Probe", "RaySession", "require_ray"]


def require_ray() -> Any:
    """Import Ray Data, or raise an ImportError naming the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ImportError("engine='ray' needs Ray Data: pip install 'llmdbg[ray]' (or 'ray[data]')") from exc
    return ray


@dataclasses.dataclass
class Probe:
    """What an actor-side task learnt from the model: the job's identity and input limit, and the
    schema and column shapes of a preflight record."""

    identity: dict[str, Any]
    max_length: int
    schema: pa.Schema
    shapes: dict[str, tuple[int, ...]]


class RaySession:
    """A connection to a Ray cluster for one run: started with ``ray.init`` (``address`` of an
    existing cluster, else a local one) and shut down on exit, unless one was already open."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.ray = require_ray()
        self._started = False
        self._saved: tuple[Any, int] | None = None

    def __enter__(self) -> RaySession:
        ray = self.ray
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            self._started = True
        ctx = ray.data.DataContext.get_current()
        self._saved = ctx.enable_progress_bars, logging.getLogger("ray.data").level
        ctx.enable_progress_bars = False  # our own bar counts examples; Ray's logs blocks
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._saved is not None:
            self.ray.data.DataContext.get_current().enable_progress_bars = self._saved[0]
            logging.getLogger("ray.data").setLevel(self._saved[1])
        if self._started:
            self.ray.shutdown()

    def gpus(self, num_gpus: float | None) -> float:
        """GPUs per actor: as given, else one where the cluster has GPUs and none elsewhere."""
        if num_gpus is not None:
            return num_gpus
        return 1 if self.ray.cluster_resources().get("GPU", 0) >= 1 else 0

    def probe(
        self, factory: Any, examples: Examples, plan: Plan, max_length: int | None, num_gpus: float | None
    ) -> Probe:
        """Build the model once in a Ray task and return its :class:`Probe`."""
        gpus = self.gpus(num_gpus)
        ref = self.ray.remote(num_gpus=gpus)(_probe).remote(factory, _first_valid(examples), plan, max_length, gpus > 0)
        identity, limit, schema, shapes = self.ray.get(ref)
        shapes = {k: tuple(v) for k, v in shapes.items()}
        return Probe(identity, limit, pa.ipc.read_schema(pa.py_buffer(schema)), shapes)

    def run(
        self,
        factory: Any,
        examples: Examples,
        plan: Plan,
        store: RunStore,
        shards: list[tuple[int, int, int]],
        *,
        batch_size: int,
        max_length: int,
        num_workers: int,
        num_gpus: float | None,
        progress: bool,
    ) -> None:
        """Compute and write ``shards`` on an actor pool (see the module docstring)."""
        if not shards:
            return
        ray = self.ray
        gpus = self.gpus(num_gpus)
        rows = [{"shard": s, "payload": json.dumps(_rows(examples, a, b))} for s, a, b in shards]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(
            _ShardWorker,
            fn_constructor_kwargs={
                "factory": factory,
                "plan": plan,
                "out": store.out,
                "schema": store.manifest["schema"],
                "batch_size": batch_size,
                "max_length": max_length,
                "use_gpu": gpus > 0,
            },
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            num_cpus=1,
            num_gpus=gpus,
        )
        sizes = {s: b - a for s, a, b in shards}
        with progress_bar(progress, sum(sizes.values()), "llmdbg.run (ray)", unit="ex") as bar:
            for row in ds.iter_rows():
                shard, info = int(row["shard"]), json.loads(str(row["info"]))
                store.record_shard(shard, info, {k: tuple(v) for k, v in info.pop("shapes").items()})
                bar.update(sizes[shard])


class _ShardWorker:
    """One Ray actor: one model, whole shards in, their manifest entries out."""

    def __init__(
        self,
        factory: Any,
        plan: Plan,
        out: str,
        schema: str,
        batch_size: int,
        max_length: int | None,
        use_gpu: bool = False,
    ) -> None:
        self.model, self.tokenizer = factory()
        if use_gpu:  # Ray set CUDA_VISIBLE_DEVICES to this actor's GPU
            self.model.to("cuda")
        self.plan, self.out, self.batch_size = plan, out, batch_size
        self.schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(schema)))
        self.max_length = max_length_of(self.model, self.tokenizer, max_length)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        infos = []
        for shard, payload in zip(batch["shard"], batch["payload"]):
            ids, texts, labels = _unpack(json.loads(str(payload)))
            with eval_mode(self.model):
                res = process_shard(
                    self.model,
                    self.tokenizer,
                    ids,
                    texts,
                    labels,
                    self.plan,
                    batch_size=self.batch_size,
                    max_length=self.max_length,
                )
            info = write_shard(self.out, int(shard), conform(res.table, self.schema), res.activations)
            info["tokens"] = res.tokens
            info["shapes"] = {k: list(v) for k, v in res.shapes.items()}
            infos.append(json.dumps(info))
        return {"shard": batch["shard"], "info": np.array(infos, dtype=object)}


def _probe(
    factory: Any, rows: dict[str, Any], plan: Plan, max_length: int | None, use_gpu: bool
) -> tuple[dict[str, Any], int, bytes, dict[str, tuple[int, ...]]]:
    model, tokenizer = factory()
    if use_gpu:
        model.to("cuda")
    limit = max_length_of(model, tokenizer, max_length)
    ids, texts, labels = _unpack(rows)
    with eval_mode(model):
        first = preflight(model, tokenizer, ids, texts, labels, plan, max_length=limit)
    return model_identity(model), limit, first.table.schema.serialize().to_pybytes(), first.shapes


# -- shipping examples as JSON (texts that are not str are kept, so they are recorded as bad) -------


def _first_valid(examples: Examples) -> dict[str, Any]:
    """The first examples :func:`~llmdbg.runs.shard.preflight` would try (or one bad one, whose
    preflight then reports that the data holds no usable text)."""
    keep = [i for i, t in enumerate(examples.texts) if not _bad_text(t)][:PREFLIGHT_TRIES] or [0]
    sub = Examples(
        [examples.texts[i] for i in keep],
        None if examples.labels is None else [examples.labels[i] for i in keep],
        [examples.ids[i] for i in keep],
        examples.source,
    )
    return _rows(sub, 0, len(keep))


def _rows(examples: Examples, start: int, stop: int) -> dict[str, Any]:
    labels = examples.labels
    return {
        "ids": examples.ids[start:stop],
        "texts": [_encode(t) for t in examples.texts[start:stop]],
        "labels": None if labels is None else [_encode(v) for v in labels[start:stop]],
    }


def _unpack(rows: dict[str, Any]) -> tuple[list[int], list[Any], list[Any] | None]:
    labels = rows["labels"]
    return rows["ids"], [_decode(t) for t in rows["texts"]], None if labels is None else [_decode(v) for v in labels]


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    return {"$type": type(value).__name__}


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "$bytes" in value:
            return base64.b64decode(value["$bytes"])
        return type(value["$type"], (), {})()  # stands in for an object of that type: recorded as "not text"
    return value
