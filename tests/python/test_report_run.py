"""``llmdbg report --run OUT``: the dataset-level page of a run. Each section's numbers are checked
against the records, recomputed here with pandas and numpy: the counts, the highest losses, the
examples with NaN per layer (planted by a hook), the collapsed heads (planted by sharpening one
head's queries and keys), the map's sample; plus escaping, notes for missing tasks, and no
network reference in the page."""

from __future__ import annotations

import contextlib
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf

from llmdbg import cli
from llmdbg.report.run_page import write_run_report
from llmdbg.runs import open_run, run
from saved_models import LABELS, save_tiny
from tiny_models import one_thread  # noqa: F401  (autouse: tiny models run faster on one thread)

MARK = "zebra"  # examples holding this word get NaN at the output of block 1 (hidden state 2)
WORDS = "good bad fine film plot actor scene music story ending boring great awful long short".split()
HOSTILE = "<script>alert('x')</script> & friends"


def _texts(n=40):
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for _ in range(n):
        texts.append(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))))
        labels.append(LABELS[int(rng.integers(0, 3))])
    texts[3], texts[7], texts[15] = "", f"the {MARK} scene", HOSTILE
    labels[15] = "<b>not a label</b>"  # an error record whose reason quotes it, listed with its text
    return texts, labels


class _Page(HTMLParser):
    """Sections of the page: id -> {"text": visible text, "tables": [[row cells]], "images": n}."""

    def __init__(self, html):
        super().__init__()
        self.sections, self._sec, self._cell, self._row = {}, None, None, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._sec = self.sections.setdefault(a["id"], {"text": "", "tables": [], "images": 0})
        elif self._sec is None:
            return
        elif tag == "table":
            self._sec["tables"].append([])
        elif tag == "tr":
            self._row = []
            self._sec["tables"][-1].append(self._row)
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self._sec["images"] += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "section":
            self._sec = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        elif self._sec is not None:
            self._sec["text"] += data


def _table(section, i=0):
    rows = section["tables"][i]
    return pd.DataFrame(rows[1:], columns=rows[0])


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny BERT classifier (MiniLM's tokenizer) with head 1 of layer 0 sharpened to one key,
    and a hook that writes NaN into block 1's output for the examples that contain MARK."""
    path = save_tiny("classifier", tmp_path_factory.mktemp("clf"))
    model = tf.AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = tf.AutoTokenizer.from_pretrained(path)
    attn = model.bert.encoder.layer[0].attention.self
    d = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for lin in (attn.query, attn.key):
            lin.weight[d : 2 * d] *= 100.0
            lin.bias[d : 2 * d] *= 100.0
    mark_id = tok.convert_tokens_to_ids(MARK)
    seen = {}
    model.register_forward_pre_hook(lambda m, args, kw: seen.update(ids=kw.get("input_ids")), with_kwargs=True)

    def poison(module, args, output):
        rows = (seen["ids"] == mark_id).any(1)
        hidden = output[0] if isinstance(output, tuple) else output
        hidden[rows] = float("nan")

    model.bert.encoder.layer[1].register_forward_hook(poison)
    return model, tok


@pytest.fixture(scope="module")
def full_run(classifier, tmp_path_factory):
    model, tok = classifier
    root = tmp_path_factory.mktemp("run")
    texts, labels = _texts()
    data = root / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)), "utf-8")
    out = root / "out"
    run(
        model, tok, str(data), tasks=("stats", "embedding", "attention", "loss"), out=out, batch_size=8,
        shard_size=16, progress=False,
    )  # fmt: skip
    page = write_run_report(out, root / "report.html")
    html = page.read_text("utf-8")
    return out, open_run(out).records(), html, _Page(html), texts, labels


