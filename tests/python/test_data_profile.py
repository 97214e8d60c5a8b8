"""llmdbg.data.profile against plain-Python references (Counter, dicts, str.split)."""

from __future__ import annotations

import collections
import math
import random

import numpy as np
import pytest

from llmdbg import _core
from llmdbg.data import profile


def _texts(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    words = ["the", "cat", "Cat", "sat", "naïve", "über", "x", "a\u3000b", "zz\u00a0y", "end."]
    texts, labels = [], []
    for _ in range(n):
        if texts and rng.random() < 0.2:
            i = rng.randrange(len(texts))
            texts.append(texts[i])
            labels.append(labels[i] if rng.random() < 0.7 else 1 - labels[i])
            continue
        k = rng.randrange(0, 9)
        texts.append(rng.choice(["", " ", "\t"]) + rng.choice([" ", "  ", "\n"]).join(rng.choices(words, k=k)))
        labels.append(rng.randrange(2))
    return texts, labels


def test_whitespace_counts_equal_python_reference():
    texts, labels = _texts(3000)
    p = profile(texts, labels, max_length=4, progress=False)
    ref = collections.Counter()
    lengths = []
    for t in texts:
        toks = t.split()
        ref.update(toks)
        lengths.append(len(toks))
    assert dict(zip(p.tokens.tolist(), p.token_counts.tolist())) == dict(ref)
    assert np.all(np.diff(p.token_counts) <= 0)  # most frequent first
    np.testing.assert_array_equal(p.lengths, lengths)
    assert p.truncated_share == pytest.approx(np.mean(np.array(lengths) > 4))
    assert p.n_tokens == sum(ref.values())
    # Duplicates: first index of each text, groups and conflicting labels.
    first: dict[str, int] = {}
    groups = [first.setdefault(t, i) for i, t in enumerate(texts)]
    np.testing.assert_array_equal(p.groups, groups)
    assert p.n_duplicates == len(texts) - len(first)
    members = collections.defaultdict(set)
    sizes = collections.Counter(texts)
    for t, y in zip(texts, labels):
        members[t].add(y)
    repeated = {t for t, c in sizes.items() if c > 1}
    assert set(p.duplicates["text"]) == repeated
    assert dict(zip(p.duplicates["text"], p.duplicates["count"])) == {t: sizes[t] for t in repeated}
    conflicting = {t for t in repeated if len(members[t]) > 1}
    assert p.n_conflicting == len(conflicting) > 0
    assert set(p.conflicting["text"]) == conflicting
    # Labels and normalised entropy.
    c = collections.Counter(labels)
    assert p.labels.tolist() == [0, 1] and p.label_counts.tolist() == [c[0], c[1]]
    q = np.array([c[0], c[1]]) / len(labels)
    assert p.label_entropy == pytest.approx(-(q * np.log(q)).sum() / math.log(2))
    assert p.unk_rate is None


def test_results_do_not_depend_on_threads():
    texts, _ = _texts(5000, seed=3)
    a = profile(texts, n_jobs=1, progress=False)
    b = profile(texts, n_jobs=2, progress=False)
    assert a.tokens.tolist() == b.tokens.tolist()
    np.testing.assert_array_equal(a.token_counts, b.token_counts)
    np.testing.assert_array_equal(a.groups, b.groups)


def test_core_split_equals_str_split_on_unicode_spaces():
    spaces = [c for c in map(chr, range(0x3001)) if c.isspace()]
    text = "x".join(spaces) + "y"
    tokens, _, lengths = _core.count_whitespace_tokens([text, "a\u200bb"])
    assert lengths.tolist() == [len(text.split()), 1]
    assert sorted(tokens) == sorted(set(text.split()) | {"a\u200bb"})


def test_tokenizer_counts_equal_python_reference():
    from llmdbg.report.demo import load_minilm

    _, tok = load_minilm()
    texts = ["The cat sat.", "Zzyzx qwjkx ☃ unknownish", "The cat sat.", "", "a " * 30]
    p = profile(texts, tokenizer=tok, max_length=16, progress=False)
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    ref = collections.Counter(i for seq in ids for i in seq)
    got = dict(zip(tok.convert_tokens_to_ids(p.tokens.tolist()), p.token_counts.tolist()))
    assert got == dict(ref)
    full = [len(s) for s in tok(texts)["input_ids"]]  # with [CLS] and [SEP]
    np.testing.assert_array_equal(p.lengths, full)
    assert p.truncated_share == pytest.approx(np.mean(np.array(full) > 16))
    assert p.unk_rate == pytest.approx(ref[tok.unk_token_id] / sum(ref.values()))
    assert p.unk_rate > 0 and p.n_duplicates == 1 and p.n_conflicting == 0


def test_string_labels_and_single_label():
    p = profile(["a", "b", "c"], ["pos", "neg", "pos"], progress=False)
    assert p.labels.tolist() == ["neg", "pos"] and p.label_counts.tolist() == [1, 2]
    assert profile(["a", "b"], [1, 1], progress=False).label_entropy == 0.0
    assert profile(["a", "b"], [0, 1], progress=False).label_entropy == pytest.approx(1.0)


def test_summary_and_plot():
    texts, labels = _texts(200)
    p = profile(texts, labels, max_length=3, progress=False)
    s = p.summary()
    assert s["n_texts"] == 200 and s["n_duplicates"] == p.n_duplicates
    table = p.token_frequency
    assert table["rank"].tolist()[:2] == [1, 2] and table["share"].sum() == pytest.approx(1.0)
    fig = p.plot()
    assert len(fig.axes) == 3
    assert len(profile(texts, progress=False).plot().axes) == 2


def test_bad_input():
    with pytest.raises(ValueError, match="texts is empty"):
        profile([])
    with pytest.raises(ValueError, match="labels has 1 entries but texts has 2"):
        profile(["a", "b"], labels=[0])
    with pytest.raises(TypeError, match="single string"):
        profile("a b c")
    with pytest.raises(TypeError, match=r"texts\[1\] must be str"):
        profile(["a", 3])
    with pytest.raises(ValueError, match="max_length"):
        profile(["a"], max_length=0)
    with pytest.raises(TypeError, match="tokenizer"):
        profile(["a"], tokenizer=str.split)
    with pytest.raises(ValueError, match="outside"):
        _core.count_ids(np.array([0, 7]), np.array([0, 2]), 5)
    with pytest.raises(ValueError, match="offsets"):
        _core.count_ids(np.array([0, 1]), np.array([0, 3]), 5)


def test_long_unicode_texts_equal_str_split():
    # Texts longer than the C++ scan's 64-byte windows, with every str.isspace() character and
    # non-space multi-byte characters at random offsets (also across window edges).
    rng = random.Random(7)
    spaces = [c for c in map(chr, range(0x3001)) if c.isspace()]
    pieces = ["a", "naïve", "☃☃", "x\u200by", "long_token_" * 4, "é", "日本語"]
    texts = []
    for _ in range(400):
        parts = []
        for _ in range(rng.randrange(0, 40)):
            parts.append(rng.choice(pieces))
            parts.append("".join(rng.choices(spaces, k=rng.randrange(1, 3))))
        texts.append("".join(parts[: rng.randrange(0, len(parts) + 1)]))
    texts += texts[:50]
    ref = collections.Counter(w for t in texts for w in t.split())
    for threads in (1, 2):
        tokens, counts, lengths, groups = _core.profile_whitespace(texts, threads)
        assert dict(zip(tokens, counts.tolist())) == dict(ref)
        assert lengths.tolist() == [len(t.split()) for t in texts]
        first: dict[str, int] = {}
        assert groups.tolist() == [first.setdefault(t, i) for i, t in enumerate(texts)]


@pytest.mark.parametrize(
    "labels",
    [
        [3, -1, 3, 7, -1, 3],  # ints, counted with bincount
        np.array([2, 0, 2, 1, 2, 0], dtype=np.uint8),
        np.array([5, 5, -4, 9, 5, 9], dtype=np.int32),
        [0, 10**12, 0, -(10**12), 10**12, 0],  # wide range: falls back to np.unique
        [True, False, True, True, False, True],
        [2**63, 1, 2**63, 1, 1, 1],  # beyond int64
        ["b", "a", "b", "c", "a", "b"],
        [0.5, 1.5, 0.5, 0.5, 2.5, 1.5],
    ],
)
def test_labels_equal_np_unique(labels):
    texts = ["a", "b", "a", "c", "b", "a"]
    p = profile(texts, labels, progress=False)
    uniq, codes, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    assert p.labels.dtype == uniq.dtype
    np.testing.assert_array_equal(p.labels, uniq)
    np.testing.assert_array_equal(p.label_counts, counts)
    q = counts / counts.sum()
    assert p.label_entropy == pytest.approx(-(q * np.log(q)).sum() / math.log(len(uniq)))
    # Duplicate groups "a" (0, 2, 5) and "b" (1, 4): distinct labels from the reference codes.
    want = {0: len(set(codes[[0, 2, 5]])), 1: len(set(codes[[1, 4]]))}
    assert dict(zip(p.duplicates["first"], p.duplicates["n_labels"])) == want
    assert p.n_conflicting == sum(v > 1 for v in want.values())


def test_int64_array_takes_only_exact_ints():
    np.testing.assert_array_equal(_core.int64_array([1, -2, 2**63 - 1]), [1, -2, 2**63 - 1])
    assert _core.int64_array((4, 5)).dtype == np.int64
    for bad in ([1, True], [1, 2.0], [2**63], [np.int64(1)], "12", np.array([1, 2])):
        assert _core.int64_array(bad) is None


def test_duplicate_summary_checks_its_input():
    groups = np.array([0, 1, 0, 1, 0, 5], dtype=np.int64)
    first, count, n_labels = _core.duplicate_summary(groups, np.array([1, 2, 1, 3, 2, 0]))
    assert first.tolist() == [0, 1] and count.tolist() == [3, 2] and n_labels.tolist() == [2, 2]
    assert _core.duplicate_summary(groups)[2].tolist() == [0, 0]
    with pytest.raises(TypeError, match="groups"):
        _core.duplicate_summary(groups.astype(np.float64))
    with pytest.raises(ValueError, match="codes has 2 entries"):
        _core.duplicate_summary(groups, np.array([0, 1]))
    with pytest.raises(ValueError, match="first occurrence"):
        _core.duplicate_summary(np.array([0, 2, 1], dtype=np.int64))


def test_huge_token_ids_raise_instead_of_aborting():
    """A token id of 2**40 made each thread allocate a 2**40-entry count table inside an OpenMP
    region: bad_alloc there aborted the process."""
    ids = np.array([1, 2, 2**40], dtype=np.int64)
    offsets = np.array([0, 3], dtype=np.int64)
    with pytest.raises(ValueError, match=r"count_ids: vocab_size 1099511627777 is beyond 2\*\*32"):
        _core.count_ids(ids, offsets, 2**40 + 1, 2)


def test_texts_mutated_by_another_thread_are_read_as_they_were_at_the_call():
    """The binding read the list's strings without the GIL and without holding them: a thread
    replacing items freed strings that were being read. It now holds a tuple of references."""
    import threading

    texts = [f"w{i % 97} x{i % 13} y" for i in range(200_000)]
    want = _core.count_whitespace_tokens(list(texts), 1)
    stop = threading.Event()

    def mutate():
        i = 0
        while not stop.is_set():
            texts[i % len(texts)] = "zzz " * 50  # frees the string that was there
            i += 1

    worker = threading.Thread(target=mutate)
    worker.start()
    try:
        for _ in range(5):
            snapshot = list(texts)
            got = _core.count_whitespace_tokens(snapshot, 2)
            again = _core.count_whitespace_tokens(texts, 2)
            assert sum(got[1]) == sum(len(t.split()) for t in snapshot)
            assert sum(again[1]) >= len(texts) * 3  # every text has at least 3 tokens
    finally:
        stop.set()
        worker.join()
    assert sum(want[1]) == 3 * 200_000
