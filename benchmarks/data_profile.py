"""Dataset profiling: llmdbg.data.profile against plain Python and against pandas.

Generated corpus: N texts (1,000,000; 100,000 with --quick) of 4-40 words drawn from a Zipf
(s = 1.1) vocabulary of 50,000 random lowercase words, 5% exact repeats (some with a flipped
label), 4 labels.

What is timed (each side does the same job on the same texts, labels and max_length):
(a) whitespace path (no tokenizer): split every text on whitespace, count token frequencies and
    per-text lengths, share longer than max_length, label counts, exact duplicates and duplicates
    with conflicting labels.
    - llmdbg: ``llmdbg.data.profile(texts, labels, max_length=32)`` - one C++ pass splits
      (str.split() semantics), counts tokens and hashes texts, then duplicates are grouped in C++;
      the time includes building the sorted token table and the duplicates DataFrame. Timed with
      torch.get_num_threads() threads (``profile_speedup_vs_python``, the thread count is in the
      JSON as ``llmdbg_threads``) and with one thread (``profile_speedup_vs_python_1thread``),
      since the plain-Python and pandas references run on one thread.
    - plain Python: ``str.split`` + ``collections.Counter.update`` loop, ``dict.setdefault`` for
      duplicates, ``Counter`` for labels, sets for label conflicts.
    - pandas: ``Series.str.split().explode().value_counts()``, ``.str.len()``, ``duplicated`` and
      ``groupby(text).label.nunique()`` (one timed run: it is far slower than the others).
    Most of the plain-Python time is tokenisation (str.split) and Counter updates; llmdbg's figure
    covers tokenisation + counting + duplicates, which is the whole job here.
(b) tokenizer path (MiniLM's fast tokenizer, N/100 texts): the tokenizer's batch call dominates
    both sides, so the figure only shows what counting in C++ saves on top of it.
    - llmdbg: ``profile(texts, labels, tokenizer=tok, max_length=32)``;
    - plain Python: the same batch call, then ``Counter`` over the ids, lengths, duplicates, labels.
Equality: token counts, lengths and duplicate counts of llmdbg equal the plain-Python reference
(``counts_equal_python`` = 1).

    python benchmarks/data_profile.py [--quick]
"""

from __future__ import annotations

import collections
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np

from _harness import median, parse_args, report, time_interleaved

MAX_LENGTH = 32


