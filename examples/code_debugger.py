"""Seed 003's worked example: fine-tune a small causal LM to *be* a code debugger, watched by llmdbg.

The story, end to end and offline (everything is built from code and configs, nothing is
downloaded):

1. **Data.** :func:`make_pairs` writes small Python functions from a handful of templates (sum,
   max, count, reverse, factorial, fibonacci, is_sorted, index_of, count_positive) under many
   variable namings, and injects one bug per pair: an off-by-one (a range bound, an index, a
   start value), a wrong operator (``+``/``-``, ``<``/``<=``, ``==``/``!=``) or a wrong variable.
   Each :class:`Pair` keeps the buggy and the fixed code, the bug's line and the function's unit
   tests. The test split holds out whole (template, naming) combinations: the model has seen
   every template, every bug and every name, but never that function with those names.
2. **Model.** :func:`build_tokenizer` builds a word-level tokenizer (identifiers, numbers,
   operators, runs of spaces, newlines) in memory; :func:`build_model` a GPT-2 from a config.
3. **Training.** :func:`train` runs the Hugging Face ``Trainer`` on prompts
   ``"BUGGY:\\n<code>\\nFIXED:\\n"`` followed by the fixed function (the loss on the fix only),
   with :class:`llmdbg.integrations.hf.DebugCallback` watching the run.
4. **Evaluation.** :func:`evaluate` generates a fix for every test prompt (greedy) and measures
   repair accuracy (exact match *and* the unit tests passed, run by :func:`run_tests_sandboxed`
   in a child process with a timeout, an empty environment and the network disabled) and error
   localisation (:func:`localise`: the first line where the model changed the buggy input, vs
   the bug's recorded line).
5. **Analysis.** :func:`analyse_errors` runs :func:`llmdbg.metrics.error_analysis` over the test
   set; :func:`attribute_fix` explains one repair with :func:`llmdbg.attribute_generation`
   (which context tokens the fix's first changed token came from).

Run ``python examples/code_debugger.py --steps 400`` for the figures in docs/code-debugger.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "BUG_KINDS",
    "TEMPLATES",
    "Bug",
    "EvalResult",
    "Pair",
    "SandboxResult",
    "Template",
    "analyse_errors",
    "attribute_fix",
    "build_model",
    "build_tokenizer",
    "evaluate",
    "exact_match",
    "generate",
    "localise",
    "main",
    "make_pairs",
    "run_tests_sandboxed",
    "train",
]

BUG_KINDS = ("off_by_one", "operator", "variable")

# ---------------------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Bug:
    """One injectable bug of a template: on line ``line`` (1-based), ``fixed`` becomes ``buggy``.

    Both fragments may hold the template's placeholders; the formatted ``fixed`` fragment must
    occur exactly once on its line.
    """

    kind: str
    line: int
    fixed: str
    buggy: str


@dataclasses.dataclass(frozen=True)
class Template:
    """A correct function with placeholders for its names, its bugs and its unit tests.

    Attributes
    ----------
    name : str
        The function's name (fixed: names of functions are not varied).
    source : str
        The correct code; ``{xs}``-style placeholders are filled from ``names``.
    names : dict of str to tuple of str
        The choices of each placeholder; a naming is one choice per placeholder.
    bugs : tuple of Bug
    tests : tuple of str
        ``assert`` statements that the correct code passes and every bug fails.
    """

    name: str
    source: str
    names: dict[str, tuple[str, ...]]
    bugs: tuple[Bug, ...]
    tests: tuple[str, ...]

    def namings(self) -> list[dict[str, str]]:
        """Every naming, in a fixed order (the product of the choices, keys sorted)."""
        keys = sorted(self.names)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.names[k] for k in keys))]


# Disjoint pools, so that no naming ever gives two placeholders the same name.
_SEQ = ("xs", "nums", "items", "values", "arr")
_ACC = ("total", "acc", "result", "res", "out")
_IDX = ("i", "j", "k", "idx")
_ELEM = ("x", "v", "elem", "e")
_NUM = ("n", "m", "num", "size")
_KEY = ("t", "target", "key", "needle")
_PAIR = ("a", "b", "p", "q", "lo", "hi")

TEMPLATES: tuple[Template, ...] = (
    Template(
        "sum_list",
        "def sum_list({xs}):\n"
        "    {acc} = 0\n"
        "    for {i} in range(len({xs})):\n"
        "        {acc} = {acc} + {xs}[{i}]\n"
        "    return {acc}",
        {"xs": _SEQ, "acc": _ACC, "i": _IDX},
        (
            Bug("off_by_one", 3, "range(len({xs}))", "range(len({xs}) - 1)"),
            Bug("operator", 4, "{acc} + {xs}", "{acc} - {xs}"),
            Bug("variable", 5, "return {acc}", "return {i}"),
        ),
        ("assert sum_list([1, 2, 3]) == 6", "assert sum_list([]) == 0", "assert sum_list([5, -2, 10]) == 13"),
    ),
    Template(
        "max_list",
        "def max_list({xs}):\n"
        "    {acc} = {xs}[0]\n"
        "    for {i} in range(1, len({xs})):\n"
        "        if {xs}[{i}] > {acc}:\n"
        "            {acc} = {xs}[{i}]\n"
        "    return {acc}",
        {"xs": _SEQ, "acc": _ACC, "i": _IDX},
        (
            Bug("off_by_one", 3, "range(1, len({xs}))", "range(1, len({xs}) - 1)"),
            Bug("operator", 4, "] > {acc}", "] < {acc}"),
            Bug("variable", 5, "{acc} = {xs}[{i}]", "{acc} = {i}"),
        ),
        ("assert max_list([1, 2, 9]) == 9", "assert max_list([1, 5, 3]) == 5", "assert max_list([7]) == 7"),
    ),
    Template(
        "count",
        "def count({xs}, {t}):\n"
        "    {acc} = 0\n"
        "    for {x} in {xs}:\n"
        "        if {x} == {t}:\n"
        "            {acc} = {acc} + 1\n"
        "    return {acc}",
        {"xs": _SEQ, "t": _KEY, "acc": _ACC, "x": _ELEM},
        (
            Bug("off_by_one", 2, "{acc} = 0", "{acc} = 1"),
            Bug("operator", 4, "{x} == {t}", "{x} != {t}"),
            Bug("variable", 4, "{x} == {t}", "{x} == {acc}"),
        ),
        ("assert count([1, 2, 1, 3], 1) == 2", "assert count([], 4) == 0", "assert count([5, 5, 5], 5) == 3"),
    ),
    Template(
        "reverse",
        "def reverse({xs}):\n"
        "    {acc} = []\n"
        "    for {i} in range(len({xs}) - 1, -1, -1):\n"
        "        {acc}.append({xs}[{i}])\n"
        "    return {acc}",
        {"xs": _SEQ, "acc": _ACC, "i": _IDX},
        (
            Bug("off_by_one", 3, "- 1, -1, -1", "- 1, 0, -1"),
            Bug("operator", 3, "len({xs}) - 1", "len({xs}) + 1"),
            Bug("variable", 4, "append({xs}[{i}])", "append({i})"),
        ),
        ("assert reverse([1, 2, 3]) == [3, 2, 1]", "assert reverse([]) == []", "assert reverse([7, 8]) == [8, 7]"),
    ),
    Template(
        "factorial",
        "def factorial({n}):\n"
        "    {acc} = 1\n"
        "    for {i} in range(1, {n} + 1):\n"
        "        {acc} = {acc} * {i}\n"
        "    return {acc}",
        {"n": _NUM, "acc": _ACC, "i": _IDX},
        (
            Bug("off_by_one", 3, "range(1, {n} + 1)", "range(1, {n})"),
            Bug("operator", 4, "{acc} * {i}", "{acc} + {i}"),
            Bug("variable", 4, "{acc} * {i}", "{acc} * {n}"),
        ),
        ("assert factorial(0) == 1", "assert factorial(1) == 1", "assert factorial(5) == 120"),
    ),
    Template(
        "fibonacci",
        "def fibonacci({n}):\n"
        "    {a}, {b} = 0, 1\n"
        "    for {i} in range({n}):\n"
        "        {a}, {b} = {b}, {a} + {b}\n"
        "    return {a}",
        {"n": _NUM, "a": _PAIR[0::2], "b": _PAIR[1::2], "i": _IDX},
        (
            Bug("off_by_one", 3, "range({n})", "range({n} - 1)"),
            Bug("operator", 4, "{a} + {b}", "{a} - {b}"),
            Bug("variable", 5, "return {a}", "return {b}"),
        ),
        ("assert fibonacci(0) == 0", "assert fibonacci(1) == 1", "assert fibonacci(6) == 8"),
    ),
    Template(
        "is_sorted",
        "def is_sorted({xs}):\n"
        "    for {i} in range(len({xs}) - 1):\n"
        "        if {xs}[{i}] > {xs}[{i} + 1]:\n"
        "            return False\n"
        "    return True",
        {"xs": _SEQ, "i": _IDX},
        (
            Bug("off_by_one", 2, "len({xs}) - 1", "len({xs}) - 2"),
            Bug("operator", 3, "] > {xs}", "] >= {xs}"),
            Bug("variable", 3, "if {xs}[{i}] >", "if {i} >"),
        ),
        (
            "assert is_sorted([1, 1, 2]) is True",
            "assert is_sorted([1, 3, 2]) is False",
            "assert is_sorted([3, 2, 1]) is False",
            "assert is_sorted([]) is True",
        ),
    ),
    Template(
        "index_of",
        "def index_of({xs}, {t}):\n"
        "    for {i} in range(len({xs})):\n"
        "        if {xs}[{i}] == {t}:\n"
        "            return {i}\n"
        "    return -1",
        {"xs": _SEQ, "t": _KEY, "i": _IDX},
        (
            Bug("off_by_one", 2, "range(len({xs}))", "range(1, len({xs}))"),
            Bug("operator", 3, "] == {t}", "] != {t}"),
            Bug("variable", 4, "return {i}", "return {t}"),
        ),
        ("assert index_of([4, 5, 6], 4) == 0", "assert index_of([4, 5, 6], 6) == 2", "assert index_of([1], 9) == -1"),
    ),
    Template(
        "count_positive",
        "def count_positive({xs}):\n"
        "    {acc} = 0\n"
        "    for {x} in {xs}:\n"
        "        if {x} > 0:\n"
        "            {acc} = {acc} + 1\n"
        "    return {acc}",
        {"xs": _SEQ, "acc": _ACC, "x": _ELEM},
        (
            Bug("off_by_one", 4, "{x} > 0", "{x} > 1"),
            Bug("operator", 4, "{x} > 0", "{x} >= 0"),
            Bug("variable", 4, "if {x} > 0", "if {acc} > 0"),
        ),
        (
            "assert count_positive([1, -2, 3]) == 2",
            "assert count_positive([0, 1, 0]) == 1",
            "assert count_positive([]) == 0",
        ),
    ),
)


@dataclasses.dataclass(frozen=True)
class Pair:
    """One bug/fix example.

    Attributes
    ----------
    template, kind : str
        The template's name and the bug's kind (one of :data:`BUG_KINDS`).
    buggy, fixed : str
        The code with the bug and the correct code (no trailing newline); they differ on
        line ``line`` only.
    line : int
        The bug's line, 1-based.
    tests : tuple of str
        The function's unit tests (``assert`` statements).
    naming : tuple of str
        The names chosen for the template's placeholders (keys sorted); the split holds out
        whole (template, naming) combinations.
    """

    template: str
    kind: str
    buggy: str
    fixed: str
    line: int
    tests: tuple[str, ...]
    naming: tuple[str, ...]

    @property
    def prompt(self) -> str:
        """``"BUGGY:\\n<buggy code>\\nFIXED:\\n"``: what the model is given."""
        return f"BUGGY:\n{self.buggy}\nFIXED:\n"


def _inject(template: Template, naming: dict[str, str], bug: Bug) -> Pair:
    fixed = template.source.format(**naming)
    lines = fixed.split("\n")
    good, bad = bug.fixed.format(**naming), bug.buggy.format(**naming)
    row = lines[bug.line - 1]
    if row.count(good) != 1:
        raise ValueError(f"template {template.name}: {good!r} occurs {row.count(good)} times on line {bug.line}")
    lines[bug.line - 1] = row.replace(good, bad)
    naming_key = tuple(naming[k] for k in sorted(naming))
    return Pair(template.name, bug.kind, "\n".join(lines), fixed, bug.line, template.tests, naming_key)


def make_pairs(
    seed: int = 0,
    *,
    split: str = "naming",
    test_fraction: float = 0.15,
    max_namings: int = 80,
    templates: Sequence[Template] = TEMPLATES,
) -> tuple[list[Pair], list[Pair]]:
    """Every (template, naming, bug) pair, split into train and test by held-out combinations.

    Parameters
    ----------
    seed : int
        Chooses the namings, the held-out combinations and the order of both lists (the same
        seed, the same pairs).
    split : {"naming", "bug"}
        ``"naming"``: whole (template, naming) combinations are held out; the model has seen
        every template with every bug, under other names. ``"bug"``: one bug kind per template
        is held out (each kind for a third of the templates): the model must fix a bug it has
        seen only in other functions, a much harder generalisation.
    test_fraction : float
        ``split="naming"``: share of each template's namings held out, in (0, 1); at least one
        naming per template.
    max_namings : int
        Namings drawn per template (all when it has fewer), so that templates with more
        placeholders do not dominate either split.
    templates : sequence of Template
        Default :data:`TEMPLATES`.

    Returns
    -------
    train, test : list of Pair
        Shuffled. With ``split="naming"`` a test pair's (template, naming) never occurs in
        train, with any bug; with ``split="bug"`` its (template, kind) never does.
    """
    if split not in ("naming", "bug"):
        raise ValueError(f"split: expected 'naming' or 'bug', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a float in (0, 1), got {test_fraction!r}")
    if max_namings < 2:
        raise ValueError(f"max_namings: expected an int >= 2 (one to train on, one to test), got {max_namings!r}")
    rng = random.Random(seed)
    train: list[Pair] = []
    test: list[Pair] = []
    offset = rng.randrange(len(BUG_KINDS))
    for t, template in enumerate(templates):
        namings = template.namings()
        rng.shuffle(namings)
        namings = namings[:max_namings]
        n_test = max(1, math.ceil(test_fraction * len(namings)))
        held_kind = BUG_KINDS[(t + offset) % len(BUG_KINDS)]
        for k, naming in enumerate(namings):
            for bug in template.bugs:
                held = k < n_test if split == "naming" else bug.kind == held_kind
                (test if held else train).append(_inject(template, naming, bug))
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


# ------------------------------------------------------------------------------- tokenizer, model

# A piece carries its leading space (as GPT-2's byte-level BPE does) and a newline carries the next
# line's indentation, which keeps sequences short; two-character operators come first, so that
# "<" vs "<=" is one substitution.
TOKEN_PATTERN = r" ?(?:==|!=|<=|>=|\w+|[^\w\s])|\n *| +"
SPECIALS = ("<pad>", "<unk>", "<eos>")


def build_tokenizer(texts: Sequence[str]) -> Any:
    """A word-level tokenizer over the pieces of ``texts`` (built in memory, no download).

    Pieces are identifiers, numbers, comparison operators and other punctuation, each with its
    leading space if any, and newlines with the indentation that follows them; decoding is
    concatenation and round-trips exactly.

    Parameters
    ----------
    texts : sequence of str
        The vocabulary is every piece that occurs in them, sorted, after ``<pad>`` (0),
        ``<unk>`` (1) and ``<eos>`` (2).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        No special tokens are added when encoding; append ``eos_token_id`` yourself.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if isinstance(texts, str) or not texts:
        raise TypeError("texts: expected a non-empty sequence of strings")
    pieces = sorted({p for t in texts for p in re.findall(TOKEN_PATTERN, t)})
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *pieces])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<eos>",
        clean_up_tokenization_spaces=False,
    )


