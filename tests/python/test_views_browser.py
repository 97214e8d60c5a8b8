"""The interactive views in a real headless Chromium (playwright, Debian's chromium): each view
draws, answers an interaction with a change in the DOM and on its canvas, shows hostile tokens as
text, logs no console error and makes no network request. Screenshots for the docs are written
to docs/_static/views/<name>.png."""

from __future__ import annotations

from pathlib import Path

from llmdbg.widgets import View

pytest_plugins = ["browser_harness"]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "_static" / "views"
HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']


def test_two_views_share_a_page_and_the_page_stays_offline(browser_page):
    html = View("lens", {"tokens": HOSTILE}, title="first").to_html() + View("lens", {}, title="second").to_html()
    page = browser_page.open(html)
    roots = page.locator('[data-llmdbg-view="lens"]')
    assert roots.count() == 2
    assert page.locator(".llmdbg-title").all_inner_texts() == ["first", "second"]
    assert page.locator("img").count() == 0
    browser_page.assert_clean()
