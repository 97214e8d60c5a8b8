"""``llmdbg.saved.compare``: a trace against itself is zero, against a perturbed run it matches numpy
and scipy references computed from the arrays; shapes, key sets, statistics-only captures and
edge cases (zero, opposite and non-finite tensors); the plot and the report section."""

from __future__ import annotations

import contextlib
import io
import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import jensenshannon

import llmdbg
from llmdbg import cli
from llmdbg.plot.compare import plot_comparison
from llmdbg.report import Report, ReportContext
from llmdbg.report.sections_compare import add_comparison, comparison_section, write_comparison_report
from llmdbg.saved import compare, compare_heads
from llmdbg.saved.comparison import COLUMNS, HEAD_COLUMNS
from saved_models import save_tiny
from tiny_models import one_thread, tiny_inputs, tiny_model  # noqa: F401 - one_thread is an autouse fixture

PERTURBED = "encoder.layer.0.attention.output.dense"
DELTAS = ("mean", "std", "absmax", "zero_fraction", "nan_count", "inf_count")


def _capture(model, batch, *, hook=None, **kwargs):
    """Capture ``model`` on ``batch`` in two forward calls (rows 0-1, then 2), each followed by a
    backward, optionally with a forward hook that perturbs ``PERTURBED``."""
    handle = model.get_submodule(PERTURBED).register_forward_hook(hook) if hook else None
    try:
        with llmdbg.capture(model, "blocks", **kwargs) as trace:
            for rows in (slice(0, 2), slice(2, 3)):
                out = model(**{k: v[rows] for k, v in batch.items()})
                if kwargs.get("grads"):
                    out.last_hidden_state.square().sum().backward()
    finally:
        if handle is not None:
            handle.remove()
    return trace


def _noise(module, args, output):
    g = torch.Generator().manual_seed(int(output.shape[0]))
    return output + 0.3 * torch.randn(output.shape, generator=g)


@pytest.fixture(scope="module")
def runs():
    """(a, b, mask of b): b has the perturbation and one more padding position in sequence 0."""
    model = tiny_model("bert")
    x = tiny_inputs("bert", batch=3)
    a = _capture(model, x, attentions=True, inputs=True, grads=True)
    xb = {k: v.clone() for k, v in x.items()}
    xb["attention_mask"][0, 4] = 0
    b = _capture(model, xb, hook=_noise, attentions=True, inputs=True, grads=True)
    model.zero_grad(set_to_none=True)
    return a, b


# -- numpy and scipy references --------------------------------------------------------------


def _selected(arr, mask, attention):
    x = np.asarray(arr, dtype=np.float64)
    if attention:  # real queries and real keys, every head
        keep = mask[:, None, :, None] & mask[:, None, None, :]
        return x[np.broadcast_to(keep, x.shape)]
    return x[mask]


def ref_distances(xa, xb, mask, attention=False):
    x, y = _selected(xa, mask, attention), _selected(xb, mask, attention)
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    return np.linalg.norm(x - y) / nx, float(x.ravel() @ y.ravel()) / (nx * ny), np.abs(x - y).max()


def ref_stats(arr):
    x = np.asarray(arr, dtype=np.float64)
    fin = x[np.isfinite(x)]
    return {
        "mean": fin.mean(),
        "std": fin.std(),
        "absmax": np.abs(fin).max(),
        "zero_fraction": np.mean(x == 0),
        "nan_count": int(np.isnan(x).sum()),
        "inf_count": int(np.isinf(x).sum()),
    }


def ref_js_heads(pa, pb, mask):
    """(H,) mean over the queries real in ``mask`` of scipy's JS distance squared (base 2)."""
    b, h, t, _ = pa.shape
    out = np.zeros(h)
    for head in range(h):
        vals = [
            jensenshannon(pa[i, head, q].astype(np.float64), pb[i, head, q].astype(np.float64), base=2) ** 2
            for i in range(b)
            for q in range(t)
            if mask[i, q]
        ]
        out[head] = np.mean(vals)
    return out


def _row(df, module, kind):
    rows = df[(df.module == module) & (df.kind == kind)]
    assert len(rows) == 1, (module, kind, df[["module", "kind"]])
    return rows.iloc[0]


def _array(trace, module, kind):
    if kind == "attention":
        return np.concatenate(trace.calls(module + ":attn"), axis=0)
    if kind == "attention_grad":
        return np.concatenate(trace.calls(module + ":attn_grad"), axis=0)
    return {"output": trace.activations, "input": trace.inputs, "grad": trace.grads}[kind][module]


# -- a trace against itself and against a perturbed run -------------------------------------