def build_model(
    tokenizer: Any,
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_positions: int = 128,
    dropout: float = 0.0,
    seed: int = 0,
) -> Any:
    """A randomly initialised GPT-2 (``GPT2LMHeadModel``) sized for ``tokenizer``.

    Parameters
    ----------
    tokenizer : the tokenizer of :func:`build_tokenizer`
    n_embd, n_layer, n_head, n_positions : int
        The GPT-2 config; ``n_positions`` must hold a prompt and its fix (at most 101 tokens
        with the default templates). Two layers are the fewest that can learn to copy (an
        induction head needs a previous-token head below it).
    dropout : float
        Residual, embedding and attention dropout (none by default: the task is small and
        synthetic, and dropout slows learning to copy).
    seed : int
        ``torch.manual_seed`` before the initialisation.
    """
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tf.GPT2LMHeadModel(config)


def _encode(pair: Pair, tokenizer: Any) -> dict[str, list[int]]:
    """Prompt then fix then ``<eos>``; the labels mask the prompt (-100) so that only the fix is learnt."""
    prompt = tokenizer(pair.prompt, add_special_tokens=False)["input_ids"]
    answer = tokenizer(pair.fixed, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}


def _collate(pad_id: int):
    def collate(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[k, :n] = torch.tensor(r["input_ids"])
            labels[k, :n] = torch.tensor(r["labels"])
            mask[k, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


# ------------------------------------------------------------------------------------ training


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` leaves: the Trainer, the llmdbg callback (``callback.watch`` holds the
    recorded run), the wall time in seconds and the final training loss."""

    trainer: Any
    callback: Any
    seconds: float
    final_loss: float

    @property
    def watch(self) -> Any:
        """The closed :class:`llmdbg.training.Watch` of the run."""
        return self.callback.watch


def train(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    *,
    steps: int = 400,
    batch_size: int = 16,
    learning_rate: float = 6e-3,
    log_dir: str | None = None,
    every: int = 25,
    seed: int = 0,
) -> TrainResult:
    """Fine-tune ``model`` on ``pairs`` with the Hugging Face ``Trainer``, watched by llmdbg.

    Parameters
    ----------
    model, tokenizer
        From :func:`build_model` and :func:`build_tokenizer`.
    pairs : sequence of Pair
        Training pairs (the loss is on the fix and its ``<eos>`` only).
    steps, batch_size, learning_rate : int, int, float
        AdamW with 5 % linear warm-up then linear decay; gradients clipped at norm 1.
    log_dir : str, optional
        Where the ``DebugCallback`` writes TensorBoard events; default a new temporary
        directory (the Trainer's own output directory is always temporary: nothing is saved).
    every : int
        The watch's detailed tier period, in optimizer steps.
    seed : int
        The Trainer's seed (data order, initial dropout masks).

    Returns
    -------
    TrainResult
    """
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from llmdbg.integrations.hf import DebugCallback

    if steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    if not pairs:
        raise ValueError("pairs: no training pairs")
    out = tempfile.mkdtemp(prefix="code_debugger_")
    callback = DebugCallback(every=every, log_dir=log_dir if log_dir is not None else os.path.join(out, "llmdbg"))
    args = TrainingArguments(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=max(1, steps // 20),
        lr_scheduler_type="linear",
        weight_decay=0.01,
        max_grad_norm=1.0,
        logging_steps=max(1, steps // 20),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=seed,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    data = [_encode(p, tokenizer) for p in pairs]
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,  # a list is a map-style dataset
        data_collator=_collate(tokenizer.pad_token_id),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # the loss is in trainer.state.log_history and in the watch
    t0 = time.perf_counter()
    output = trainer.train()
    model.eval()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    final = float(losses[-1]) if losses else float(output.training_loss)
    return TrainResult(trainer, callback, time.perf_counter() - t0, final)


# ---------------------------------------------------------------------------------- evaluation


def generate(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 96, batch_size: int = 64
) -> list[str]:
    """Greedy continuations of ``prompts``, up to ``<eos>``.

    Prompts of the same token length are batched together, so no padding (and no position
    shift) is ever needed.

    Returns
    -------
    list of str
        The decoded continuation of each prompt, in the order given.
    """
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    groups: dict[int, list[int]] = {}
    for k, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(k)
    out: list[str] = [""] * len(prompts)
    eos = tokenizer.eos_token_id
    model.eval()
    with torch.no_grad():
        for length, members in sorted(groups.items()):
            for s in range(0, len(members), batch_size):
                chunk = members[s : s + batch_size]
                ids = torch.tensor([encoded[k] for k in chunk], dtype=torch.long)
                gen = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=eos,  # rows that finished early are filled with <eos>, cut below
                )
                for k, row in zip(chunk, gen[:, length:].tolist()):
                    row = row[: row.index(eos)] if eos in row else row
                    out[k] = tokenizer.decode(row, skip_special_tokens=False)
    return out


def exact_match(output: str, fixed: str) -> bool:
    """True when ``output`` is ``fixed`` (trailing whitespace at the very end ignored)."""
    return output.rstrip() == fixed.rstrip()


def localise(buggy: str, output: str) -> int | None:
    """The first line (1-based) where ``output`` differs from ``buggy``: where the model put the bug.

    A line present in one text only counts as different; trailing whitespace at the end of
    each text is ignored. None when the model returned the input unchanged.

    Examples
    --------
    >>> localise("a\\nb\\nc", "a\\nB\\nc")
    2
    >>> localise("a\\nb", "a\\nb") is None
    True
    """
    old, new = buggy.rstrip().split("\n"), output.rstrip().split("\n")
    for k, (a, b) in enumerate(zip(old, new)):
        if a != b:
            return k + 1
    return None if len(old) == len(new) else min(len(old), len(new)) + 1


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """The outcome of :func:`run_tests_sandboxed`.

    Attributes
    ----------
    status : {"pass", "fail", "timeout", "error"}
        ``"fail"``: the code did not compile or run, or a test failed or raised;
        ``"timeout"``: killed after the time limit; ``"error"``: the child died without a result.
    reason : str
        Empty on a pass; otherwise the failing test and the exception, or why the child died.
    seconds : float
        Wall time of the child process.
    """

    status: str
    reason: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "pass"


# The child: no network (socket constructors and name resolution replaced before the candidate
# runs), a memory cap, the candidate's stdout discarded, the result written to a copy of fd 1 saved
# before the candidate runs.
_RUNNER = r"""
import json, os, resource, socket, sys
import _socket

_result = os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the candidate's output, even os.write(1, ...), goes nowhere
sys.stdout = open(os.devnull, "w")

def _report(status, reason=""):
    _result.write(json.dumps({"status": status, "reason": reason}))
    _result.flush()
    os._exit(0)

def _no_network(*args, **kwargs):
    raise PermissionError("network access is disabled in the sandbox")

class _NoSocket:
    def __init__(self, *args, **kwargs):
        _no_network()

for _mod in (socket, _socket):
    _mod.socket = _NoSocket
    for _name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname"):
        if hasattr(_mod, _name):
            setattr(_mod, _name, _no_network)

_cap = 512 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (_cap, _cap))

_job = json.loads(sys.stdin.read())
_ns = {"__name__": "__candidate__"}
try:
    exec(compile(_job["code"], "<candidate>", "exec"), _ns)
except BaseException as exc:
    _report("fail", f"the code does not run: {type(exc).__name__}: {exc}")
for _test in _job["tests"]:
    try:
        exec(compile(_test, "<test>", "exec"), _ns)
    except AssertionError:
        _report("fail", f"{_test} failed")
    except BaseException as exc:
        _report("fail", f"{_test} raised {type(exc).__name__}: {exc}")
_report("pass")
"""


def run_tests_sandboxed(code: str, tests: Sequence[str], *, timeout: float = 5.0) -> SandboxResult:
    """Run ``tests`` against ``code`` in a child Python process.

    The child is ``sys.executable -I`` (isolated: no user site, no ``PYTHON*`` variables) with an
    empty environment, a 512 MiB address-space cap and a wall-clock ``timeout``; inside it,
    ``socket.socket``, ``socket.create_connection`` and name resolution are replaced (in
    ``socket`` and ``_socket``) by functions that raise ``PermissionError`` before the candidate
    is executed. This keeps honest mistakes (an infinite loop, a stray request) contained; it is
    not a security boundary against hostile code (``ctypes`` could still reach the OS).

    Parameters
    ----------
    code : str
        The candidate's source (defines the function).
    tests : sequence of str
        Statements run one by one in the candidate's namespace (``assert ...``).
    timeout : float
        Seconds before the child is killed.

    Returns
    -------
    SandboxResult
    """
    if not isinstance(code, str):
        raise TypeError(f"code: expected str, got {type(code).__name__}")
    if isinstance(tests, str) or not all(isinstance(t, str) for t in tests):
        raise TypeError("tests: expected a sequence of str")
    if not timeout > 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    job = json.dumps({"code": code, "tests": list(tests)})
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _RUNNER],
            input=job,
            capture_output=True,
            text=True,
            env={},
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return SandboxResult("timeout", f"no result within {timeout:g} s (killed)", time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return SandboxResult("error", f"the child died without a result: {tail[0]}", seconds)
    return SandboxResult(str(result["status"]), str(result["reason"]), seconds)


@dataclasses.dataclass
class EvalResult:
    """Figures of :func:`evaluate`.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per test pair: template, kind, line, predicted_line (Int64, <NA> when the
        output is the unchanged input), exact, tests_passed,
        repaired (exact and tests passed), localised (predicted_line == line), outcome (the
        bug's kind when repaired, else ``"unchanged"``, ``"wrong line"`` or ``"wrong fix"``),
        reason (the sandbox's), buggy, fixed, output.
    seconds : float
        Generation plus sandbox time.
    """

    frame: Any
    seconds: float

    @property
    def summary(self) -> dict[str, float]:
        """n, exact_match, tests_passed, repair_accuracy and localisation_accuracy (shares in [0, 1])."""
        f = self.frame
        return {
            "n": len(f),
            "exact_match": float(f["exact"].mean()),
            "tests_passed": float(f["tests_passed"].mean()),
            "repair_accuracy": float(f["repaired"].mean()),
            "localisation_accuracy": float(f["localised"].mean()),
        }

    def by(self, column: str) -> Any:
        """Repair and localisation accuracy per ``column`` (``"template"`` or ``"kind"``)."""
        return (
            self.frame.groupby(column)[["repaired", "tests_passed", "localised"]]
            .mean()
            .assign(n=self.frame.groupby(column).size())
        )


def _outcome(pair: Pair, output: str, repaired: bool, predicted: int | None) -> str:
    if repaired:
        return pair.kind
    if predicted is None:
        return "unchanged"
    return "wrong fix" if predicted == pair.line else "wrong line"


def evaluate(model: Any, tokenizer: Any, pairs: Sequence[Pair], *, timeout: float = 5.0) -> EvalResult:
    """Generate a fix for every pair and score it.

    Repair accuracy is the share of outputs that equal the fixed code exactly *and* pass the
    unit tests in :func:`run_tests_sandboxed` (tests are run for every output, so
    ``tests_passed`` also counts other correct fixes). Localisation accuracy is the share whose
    first changed line (:func:`localise`) is the bug's line.

    Returns
    -------
    EvalResult
    """
    import pandas as pd

    if not pairs:
        raise ValueError("pairs: nothing to evaluate")
    t0 = time.perf_counter()
    longest = max(len(tokenizer(p.fixed, add_special_tokens=False)["input_ids"]) for p in pairs)
    outputs = generate(model, tokenizer, [p.prompt for p in pairs], max_new_tokens=longest + 8)
    rows = []
    for p, out in zip(pairs, outputs):
        sandbox = run_tests_sandboxed(out, p.tests, timeout=timeout)
        exact = exact_match(out, p.fixed)
        predicted = localise(p.buggy, out)
        repaired = exact and sandbox.passed
        rows.append(
            {
                "template": p.template,
                "kind": p.kind,
                "line": p.line,
                "predicted_line": predicted,
                "exact": exact,
                "tests_passed": sandbox.passed,
                "repaired": repaired,
                "localised": predicted == p.line,
                "outcome": _outcome(p, out, repaired, predicted),
                "reason": sandbox.reason,
                "buggy": p.buggy,
                "fixed": p.fixed,
                "output": out,
            }
        )
    frame = pd.DataFrame(rows)
    frame["predicted_line"] = frame["predicted_line"].astype("Int64")  # <NA>: the output was unchanged
    return EvalResult(frame, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ analysis


def analyse_errors(result: EvalResult, tokenizer: Any = None) -> Any:
    """:func:`llmdbg.metrics.error_analysis` of the repairs, with the bug's kind as the true label.

    The predicted label is the bug's kind when the model repaired it and otherwise what went
    wrong (``"unchanged"``, ``"wrong line"``, ``"wrong fix"``), so ``by_pair`` counts the
    failures of each bug kind, ``by_length`` the error rate by length of the buggy code (in
    tokens of ``tokenizer``, default words) and ``tokens`` the tokens over-represented in the
    buggy code of failures (template and variable names show which functions are hard).

    Returns
    -------
    llmdbg.metrics.ErrorAnalysis
    """
    from llmdbg import metrics

    f = result.frame
    return metrics.error_analysis(list(f["buggy"]), f["kind"].to_numpy(), f["outcome"].to_numpy(), tokenizer)


def attribute_fix(
    model: Any, tokenizer: Any, pair: Pair, *, method: str = "integrated_gradients", n_steps: int = 32
) -> tuple[Any, Any]:
    """Which context tokens the fix's first changed token came from.

    The context is the prompt and the fixed code up to the first token where the fix differs
    from the buggy code; the target is that token (teacher-forced: the correct fix is explained
    whether or not the model produced it). :func:`llmdbg.attribute_generation` attributes its
    log-probability to every context token.

    Parameters
    ----------
    model, tokenizer
        The fine-tuned model and its tokenizer.
    pair : Pair
        The repair to explain.
    method : str
        Any method of :func:`llmdbg.attribute_generation`.
    n_steps : int
        Integrated gradients' quadrature nodes (ignored by the other methods).

    Returns
    -------
    attribution : llmdbg.GenerationAttribution
        One target row; ``scores`` float32 ``(1, S)``.
    top : pandas.DataFrame
        The context tokens by decreasing absolute score: position, token, score, and ``in``
        (``"buggy line k"``, ``"fix line k"`` for the part of the fix already written, or the
        ``"BUGGY:"``/``"FIXED:"`` headers). A newline token belongs to the line it ends.
    """
    import pandas as pd

    from llmdbg import attribute_generation

    prompt = tokenizer(pair.prompt, add_special_tokens=False)["input_ids"]
    fixed = tokenizer(pair.fixed, add_special_tokens=False)["input_ids"]
    buggy = tokenizer(pair.buggy, add_special_tokens=False)["input_ids"]
    k = next((j for j, (a, b) in enumerate(zip(fixed, buggy)) if a != b), min(len(fixed), len(buggy)))
    context = prompt + fixed[:k]
    attribution = attribute_generation(
        model,
        tokenizer,
        torch.tensor([context]),
        target=fixed[k : k + 1],
        method=method,
        n_steps=n_steps if method == "integrated_gradients" else None,
        source="prompt",
        progress=False,
    )
    scores = attribution.scores[0]
    n_lines = pair.buggy.count("\n") + 1
    where, line = [], 0  # the prompt's line 0 is "BUGGY:", lines 1..n_lines the code, then "FIXED:"
    for j, tok in enumerate(attribution.source_tokens):
        if j == len(prompt):
            line = 0
        if j >= len(prompt):
            where.append(f"fix line {line + 1}")
        else:
            where.append("BUGGY:" if line == 0 else "FIXED:" if line > n_lines else f"buggy line {line}")
        line += tok.count("\n")
    top = pd.DataFrame(
        {"position": np.arange(len(scores)), "token": attribution.source_tokens, "score": scores, "in": where}
    )
    top = top.sort_values("score", ascending=False, key=np.abs, kind="stable").reset_index(drop=True)
    return attribution, top


# ---------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train, evaluate and analyse; print the figures. Returns the evaluation summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps (default 400)")
    parser.add_argument("--out", default=None, help="directory for llmdbg's TensorBoard events (default: temporary)")
    parser.add_argument("--seed", type=int, default=0, help="data split, initialisation and data order")
    parser.add_argument("--split", choices=("naming", "bug"), default="naming", help="what the test split holds out")
    parser.add_argument("--n-test", type=int, default=None, help="test pairs evaluated (default: all)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: fastest for a model this small)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_pairs, test_pairs = make_pairs(args.seed, split=args.split)
    test_pairs = test_pairs[: args.n_test] if args.n_test is not None else test_pairs
    tokenizer = build_tokenizer([p.prompt + p.fixed for p in train_pairs])
    model = build_model(tokenizer, seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{len(train_pairs)} training pairs, {len(test_pairs)} test pairs, vocabulary {len(tokenizer)}")
    print(f"GPT-2 with {n_params / 1e6:.2f} M parameters, {args.steps} steps")
    run = train(model, tokenizer, train_pairs, steps=args.steps, log_dir=args.out, seed=args.seed)
    print(f"trained in {run.seconds:.1f} s, final loss {run.final_loss:.4f}; llmdbg events: {len(run.watch.events)}")
    result = evaluate(model, tokenizer, test_pairs)
    s = result.summary
    print(
        f"evaluated {s['n']} held-out pairs in {result.seconds:.1f} s:\n"
        f"  repair accuracy (exact and tests) {s['repair_accuracy']:.3f}\n"
        f"  exact match                       {s['exact_match']:.3f}\n"
        f"  unit tests passed                 {s['tests_passed']:.3f}\n"
        f"  error localisation                {s['localisation_accuracy']:.3f}"
    )
    print(result.by("kind").round(3).to_string())
    print(result.by("template").round(3).to_string())
    analysis = analyse_errors(result)
    print(analysis.by_pair.to_string())
    failed = result.frame[~result.frame["repaired"]]
    if len(failed):
        first = failed["predicted_line"].value_counts(dropna=False).sort_index()
        print("first changed line of the failures:", {str(k): int(v) for k, v in first.items()})
    repaired = [p for p, ok in zip(test_pairs, result.frame["repaired"]) if ok]
    _, top = attribute_fix(model, tokenizer, (repaired or test_pairs)[0])
    print(top.head(5).to_string())
    return s


if __name__ == "__main__":
    main()
