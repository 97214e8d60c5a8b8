"""Part (c) of benchmarks/attention.py: streaming rollout vs storing every map, for a causal LM.

Each approach runs in a fresh process so that its peak resident memory (VmHWM, reset through
/proc/self/clear_refs) is its own. "Total extra" memory is the peak during the job minus the
resident size just before it (model loaded, inputs built); it includes what the eager forward
itself needs, which a third process measures alone ("plain eager forward"). The headline ratio
compares the memory each approach needs on top of that plain forward, i.e. the analysis's own
extra memory."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import torch
import transformers as tf

import llmdbg


def _model(layers: int, tokens: int):
    torch.manual_seed(0)
    cfg = tf.GPT2Config(
        n_embd=768, n_layer=layers, n_head=12, vocab_size=5000, n_positions=tokens, bos_token_id=1, eos_token_id=2
    )
    model = tf.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(3, cfg.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(1))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def probe(approach: str, layers: int, tokens: int, out: str) -> None:
    """Run one approach in this (fresh) process; write its rollout and memory to `out`."""
    model, inputs = _model(layers, tokens)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _kib("VmRSS")
    t0 = time.perf_counter()
    if approach == "streaming":
        result = llmdbg.streaming_rollout(model, inputs).rollout
    elif approach == "forward":
        with llmdbg.eager_attention(model), torch.no_grad():
            model(**inputs)
        result = np.zeros(1)
    else:
        with llmdbg.capture(model, attentions=True, stats=False) as trace, torch.no_grad():
            model(**inputs)
        result = llmdbg.attention_rollout(trace)
    seconds = time.perf_counter() - t0
    extra = (_kib("VmHWM") - start) * 1024
    np.save(out, result)
    print(json.dumps({"extra_bytes": extra, "seconds": seconds}))


def run(quick: bool) -> tuple[dict, list[tuple[str, str]]]:
    layers, tokens = (4, 512) if quick else (12, 2048)
    measured = {}
    for approach in ("forward", "streaming", "stored"):
        path = f"/tmp/llmdbg_rollout_{approach}.npy"
        res = subprocess.run(
            [sys.executable, __file__, approach, str(layers), str(tokens), path],
            capture_output=True,
            text=True,
            check=True,
        )
        measured[approach] = json.loads(res.stdout.strip().splitlines()[-1])
        measured[approach]["rollout"] = np.load(path)
    f, s, st = measured["forward"], measured["streaming"], measured["stored"]
    figures = {
        "rollout_peak_mem_ratio": round(
            (s["extra_bytes"] - f["extra_bytes"]) / (st["extra_bytes"] - f["extra_bytes"]), 4
        ),
        "rollout_total_peak_mem_ratio": round(s["extra_bytes"] / st["extra_bytes"], 4),
        "rollout_streaming_max_abs_diff_vs_stored": float(np.abs(s["rollout"] - st["rollout"]).max()),
        "rollout_streaming_time_ratio_vs_stored": round(s["seconds"] / st["seconds"], 4),
    }
    name = f"GPT-2 {layers} layers x 12 heads, T={tokens}"
    rows = [
        (f"plain eager forward, {name}", f"{f['extra_bytes'] / 2**20:8.0f} MiB extra peak, {f['seconds']:6.1f} s"),
        (f"streaming rollout, {name}", f"{s['extra_bytes'] / 2**20:8.0f} MiB extra peak, {s['seconds']:6.1f} s"),
        (
            "store every map + attention_rollout",
            f"{st['extra_bytes'] / 2**20:8.0f} MiB extra peak, {st['seconds']:6.1f} s",
        ),
    ]
    return figures, rows


if __name__ == "__main__":
    probe(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