def test_a_trace_against_itself_is_exactly_zero(runs):
    a, _ = runs
    df = compare(a, a)
    assert list(df.columns) == list(COLUMNS)
    assert set(df.kind) == {"output", "input", "grad", "attention", "attention_grad"}
    assert len(df) == len(a.keys()) and df.attrs == {"only_in_a": [], "only_in_b": []}
    assert (df.rel_l2 == 0).all() and (df.cosine == 1).all() and (df.max_abs_diff == 0).all()
    for s in DELTAS:
        assert (df[f"{s}_delta"] == 0).all(), s
    attention = df[df.kind == "attention"]
    assert len(attention) == 2 and (attention.js == 0).all()
    assert df[df.kind != "attention"].js.isna().all()
    heads = compare_heads(a, a)
    assert list(heads.columns) == list(HEAD_COLUMNS) and len(heads) == 2 * 4 and (heads.js == 0).all()


def test_a_perturbed_run_matches_numpy_and_scipy(runs):
    a, b = runs
    df = compare(a, b)
    mask = a.attention_mask.astype(bool) & b.attention_mask.astype(bool)  # real in both
    assert mask.sum() == a.attention_mask.sum() - 1
    for row in df.itertuples():
        xa, xb = _array(a, row.module, row.kind), _array(b, row.module, row.kind)
        assert row.shape == xa.shape
        rel, cos, diff = ref_distances(xa, xb, mask, attention=row.kind.startswith("attention"))
        np.testing.assert_allclose([row.rel_l2, row.cosine, row.max_abs_diff], [rel, cos, diff], rtol=1e-10)
        sa, sb = ref_stats(xa), ref_stats(xb)
        for s in DELTAS:
            np.testing.assert_allclose(getattr(row, f"{s}_delta"), sb[s] - sa[s], rtol=1e-9, atol=1e-12)
    # The perturbation enters after layer 0's attention map: that map changes only through the
    # extra padding key, every later tensor changes a lot.
    first_map = _row(df, "encoder.layer.0.attention.self", "attention")
    out0 = _row(df, "encoder.layer.0", "output")
    assert first_map.rel_l2 < 0.2 < out0.rel_l2 and out0.cosine < 0.99
    heads = compare_heads(a, b)
    for layer, module in enumerate(a.attention_modules):
        want = ref_js_heads(_array(a, module, "attention"), _array(b, module, "attention"), mask)
        got = heads[heads.module == module]
        assert (got.layer == layer).all() and got["head"].tolist() == list(range(4))
        # scipy renormalises each row; float32 rows sum to 1 within ~1e-7
        np.testing.assert_allclose(got.js, want, rtol=1e-6)
        np.testing.assert_allclose(_row(df, module, "attention").js, want.mean(), rtol=1e-6)
    assert (heads.js > 0).all()


def test_a_head_mean_capture_gives_one_head():
    model = tiny_model("bert")
    x = tiny_inputs("bert")
    with torch.no_grad(), llmdbg.capture(model, attentions=True, reduce="head_mean") as a:
        model(**x)
    with torch.no_grad(), llmdbg.capture(model, attentions=True, reduce="head_mean") as b:
        model(**{**x, "input_ids": x["input_ids"].flip(1)})
    heads = compare_heads(a, b)
    mask = a.attention_mask.astype(bool)
    assert heads["head"].tolist() == [0, 0]
    for module, got in zip(a.attention_modules, heads.js):
        pa, pb = _array(a, module, "attention")[:, None], _array(b, module, "attention")[:, None]
        np.testing.assert_allclose(got, ref_js_heads(pa, pb, mask)[0], rtol=1e-6)


# -- what can and cannot be compared ---------------------------------------------------------


def test_different_lengths_are_refused_naming_the_module_and_both_shapes():
    model = tiny_model("bert")
    traces = []
    for length in (7, 9):
        with torch.no_grad(), llmdbg.capture(model, "blocks") as t:
            model(**tiny_inputs("bert", length=length))
        traces.append(t)
    with pytest.raises(ValueError, match=r"'encoder\.layer\.0'.*\(2, 7, 32\).*\(2, 9, 32\).*same"):
        compare(*traces)


def test_keys_in_one_trace_only_are_listed_and_not_compared():
    model = tiny_model("bert")
    x = tiny_inputs("bert")
    with torch.no_grad(), llmdbg.capture(model, "blocks") as a:
        model(**x)
    with torch.no_grad(), llmdbg.capture(model, ["blocks", "*.attention.self"], inputs=True) as b:
        model(**x)
    df = compare(a, b)
    assert df.module.tolist() == ["encoder.layer.0", "encoder.layer.1"] and set(df.kind) == {"output"}
    assert df.attrs["only_in_a"] == []
    assert set(df.attrs["only_in_b"]) == set(b.keys()) - set(a.keys())
    assert (
        "encoder.layer.0:input" in df.attrs["only_in_b"] and "encoder.layer.1.attention.self" in df.attrs["only_in_b"]
    )
    back = compare(b, a)
    assert back.attrs["only_in_a"] == [k for k in b.keys() if k not in a.keys()] and back.attrs["only_in_b"] == []


