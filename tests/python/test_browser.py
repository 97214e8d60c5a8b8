"""The report written by ``llmdbg report`` opens in a real browser (headless Chromium) with no
network access: no console errors, every image decoded with non-blank pixels, the table of
contents pointing at existing sections, and not a single request beyond the file itself.

Chromium is Debian's ``chromium`` package; ``make test`` installs it when missing. Without it
these tests fail (they never skip) with a message saying how to install it.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from llmdbg import cli
from saved_models import minilm_path

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "Attention heads often look at the separator token.",
]

# Appended to a copy of the report (never to the report itself, whose only scripts are its
# interactive views'): once the page has loaded, record every image's decoding and pixels, every
# resource the page fetched, uncaught errors and what each view drew, into a <pre> that
# --dump-dom prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e)));
window.addEventListener("load", () => {
  const res = {images: [], errors: window.__errors, anchors: [],
               resources: performance.getEntriesByType("resource").map(r => r.name)};
  for (const img of document.images) {
    const r = {alt: img.alt, complete: img.complete, width: img.naturalWidth, ink: 0};
    if (img.complete && img.naturalWidth > 0) {
      const c = document.createElement("canvas");
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      const g = c.getContext("2d");
      g.drawImage(img, 0, 0);
      const d = g.getImageData(0, 0, c.width, c.height).data;
      let ink = 0;
      for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] < 600) ink++;
      r.ink = ink / (c.width * c.height);
    }
    res.images.push(r);
  }
  for (const a of document.querySelectorAll("nav.toc a")) {
    const id = a.getAttribute("href").slice(1);
    res.anchors.push({id: id, found: document.getElementById(id) !== null});
  }
  res.views = Array.from(document.querySelectorAll("[data-llmdbg-view]")).map(v => ({
    name: v.getAttribute("data-llmdbg-view"), children: v.querySelectorAll("*").length,
    canvases: v.querySelectorAll("canvas").length, failed: v.querySelector(".llmdbg-error") !== null}));
  const pre = document.createElement("pre");
  pre.id = "llmdbg-probe";
  pre.textContent = JSON.stringify(res);
  document.body.appendChild(pre);
});
</script>"""

INSTALL_HINT = (
    "headless Chromium is needed to check the report in a real browser: run `make test` "
    "(it installs Debian's chromium when missing) or `apt-get install chromium`"
)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(INSTALL_HINT)


def run_chromium(url: str, *args: str, user_dir) -> subprocess.CompletedProcess:
    """Headless Chromium that cannot resolve any host name (so any request would fail loudly)."""
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={user_dir}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("browser") / "report"
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        mp.setenv("HF_HUB_OFFLINE", "1")
        argv = ["report", "--model", minilm_path(), "--out", str(out), "--no-progress"]
        for text in TEXTS:
            argv += ["--text", text]
        code = cli.main(argv)
    assert code == 0, err.getvalue()
    return out / "index.html"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.scripts: list[dict[str, str | None]] = []
        self.views = 0

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts.append(dict(attrs))
        self.views += any(name == "data-llmdbg-view" for name, _ in attrs)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data") and value:
                self.refs.append((tag, name, value))


def test_report_has_no_external_reference(report):
    page = report.read_text("utf-8")
    parser = _Links()
    parser.feed(page)
    # the only scripts are the interactive views' own, inline: a JSON payload and a module each
    assert parser.views >= 2 and len(parser.scripts) == 2 * parser.views
    assert all("src" not in a and a.get("type") in ("module", "application/json") for a in parser.scripts)
    assert parser.refs, "the page should at least have its images and contents links"
    for tag, name, value in parser.refs:
        assert value.startswith(("data:image/png;base64,", "#")), (tag, name, value[:80])
    # No URL in CSS either (fonts, @import, backgrounds).
    assert not re.search(r"url\(|@import|https?://", "".join(re.findall(r"<style>(.*?)</style>", page, re.DOTALL)))


def test_report_renders_offline_in_chromium(report, tmp_path):
    page = tmp_path / "probe.html"
    page.write_text(report.read_text("utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    proc = run_chromium(page.as_uri(), "--virtual-time-budget=20000", "--dump-dom", user_dir=tmp_path / "profile")
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r'<pre id="llmdbg-probe">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert found, f"the page did not finish loading:\n{proc.stdout[:2000]}\n{proc.stderr[-2000:]}"
    probe = json.loads(html.unescape(found.group(1)))
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console and not probe["errors"], (console, probe["errors"])
    assert probe["resources"] == [], f"the page fetched {probe['resources']}"
    n_imgs = report.read_text("utf-8").count("<img ")
    assert len(probe["images"]) == n_imgs >= 6
    for img in probe["images"]:
        assert img["complete"] and img["width"] > 0, img
        assert img["ink"] > 0.001, f"image {img['alt']!r} is blank"
    assert len(probe["anchors"]) >= 6 and all(a["found"] for a in probe["anchors"]), probe["anchors"]
    # the interactive views drew (attention and attribution for three texts), none failed
    names = [v["name"] for v in probe["views"]]
    assert {"attention", "attribution"} <= set(names), probe["views"]
    for v in probe["views"]:
        assert v["children"] > 3 and not v["failed"], v
    ids = {a["id"] for a in probe["anchors"]}
    assert {"model", "inputs", "outputs", "activation-statistics", "attention", "attention-analysis"} <= ids


def test_report_screenshot_is_not_blank(report, tmp_path):
    shot = tmp_path / "shot.png"
    proc = run_chromium(
        report.as_uri(),
        "--window-size=1200,1600",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        user_dir=tmp_path / "profile",
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-3000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    from matplotlib.image import imread

    pixels = imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (1600, 1200)
    # The page background is near-white; text, tables and figures are darker. A blank or
    # failed page would be one colour.
    dark = (pixels.mean(axis=-1) < 0.5).mean()
    assert 0.005 < dark < 0.5, dark
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def test_missing_chromium_fails_with_a_hint(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        chromium()
