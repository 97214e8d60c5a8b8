"""Tests for llmdbg.report (the HTML builder), llmdbg.demo and the ``llmdbg`` command."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import sys
from html.parser import HTMLParser

import matplotlib  # noqa: F401 - fail, never skip, when a test dependency is missing
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from llmdbg import cli
from llmdbg.report.page import Report, prepare_out_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Collects tags, attributes, ids, section contents and text of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.ids: set[str] = set()
        self.sections: dict[str, list[tuple[str, dict[str, str]]]] = {}
        self._section: str | None = None
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.tags.append((tag, attrs))
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "section":
            self._section = attrs.get("id")
            self.sections[self._section] = []
        elif self._section is not None:
            self.sections[self._section].append((tag, attrs))

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag]


def _assert_self_contained(text: str) -> _Page:
    page = _Page(text)
    imgs = page.find("img")
    for img in imgs:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == PNG_MAGIC
    for _, attrs in page.tags:
        for name in ("src", "href"):
            value = attrs.get(name, "")
            assert "http://" not in value and "https://" not in value, (name, value)
    # scripts only inline, only the interactive views' (a JSON payload and a module per view)
    scripts = page.find("script")
    assert all("src" not in a and a.get("type") in ("module", "application/json") for a in scripts), scripts
    views = [a for _, a in page.tags if "data-llmdbg-view" in a]
    assert len(scripts) == 2 * len(views)
    assert not page.find("link") and not page.find("iframe")
    toc = [a["href"] for a in page.find("a") if a.get("href", "").startswith("#")]
    assert toc, "no table of contents"
    for href in toc:
        assert href[1:] in page.ids, f"TOC link {href} has no target"
    return page


def _figure() -> Figure:
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def test_report_writes_a_self_contained_page(tmp_path):
    report = Report("My <model>", subtitle="two & sections")
    df = pd.DataFrame({"key": ["a", "b"], "mean": [0.5, np.nan], "count": [1200, 3]}).set_index("key")
    report.add_section(
        "Figures", html="<p>raw <b>html</b></p>", figure=[_figure(), _figure()], captions=["first"], table=df
    )
    report.add_section("Figures", table=[{"x": 1}, {"y": "two"}])  # same title: unique anchor
    path = report.write(tmp_path / "out")
    assert path == tmp_path / "out" / "index.html"
    text = path.read_text(encoding="utf-8")
    page = _assert_self_contained(text)
    assert len(page.find("img")) == 2
    assert [a["href"] for a in page.find("a")] == ["#figures", "#figures-2"]
    assert set(page.sections) == {"figures", "figures-2"}
    assert "<title>My &lt;model&gt;</title>" in text and "two &amp; sections" in text
    body = "".join(page.text)
    assert "first" in body and "1,200" in body and "nan" in body
    # the named index became a column; missing cells in list-of-dict tables are empty
    assert [t for t, _ in page.sections["figures"] if t == "th"] == ["th"] * 3
    footer = text[text.index("<footer>") :]
    for name in ("llmdbg", "torch", "transformers"):
        assert name in footer


def test_report_escapes_table_cells_and_titles(tmp_path):
    evil = "<script>alert(1)</script>"
    report = Report("t")
    report.add_section(evil, table=[{"name": evil, "<th>": 1}])
    report.add_section("df", table=pd.DataFrame({"col": [evil]}))
    text = report.write(tmp_path / "r").read_text(encoding="utf-8")
    assert "<script" not in text
    assert text.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4  # toc, heading, 2 cells
    assert "&lt;th&gt;" in text
    _assert_self_contained(text)


def test_report_places_views_after_the_figures_and_can_leave_them_out(tmp_path):
    from llmdbg.widgets import embedding_view

    evil = "<script>alert(1)</script>"
    view = embedding_view(np.array([[0.0, 0.0], [1.0, 1.0]], np.float32), labels=[evil, "b"], title="map")
    report = Report("t")
    report.add_section("Map", html="<p>text</p>", figure=_figure(), table=[{"x": 1}], view=view)
    text = report.write(tmp_path / "r").read_text(encoding="utf-8")
    page = _assert_self_contained(text)
    order = [t for t, a in page.sections["map"] if t in ("p", "img", "table") or "data-llmdbg-view" in a]
    assert order[:2] == ["p", "img"] and order[-1] == "table"
    assert [a["data-llmdbg-view"] for _, a in page.tags if "data-llmdbg-view" in a] == ["embedding"]
    assert "<script>alert" not in text  # the label travels escaped inside the JSON payload
    static = Report("t", views=False)
    static.add_section("Map", figure=_figure(), view=view)
    assert "data-llmdbg-view" not in static.to_html() and "<script" not in static.to_html()
    with pytest.raises(TypeError, match="llmdbg.widgets.View"):
        Report("t").add_section("s", view="<div>not a view</div>")


def test_report_view_of_builds_a_view_or_says_why_not():
    import torch

    import llmdbg

    model = torch.nn.Linear(2, 1)
    w = llmdbg.watch(model)
    model(torch.ones(3, 2)).sum().backward()
    w.step(loss=1.0)
    w.close()
    report = Report("t")
    view = report.view_of(w, title="run")
    assert view.name == "training" and report.views_skipped == []
    report.add_section("Training", view=view)
    assert 'data-llmdbg-view="training"' in report.to_html()
    assert report.view_of(42) is None and report.views_skipped[0].startswith("int: TypeError: show() has a view for")
    assert Report("t", views=False).view_of(w) is None


def test_report_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "out"
    Report("a").add_section("s", html="<p>1</p>").write(out)
    with pytest.raises(FileExistsError, match="--force"):
        Report("b").add_section("s", html="<p>2</p>").write(out)
    assert "<p>1</p>" in (out / "index.html").read_text()
    (out / "keep.txt").write_text("mine")
    Report("b").add_section("s", html="<p>2</p>").write(out, force=True)
    assert "<p>2</p>" in (out / "index.html").read_text()
    assert (out / "keep.txt").read_text() == "mine"  # force overwrites, never deletes
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_out_dir(empty) == empty  # an empty directory is fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        prepare_out_dir(tmp_path / "file", force=True)


def test_report_rejects_unknown_content():
    with pytest.raises(TypeError, match="DataFrame or a list of dicts"):
        Report("t").add_section("s", table=42)
    with pytest.raises(TypeError, match="matplotlib Figure"):
        Report("t").add_section("s", figure="not a figure")


# -- the command line -------------------------------------------------------------------


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_help_and_usage_errors():
    code, out, _ = _run_cli(["--help"])
    assert code == 0 and "demo" in out
    code, out, _ = _run_cli(["demo", "--help"])
    assert code == 0 and all(opt in out for opt in ("--out", "--force", "--text", "--no-progress"))
    code, _, err = _run_cli([])
    assert code == 2 and "COMMAND" in err
    code, _, err = _run_cli(["demo", "--bogus"])
    assert code == 2 and "unrecognized arguments" in err


def test_cli_demo_refuses_existing_dir_without_force(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    code, out, err = _run_cli(["demo", "--out", str(tmp_path), "--no-progress"])
    assert code == 2 and out == ""
    assert "--force" in err and str(tmp_path) in err and "Traceback" not in err
    code, _, err = _run_cli(["demo", "--out", str(tmp_path / "new"), "--text", "  "])
    assert code == 2 and "non-empty" in err
    assert not (tmp_path / "new").exists()  # arguments are checked before anything is written


def test_cli_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "llmdbg.cli", "demo", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "--force" in result.stdout


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One end-to-end ``llmdbg demo`` on MiniLM (a few seconds on CPU), shared by the tests."""
    out = tmp_path_factory.mktemp("demo") / "report"
    out.mkdir()
    (out / "keep.txt").write_text("not ours")  # non-empty: exercises --force
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        code, stdout, stderr = _run_cli(["demo", "--out", str(out), "--force", "--no-progress"])
    return out, code, stdout, stderr