def test_statistics_only_traces_give_deltas_and_no_distances(runs):
    model = tiny_model("bert")
    x = tiny_inputs("bert", batch=3)
    full_a, full_b = (_capture(model, x, hook=h, inputs=True) for h in (None, _noise))
    stats_a, stats_b = (_capture(model, x, hook=h, inputs=True, reduce="stats") for h in (None, _noise))
    assert not stats_a.activations and stats_a.stats
    full, only = compare(full_a, full_b), compare(stats_a, stats_b)
    assert only[["module", "kind"]].equals(full[["module", "kind"]])
    assert only[["rel_l2", "cosine", "max_abs_diff", "js"]].isna().all().all() and only["shape"].isna().all()
    for s in DELTAS:
        assert only[f"{s}_delta"].equals(full[f"{s}_delta"]), s
    for row in only.itertuples():  # independently of compare(full_a, full_b)
        sa = ref_stats(_array(full_a, row.module, row.kind))
        sb = ref_stats(_array(full_b, row.module, row.kind))
        np.testing.assert_allclose(row.mean_delta, sb["mean"] - sa["mean"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(row.absmax_delta, sb["absmax"] - sa["absmax"], rtol=1e-9, atol=1e-12)
    mixed = compare(full_a, stats_b)
    assert mixed.rel_l2.isna().all() and mixed["shape"].tolist() == full["shape"].tolist()
    assert mixed.std_delta.equals(full.std_delta)


class _Net(torch.nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.lin = torch.nn.Linear(2, 3)
        with torch.no_grad():
            self.lin.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.lin.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, x):
        return self.lin(x)


def _lin_trace(weight, bias):
    net = _Net(weight, bias)
    with torch.no_grad(), llmdbg.capture(net, "lin") as t:
        net(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    return t


def test_edge_cases_zero_opposite_and_non_finite_tensors():
    w = np.arange(6.0).reshape(3, 2) - 2.5
    zero, base = _lin_trace(np.zeros((3, 2)), np.zeros(3)), _lin_trace(w, np.ones(3))
    both_zero = compare(zero, zero).iloc[0]
    assert both_zero.rel_l2 == 0 and math.isnan(both_zero.cosine) and both_zero.max_abs_diff == 0
    from_zero = compare(zero, base).iloc[0]
    assert from_zero.rel_l2 == math.inf and math.isnan(from_zero.cosine)
    assert from_zero.max_abs_diff == np.abs(base.activations["lin"]).max()
    to_zero = compare(base, zero).iloc[0]
    assert to_zero.rel_l2 == 1 and math.isnan(to_zero.cosine)
    opposite = compare(base, _lin_trace(-w, -np.ones(3))).iloc[0]
    assert opposite.rel_l2 == 2 and opposite.cosine == -1
    nan = _lin_trace(w, [np.nan, 1.0, np.inf])
    bad = compare(base, nan).iloc[0]
    assert np.isnan([bad.rel_l2, bad.cosine, bad.max_abs_diff]).all()
    assert bad.nan_count_delta == 2 and bad.inf_count_delta == 2 and bad["shape"] == (2, 3)


def test_bad_arguments_are_named():
    t = _lin_trace(np.ones((3, 2)), np.zeros(3))
    with pytest.raises(TypeError, match=r"^a must be a llmdbg\.Trace or the path of a saved trace, got int"):
        compare(1, t)
    with pytest.raises(TypeError, match=r"^b must be .* got ndarray"):
        compare_heads(t, np.zeros(3))


# -- plot and report -------------------------------------------------------------------------


def test_plot_draws_one_bar_per_row_with_the_frames_values(runs):
    a, b = runs
    df = compare(a, b)
    ax = plot_comparison(df)
    assert isinstance(ax, matplotlib.axes.Axes)
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == len(df)
    np.testing.assert_allclose(heights, df.rel_l2.to_numpy())
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == [f"{m} ({k})" for m, k in zip(df.module, df.kind)]
    assert ax.get_ylabel() == "rel_l2" and len(ax.get_legend().get_texts()) == 5
    outputs = df[df.kind == "output"]
    fig, own = matplotlib.figure.Figure(), None
    own = fig.subplots()
    drawn = plot_comparison(outputs, "js", ax=own, log=True)
    assert drawn is own and len(own.patches) == len(outputs)
    assert [p.get_height() for p in own.patches] == [0.0] * len(outputs)  # NaN drawn empty...
    assert [t.get_text() for t in own.texts] == ["nan"] * len(outputs)  # ...and labelled
    assert [t.get_text() for t in own.get_xticklabels()] == outputs.module.tolist()
    with pytest.raises(ValueError, match="no column 'distance'"):
        plot_comparison(df, "distance")


def test_report_section_escapes_module_names(runs, tmp_path):
    a, b = runs
    df = compare(a, b)
    df["module"] = df["module"] + "<b>&x"
    df.attrs["only_in_b"] = ["extra<i>"]
    report = Report("t")
    ctx = ReportContext(None, None, "m", "encoder", [], None, None, None, None, report, comparison=df)
    comparison_section(ctx)
    page = report.to_html()
    assert [s.title for s in report.sections] == ["Comparison"]
    assert "encoder.layer.0&lt;b&gt;&amp;x" in page and "<b>&x" not in page and "extra&lt;i&gt;" in page
    assert page.count('<img src="data:image/png;base64,') == 2  # rel_l2, then attention js
    summary = json.loads(json.dumps(ctx.summary))  # JSON-ready: no NaN, no pandas.NA
    rows = summary["comparison"]["rows"]
    assert len(rows) == len(df) and rows[0]["js"] is None and rows[0]["shape"] == list(df["shape"][0])
    assert summary["comparison"]["only_in_b"] == ["extra<i>"]
    empty = Report("t")
    comparison_section(ReportContext(None, None, "m", "encoder", [], None, None, None, None, empty))
    assert empty.sections == []
    heads_report = Report("t")
    add_comparison(heads_report, compare(a, b), heads=compare_heads(a, b), names=("before<", "after"))
    assert "before&lt;" in heads_report.to_html() and heads_report.to_html().count("<table>") == 2


def test_comparison_page_on_its_own(runs, tmp_path):
    a, b = runs
    path = write_comparison_report(a, b, tmp_path / "cmp")
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text("utf-8"))
    assert path == tmp_path / "cmp" / "index.html" and "Comparison" in path.read_text("utf-8")
    assert summary["sections"] == ["Comparison"] and len(summary["comparison"]["heads"]) == 8
    assert [r["module"] for r in summary["comparison"]["rows"]] == compare(a, b).module.tolist()
    with pytest.raises(FileExistsError):
        write_comparison_report(a, b, tmp_path / "cmp")
    write_comparison_report(a, b, tmp_path / "cmp", force=True)


# -- saved traces and the command line -------------------------------------------------------


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_saved_traces_compare_like_the_live_ones(runs, tmp_path):
    a, b = runs
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    live, saved = compare(a, b), compare(tmp_path / "a", str(tmp_path / "b"))
    pd.testing.assert_frame_equal(saved, live)
    assert saved.attrs == live.attrs
    pd.testing.assert_frame_equal(compare_heads(str(tmp_path / "a"), b), compare_heads(a, b))
    with pytest.raises(ValueError, match="not a directory saved by llmdbg"):
        compare(tmp_path / "missing", a)


def test_report_compare_on_the_command_line(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a, b = runs
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    out = tmp_path / "cmp"
    code, stdout, stderr = _cli(["report", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    assert code == 0, stderr
    assert stdout.strip() == f"Report written to {(out / 'index.html').resolve()}"
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    assert summary["a"] == str(tmp_path / "a") and summary["sections"] == ["Comparison"]
    assert [r["rel_l2"] for r in summary["comparison"]["rows"]] == compare(a, b).rel_l2.tolist()
    code, _, stderr = _cli(["report", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    assert code == 2 and "not empty" in stderr  # the output directory is checked before anything is read
    code, _, stderr = _cli(["report", "--compare", str(tmp_path / "a"), "--text", "x", "--out", str(tmp_path / "x")])
    assert code == 2 and "argument --compare: expected 2 arguments" in stderr
    code, _, stderr = _cli(["report", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--text", "x"])
    assert code == 2 and "--text needs --model" in stderr
    model = save_tiny("encoder", tmp_path / "model")
    both = tmp_path / "both"
    argv = ["report", "--model", str(model), "--text", "A short text.", "--out", str(both), "--no-progress"]
    code, _, stderr = _cli([*argv, "--compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert code == 0, stderr
    summary = json.loads((both / "summary.json").read_text("utf-8"))
    assert summary["sections"][-1] == "Comparison" and "errors" not in summary
    assert len(summary["comparison"]["rows"]) == len(a.keys())
    assert "Comparison" in (both / "index.html").read_text("utf-8")
