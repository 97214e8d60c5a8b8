"""The interactive views' Python side: payload encoding, size limits, HTML safety, the View object
and show()'s dispatch. What the views draw is tested in a browser (test_views_browser.py)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

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
