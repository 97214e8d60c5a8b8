"""Headless Chromium for the interactive views' tests (playwright driving Debian's chromium).

Use the ``browser_page`` fixture (load this module as a plugin in a test module:
``pytest_plugins = ["browser_harness"]``), then ``page = browser_page.open(html)``. Every console error, page error and
request other than the page's own file is recorded on the fixture (``errors``, ``requests``);
requests are aborted, so a view that tries the network fails its test instead of fetching.
``browser_page.canvas_pixels(selector)`` reads a canvas back as an ``(H, W, 4)`` uint8 array.

No browser is ever downloaded: without /usr/bin/chromium (Debian's ``chromium`` package) the
tests fail with a message saying how to install it.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

INSTALL_HINT = (
    "the interactive views are tested in headless Chromium driven by playwright: install Debian's "
    "chromium (`apt-get install chromium`, or `make test`, which installs it) and the python "
    "package playwright; no browser download is needed or used"
)

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str:
    for path in CHROMIUM_PATHS:
        if Path(path).exists():
            return path
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    pytest.fail(INSTALL_HINT)


class BrowserPage:
    """Opens HTML in a fresh page and records what the page did wrong."""

    def __init__(self, browser: Any, tmp_path: Path) -> None:
        self._browser = browser
        self._tmp = tmp_path
        self._context: Any = None
        self.page: Any = None
        self.errors: list[str] = []
        self.requests: list[str] = []
        self._n = 0

    def open(self, html: str, *, width: int = 900, height: int = 700) -> Any:
        """Load ``html`` (a fragment or a whole page) from a temporary file:// URL; returns the page."""
        if self._context is not None:
            self._context.close()
        self._n += 1
        path = self._tmp / f"view{self._n}.html"
        if "<html" not in html[:200].lower():
            html = (
                '<!doctype html><html><head><meta charset="utf-8"><title>view</title></head>'
                f'<body style="margin: 8px; background: #fff;">{html}</body></html>'
            )
        path.write_text(html, encoding="utf-8")
        url = path.as_uri()
        self._context = self._browser.new_context(viewport={"width": width, "height": height})
        page = self._context.new_page()

        def on_route(route: Any) -> None:
            if route.request.url == url:
                route.continue_()
            else:
                self.requests.append(route.request.url)
                route.abort()

        page.route("**/*", on_route)
        page.on("console", lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.on("pageerror", lambda err: self.errors.append(f"pageerror: {err}"))
        page.on("request", lambda req: None if req.url == url else self.requests.append(req.url))
        page.goto(url)
        page.wait_for_load_state("load")
        self.page = page
        return page

    def assert_clean(self) -> None:
        """No console errors, no page errors, no request beyond the file itself."""
        assert not self.errors, f"the page reported errors: {self.errors}"
        assert not self.requests, f"the page tried the network: {sorted(set(self.requests))}"

    def canvas_pixels(self, selector: str) -> np.ndarray:
        """The pixels of the first canvas matching ``selector`` as an ``(H, W, 4)`` uint8 RGBA array."""
        # base64 of the raw bytes: a JSON list of a 512 x 512 canvas's numbers takes seconds
        data = self.page.evaluate(
            """(sel) => {
                const c = document.querySelector(sel);
                if (!c) return null;
                const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                let s = "";
                for (let i = 0; i < d.length; i += 32768) s += String.fromCharCode.apply(null, d.subarray(i, i + 32768));
                return {w: c.width, h: c.height, b64: btoa(s)};
            }""",
            selector,
        )
        assert data is not None, f"no canvas matches {selector!r}"
        raw = np.frombuffer(base64.b64decode(data["b64"]), dtype=np.uint8)
        return raw.reshape(data["h"], data["w"], 4)

    def close(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None


@pytest.fixture(scope="session")
def chromium_browser() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(INSTALL_HINT)
    path = chromium_path()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium_browser: Any, tmp_path: Path) -> Any:
    """A :class:`BrowserPage` on the session's headless Chromium; closed after the test."""
    bp = BrowserPage(chromium_browser, tmp_path)
    yield bp
    bp.close()