def test_demo_writes_the_report(demo_run):
    out, code, stdout, stderr = demo_run
    assert code == 0, stderr
    index = out / "index.html"
    assert stdout.strip() == f"Report written to {index.resolve()}"
    assert (out / "keep.txt").read_text() == "not ours"
    page = _assert_self_contained(index.read_text(encoding="utf-8"))
    assert {"model", "activation-statistics", "attention"} <= set(page.sections)
    assert len([t for t, _ in page.sections["activation-statistics"] if t == "img"]) == 2
    attention_imgs = [a for t, a in page.sections["attention"] if t == "img"]
    assert len(attention_imgs) == 1  # one grid, a heatmap per layer
    alt = attention_imgs[0]["alt"]
    assert all(f"{i}" in alt for i in range(6)) and "layers" in alt
    # the interactive view sits next to the figure
    assert [a["data-llmdbg-view"] for _, a in page.sections["attention"] if "data-llmdbg-view" in a] == ["attention"]
    body = "".join(page.text)
    assert "BertModel" in body and "encoder.layer.5.attention.self" in body


def test_demo_writes_arrays_and_summary(demo_run):
    out, code, _, stderr = demo_run
    assert code == 0, stderr
    with np.load(out / "arrays.npz") as arrays:  # no pickles: tokens are a str array
        hidden = [arrays[f"hidden_states_{i}"] for i in range(7)]
        assert sorted(k for k in arrays.files if k.startswith("hidden_states_")) == [
            f"hidden_states_{i}" for i in range(7)
        ]
        attn = [arrays[k] for k in sorted(arrays.files) if k.startswith("attentions_")]
        mask, tokens = arrays["attention_mask"], arrays["tokens"]
    b, t = mask.shape
    assert b == 4
    assert all(h.shape == (b, t, 384) and h.dtype == np.float32 for h in hidden)
    assert len(attn) == 6 and all(a.shape == (b, 12, t, t) for a in attn)
    np.testing.assert_allclose(attn[0].sum(-1), 1.0, atol=1e-5)
    assert tokens.shape == (b, t) and tokens[0, 0] == "[CLS]"

    def no_nan(token: str):
        raise AssertionError(f"summary.json is not strict JSON: {token}")

    summary = json.loads((out / "summary.json").read_text(), parse_constant=no_nan)
    stats = summary["stats"]
    assert "encoder.layer.5" in stats and "encoder.layer.0:input" in stats
    assert len(stats) == 13  # embeddings + 6 blocks + 6 attention maps
    assert len(stats["encoder.layer.5"]["histogram"]) == 64
    assert stats["encoder.layer.5"]["count"] == b * t * 384