def test_summary_counts_and_bad_examples(full_run):
    out, df, html, page, texts, _ = full_run
    sec = page.sections["run-summary"]
    counts = df["status"].value_counts()
    assert counts["skipped"] == 1 and counts["error"] == 1
    assert (
        f"{len(df)} of {len(texts)} examples have a record: {counts['ok']} ok, 1 skipped" in sec["text"]
        and "1 failed" in sec["text"]
    )
    facts = dict(zip(*_table(sec).T.to_numpy()))
    assert facts["Ok"] == str(counts["ok"]) and facts["Tasks"] == "stats, embedding, attention, loss"
    assert facts["Model class"] == "BertForSequenceClassification"
    assert facts["Weights digest"] == open_run(out).manifest["job"]["model"]["weights"]
    ok = df[df["status"] == "ok"]
    assert facts["Real tokens (ok examples)"] == f"{int(ok['n_tokens'].sum()):,}"
    bad = _table(page.sections["skipped-and-failed-examples"])
    ref = df[df["status"] != "ok"]
    assert bad["example_id"].astype(int).tolist() == ref["example_id"].tolist()
    assert bad["reason"].tolist() == ref["reason"].tolist()  # the error's reason quotes the <b> label
    assert "<b>not a label</b>" in ref["reason"].iloc[1] and "&lt;b&gt;not a label&lt;/b&gt;" in html


def test_highest_loss_matches_pandas(full_run):
    _, df, _, page, texts, labels = full_run
    ok = df[(df["status"] == "ok") & np.isfinite(df["loss"].astype(float))]
    ref = ok.nlargest(20, "loss")
    table = _table(page.sections["highest-loss"])
    assert table["example_id"].astype(int).tolist() == ref["example_id"].tolist()
    np.testing.assert_allclose(table["loss"].astype(float), ref["loss"], rtol=1e-3)  # shown with 4 digits
    assert table["prediction"].tolist() == ref["prediction_text"].tolist()
    assert table["label"].tolist() == [labels[i] for i in ref["example_id"]]
    assert table["correct"].tolist() == [str(bool(c)) for c in ref["correct"]]
    assert table["text"].tolist() == [" ".join(texts[i].split())[:80] for i in ref["example_id"]]
    acc = df["correct"].dropna().astype(bool).mean()
    assert (
        f"Accuracy over the {df['correct'].notna().sum()} examples with a label: {acc:.4f}"
        in (page.sections["highest-loss"]["text"])
    )
    assert "NaN/Inf in the model): 1 ok example, 7." in page.sections["highest-loss"]["text"]


def test_nan_layers_match_the_records(full_run):
    _, df, _, page, _, _ = full_run
    ok = df[df["status"] == "ok"]
    nan = np.stack(ok["stats_nan"].to_numpy()) > 0
    table = _table(page.sections["nan-and-inf"])
    assert table["examples with NaN"].astype(int).tolist() == nan.sum(0).tolist() == [0, 0, 1]
    assert table["examples with Inf"].astype(int).tolist() == [0, 0, 0]
    assert table["output of"].tolist() == ["embeddings", "block 0", "block 1"]
    bad = ok.loc[ok["first_nonfinite_layer"] >= 0, "example_id"].tolist()
    assert bad == [7]
    assert f"NaN or Inf in a hidden state: 1 of {len(ok)} ok examples, 7." in page.sections["nan-and-inf"]["text"]


def test_collapsed_heads_follow_the_documented_rule(full_run):
    _, df, _, page, _, _ = full_run
    ok = df[(df["status"] == "ok") & (df["n_tokens"] >= 3)]
    shape = (2, 4)
    mean = {
        k: np.nanmean(np.stack(ok[f"attention_{k}"].to_numpy()).astype(np.float64), 0).reshape(shape)
        for k in ("entropy", "max_prob", "sink_mass")
    }
    flags = (mean["entropy"] < 0.1) | (mean["max_prob"] > 0.95) | (mean["sink_mass"] > 0.9)
    assert flags[0, 1] and flags.sum() < flags.size  # the planted head, not every head
    sec = page.sections["collapsed-attention-heads"]
    table = _table(sec)
    assert list(zip(table["layer"].astype(int), table["head"].astype(int))) == [tuple(x) for x in np.argwhere(flags)]
    np.testing.assert_allclose(table["mean entropy"].astype(float), mean["entropy"][flags], rtol=1e-3, atol=1e-6)
    assert sec["images"] == 1 and f"Collapsed: {int(flags.sum())} of 8 heads." in sec["text"]


