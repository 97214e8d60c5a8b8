"""The interactive views' Python side: payload encoding, size limits, HTML safety, the View object
and show()'s dispatch. What the views draw is tested in a browser (test_views_browser.py)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

import llmdbg
from llmdbg import widgets
from llmdbg.widgets._base import View, view_esm
from llmdbg.widgets._payload import (
    MAX_PAYLOAD_BYTES,
    PayloadTooLargeError,
    check_size,
    decode_array,
    encode_array,
    encode_payload,
    encoded_size,
    quantize_rows,
)
from view_objects import (
    HOSTILE as HOSTILE_TOKENS,
)
from view_objects import (
    attention_trace,
    attributions,
    empty_trace,
    generation_attribution,
    lens_result,
    query_trace,
    stats_trace,
)

HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "</script><!--", "a&b", "\u202eevil"]


# -- payload ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "uint8", "int32", "uint16", "int8"])
def test_encode_array_is_the_little_endian_c_order_bytes(dtype):
    a = (np.arange(24).reshape(2, 3, 4) * 3 - 5).astype(dtype) if dtype != "uint8" else np.arange(24, dtype="u1")
    enc = encode_array(a, dtype)
    assert enc["dtype"] == dtype and enc["shape"] == list(a.shape)
    raw = base64.b64decode(enc["b64"])
    assert raw == np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    np.testing.assert_array_equal(decode_array(enc), a)


def test_encode_array_takes_non_contiguous_and_torch_input():
    import torch

    a = np.arange(12, dtype=np.float64).reshape(3, 4).T  # Fortran order view
    np.testing.assert_array_equal(decode_array(encode_array(a)), a.astype(np.float32))
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    np.testing.assert_array_equal(decode_array(encode_array(t)), t.numpy())


def test_encode_array_refuses_what_javascript_cannot_hold():
    with pytest.raises(ValueError, match="dtype must be one of"):
        encode_array(np.zeros(3), "int64")
    with pytest.raises(TypeError, match="numeric"):
        encode_array(np.array(["a", "b"]))


def test_quantize_rows_keeps_each_row_within_half_a_step():
    rng = np.random.default_rng(0)
    a = rng.dirichlet(np.ones(50), size=(3, 20)).astype(np.float32)  # attention-like rows
    a[1, 4] = 0.0  # an all-zero row stays zero
    enc = quantize_rows(a)
    assert enc["dtype"] == "uint8" and enc["shape"] == [3, 20, 50]
    back = decode_array(enc)
    step = a.max(axis=-1, keepdims=True) / 255
    assert np.all(np.abs(back - a) <= step / 2 + 1e-7)
    np.testing.assert_allclose(back.max(axis=-1), a.max(axis=-1), rtol=1e-6)
    assert np.all(back[1, 4] == 0)
    with pytest.raises(ValueError, match="non-negative"):
        quantize_rows(-a)


def test_encoded_size_matches_the_base64_length():
    for shape, dtype in [((7, 5), "float32"), ((1,), "uint8"), ((3, 3, 3), "float16"), ((0, 4), "float32")]:
        assert encoded_size(shape, dtype) == len(encode_array(np.zeros(shape), dtype)["b64"])


def test_payload_json_is_safe_inside_a_script_block_and_round_trips():
    text = encode_payload({"tokens": HOSTILE, "x": encode_array(np.ones(3))})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text)["tokens"] == HOSTILE


def test_payload_refuses_raw_arrays_nan_and_non_string_keys():
    with pytest.raises(TypeError, match="encode_array"):
        encode_payload({"a": np.zeros(3)})
    with pytest.raises(ValueError, match="NaN"):
        encode_payload({"a": [1.0, float("nan")]})
    with pytest.raises(TypeError, match="non-string key"):
        encode_payload({"a": {1: 2}})


def test_payload_over_the_limit_names_what_to_select():
    big = {"x": encode_array(np.zeros(1000, np.float32))}
    with pytest.raises(PayloadTooLargeError, match=r"select less with rows=.*max_bytes="):
        encode_payload(big, max_bytes=1000, instead="rows=range(0, 100)")
    assert isinstance(PayloadTooLargeError("x"), ValueError)
    encode_payload(big, max_bytes=10_000)
    assert MAX_PAYLOAD_BYTES == 64 * 2**20
    with pytest.raises(PayloadTooLargeError, match="layers="):
        check_size(MAX_PAYLOAD_BYTES + 1, "maps", "layers=[0]")
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        check_size(1, "maps", "layers=[0]", max_bytes=0)


# -- View ---------------------------------------------------------------------------------------
def test_view_html_is_self_contained_and_escapes_tokens():
    v = View("lens", {"tokens": HOSTILE}, title="</script><b>title</b>")
    html = v.to_html()
    assert 'data-llmdbg-view="lens"' in html
    # the only </script> tags are the two that close our own blocks
    assert html.count("</script>") == 2 and "<b>title" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "nothing loaded from elsewhere"
    assert "import " not in view_esm("lens").replace("// ", ""), "no import between files"
    payload = re.search(r'<script type="application/json" id="([^"]+)-payload">(.*?)</script>', html, re.S)
    assert payload is not None and json.loads(payload.group(2))["tokens"] == HOSTILE
    assert json.loads(payload.group(2))["title"] == "</script><b>title</b>"
    # two renderings of one view get different ids
    assert re.search(r'id="(llmdbg-lens-[0-9a-f]+)"', html).group(1) not in v.to_html()


def test_view_esm_is_common_then_view_then_the_export():
    esm = view_esm("attention")
    assert esm.index("function decodeArray") < esm.index("function render({ model, el }) {")
    assert esm.rstrip().endswith("export default { render };")


def test_every_views_javascript_can_sit_inside_an_inline_script():
    from llmdbg.widgets._base import _STATIC

    for path in sorted(_STATIC.glob("*.js")):
        text = path.read_text(encoding="utf-8").lower()
        assert "</script" not in text and "<!--" not in text, path.name
        if path.stem != "common":
            assert "function render({ model, el })" in path.read_text(encoding="utf-8"), path.name
            view_esm(path.stem)


def test_view_refuses_unknown_names_and_large_payloads():
    with pytest.raises(ValueError, match="no JavaScript for a view named 'nosuch'"):
        View("nosuch", {})
    with pytest.raises(ValueError, match="view name"):
        View("../x", {})
    with pytest.raises(PayloadTooLargeError, match="sample"):
        View("lens", {"x": encode_array(np.zeros(4096))}, max_bytes=100, instead="a sample")


def test_view_widget_and_mimebundle():
    v = View("lens", {"tokens": ["a"]}, title="t")
    w = v.widget()
    assert w._view == "lens" and w._payload == v.payload_json and w._esm == v.esm
    assert {"_view", "_payload", "_esm"} <= set(w.keys)  # synced traits
    bundle = v._repr_mimebundle_()
    assert "text/plain" in bundle and "lens view" in bundle["text/plain"]
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert v._repr_html_().startswith('<div class="llmdbg-view" data-llmdbg-view="lens"')


def test_view_save_writes_a_standalone_page(tmp_path):
    out = View("lens", {"tokens": ["a"]}, title="Lens & co").save(tmp_path / "v.html")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and "<title>Lens &amp; co</title>" in text
    assert 'data-llmdbg-view="lens"' in text


# -- show() -------------------------------------------------------------------------------------
def test_show_names_the_accepted_types():
    with pytest.raises(TypeError, match=r"show\(\) has a view for .*AttentionSummary.*LensResult.*Watch"):
        widgets.show(object())
    with pytest.raises(TypeError, match="Trace"):
        widgets.show({"attentions": []})


def test_package_exports():
    for name in ("View", "show", "PayloadTooLargeError", "MAX_PAYLOAD_BYTES", "attention_view", "lens_view"):
        assert name in widgets.__all__
    assert widgets.PayloadTooLargeError is PayloadTooLargeError
    with pytest.raises(AttributeError):
        widgets.nosuch  # noqa: B018


# -- the attention view's payload ----------------------------------------------------------------
def _payload(view):
    return json.loads(view.payload_json)


def test_attention_payload_holds_the_traces_own_maps_and_summary():

    trace, tokens = attention_trace()
    v = widgets.attention_view(trace, batch=1, tokens=tokens, flow=True)
    p = _payload(v)
    assert v.name == "attention" and p["tokens"] == tokens and p["precision"] == "float32"
    maps = trace.attentions
    assert len(p["maps"]) == len(maps) * maps[0].shape[1]
    for entry in p["maps"]:
        np.testing.assert_array_equal(decode_array(entry["map"]), maps[entry["layer"]][1, entry["head"]])
    one = [m[1:2] for m in maps]
    mask = trace.attention_mask[1:2]
    summary = llmdbg.attention_summary(one, attention_mask=mask)
    grid = decode_array(p["grid"]["entropy"])
    for r in summary.to_dict(orient="records"):
        assert grid[r["layer"], r["head"]] == np.float32(r["entropy_norm"])
        assert decode_array(p["grid"]["sink"])[r["layer"], r["head"]] == np.float32(r["sink_score"])
    np.testing.assert_allclose(decode_array(p["rollout"]), llmdbg.attention_rollout(one, attention_mask=mask)[0])
    np.testing.assert_allclose(decode_array(p["flow"]), llmdbg.attention_flow(one, attention_mask=mask)[0])
    assert "<" not in v.payload_json


def test_attention_selection_precision_and_size_limit():

    trace, _ = attention_trace()
    maps = trace.attentions
    p = _payload(widgets.attention_view(trace, layers=[1], heads=[2, -1], rows=[3, 0], precision="uint8"))
    assert [(m["layer"], m["head"]) for m in p["maps"]] == [(1, 2), (1, 3)]
    np.testing.assert_array_equal(decode_array(p["rows"]), [3, 0])
    ref = maps[1][0, 2][[3, 0]]
    back = decode_array(p["maps"][0]["map"])
    assert np.all(np.abs(back - ref) <= ref.max(axis=1, keepdims=True) / 510 + 1e-7)
    half = _payload(widgets.attention_view(trace, layers=[0], heads=[0], precision="float16", rollout=False))
    np.testing.assert_array_equal(decode_array(half["maps"][0]["map"]), maps[0][0, 0].astype(np.float16))
    assert "rollout" not in half
    with pytest.raises(PayloadTooLargeError, match=r"layers=\[\.\.\.\], heads=\[\.\.\.\].*rows=range"):
        widgets.attention_view(trace, max_bytes=2000)
    with pytest.raises(ValueError, match=r"layers must be in \[-2, 2\)"):
        widgets.attention_view(trace, layers=[5])
    with pytest.raises(ValueError, match="batch must be in"):
        widgets.attention_view(trace, batch=2)
    with pytest.raises(ValueError, match="one string per position"):
        widgets.attention_view(trace, tokens=["a"])
    with pytest.raises(ValueError, match="precision must be one of"):
        widgets.attention_view(trace, precision="int4")


def test_attention_of_a_query_capture_is_labelled_with_the_models_numbers():
    trace, query, full = query_trace()
    p = _payload(widgets.attention_view(trace, query=query, batch=1))
    assert p["grid"]["layer_ids"] == [1] and p["grid"]["head_ids"] == [2, 3]
    np.testing.assert_array_equal(decode_array(p["rows"]), [11, 4])
    assert p["query_tokens"] is None and "rollout" not in p  # rows of a self-attention, not a square map
    for entry in p["maps"]:  # the whole map's rows 11 and 4 of head 2 or 3
        np.testing.assert_array_equal(decode_array(entry["map"]), full[1, 2 + entry["head"]][[11, 4]])
    unlabelled = _payload(widgets.attention_view(trace))
    assert unlabelled["grid"]["layer_ids"] is None and unlabelled["query_tokens"] == ["0", "1"]
    with pytest.raises(TypeError, match="AttentionQuery"):
        widgets.attention_view(trace, query={"layers": [1]})
    with pytest.raises(ValueError, match="query selects"):
        widgets.attention_view(trace, query=llmdbg.AttentionQuery(layers=[0, 1]))


def test_attention_auto_precision_thresholds():
    from llmdbg.widgets.attention import _precision

    assert _precision(4 * 2**20, "auto") == "float32"
    assert _precision(4 * 2**20 + 1, "auto") == "float16"
    assert _precision(4096 * 4096 * 4, "auto") == "uint8"  # one 4,096-token head: 16 MiB as uint8


def test_attention_from_statistics_summary_and_nothing():

    trace = stats_trace()
    p = _payload(widgets.attention_view(trace, batch=1))
    stats = trace.attention_stats
    for name in ("entropy", "max_prob", "sink_mass"):
        np.testing.assert_array_equal(
            decode_array(p["per_query"][name]), np.stack([stats[layer][name][1] for layer in sorted(stats)])
        )
    summary = llmdbg.attention_summary(trace)
    np.testing.assert_array_equal(
        decode_array(p["grid"]["entropy"]),
        summary.pivot(index="layer", columns="head", values="entropy_norm").to_numpy(np.float32),
    )
    assert p["maps"] == [] and "not in this trace" in p["note"]
    q = _payload(widgets.attention_view(summary))
    assert "not in this object" in q["note"] and q["grid"]["layers"] == len(stats)
    e = _payload(widgets.attention_view(empty_trace()))
    assert "attentions=True" in e["empty"]
    with pytest.raises(TypeError, match="Trace or an AttentionSummary"):
        widgets.attention_view(np.zeros((2, 2)))


# -- attribution and lens payloads ---------------------------------------------------------------
def test_attribution_payload_of_one_result_and_of_several_methods():

    sal, ig = attributions()
    p = _payload(widgets.attribution_view(sal))
    assert p["sources"] == sal.tokens[0] and HOSTILE_TOKENS[0] in p["sources"] and not p["generation"]
    np.testing.assert_array_equal(decode_array(p["methods"][0]["scores"])[0], sal.scores[0])
    np.testing.assert_array_equal(decode_array(p["visible"])[0], sal.mask[0])
    both = _payload(widgets.attribution_view({"saliency": sal, "IG": ig}, index=1))
    assert [m["name"] for m in both["methods"]] == ["saliency", "IG"]
    np.testing.assert_array_equal(decode_array(both["methods"][1]["scores"])[0], ig.scores[1])
    named = _payload(widgets.attribution_view([sal, sal]))
    assert [m["name"] for m in named["methods"]] == [f"{sal.method} #0", f"{sal.method} #1"]
    with pytest.raises(ValueError, match="index must be in"):
        widgets.attribution_view(sal, index=5)
    with pytest.raises(TypeError, match="attribution_view takes"):
        widgets.attribution_view(3)
    with pytest.raises(ValueError, match="at least one"):
        widgets.attribution_view([])


def test_generation_attribution_payload_rows_and_visibility():

    g = generation_attribution()
    p = _payload(widgets.attribution_view(g))
    assert p["generation"] and p["sources"] == g.source_tokens and p["targets"] == g.target_tokens
    np.testing.assert_array_equal(decode_array(p["methods"][0]["scores"]), g.scores)
    vis = decode_array(p["visible"]).astype(bool)
    n, s = g.scores.shape
    for k in range(n):
        assert vis[k].sum() == min(s, g.prompt_length + k) and not g.scores[k][~vis[k]].any()
    np.testing.assert_allclose(p["step_scores"]["probability"], g.step_scores["probability"], rtol=1e-6)
    other = generation_attribution(hostile=False)
    with pytest.raises(ValueError, match="other tokens"):
        widgets.attribution_view([g, other])
    with pytest.raises(PayloadTooLargeError):
        widgets.attribution_view(g, max_bytes=50)


def test_lens_payload_is_the_results_own_top_tokens():

    res = lens_result()
    p = _payload(widgets.lens_view(res))
    strings = np.asarray(p["strings"], dtype=object)
    np.testing.assert_array_equal(strings[decode_array(p["top"])], res.top_tokens[:, 0])
    np.testing.assert_array_equal(decode_array(p["probs"]), res.top_probs[:, 0])
    np.testing.assert_array_equal(decode_array(p["top_ids"]), res.top_ids[:, 0])
    np.testing.assert_array_equal(decode_array(p["target_rank"]), res.target_rank[:, 0])
    assert p["input_tokens"] == res.input_tokens[0] and HOSTILE_TOKENS[0] in p["strings"]
    sub = _payload(widgets.lens_view(res, batch=1, positions=[-1, 0]))
    assert sub["positions"] == [res.top_ids.shape[2] - 1, 0] and sub["real"] == [False, True]
    np.testing.assert_array_equal(decode_array(sub["probs"]), res.top_probs[:, 1][:, [-1, 0]])
    with pytest.raises(ValueError, match="positions must be in"):
        widgets.lens_view(res, positions=[99])
    with pytest.raises(PayloadTooLargeError, match="positions="):
        widgets.lens_view(res, max_bytes=100)
    with pytest.raises(TypeError, match="LensResult"):
        widgets.lens_view(object())


def test_show_picks_the_view_by_type():

    trace, _ = attention_trace()
    assert widgets.show(trace, layers=[0]).name == "attention"
    assert widgets.show(llmdbg.attention_summary(trace)).name == "attention"
    assert widgets.show(attributions()[0]).name == "attribution"
    assert widgets.show(generation_attribution()).name == "attribution"
    assert widgets.show(lens_result()).name == "lens"
