"""The interactive views in a real headless Chromium (playwright driving Debian's chromium): each
view draws, answers an interaction with a change in the DOM and on its canvas, shows hostile
tokens as text, logs no console error and makes no network request. The tests also write the
screenshots the docs show, docs/_static/views/<name>.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import llmdbg
from llmdbg.widgets import View, attention_view, attribution_view, lens_view
from view_objects import (
    HOSTILE,
    attention_trace,
    attributions,
    empty_trace,
    generation_attribution,
    lens_result,
    query_trace,
    stats_trace,
)

pytest_plugins = ["browser_harness"]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "_static" / "views"


def _screenshot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / f"{name}.png"), clip={"x": 0, "y": 0, "width": 800, "height": 500})


def _hostile_shown_as_text(page, selector: str) -> None:
    texts = page.locator(selector).all_inner_texts()
    for bad in HOSTILE:
        assert any(bad in t for t in texts), f"{bad!r} not shown as text in {selector}"
    assert page.locator("img").count() == 0 and page.evaluate("typeof window.alert_called") == "undefined"


def _changed(before: np.ndarray, after: np.ndarray) -> int:
    return int(np.any(before != after, axis=-1).sum())


def test_two_views_share_a_page_and_the_page_stays_offline(browser_page):
    html = View("lens", {}, title="first").to_html() + View("lens", {}, title="second").to_html()
    page = browser_page.open(html)
    assert page.locator('[data-llmdbg-view="lens"]').count() == 2
    assert page.locator(".llmdbg-title").all_inner_texts() == ["first", "second"]
    assert page.locator(".llmdbg-empty").count() == 2
    browser_page.assert_clean()


def test_attention_click_a_head_and_hover_a_token(browser_page):
    trace, tokens = attention_trace()
    page = browser_page.open(attention_view(trace, tokens=tokens, flow=True).to_html(), width=800, height=500)
    root = page.locator('[data-llmdbg-view="attention"]')
    assert root.count() == 1
    assert page.locator(".llmdbg-map-title").inner_text() == "layer 0, head 0"
    first = browser_page.canvas_pixels("canvas.llmdbg-map")

    # click layer 1, head 2 in the grid: the title and the map change
    grid = page.locator("canvas.llmdbg-grid").bounding_box()
    cell = page.evaluate("() => 0")  # geometry below mirrors attention.js: left 26, top 16, cell 22
    page.mouse.click(grid["x"] + 26 + 2 * 22 + 8, grid["y"] + 16 + 1 * 22 + 8)
    assert page.locator(".llmdbg-map-title").inner_text() == "layer 1, head 2"
    second = browser_page.canvas_pixels("canvas.llmdbg-map")
    assert _changed(first, second) > 100 + cell

    # hover a token: its row and column are marked on the overlay, strips drawn, text names it
    strip_before = browser_page.canvas_pixels("canvas.llmdbg-row-strip")
    page.hover('.llmdbg-tokens span[data-pos="5"]')
    focus = page.locator(".llmdbg-focus")
    assert focus.get_attribute("data-row") == "5" and focus.inner_text().startswith("tok3 (5) looks at:")
    overlay = browser_page.canvas_pixels("canvas.llmdbg-map-overlay")
    assert overlay[..., 3].any(axis=1).sum() == overlay.shape[0]  # the column band spans every row
    assert _changed(strip_before, browser_page.canvas_pixels("canvas.llmdbg-row-strip")) > 50
    # the same by hovering the map itself, on the last row
    page.locator("canvas.llmdbg-map-overlay").scroll_into_view_if_needed()
    box = page.locator("canvas.llmdbg-map-overlay").bounding_box()
    page.mouse.move(box["x"] + 3, box["y"] + box["height"] - 2)
    assert focus.get_attribute("data-row") == str(len(tokens) - 1)
    _hostile_shown_as_text(page, ".llmdbg-tokens span")

    # switch to rollout, then flow: other matrices
    page.click('button[data-mode="rollout"]')
    assert page.locator(".llmdbg-map-title").inner_text().startswith("attention rollout")
    rollout = browser_page.canvas_pixels("canvas.llmdbg-map")
    page.click('button[data-mode="flow"]')
    assert _changed(rollout, browser_page.canvas_pixels("canvas.llmdbg-map")) > 0
    # colour the grid by sink score
    grid_before = browser_page.canvas_pixels("canvas.llmdbg-grid")
    page.click('button[data-colour="sink"]')
    assert _changed(grid_before, browser_page.canvas_pixels("canvas.llmdbg-grid")) > 100
    browser_page.assert_clean()


def test_attention_head_outside_the_selection_says_how_to_include_it(browser_page):
    trace, tokens = attention_trace()
    page = browser_page.open(attention_view(trace, layers=[0], heads=[0], tokens=tokens).to_html())
    grid = page.locator("canvas.llmdbg-grid").bounding_box()
    page.mouse.click(grid["x"] + 26 + 3 * 22 + 8, grid["y"] + 16 + 1 * 22 + 8)
    assert "layers=[1], heads=[3]" in page.locator(".llmdbg-note").inner_text()
    browser_page.assert_clean()


def test_attention_of_a_query_capture_shows_the_models_head_and_rows(browser_page):
    trace, query, _ = query_trace()
    tokens = [f"w{i}" for i in range(12)]
    page = browser_page.open(attention_view(trace, query=query, tokens=tokens).to_html())
    assert page.locator(".llmdbg-map-title").inner_text() == "layer 1, head 2"
    box = page.locator("canvas.llmdbg-map-overlay").bounding_box()
    page.mouse.move(box["x"] + 3, box["y"] + 2)  # the first captured row is position 11
    focus = page.locator(".llmdbg-focus")
    assert focus.get_attribute("data-row") == "11" and focus.inner_text().startswith("w11 (11) looks at:")
    page.hover('.llmdbg-tokens span[data-pos="7"]')  # a row not captured: its column only
    assert "w7 (7): its row is not in this view" in focus.inner_text() and "looked at by" in focus.inner_text()
    browser_page.assert_clean()


def test_attention_from_statistics_plots_each_query(browser_page):
    trace = stats_trace()
    page = browser_page.open(attention_view(trace).to_html())
    assert "not in this trace" in page.locator(".llmdbg-note").inner_text()
    before = browser_page.canvas_pixels("canvas.llmdbg-map")
    assert (before[..., :3] < 200).any(), "the per-query curves are drawn"
    grid = page.locator("canvas.llmdbg-grid").bounding_box()
    page.mouse.click(grid["x"] + 26 + 1 * 22 + 8, grid["y"] + 16 + 1 * 22 + 8)
    assert page.locator(".llmdbg-map-title").inner_text() == "layer 1, head 1"
    assert _changed(before, browser_page.canvas_pixels("canvas.llmdbg-map")) > 20
    box = page.locator("canvas.llmdbg-map-overlay").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 20)
    assert "entropy" in page.locator(".llmdbg-focus").inner_text()
    assert browser_page.canvas_pixels("canvas.llmdbg-map-overlay")[..., 3].any()
    browser_page.assert_clean()


def test_attention_summary_and_empty_trace_say_what_is_missing(browser_page):
    trace, _ = attention_trace()
    html = attention_view(llmdbg.attention_summary(trace)).to_html() + attention_view(empty_trace()).to_html()
    page = browser_page.open(html)
    assert "not in this object" in page.locator(".llmdbg-note").inner_text()
    assert "attentions=True" in page.locator(".llmdbg-empty").inner_text()
    # the grid tooltip reads the summary's own figures
    grid = page.locator("canvas.llmdbg-grid").first.bounding_box()
    page.mouse.move(grid["x"] + 26 + 8, grid["y"] + 16 + 8)
    assert page.locator(".llmdbg-tip").first.inner_text().startswith("layer 0, head 0")
    browser_page.assert_clean()


def test_attribution_click_a_generated_token(browser_page):
    g = generation_attribution()
    page = browser_page.open(attribution_view(g).to_html(), width=800, height=500)
    detail = page.locator(".llmdbg-attr-detail")
    assert detail.get_attribute("data-target") == "all"
    before = browser_page.canvas_pixels("canvas.llmdbg-bars")
    colour_before = page.locator('.llmdbg-attr-tokens span[data-pos="1"]').evaluate("e => e.style.background")
    page.click('.llmdbg-attr-targets span[data-target="0"]')
    assert detail.get_attribute("data-target") == "0" and "step 0" in detail.inner_text()
    assert _changed(before, browser_page.canvas_pixels("canvas.llmdbg-bars")) > 20
    assert page.locator('.llmdbg-attr-tokens span[data-pos="1"]').evaluate("e => e.style.background") != colour_before
    # step 0 cannot see the generated sources: they are greyed
    hidden = page.locator(".llmdbg-attr-tokens span.llmdbg-hidden").count()
    assert hidden == g.scores.shape[1] - g.prompt_length
    page.click(f'.llmdbg-attr-targets span[data-target="{g.scores.shape[0] - 1}"]')
    assert page.locator(".llmdbg-attr-tokens span.llmdbg-hidden").count() == 0  # the last step sees them all
    page.hover('.llmdbg-attr-tokens span[data-pos="3"]')
    tip = page.locator(".llmdbg-tip").inner_text()
    assert "position 3" in tip and g.method in tip
    _hostile_shown_as_text(page, ".llmdbg-attr-tokens span")
    browser_page.assert_clean()


def test_attribution_hover_lists_every_method(browser_page):
    sal, ig = attributions()
    page = browser_page.open(attribution_view({"saliency": sal, "integrated gradients": ig}).to_html())
    page.hover('.llmdbg-attr-tokens span[data-pos="1"]')
    tip = page.locator(".llmdbg-tip").inner_text().splitlines()
    assert tip[1].startswith("saliency: ") and tip[2].startswith("integrated gradients: ")
    assert float(tip[1].split(": ")[1]) == np.float32(sal.scores[0, 1]).round(6) or tip[1].split(": ")[1]
    before = browser_page.canvas_pixels("canvas.llmdbg-bars")
    page.click('button[data-method="1"]')
    assert _changed(before, browser_page.canvas_pixels("canvas.llmdbg-bars")) > 0
    _hostile_shown_as_text(page, ".llmdbg-attr-tokens span")
    browser_page.assert_clean()


def test_lens_hover_a_cell(browser_page):
    res = lens_result()
    page = browser_page.open(lens_view(res).to_html(), width=800, height=500)
    text = page.locator(".llmdbg-lens-text")
    before = browser_page.canvas_pixels("canvas.llmdbg-lens-bars")
    page.hover('td[data-layer="1"][data-pos="3"]')
    assert text.get_attribute("data-cell") == "1,3"
    lines = text.inner_text().splitlines()
    top = res.top_tokens[1, 0, 3]
    assert lines[1].startswith(f"1. {top[0]}  p=") and lines[3].startswith(f"3. {top[2]}  p=")
    assert lines[-1].startswith(f"target: rank {res.target_rank[1, 0, 3]}")
    assert _changed(before, browser_page.canvas_pixels("canvas.llmdbg-lens-bars")) > 100
    page.hover(f'td[data-layer="{len(res.layers) - 1}"][data-pos="1"]')
    assert text.inner_text().splitlines()[1].startswith(f"1. {HOSTILE[0]}")
    cell = page.locator('td[data-layer="0"][data-pos="0"]')
    shade = cell.evaluate("e => e.style.background")
    page.click('button[data-colour="target"]')
    assert cell.evaluate("e => e.style.background") != shade
    _hostile_shown_as_text(page, ".llmdbg-lens-table td, .llmdbg-lens-table th")
    browser_page.assert_clean()


def test_screenshots_for_the_docs(browser_page):
    """docs/_static/views/<name>.png: each view after an interaction, with plain tokens."""
    trace, tokens = attention_trace()
    plain = ["The", " cat", " sat", " on", " the", " mat", " and", " looked", " at", " the", " dog", "."]
    page = browser_page.open(attention_view(trace, tokens=plain[: len(tokens)]).to_html(), width=800, height=500)
    grid = page.locator("canvas.llmdbg-grid").bounding_box()
    page.mouse.click(grid["x"] + 26 + 1 * 22 + 8, grid["y"] + 16 + 1 * 22 + 8)
    page.hover('.llmdbg-tokens span[data-pos="7"]')
    _screenshot(page, "attention")

    g = generation_attribution(hostile=False)
    page = browser_page.open(attribution_view(g).to_html(), width=800, height=500)
    page.click('.llmdbg-attr-targets span[data-target="1"]')
    page.hover('.llmdbg-attr-tokens span[data-pos="2"]')
    _screenshot(page, "attribution")

    res = lens_result()
    page = browser_page.open(lens_view(res, batch=1).to_html(), width=800, height=500)
    page.hover('td[data-layer="1"][data-pos="3"]')
    _screenshot(page, "lens")
    browser_page.assert_clean()
    for name in ("attention", "attribution", "lens"):
        shot = SHOTS / f"{name}.png"
        assert shot.stat().st_size > 5000, f"{shot} looks blank"
