"""``llmdbg.run``: one job over a whole dataset, written to Parquet shards that resume."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch

from .._internal.modes import eval_mode
from .._internal.progress import check_progress
from .data import read_examples
from .identity import model_identity
from .result import RunResult
from .shard import max_length_of, preflight
from .store import RunStore
from .tasks import make_plan

__all__ = ["ENGINES", "run"]

ENGINES = ("local", "ray")


def run(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    tasks: Any = ("stats", "embedding"),
    out: Any,
    engine: str = "local",
    batch_size: int = 32,
    shard_size: int = 1000,
    max_length: int | None = None,
    resume: bool = True,
    force: bool = False,
    progress: bool = True,
    text_column: str = "text",
    label_column: str | None = "label",
    num_workers: int = 2,
    num_gpus: float | None = None,
    address: str | None = None,
    **task_options: Any,
) -> RunResult:
    """Run debugging tasks over every example of a dataset; one Parquet row per example.

    The data is cut into shards of ``shard_size`` consecutive examples. Each shard is tokenised,
    batched by length, run through the model once (plus the gradient passes of
    ``"attribution"`` and the lens pass of ``"lens"``), and written to
    ``out/part-NNNNN.parquet`` atomically; ``pandas.read_parquet(out)`` (or DuckDB's
    ``read_parquet('out/*.parquet')``, or ``ray.data.read_parquet(out)``) then gives one row per
    example with its ``example_id`` (its position in ``data``). A rerun with ``resume=True``
    skips the shards that exist, so a run killed at any point loses only the shard in progress
    and never duplicates a row.

    Parameters
    ----------
    model : torch.nn.Module, str, or callable
        A Hugging Face model; or a name/path (loaded with the class its config names); or a
        function returning the model (each Ray actor calls it, so no model is shipped). Run in
        eval mode; every module's train/eval flag is restored afterwards.
    tokenizer : transformers tokenizer, str, or None
        None loads the tokenizer of a model given by name.
    data : list of str, path, pandas.DataFrame or datasets.Dataset
        Texts, a ``.txt``/``.jsonl``/``.parquet`` file, or a table with ``text_column`` (and
        optionally ``label_column``).
    tasks : sequence of str
        Per example:

        - ``"stats"``: for the embedding output and every block (``L + 1`` entries), the mean,
          std and absmax over real tokens (float64 accumulation, stored float32) and NaN / Inf
          counts (``stats_mean`` ... ``stats_inf``), and ``first_nonfinite_layer`` (-1: none);
        - ``"embedding"``: the pooled hidden state ``embedding`` ``(D,)`` float32
          (``pooling="mean" | "cls" | "last"``, over real tokens, of hidden state
          ``embedding_layer``, default the last block's output);
        - ``"attention"``: per layer and head, the mean over real queries of the entropy (nats),
          the max probability, the sink mass and the special-token mass, each flattened from
          ``(L, H)`` (``attention_entropy`` ...; the shape is in the manifest);
        - ``"loss"``: a causal LM's mean next-token NLL over real tokens (``loss``,
          ``perplexity``) and its next-token ``prediction``; a classifier's cross-entropy against
          the label, ``prediction``, ``probability``; ``correct`` when a label exists;
        - ``"attribution"``: the ``top_k`` tokens with the largest |score| by
          ``attribution_method`` (``"saliency"``, ``"input_x_gradient"``,
          ``"integrated_gradients"``) for ``target`` (default ``"predicted"``);
        - ``"lens"``: top-1 token of each layer's decoded hidden state at the last real token;
        - ``"activations"``: the outputs of ``activation_modules`` (names or roles, default
          ``("blocks",)``) at ``activation_positions`` (``"all"`` real tokens, ``"last"``,
          ``"mean"``) in ``activation_dtype``, written to ``out/_activations/shard-NNNNN
          .safetensors`` (module -> ``(rows, D)``); each record holds ``activations_offset`` and
          ``activations_rows``.
    out : str or os.PathLike
        The output directory. One holding another job's output is refused unless ``force``.
    engine : {"local", "ray"}
        ``"local"``: this process. ``"ray"``: Ray Data ``map_batches`` over an actor pool of
        ``num_workers`` actors, one model each (``num_gpus`` per actor, by default 1 where the
        cluster has GPUs and 0 elsewhere; ``address`` of an
        existing cluster, else a local one). Same records either way.
    batch_size : int
        Examples per forward pass (after sorting a shard by length).
    shard_size : int
        Examples per output file (the unit of resume).
    max_length : int, optional
        Longer texts are truncated (``truncated`` and ``reason`` say so). Default: the
        tokenizer's and the config's limit.
    resume, force, progress
        See above; ``progress`` shows examples/s and tokens/s.
    text_column, label_column : str
        Columns of tables and JSONL records.
    **task_options
        ``pooling``, ``embedding_layer``, ``top_k``, ``attribution_method``, ``target``,
        ``activation_modules``, ``activation_positions``, ``activation_dtype``.

    Returns
    -------
    RunResult
        ``.records()`` (a DataFrame), ``.activations(module)``, ``.manifest``.

    Examples
    --------
    >>> res = llmdbg.run(model, tok, "data.jsonl", tasks=("stats", "loss"), out="runs/x")  # doctest: +SKIP
    >>> res.records().nlargest(10, "loss")  # doctest: +SKIP
    """
    check_progress(progress)
    for name, value in (("resume", resume), ("force", force)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    for name, number in (("batch_size", batch_size), ("shard_size", shard_size), ("num_workers", num_workers)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f"{name} must be a positive int, got {number!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "ray":
        from .ray_engine import require_ray

        require_ray()
    plan = make_plan(tasks, **task_options)
    examples = read_examples(data, text_column=text_column, label_column=label_column)
    factory, model, tokenizer = _resolve_model(model, tokenizer, load=engine == "local")
    with _session(engine, address) as ray_session:
        probe = None
        if model is not None:  # identity and limit read here; the schema by a local preflight if needed
            identity, limit = model_identity(model), max_length_of(model, tokenizer, max_length)
        else:  # a name or factory on Ray: an actor-side task builds the model once and reports
            probe = ray_session.probe(factory, examples, plan, max_length, num_gpus)
            identity, limit = probe.identity, probe.max_length
        job = {
            "tasks": list(plan.tasks),
            "options": plan.options(),
            "model": identity,
            # the data by content, not by the path it was reached through
            "data": {"n_examples": len(examples), "fingerprint": examples.fingerprint()},
            "max_length": limit,
            "shard_size": shard_size,
            "text_column": text_column,
            "label_column": label_column if examples.labels is not None else None,
        }
        store = RunStore(out, job, resume=resume, force=force)
        store.manifest["data_source"] = examples.source
        n = len(examples)
        all_shards = [(s, start, min(start + shard_size, n)) for s, start in enumerate(range(0, n, shard_size))]
        todo = [sh for sh in all_shards if not store.has_shard(sh[0])]
        t0 = time.perf_counter()
        if todo and store.schema is None:
            if probe is not None:
                store.set_schema(probe.schema, probe.shapes)
            else:
                assert model is not None
                with eval_mode(model):
                    first = preflight(
                        model, tokenizer, examples.ids, examples.texts, examples.labels, plan, max_length=limit
                    )
                store.set_schema(first.table.schema, first.shapes)
        if engine == "local":
            from .local import run_local

            assert model is not None  # the local engine always loads the model
            run_local(
                model,
                tokenizer,
                examples,
                plan,
                store,
                todo,
                batch_size=batch_size,
                max_length=limit,
                progress=progress,
            )
        else:
            ray_session.run(
                factory,
                examples,
                plan,
                store,
                todo,
                batch_size=batch_size,
                max_length=limit,
                num_workers=num_workers,
                num_gpus=num_gpus,
                progress=progress,
            )
    store.manifest["last_run"] = {
        "engine": engine,
        "shards_computed": len(todo),
        "examples_computed": sum(stop - start for _, start, stop in todo),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    store.finish(len(all_shards))
    return RunResult(store.out)


@contextlib.contextmanager
def _session(engine: str, address: str | None) -> Iterator[Any]:
    """For Ray, a connection to the cluster (started here and shut down after, unless one was
    already open); nothing for the local engine."""
    if engine != "ray":
        yield None
        return
    from .ray_engine import RaySession

    with RaySession(address) as session:
        yield session


class _Factory:
    """Builds (model, tokenizer) where the model runs: in this process, or in each Ray actor."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def __call__(self) -> tuple[torch.nn.Module, Any]:
        model = self.model
        if isinstance(model, str):
            model = _from_pretrained(model)
        elif not isinstance(model, torch.nn.Module):
            model = model()
            if not isinstance(model, torch.nn.Module):
                raise TypeError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module")
        tokenizer = self.tokenizer
        if tokenizer is None or isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            source = tokenizer if isinstance(tokenizer, str) else getattr(model, "name_or_path", None)
            if not source:
                raise ValueError("tokenizer=None needs a model given by name or path; pass the tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(source)
        return model, tokenizer


def _resolve_model(model: Any, tokenizer: Any, *, load: bool) -> tuple[_Factory, Any, Any]:
    if not (isinstance(model, (str, torch.nn.Module)) or callable(model)):
        raise TypeError(f"model must be a torch.nn.Module, a name or path, or a function returning one; got {model!r}")
    if tokenizer is not None and not isinstance(tokenizer, str) and not callable(tokenizer):
        raise TypeError(f"tokenizer must be a Hugging Face tokenizer, a name or path, or None; got {tokenizer!r}")
    factory = _Factory(model, tokenizer)
    if load or isinstance(model, torch.nn.Module):
        m, t = factory()
        return factory, m, t
    return factory, None, None


def _from_pretrained(name: str) -> torch.nn.Module:
    """Load ``name`` with the class its config's ``architectures`` names (as pipelines do)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(name)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    return (cls or transformers.AutoModel).from_pretrained(name)