def test_file_lines_split_only_at_newlines_and_lose_the_bom(tmp_path):
    """--file used to split inside a text at U+2028, U+0085 and \\x1c, and kept a BOM."""
    from llmdbg.report import read_texts

    f = tmp_path / "texts.txt"
    f.write_bytes("\ufeffone\u2028still one\r\ntwo\x1c same\n\nthree\u0085end\n".encode())
    assert read_texts(None, f) == ["one\u2028still one", "two\x1c same", "three\u0085end"]


def test_force_replaces_a_symlinked_report_file_instead_of_writing_through_it(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("do not overwrite", encoding="utf-8")
    out = tmp_path / "report"
    out.mkdir()
    (out / "index.html").symlink_to(outside)
    Report("t").write(out, force=True)
    assert outside.read_text(encoding="utf-8") == "do not overwrite"
    assert not (out / "index.html").is_symlink() and "<html" in (out / "index.html").read_text(encoding="utf-8")
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


def test_bidirectional_controls_are_shown_not_obeyed():
    """A raw U+202E in a text or token reordered what the page showed ("Trojan Source")."""
    from llmdbg._internal.html import esc

    report = Report("t")
    isolate = esc("x\u2066y")
    report.add_section("Inputs", table=[{"text": "abc\u202edef", "n": 1}], html=f"<p>{isolate}</p>")
    page = report.to_html()
    for c in ("\u202e", "\u2066"):
        assert c not in page
    assert "⟨U+202E⟩" in page and "⟨U+2066⟩" in page
    assert esc("<a\u200f>") == "&lt;a⟨U+200F⟩&gt;"