def test_embedding_map_coloured_by_label(full_run):
    _, df, _, page, _, _ = full_run
    sec = page.sections["embedding-map"]
    ok = df[df["status"] == "ok"]
    finite = sum(bool(np.isfinite(e).all()) for e in ok["embedding"])
    assert finite == len(ok) - 1  # the NaN example is left out
    assert sec["images"] == 1 and "Colours: label" in sec["text"] and f"all {finite} ok examples" in sec["text"]
    assert "(1 with NaN or Inf left out)" in sec["text"]


def test_page_is_escaped_and_offline(full_run):
    html = full_run[2]
    # the only scripts are the embedding map view's own, inline: its JSON payload and its module
    scripts = re.findall(r"<script\b[^>]*>", html, re.I)
    assert re.findall(r'data-llmdbg-view="(\w+)"', html) == ["embedding"] and len(scripts) == 2
    assert all(re.fullmatch(r'<script type="(module|application/json)"( id="[\w-]+")?>', t) for t in scripts)
    assert "<script>alert" not in html.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; friends" in html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?https?:", html, re.I)


def test_sample_of_the_map_is_seeded_and_capped(classifier, full_run, tmp_path):
    out = full_run[0]
    a = write_run_report(out, tmp_path / "a.html", max_map_points=10, random_state=3).read_text("utf-8")
    b = write_run_report(out, tmp_path / "b.html", max_map_points=10, random_state=3).read_text("utf-8")
    text = _Page(a).sections["embedding-map"]["text"]
    assert "a random sample (seed 3) of 10" in text
    img = re.compile(r'data:image/png;base64,[^"]+')
    assert img.findall(a)[-1] == img.findall(b)[-1]  # same sample, same map
    with pytest.raises(ValueError, match="max_map_points"):
        write_run_report(out, tmp_path / "c.html", max_map_points=2)


def test_a_run_without_tasks_gets_notes(classifier, tmp_path):
    model, tok = classifier
    out = tmp_path / "stats_only"
    run(model, tok, ["a good film", "bad", "", "the plot was long"], tasks=("stats",), out=out, progress=False)
    html = write_run_report(out).read_text("utf-8")
    assert (out / "_report.html").exists()
    assert len(pd.read_parquet(out)) == 4  # the default page name does not break Parquet readers
    page = _Page(html)
    for anchor, task in (
        ("highest-loss", "loss"),
        ("collapsed-attention-heads", "attention"),
        ("embedding-map", "embedding"),
    ):
        assert f"This run has no {task} task: run with it" in page.sections[anchor]["text"], anchor
        assert not page.sections[anchor]["tables"] and not page.sections[anchor]["images"]
    assert "No NaN or Inf in any layer of 3 ok examples." in page.sections["nan-and-inf"]["text"]
    assert "the run's data was not a file" in page.sections["run-summary"]["text"]
    # the texts of an in-memory run can be given; other data is refused
    html = write_run_report(out, force=True, data=["a good film", "bad", "", "the plot was long"]).read_text("utf-8")
    assert "The texts are not shown" not in html
    assert _table(_Page(html).sections["skipped-and-failed-examples"]).to_dict("records") == [
        {"example_id": "2", "status": "skipped", "reason": "empty text", "text": ""}
    ]
    with pytest.raises(ValueError, match="not the examples the run ran on"):
        write_run_report(out, force=True, data=["something else"] * 4)
    with pytest.raises(FileExistsError, match="force"):
        write_run_report(out)
    for part in out.glob("part-*.parquet"):  # a run killed before its first shard
        part.unlink()
    page = _Page(write_run_report(out, force=True).read_text("utf-8"))
    assert list(page.sections) == ["run-summary", "no-records"]
    assert "0 of 4 examples have a record" in page.sections["run-summary"]["text"]


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_report_run(full_run, tmp_path):
    out = full_run[0]
    target = tmp_path / "sub" / "page.html"
    code, stdout, stderr = _cli(["report", "--run", str(out), "--output", str(target)])
    assert code == 0, stderr
    assert stdout.strip() == f"Report written to {target.resolve()}" and "Highest loss" in target.read_text("utf-8")
    code, stdout, stderr = _cli(["report", "--run", str(out), "--out", str(tmp_path / "dir")])
    assert code == 0 and (tmp_path / "dir" / "index.html").exists(), stderr
    for argv, needle in (
        (["report", "--run", str(out), "--output", str(target)], "--force"),
        (["report", "--run", str(out), "--out", str(tmp_path / "dir")], "--force"),
        (["report", "--run", str(out), "--out", "d", "--output", "f"], "not both"),
        (["report", "--run", str(out), "--model", "m"], "--model cannot go with --run"),
        (["report", "--output", str(target)], "--output FILE goes with --run OUT"),
        (["report", "--run", str(tmp_path)], "holds no llmdbg run"),
    ):
        code, stdout, stderr = _cli(argv)
        assert code == 2 and stdout == "" and stderr.count("\n") == 1 and needle in stderr, (argv, stderr)
    assert _cli(["report", "--run", str(out), "--output", str(target), "--force"])[0] == 0
    assert _cli(["report", "--run", str(out), "--out", str(tmp_path / "dir"), "--force"])[0] == 0


