"""Cost of llmdbg.watch in a real training loop, side by side with detect_anomaly and wandb.watch.

A GPT-2-style causal LM (4 layers, hidden 128, 4 heads, vocabulary 1000; random init) is fine-tuned
with AdamW on generated token sequences (batch 8 x 64 tokens): forward with labels, backward,
clip_grad_norm_(1.0), optimizer step, for 200 steps per run (25 with --quick, one timed repeat). Configurations,
interleaved round by round (benchmarks/_harness.time_interleaved) on the same model, data and
initial weights:

  baseline          the plain loop
  watch_default     llmdbg.watch(model, opt) - every=50, locate="replay" (loss, global grad norm,
                    lr and non-finite flags every step with one host copy, no per-module hooks;
                    a non-finite step would be replayed with temporary per-module hooks;
                    per-layer statistics, histograms and activation probes every 50 steps)
  watch_full        llmdbg.watch(model, opt, every=1, locate="always") - everything every step,
                    including the backward NaN records
  detect_anomaly    the loop inside torch.autograd.detect_anomaly()
  wandb_watch       wandb.watch(model, log="all", log_freq=50) with WANDB_MODE=offline and
                    run.log({"loss": ...}) every step (if wandb imports)

Figures: overhead_default (goal <= 0.03) from a step-interleaved A/B run: two copies of the model
from the same weights train on the same batches, one watched (default settings), both timed every
step, alternating which goes first; overhead = sum(watched) / sum(plain) - 1, median over repeats.
Whole runs of the same baseline differ by up to ±5 % on this machine, more than the goal, so
comparing whole runs cannot resolve it; that figure is still reported as overhead_default_whole_runs
= t(watch_default)/t(baseline) - 1 (and from process CPU time, *_cpu_time).
overhead_default_ddp (goal <= 0.03): the same A/B under DistributedDataParallel, 2 gloo processes
with one thread each, each rank on half of every batch (rank 0's sums; the watch's one collective
per step included). overhead_every_step_full, time_ratio_vs_detect_anomaly = t(watch_default)/t(detect_anomaly),
time_ratio_vs_wandb_watch = t(watch_default)/t(wandb_watch). Medians over repeats of whole runs.

    python benchmarks/watch.py [--quick]        (threads: BENCH_THREADS, default torch's)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import torch

from _harness import median, parse_args, report, time_interleaved


def new_model():
    import transformers as tf

    cfg = tf.GPT2Config(
        n_embd=128,
        n_layer=4,
        n_head=4,
        vocab_size=1000,
        n_positions=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return tf.GPT2LMHeadModel(cfg).train()


def build(steps: int):
    torch.manual_seed(0)
    model = new_model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(3, 1000, (8, 64), generator=g) for _ in range(steps)]
    return model, init, data


def run_loop(model, init, data, *, watch_kwargs=None, anomaly=False, wandb_run=None):
    model.load_state_dict(init)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    w = None
    if watch_kwargs is not None:
        import llmdbg

        w = llmdbg.watch(model, opt, **watch_kwargs)
    if wandb_run is not None:
        wandb_run.watch(model, log="all", log_freq=50)
    ctx = torch.autograd.detect_anomaly() if anomaly else contextlib.nullcontext()
    try:
        with ctx:
            for ids in data:
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                if w is not None:
                    w.step(loss=loss)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if wandb_run is not None:
                    wandb_run.log({"loss": loss.item()})
    finally:
        if w is not None:
            w.close()
        if wandb_run is not None:
            wandb_run.unwatch(model)
    return w


def paired_overhead(init, data, watch_kwargs) -> tuple[float, float, float]:
    """Step-interleaved A/B: two copies of the model from the same weights on the same batches,
    one watched; every step times both, alternating which goes first. Drift of a shared machine
    (whole 200-step runs of the same baseline differ by up to ±5 %) hits both sides of each pair
    alike, so the ratio of the sums resolves overheads of a few per cent. Returns
    (watched seconds, plain seconds, overhead)."""
    import llmdbg

    models = []
    for _ in range(2):
        m = new_model()
        m.load_state_dict(init)
        models.append(m)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in models]
    w = llmdbg.watch(models[1], opts[1], **watch_kwargs)
    torch.manual_seed(0)
    spent = interleaved_steps(models, opts, w, data)
    return spent[1], spent[0], spent[1] / spent[0] - 1


def interleaved_steps(models, opts, w, batches) -> list[float]:
    """Train the plain ``models[0]`` and the watched ``models[1]`` on each batch, timing every
    step of both and alternating which goes first; closes ``w``. Returns [plain, watched] seconds."""
    spent = [0.0, 0.0]
    try:
        for i, ids in enumerate(batches):
            for side in (0, 1) if i % 2 == 0 else (1, 0):
                model, opt = models[side], opts[side]
                t0 = time.perf_counter()
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                if side == 1:
                    w.step(loss=loss)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                spent[side] += time.perf_counter() - t0
    finally:
        w.close()
    return spent


def _ddp_worker(rank: int, world: int, port: int, init, data, out: str) -> None:
    """One rank of the 2-process DDP A/B: a watched and a plain DDP copy of the model from the
    same weights, each rank on its half of every batch, both timed every step, alternating
    which goes first (both copies' all-reduces keep the ranks in step)."""
    import torch.distributed as dist

    import llmdbg

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        models = []
        for _ in range(2):
            m = new_model()
            m.load_state_dict(init)
            models.append(torch.nn.parallel.DistributedDataParallel(m))
        opts = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in models]
        w = llmdbg.watch(models[1], opts[1])
        spent = interleaved_steps(models, opts, w, [batch[rank::world] for batch in data])
        if rank == 0:
            with open(out, "w") as f:
                f.write(f"{spent[1]} {spent[0]}")
    finally:
        dist.destroy_process_group()


