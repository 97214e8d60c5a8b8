"""Attribution benchmark: llmdbg.integrated_gradients vs Captum 0.9 side by side.

Models: all-MiniLM-L6-v2 (real weights, offline) with a sentence-similarity target (cosine of the
mean-pooled embedding of sentence A to that of a fixed sentence B, computed once), and a tiny
random GPT-2 (2 layers, 128 dims, MiniLM's 30,522-token vocabulary) with next-token and
16-token-continuation targets. Baselines: PAD ids keeping [CLS]/[SEP], identical on both sides.

Figures (ratios are llmdbg / Captum; below 1 means llmdbg is cheaper):

- time_ratio_vs_captum_equal_steps: Gauss–Legendre, n_steps = 50, convergence delta on both sides
  (Captum: LayerIntegratedGradients on the word embedding with return_convergence_delta=True);
  the worse of the MiniLM and GPT-2 next-token cases (each also reported).
- evals_ratio_vs_captum_at_1pct_delta: model evaluations to reach |delta| / |F(x) − F(b)| < 1 %,
  summed over the examples. llmdbg: method="adaptive" (nested Gauss–Kronrod–Patterson; n_evals
  counts its 2 endpoint forwards). Captum: its
  default rule (gausslegendre) used as a user must without knowing the needed n: n_steps = 50
  (the default) and doubled until the delta is met; every run counts n_steps + 2 (its two delta
  forwards; the two extra layer forwards LayerIntegratedGradients makes are not counted).
  Also reported: the oracle ratio against the smallest n in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64,
  96, 128) at which Captum meets 1 % in one run (n + 2), which no user can know in advance.
- multitoken_time_ratio_vs_captum_llm: a 16-token continuation after a 32-token prompt, n_steps =
  50 (quick: 10), gausslegendre, baseline id 0 (Captum's TextTokenInput default) on both sides: one
  llmdbg call vs Captum's LLMGradientAttribution(LayerIntegratedGradients); median of 3 interleaved
  repeats (quick: 1), as Captum's side alone takes ~20 s a run at n = 50.
- peak_mem_ratio_vs_captum: MiniLM similarity, T = 512 (quick: 64), n_steps = 50: peak RSS growth
  of each side in its own fresh process (VmHWM after /proc/self/clear_refs), model loaded first.
- max_abs_diff_vs_captum_*: largest |difference| of token scores at equal rule and n_steps,
  relative to the largest |score|.

    python benchmarks/attribution.py [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch
import transformers as tf

import llmdbg
import llmdbg.demo
from _harness import median, parse_args, peak_growth_bytes, report, reset_peak, time_interleaved

SENTENCES = [
    "A man is playing a guitar on the stage tonight.",
    "The new movie was surprisingly good and very funny.",
    "Stock markets fell sharply after the announcement.",
    "She cooked a delicious pasta dinner for her friends.",
    "The committee postponed the vote until next week.",
    "Heavy rain caused flooding across the northern region.",
    "He forgot his keys at the office again yesterday.",
    "Researchers discovered a new species of frog in Peru.",
]
PARTNERS = [
    "Someone performs music with an instrument.",
    "The film was entertaining and made me laugh.",
    "Shares dropped after the news was released.",
    "A meal of noodles was prepared for guests.",
    "The vote was delayed by the panel.",
    "Storms flooded towns in the north.",
    "He left his keys at work.",
    "Scientists found an unknown amphibian.",
]
STEP_LADDER = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def minilm():
    model, tok = llmdbg.demo.load_minilm()
    return model.eval(), tok


def tiny_gpt2(tok, positions=1024):
    torch.manual_seed(0)
    cfg = tf.GPT2Config(
        n_embd=128,
        n_layer=2,
        n_head=4,
        vocab_size=tok.vocab_size,
        n_positions=positions,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return tf.GPT2LMHeadModel(cfg).eval()


def pooled(model, enc):
    with torch.no_grad():
        out = model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    return (out * m).sum(1) / m.sum(1)


def pad_baseline(ids, tok):
    keep = torch.isin(ids, torch.tensor(tok.all_special_ids))
    return torch.where(keep, ids, torch.full_like(ids, tok.pad_token_id))


class SimilarityCase:
    """Sentence i against partner i: both sides share the forward and the reference embedding."""

    def __init__(self, model, tok, i, length=None):
        self.model, self.tok = model, tok
        text = SENTENCES[i] if length is None else " ".join([SENTENCES[i]] * 64)
        kw = dict(truncation=True, max_length=length, padding="max_length") if length else {}
        self.enc = tok([text], return_tensors="pt", **kw)
        self.ref = pooled(model, tok([PARTNERS[i]], return_tensors="pt"))
        self.base = pad_baseline(self.enc["input_ids"], tok)
        self.target = llmdbg.similarity_target(self.ref)
        from captum.attr import LayerIntegratedGradients

        mask = self.enc["attention_mask"]

        def forward(ids, m):
            h = model(input_ids=ids, attention_mask=m).last_hidden_state
            mm = m[..., None].float()
            return torch.nn.functional.cosine_similarity((h * mm).sum(1) / mm.sum(1), self.ref, dim=-1)

        self.lig = LayerIntegratedGradients(forward, model.embeddings.word_embeddings)
        self.args = (mask,)

    def ours(self, **kw):
        return llmdbg.integrated_gradients(
            self.model, self.enc, target=self.target, baseline=self.base, progress=False, **kw
        )

    def captum(self, n_steps, method="gausslegendre"):
        attr, delta = self.lig.attribute(
            self.enc["input_ids"],
            baselines=self.base,
            additional_forward_args=self.args,
            n_steps=n_steps,
            method=method,
            return_convergence_delta=True,
        )
        return attr.sum(-1).detach().numpy(), delta.detach().numpy()

    def gap(self):
        f = lambda ids: self.lig.forward_func(ids, *self.args).item()
        with torch.no_grad():
            return f(self.enc["input_ids"]) - f(self.base)


class NextTokenCase:
    def __init__(self, model, tok, i):
        from captum.attr import LayerIntegratedGradients

        self.model, self.tok = model, tok
        self.enc = tok([SENTENCES[i]], return_tensors="pt", return_token_type_ids=False)
        self.base = pad_baseline(self.enc["input_ids"], tok)
        with torch.no_grad():
            self.token = int(model(**self.enc).logits[0, -1].argmax())

        def forward(ids):
            return torch.log_softmax(model(input_ids=ids).logits[:, -1].float(), -1)

        self.lig = LayerIntegratedGradients(forward, model.transformer.wte)

    def ours(self, **kw):
        return llmdbg.integrated_gradients(
            self.model, self.enc, target=self.token, baseline=self.base, progress=False, **kw
        )

    def captum(self, n_steps, method="gausslegendre"):
        attr, delta = self.lig.attribute(
            self.enc["input_ids"],
            baselines=self.base,
            target=self.token,
            n_steps=n_steps,
            method=method,
            return_convergence_delta=True,
        )
        return attr.sum(-1).detach().numpy(), delta.detach().numpy()

    def gap(self):
        with torch.no_grad():
            f = lambda ids: self.lig.forward_func(ids)[0, self.token].item()
            return f(self.enc["input_ids"]) - f(self.base)


def rel_diff(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def bench_equal_steps(cases, repeats):
    rows, figures = [], {}
    worst = 0.0
    for name, case in cases:
        times = time_interleaved({"llmdbg": lambda: case.ours(n_steps=50), "captum": lambda: case.captum(50)}, repeats)
        ratio = median(times["llmdbg"]) / median(times["captum"])
        ours = case.ours(n_steps=50)
        theirs, delta = case.captum(50)
        figures[f"time_ratio_vs_captum_equal_steps_{name}"] = round(ratio, 4)
        figures[f"max_abs_diff_vs_captum_{name}"] = rel_diff(ours.scores, theirs)
        figures[f"delta_abs_diff_vs_captum_{name}"] = float(np.abs(ours.delta - delta).max())
        worst = max(worst, ratio)
        rows.append(
            (
                f"IG gausslegendre n=50, {name}: llmdbg / captum",
                f"{median(times['llmdbg']):.3f} s / {median(times['captum']):.3f} s = {ratio:.3f}",
            )
        )
    figures["time_ratio_vs_captum_equal_steps"] = round(worst, 4)
    return rows, figures


def captum_default_protocol(case, tol=0.01):
    """Evaluations a Captum user spends: n_steps=50, doubled until the delta is met."""
    gap = abs(case.gap())
    spent, n = 0, 50
    while True:
        _, delta = case.captum(n)
        spent += n + 2
        if abs(float(delta[0])) / gap < tol or n >= 800:
            return spent, n
        n *= 2


def captum_oracle(case, tol=0.01):
    gap = abs(case.gap())
    for n in STEP_LADDER:
        _, delta = case.captum(n)
        if abs(float(delta[0])) / gap < tol:
            return n + 2
    return STEP_LADDER[-1] + 2


def bench_evals(cases):
    ours_total = captum_total = oracle_total = 0
    per = []
    for name, case in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", llmdbg.attribution.ConvergenceWarning)
            attr = case.ours(method="adaptive", tol=0.01)
        ours = int(attr.n_evals[0])
        theirs, _n = captum_default_protocol(case)
        oracle = captum_oracle(case)
        ours_total += ours
        captum_total += theirs
        oracle_total += oracle
        per.append(f"{name}: {ours} vs {theirs} (oracle {oracle}, rel delta {float(attr.relative_delta.max()):.4f})")
    figures = {
        "evals_ratio_vs_captum_at_1pct_delta": round(ours_total / captum_total, 4),
        "evals_ratio_vs_captum_oracle_at_1pct_delta": round(ours_total / oracle_total, 4),
        "evals_llmdbg_adaptive_total": ours_total,
        "evals_captum_default_total": captum_total,
        "evals_captum_oracle_total": oracle_total,
    }
    rows = [
        (
            "evals to 1 % delta, adaptive vs captum (default protocol)",
            f"{ours_total} / {captum_total} = {ours_total / captum_total:.3f}",
        ),
        (
            "evals to 1 % delta, adaptive vs captum oracle n",
            f"{ours_total} / {oracle_total} = {ours_total / oracle_total:.3f}",
        ),
    ]
    return rows, figures, per


def bench_multitoken(model, tok, repeats, n_targets=16, prompt_len=32, n_steps=50):
    from captum.attr import (
        LayerIntegratedGradients,
        LLMGradientAttribution,
        TextTokenInput,
    )

    prompt = " ".join(SENTENCES * 3)
    ids = tok(prompt, return_tensors="pt", truncation=True, max_length=prompt_len)["input_ids"]
    text = tok.decode(ids[0, 1:-1])
    inp = TextTokenInput(text, tok, baselines=0)  # LLMGradientAttribution reads its baseline id here
    with torch.no_grad():
        gen = model.generate(
            inp.inp_tensor,
            max_new_tokens=n_targets,
            min_new_tokens=n_targets,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    target = gen[0, inp.inp_tensor.shape[1] :]
    # Captum's LLMGradientAttribution takes its baseline from TextTokenInput (id 0 = [PAD] here)
    base = torch.zeros_like(inp.inp_tensor)
    llm = LLMGradientAttribution(LayerIntegratedGradients(model, model.transformer.wte), tok)

    def theirs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return llm.attribute(inp, target=target, n_steps=n_steps)

    def ours():
        return llmdbg.integrated_gradients(
            model, {"input_ids": inp.inp_tensor}, target=target[None], baseline=base, n_steps=n_steps, progress=False
        )

    times = time_interleaved({"llmdbg": ours, "captum": theirs}, repeats)
    ratio = median(times["llmdbg"]) / median(times["captum"])
    diff = rel_diff(ours().scores[0], theirs().token_attr.detach().numpy())
    rows = [
        (
            f"{n_targets}-token continuation, prompt {inp.inp_tensor.shape[1]} tokens, n={n_steps}: llmdbg / captum LLM",
            f"{median(times['llmdbg']):.3f} s / {median(times['captum']):.3f} s = {ratio:.3f}",
        )
    ]
    return rows, {"multitoken_time_ratio_vs_captum_llm": round(ratio, 4), "max_abs_diff_vs_captum_llm": diff}


def probe(side: str, length: int, out: str) -> None:
    """One side of the memory figure, in this fresh process."""
    model, tok = minilm()
    case = SimilarityCase(model, tok, 0, length=length)
    start = reset_peak()
    t0 = time.perf_counter()
    scores = case.ours(n_steps=50).scores[0] if side == "llmdbg" else case.captum(50)[0][0]
    seconds = time.perf_counter() - t0
    np.save(out, scores)
    print(json.dumps({"extra_bytes": peak_growth_bytes(start), "seconds": seconds}))


def bench_memory(quick):
    length = 64 if quick else 512
    got = {}
    for side in ("llmdbg", "captum"):
        path = f"/tmp/llmdbg_attr_mem_{side}.npy"
        res = subprocess.run(
            [sys.executable, __file__, "--probe", side, str(length), path], capture_output=True, text=True, check=True
        )
        got[side] = json.loads(res.stdout.strip().splitlines()[-1])
        got[side]["scores"] = np.load(path)
    ratio = got["llmdbg"]["extra_bytes"] / got["captum"]["extra_bytes"]
    rows = [
        (
            f"peak RSS growth, MiniLM T={length}, n=50: {side}",
            f"{got[side]['extra_bytes'] / 2**20:7.0f} MiB, {got[side]['seconds']:.1f} s",
        )
        for side in got
    ]
    return rows, {
        "peak_mem_ratio_vs_captum": round(ratio, 4),
        f"max_abs_diff_vs_captum_t{length}": rel_diff(got["llmdbg"]["scores"], got["captum"]["scores"]),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    repeats = args.repeats or (3 if args.quick else 5)
    model, tok = minilm()
    gpt2 = tiny_gpt2(tok)
    rows, figures = [], {}
    print("equal steps ...", file=sys.stderr, flush=True)
    r, f = bench_equal_steps(
        [("minilm", SimilarityCase(model, tok, 0)), ("gpt2", NextTokenCase(gpt2, tok, 0))], repeats
    )
    rows += r
    figures.update(f)
    n_ex = 1 if args.quick else len(SENTENCES)
    cases = [(f"minilm{i}", SimilarityCase(model, tok, i)) for i in range(n_ex)]
    cases += [(f"gpt2_{i}", NextTokenCase(gpt2, tok, i)) for i in range(n_ex)]
    print("evaluations to 1 % delta ...", file=sys.stderr, flush=True)
    r, f, per = bench_evals(cases)
    rows += r
    figures.update(f)
    print("multi-token ...", file=sys.stderr, flush=True)
    r, f = bench_multitoken(gpt2, tok, 1 if args.quick else 3, n_steps=10 if args.quick else 50)
    rows += r
    figures.update(f)
    print("peak memory ...", file=sys.stderr, flush=True)
    r, f = bench_memory(args.quick)
    rows += r
    figures.update(f)
    report(
        "attribution",
        args.quick,
        rows,
        figures,
        extra={
            "evals_per_example": per,
            "protocol": "Captum 0.9 LayerIntegratedGradients / LLMGradientAttribution on the word embedding; "
            "same PAD baselines, targets, rules and n_steps; times are medians of interleaved "
            "repeats after one warm-up",
        },
        write=not args.no_write,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        probe(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