def test_a_failing_section_keeps_the_page(full_run, tmp_path, monkeypatch):
    from llmdbg.report import SectionFailedWarning, run_page

    def broken(ctx):
        raise RuntimeError("map exploded")

    monkeypatch.setattr(run_page, "SECTIONS", (*run_page.SECTIONS[:-1], ("Embedding map", broken)))
    code, _, stderr = _cli(["report", "--run", str(full_run[0]), "--output", str(tmp_path / "p.html")])
    assert code == 0 and stderr.strip() == (
        "llmdbg report: warning: the embedding map section failed (RuntimeError: map exploded); "
        "the report was written without it"
    )
    page = _Page((tmp_path / "p.html").read_text("utf-8"))
    assert "embedding-map-failed" in page.sections and "highest-loss" in page.sections
    with pytest.warns(SectionFailedWarning, match="map exploded"):
        write_run_report(full_run[0], tmp_path / "q.html")


def test_a_causal_lm_run_without_labels_is_coloured_by_loss(tmp_path):
    from tiny_models import minilm_tokenizer

    tok = minilm_tokenizer()
    torch.manual_seed(0)
    ids = dict(bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    config = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=len(tok), n_positions=64, **ids)
    model = tf.GPT2LMHeadModel(config).eval()
    texts = _texts()[0][16:30]
    out = tmp_path / "lm"
    run(model, tok, texts, tasks=("embedding", "loss"), out=out, progress=False)
    page = _Page(write_run_report(out, data=texts).read_text("utf-8"))
    sec = page.sections["embedding-map"]
    assert "Colours: loss quintile" in sec["text"] and sec["images"] == 1
    df = open_run(out).records()
    ref = df[df["status"] == "ok"].nlargest(20, "loss")
    table = _table(page.sections["highest-loss"])
    assert table["example_id"].astype(int).tolist() == ref["example_id"].tolist()
    assert table["prediction"].tolist() == ref["prediction_text"].tolist() and "label" not in table


def test_loss_bins_are_ordered_and_distinct():
    from llmdbg.report.sections_run import _loss_bins

    loss = np.array([1.0001, 1.0002, 1.0003, 1.0004, 1.0005, 1.0006, np.nan, 1.0007, 1.0008, 1.0009, 1.001])
    bins = _loss_bins(loss)
    assert bins[6] == "loss n/a"
    names = [b for b in bins if b != "loss n/a"]
    lows = [float(b.split()[1].split("–")[0]) for b in names]
    assert lows == sorted(lows) and len(set(names)) == 5  # quintiles, edges told apart
    assert _loss_bins(np.array([2.0, 2.0, 2.0])) == ["loss 2–2"] * 3