def generate(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    wlen = rng.integers(2, 11, size=50_000)
    vocab = ["".join(rng.choice(letters, size=k)) for k in wlen]
    lengths = rng.integers(4, 41, size=n)
    ranks = np.minimum(rng.zipf(1.1, size=int(lengths.sum())), len(vocab)) - 1
    words = [vocab[r] for r in ranks.tolist()]
    texts, labels, pos = [], rng.integers(0, 4, size=n).tolist(), 0
    for k in lengths.tolist():
        texts.append(" ".join(words[pos : pos + k]))
        pos += k
    repeat = rng.random(n) < 0.05
    src = rng.integers(0, n, size=n)
    flip = rng.random(n) < 0.3
    for i in np.flatnonzero(repeat).tolist():
        j = int(src[i])
        texts[i] = texts[j]
        labels[i] = (labels[j] + 1) % 4 if flip[i] else labels[j]
    return texts, labels


def python_profile(texts, labels, max_length, split=str.split):
    counts: collections.Counter = collections.Counter()
    lengths = []
    for t in texts:
        toks = split(t)
        counts.update(toks)
        lengths.append(len(toks))
    truncated = sum(1 for x in lengths if x > max_length) / len(texts)
    first: dict[str, int] = {}
    groups = [first.setdefault(t, i) for i, t in enumerate(texts)]
    label_counts = collections.Counter(labels)
    seen: dict[str, set] = collections.defaultdict(set)
    sizes = collections.Counter(groups)
    for t, g, y in zip(texts, groups, labels):
        if sizes[g] > 1:
            seen[t].add(y)
    conflicting = sum(1 for s in seen.values() if len(s) > 1)
    return counts, lengths, truncated, len(texts) - len(first), label_counts, conflicting


def python_tokenizer_profile(tok, texts, labels, max_length):
    ids = []
    for start in range(0, len(texts), 20_000):
        ids.extend(
            tok(
                texts[start : start + 20_000],
                add_special_tokens=False,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
        )
    it = iter(ids)
    return python_profile(texts, labels, max_length, split=lambda _t: next(it))


def pandas_profile(texts, labels, max_length):
    import pandas as pd

    df = pd.DataFrame({"text": texts, "label": labels})
    tokens = df["text"].str.split()
    counts = tokens.explode().value_counts()
    lengths = tokens.str.len()
    truncated = float((lengths > max_length).mean())
    dup = df["text"].duplicated()
    label_counts = df["label"].value_counts()
    multi = df[df["text"].duplicated(keep=False)]
    conflicting = int((multi.groupby("text")["label"].nunique() > 1).sum())
    return counts, lengths, truncated, int(dup.sum()), label_counts, conflicting


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    import torch

    from llmdbg.data import profile

    n = 100_000 if args.quick else 1_000_000
    repeats = args.repeats or 3
    texts, labels = generate(n)
    threads = torch.get_num_threads()

    def ours(num_threads=None):
        return profile(texts, labels, max_length=MAX_LENGTH, n_jobs=num_threads, progress=False)

    # The plain-Python reference is single-threaded by nature: llmdbg is timed both with the
    # default thread count (torch.get_num_threads(), the headline figure) and with one thread.
    times = time_interleaved(
        {
            "llmdbg": ours,
            "llmdbg_1thread": lambda: ours(1),
            "python": lambda: python_profile(texts, labels, MAX_LENGTH),
        },
        repeats,
    )
    # pandas is ~10x slower than plain Python: one timed run, no warm-up, keeps the full run
    # within the time budget (its figure is not close to any goal).
    t0 = time.perf_counter()
    pandas_profile(texts, labels, MAX_LENGTH)
    times["pandas"] = [time.perf_counter() - t0]
    p = ours()
    ref = python_profile(texts, labels, MAX_LENGTH)
    equal = (
        dict(zip(p.tokens.tolist(), p.token_counts.tolist())) == dict(ref[0])
        and p.lengths.tolist() == ref[1]
        and p.truncated_share == ref[2]
        and p.n_duplicates == ref[3]
        and p.n_conflicting == ref[5]
        and dict(zip(p.labels.tolist(), p.label_counts.tolist())) == dict(ref[4])
    )
    p1 = ours(1)  # one thread: identical results
    equal = equal and (
        p1.tokens.tolist() == p.tokens.tolist()
        and np.array_equal(p1.token_counts, p.token_counts)
        and np.array_equal(p1.groups, p.groups)
        and np.array_equal(p1.lengths, p.lengths)
    )
    t_ours, t_one, t_py, t_pd = (median(times[k]) for k in ("llmdbg", "llmdbg_1thread", "python", "pandas"))

    # (b) tokenizer path on N/100 texts.
    from llmdbg.report.demo import load_minilm

    _, tok = load_minilm()
    m = n // 100
    sub_t, sub_l = texts[:m], labels[:m]
    tt = time_interleaved(
        {
            "llmdbg": lambda: profile(sub_t, sub_l, tokenizer=tok, max_length=MAX_LENGTH, progress=False),
            "python": lambda: python_tokenizer_profile(tok, sub_t, sub_l, MAX_LENGTH),
        },
        repeats,
    )
    q = profile(sub_t, sub_l, tokenizer=tok, max_length=MAX_LENGTH, progress=False)
    qref = python_tokenizer_profile(tok, sub_t, sub_l, MAX_LENGTH)
    tok_equal = dict(zip(tok.convert_tokens_to_ids(q.tokens.tolist()), q.token_counts.tolist())) == dict(qref[0])
    t_tok_ours, t_tok_py = median(tt["llmdbg"]), median(tt["python"])

    figures = {
        "profile_speedup_vs_python": round(t_py / t_ours, 2),
        "profile_speedup_vs_python_1thread": round(t_py / t_one, 2),
        "profile_speedup_vs_pandas": round(t_pd / t_ours, 2),
        "time_ratio_vs_python": round(t_ours / t_py, 4),
        "counts_equal_python": int(equal),
        "profile_speedup_vs_python_tokenizer": round(t_tok_py / t_tok_ours, 2),
        "tokenizer_counts_equal_python": int(tok_equal),
    }
    n_tok = int(p.token_counts.sum())
    rows = [
        ("texts / tokens / distinct", f"{n:,} / {n_tok:,} / {len(p.tokens):,}  (threads={threads})"),
        (f"llmdbg.data.profile ({threads} threads)", f"{t_ours:.3f} s"),
        ("llmdbg.data.profile (1 thread)", f"{t_one:.3f} s  ({t_py / t_one:.1f}x vs Python)"),
        ("plain Python (split + Counter)", f"{t_py:.3f} s  ({t_py / t_ours:.1f}x)"),
        ("pandas", f"{t_pd:.3f} s  ({t_pd / t_ours:.1f}x)"),
        ("counts equal to Python", str(bool(equal))),
        (f"tokenizer path, {m:,} texts: llmdbg", f"{t_tok_ours:.3f} s"),
        ("tokenizer path: plain Python", f"{t_tok_py:.3f} s  ({t_tok_py / t_tok_ours:.2f}x)"),
    ]
    extra = {
        "n_texts": n,
        "n_tokens": n_tok,
        "n_tokenizer_texts": m,
        "repeats": repeats,
        "pandas_repeats": 1,
        "llmdbg_threads": threads,
        "python_threads": 1,
        "pandas_threads": 1,
        "seconds": {
            "llmdbg": t_ours,
            "llmdbg_1thread": t_one,
            "python": t_py,
            "pandas": t_pd,
            "tokenizer_llmdbg": t_tok_ours,
            "tokenizer_python": t_tok_py,
        },
        "covers": "whitespace split + token counts + lengths + truncation + labels + duplicates",
    }
    report("data_profile", args.quick, rows, figures, extra, write=not args.no_write)


if __name__ == "__main__":
    main()
