"""Capture on a CUDA GPU: asynchronous pinned copies and on-device statistics against
hand-written hooks that copy to the host synchronously, and peak GPU memory of capturing
head-mean-reduced attention maps against full maps.

A random-weight Llama-style model (bf16; 8 layers, hidden 1024, 16 heads) on a batch of
8 x 512 tokens. Needs a CUDA device; exits with a message otherwise.

    python benchmarks/capture_gpu.py [--quick]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch
import transformers as tf

import _harness
import llmdbg
from _harness import median, parse_args, report, time_interleaved

BATCH, TOKENS = 8, 512


def build():
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        hidden_size=1024,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=16,
        intermediate_size=2816,
        vocab_size=32000,
        max_position_embeddings=TOKENS,
    )
    model = tf.AutoModel.from_config(cfg).to("cuda", torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (BATCH, TOKENS), device="cuda")
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def synced(fn):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def python_hooks(model, blocks, enc):
    # numpy has no bf16, so the hand-written hook widens first.
    return _harness.python_hooks(model, blocks, enc, lambda t: t.detach().float().cpu().numpy())


def capture(model, enc, **kw):
    with llmdbg.capture(model, "blocks", **kw) as trace:
        model(**enc)
    return trace


def peak_gpu_bytes(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    if not torch.cuda.is_available():
        print("capture_gpu: no CUDA device here; run it on a GPU machine")
        return
    repeats = args.repeats or (5 if args.quick else 20)
    model, enc = build()
    blocks = list(llmdbg.find_layout(model).blocks)
    with torch.no_grad():
        ref = python_hooks(model, blocks, enc)
        ours = capture(model, enc)
        max_diff = max(float(abs(ours.activations[b] - ref[b]).max()) for b in blocks)
        configs = {
            "plain forward": synced(lambda: model(**enc)),
            "python hooks (.float().cpu().numpy())": synced(lambda: python_hooks(model, blocks, enc)),
            "llmdbg.capture": synced(lambda: capture(model, enc)),
            "llmdbg.capture stats=False": synced(lambda: capture(model, enc, stats=False)),
            "llmdbg.capture reduce=stats": synced(lambda: capture(model, enc, reduce="stats")),
        }
        times = time_interleaved(configs, repeats)

        def attn(reduce):
            def go():
                with llmdbg.capture(model, attentions=True, reduce=reduce, stats=False) as t:
                    model(**enc)
                return t

            return go

        with llmdbg.eager_attention(model):
            plain_eager_peak = peak_gpu_bytes(lambda: model(**enc))
        full_peak = peak_gpu_bytes(attn(None))
        mean_peak = peak_gpu_bytes(attn("head_mean"))
        host_full, host_mean = attn(None)().nbytes, attn("head_mean")().nbytes
    med = {k: median(v) for k, v in times.items()}
    plain = med["plain forward"]
    figures = {
        "gpu_overhead_vs_plain_forward": round(med["llmdbg.capture"] / plain - 1, 4),
        "gpu_overhead_vs_plain_forward_stats_only": round(med["llmdbg.capture reduce=stats"] / plain - 1, 4),
        "gpu_time_ratio_vs_python_hooks": round(
            med["llmdbg.capture"] / med["python hooks (.float().cpu().numpy())"], 4
        ),
        "gpu_attention_peak_ratio_head_mean_vs_full": round(mean_peak / full_peak, 4),
        "gpu_attention_extra_peak_ratio_head_mean_vs_full": round(
            (mean_peak - plain_eager_peak) / max(full_peak - plain_eager_peak, 1), 4
        ),
        "gpu_attention_host_bytes_ratio_head_mean_vs_full": round(host_mean / host_full, 4),
        "max_abs_diff_vs_python_hooks": max_diff,
    }
    rows = [(k, f"{v * 1e3:8.2f} ms median of {len(times[k])}") for k, v in med.items()]
    rows += [
        ("peak GPU memory, eager forward alone", f"{plain_eager_peak / 2**20:8.1f} MiB"),
        ("peak GPU memory, capture full attention maps", f"{full_peak / 2**20:8.1f} MiB"),
        ("peak GPU memory, capture head-mean maps", f"{mean_peak / 2**20:8.1f} MiB"),
        ("host copies, full / head-mean maps", f"{host_full / 2**20:.1f} / {host_mean / 2**20:.1f} MiB"),
    ]
    extra = {
        "model": "random Llama, 8 layers, hidden 1024, bf16",
        "batch": BATCH,
        "tokens": TOKENS,
        "device": torch.cuda.get_device_name(),
        "median_seconds": med,
        "repeats": repeats,
    }
    report("capture_gpu", args.quick, rows, figures, extra, write=not args.no_write)


if __name__ == "__main__":
    main()
