"""Long-context attention: recompute from the model's own SDPA calls vs eager attention.

The model is a Llama built from a config with random weights (hidden 512, 8 layers, 8 heads,
2 KV heads, intermediate 1408, vocab 32,000, ~50M parameters), batch 1. Every approach runs in a
fresh process so that its peak resident memory is its own; the figure is the peak of the first
timed run above the resident size once the model and inputs are loaded (VmHWM after
/proc/self/clear_refs), and the ratios divide it by a plain SDPA forward's (which includes the
(T, 32000) float32 logits).

Approaches, side by side on the same inputs:
- ``plain``: ``model(ids)`` with SDPA, nothing captured (the reference).
- ``stats``: ``capture(model, attentions="stats")`` + ``attention_summary``.
- ``rollout``: ``streaming_rollout(model, ids, rows=last 16)`` (recomputed top down).
- ``maps2``: ``capture(attentions=AttentionQuery(layers=[0, 7], reduce="mean"))``: two
  head-averaged maps, stored.
- ``eager_head_mean``: today's eager path, ``capture(attentions=True, reduce="head_mean",
  attention_impl="eager")`` (every layer, head-averaged).
- ``hf_output_attentions``: the model switched to eager, ``model(ids, output_attentions=True)``.

Eager approaches run under an address-space limit (``--limit-gib``, default 20) so that a request
the machine cannot hold fails with an allocation error in its own process instead of waking the
OOM killer; such runs are reported as failed with the limit.

``--quick``: T = 1024 (within a minute). Full: T = 4096 (a warm-up and 3 timed repeats
in each process, medians) and 16,384 (one timed run per process: a 16k eager forward alone takes
tens of seconds). ``--large`` adds T = 32,768. Exactness: the recomputed maps of layers 0 and 7
against eager ``output_attentions`` at the smallest T (4096 in a full run).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llmdbg
from _harness import median, peak_growth_bytes, report, reset_peak

APPROACHES = ("plain", "stats", "rollout", "maps2", "eager_head_mean", "hf_output_attentions")
EAGER = ("eager_head_mean", "hf_output_attentions")
ROWS = 16


def build(tokens: int):
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=1408,
        vocab_size=32000,
        max_position_embeddings=max(tokens, 2048),
    )
    model = tf.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(3, cfg.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(1))
    return model, ids


def _job(approach: str, model, ids):
    if approach == "plain":
        return lambda: model(input_ids=ids)
    if approach == "stats":

        def stats():
            with llmdbg.capture(model, attentions="stats") as trace:
                model(input_ids=ids)
            return llmdbg.attention_summary(trace)

        return stats
    if approach == "rollout":
        rows = list(range(-ROWS, 0))
        return lambda: llmdbg.streaming_rollout(model, {"input_ids": ids}, rows=rows, progress=False)
    if approach == "maps2":

        def maps2():
            query = llmdbg.AttentionQuery(layers=[0, 7], reduce="mean")
            with llmdbg.capture(model, attentions=query, stats=False) as trace:
                model(input_ids=ids)
            return trace

        return maps2
    if approach == "eager_head_mean":

        def eager():
            with llmdbg.capture(model, attentions=True, reduce="head_mean", attention_impl="eager", stats=False) as t:
                model(input_ids=ids)
            return t

        return eager
    if approach == "hf_output_attentions":

        def hf():
            with llmdbg.eager_attention(model):
                return model(input_ids=ids, output_attentions=True)

        return hf
    raise ValueError(approach)


def probe(approach: str, tokens: int, repeats: int, limit_gib: float) -> None:
    """One approach in this fresh process: peak memory above the loaded model, and times."""
    model, ids = build(tokens)
    if approach in EAGER:
        limit = int(limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_grad_enabled(False)
    warm_model_ids = ids[:, :256]
    _job(approach, model, warm_model_ids)()  # lazy initialisation, not the long input
    start = reset_peak()
    times, error, extra = [], None, None
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = _job(approach, model, ids)()
            times.append(time.perf_counter() - t0)
            del result
            # The peak of the first run: later repeats add the allocator's fragmentation, which
            # varies from process to process by more than the differences measured here.
            extra = extra if extra is not None else peak_growth_bytes(start)
    except (RuntimeError, MemoryError) as e:  # allocation refused under the limit
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    extra = extra if extra is not None else peak_growth_bytes(start)
    print(json.dumps({"extra_bytes": extra, "seconds": median(times) if times else None, "error": error}))


def exactness(tokens: int) -> float:
    """Max |recomputed − eager| over layers 0 and 7, every head and row."""
    model, ids = build(tokens)
    with torch.no_grad():
        query = llmdbg.AttentionQuery(layers=[0, 7])
        with llmdbg.capture(model, attentions=query, stats=False) as trace:
            model(input_ids=ids)
        got = trace.attentions
        with llmdbg.eager_attention(model):
            out = model(input_ids=ids, output_attentions=True)
    want = [out.attentions[0], out.attentions[7]]
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))


def _run_probe(approach: str, tokens: int, repeats: int, limit_gib: float) -> dict:
    cmd = [sys.executable, __file__, "--probe", approach, str(tokens), str(repeats), str(limit_gib)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        reason = f"killed (signal {-res.returncode})" if res.returncode < 0 else res.stderr.strip()[-200:]
        return {"extra_bytes": None, "seconds": None, "error": reason}
    return json.loads(lines[-1])


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="T = 1024 only; finishes within 60 s")
    p.add_argument("--large", action="store_true", help="also T = 32,768")
    p.add_argument("--lengths", type=int, nargs="+", help="these sequence lengths instead (quoted runs)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per process")
    p.add_argument("--limit-gib", type=float, default=20.0, help="address-space limit of the eager runs")
    p.add_argument("--no-write", action="store_true", help="do not write results/long_context.json")
    p.add_argument("--probe", nargs=4, help=argparse.SUPPRESS)  # approach, T, repeats, limit (child)
    return p.parse_args()


def main() -> None:
    args = parse()
    if args.probe:
        approach, tokens, repeats, limit = args.probe
        probe(approach, int(tokens), int(repeats), float(limit))
        return
    limit_gib = args.limit_gib
    lengths = [1024] if args.quick else [4096, 16384] + ([32768] if args.large else [])
    lengths = args.lengths or lengths
    figures: dict[str, object] = {}
    rows: list[tuple[str, str]] = []
    measured: dict[tuple[str, int], dict] = {}
    for t in lengths:
        repeats = args.repeats or (1 if args.quick or t > 4096 else 3)
        for approach in APPROACHES:
            m = _run_probe(approach, t, repeats, limit_gib)
            measured[(approach, t)] = m
            if m["error"]:
                rows.append((f"T={t:>6} {approach}", f"failed: {m['error']}"))
            else:
                rows.append(
                    (f"T={t:>6} {approach}", f"{m['extra_bytes'] / 2**30:7.2f} GiB peak extra, {m['seconds']:7.1f} s")
                )
        plain = measured[("plain", t)]
        for approach in APPROACHES[1:]:
            m = measured[(approach, t)]
            key = f"{approach}_T{t}"
            if m["error"] or not plain["extra_bytes"]:
                figures[f"{key}_failed"] = m["error"] or "plain forward failed"
                continue
            figures[f"{key}_peak_ratio_vs_plain"] = round(m["extra_bytes"] / plain["extra_bytes"], 3)
            figures[f"{key}_time_ratio_vs_plain"] = round(m["seconds"] / plain["seconds"], 3)
        figures[f"plain_T{t}_peak_gib"] = round(plain["extra_bytes"] / 2**30, 3) if plain["extra_bytes"] else None
        figures[f"plain_T{t}_seconds"] = round(plain["seconds"], 2) if plain["seconds"] else None
        stored = 2 * t * t * 4  # two head-averaged float32 maps
        if not measured[("maps2", t)]["error"] and plain["extra_bytes"]:
            # The goal reads "peak <= 1.5 x the plain forward's, plus the stored bytes".
            figures[f"maps2_T{t}_peak_minus_stored_ratio_vs_plain"] = round(
                (measured[("maps2", t)]["extra_bytes"] - stored) / plain["extra_bytes"], 3
            )
    exact_t = min(lengths[0], 4096)  # eager output_attentions of every layer must fit in memory
    figures[f"max_abs_diff_vs_eager_T{exact_t}"] = exactness(exact_t)
    report("long_context", args.quick, rows, figures, write=not args.no_write)


if __name__ == "__main__":
    main()