def ddp_paired_overhead(init, data) -> tuple[float, float, float]:
    """The step-interleaved A/B of :func:`paired_overhead` under DDP, 2 gloo processes with one
    thread each: (watched seconds, plain seconds, overhead) of rank 0."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="llmdbg-bench-ddp-") as tmp:
        out = os.path.join(tmp, "rank0.txt")
        mp.spawn(_ddp_worker, args=(2, port, init, data, out), nprocs=2, join=True)
        with open(out) as f:
            watched, plain = (float(x) for x in f.read().split())
    return watched, plain, watched / plain - 1


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    threads = int(os.environ.get("BENCH_THREADS", torch.get_num_threads()))
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")  # detect_anomaly announces itself; transformers config notes
    logging.getLogger("llmdbg").setLevel(logging.ERROR)
    steps = 25 if args.quick else 200
    repeats = args.repeats or (1 if args.quick else 3)
    model, init, data = build(steps)
    cpu: dict[str, list[float]] = {}

    def timed(name, **kw):
        # Process CPU time next to the harness's wall time: on a shared, oversubscribed machine
        # the wall clock mostly measures the neighbours; with one thread, CPU time measures us.
        def fn():
            t0 = time.process_time()
            run_loop(model, init, data, **kw)
            cpu.setdefault(name, []).append(time.process_time() - t0)

        return fn

    configs = {
        "baseline": timed("baseline"),
        "watch_default": timed("watch_default", watch_kwargs={}),
        "watch_full": timed("watch_full", watch_kwargs={"every": 1, "locate": "always"}),
        "detect_anomaly": timed("detect_anomaly", anomaly=True),
    }
    wandb_run, tmp = None, tempfile.TemporaryDirectory(prefix="llmdbg-bench-wandb-")
    try:
        os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        wandb_run = wandb.init(
            mode="offline",
            dir=tmp.name,
            project="llmdbg-bench",
            reinit=True,
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        configs["wandb_watch"] = timed("wandb_watch", wandb_run=wandb_run)
    except Exception as exc:
        print(f"wandb.watch skipped: {type(exc).__name__}: {exc}")
    try:
        times = time_interleaved(configs, repeats)
    finally:
        if wandb_run is not None:
            wandb_run.finish()
        tmp.cleanup()
    paired = [paired_overhead(init, data, {}) for _ in range(repeats)]
    ddp = [ddp_paired_overhead(init, data) for _ in range(repeats)]
    med = {k: median(v) for k, v in times.items()}
    cpu_med = {k: median(v[1:]) for k, v in cpu.items()}  # [0] is the warm-up run
    base = med["baseline"]
    rows = [(name, f"{t:8.3f} s  ({t / steps * 1e3:7.2f} ms/step, x{t / base:5.3f})") for name, t in med.items()]
    overheads = ", ".join(f"{p[2]:+.4f}" for p in paired)
    rows.append(
        (
            "watch_default, step-interleaved A/B",
            (
                f"{median([p[0] for p in paired]):8.3f} s vs {median([p[1] for p in paired]):8.3f} s plain "
                f"(overheads {overheads})"
            ),
        )
    )
    rows.append(
        (
            "watch_default under DDP (2 processes), step-interleaved A/B",
            (
                f"{median([p[0] for p in ddp]):8.3f} s vs {median([p[1] for p in ddp]):8.3f} s plain DDP "
                f"(overheads {', '.join(f'{p[2]:+.4f}' for p in ddp)})"
            ),
        )
    )
    figures: dict[str, object] = {
        "overhead_default": round(median([p[2] for p in paired]), 4),
        "overhead_default_ddp": round(median([p[2] for p in ddp]), 4),
        "overhead_default_whole_runs": round(med["watch_default"] / base - 1, 4),
        "overhead_every_step_full": round(med["watch_full"] / base - 1, 4),
        "time_ratio_vs_detect_anomaly": round(med["watch_default"] / med["detect_anomaly"], 4),
        "detect_anomaly_slowdown": round(med["detect_anomaly"] / base, 4),
    }
    figures["overhead_default_cpu_time"] = round(cpu_med["watch_default"] / cpu_med["baseline"] - 1, 4)
    figures["overhead_every_step_full_cpu_time"] = round(cpu_med["watch_full"] / cpu_med["baseline"] - 1, 4)
    if "wandb_watch" in med:
        figures["time_ratio_vs_wandb_watch"] = round(med["watch_default"] / med["wandb_watch"], 4)
        figures["wandb_watch_overhead"] = round(med["wandb_watch"] / base - 1, 4)
    extra = {
        "steps": steps,
        "repeats": repeats,
        "bench_threads": threads,
        "overhead_default_paired_runs": [round(p[2], 4) for p in paired],
        "overhead_default_ddp_paired_runs": [round(p[2], 4) for p in ddp],
        "times_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "cpu_times_s": {k: [round(x, 4) for x in v[1:]] for k, v in cpu.items()},
    }
    report("watch", args.quick, rows, figures, extra, write=not args.no_write)


if __name__ == "__main__":
    main()
