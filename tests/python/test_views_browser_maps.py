"""The embedding and training views in a real headless Chromium (playwright, Debian's chromium):
hover, search, colour, zoom, pan and an event click each change the DOM and the canvas pixels;
hostile labels stay text; no console error, no network request. The screenshots of the docs
(docs/_static/views/embedding.png, training.png) are written here."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf

import llmdbg
from llmdbg.training import Event
from llmdbg.widgets import embedding_view, training_view
from saved_models import minilm_path
from tiny_models import one_thread  # noqa: F401  (autouse fixture: one thread)

pytest_plugins = ["browser_harness"]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "_static" / "views"
HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']
PICK_PX = 10  # the view's hover radius (EMB_PICK_PX), in CSS pixels
PAD = 12  # the view's margin around the fitted map, in CSS pixels


def _kind(token: str) -> str:
    if token.startswith("##"):
        return "word piece"
    if token.startswith("[") and token.endswith("]"):
        return "special or unused"
    return "word" if token.isalpha() else "other"


@pytest.fixture(scope="module")
def vocab_map():
    """A t-SNE map of 800 MiniLM vocabulary entries, two of them relabelled with hostile text."""
    path = minilm_path()
    model, tok = tf.AutoModel.from_pretrained(path), tf.AutoTokenizer.from_pretrained(path)
    m = llmdbg.embed_tokens(model, tok, max_tokens=800, random_state=0, progress=False)
    labels = list(m.labels)
    labels[0], labels[1] = HOSTILE
    return m, labels, [_kind(t) for t in m.labels]


def _pixels(page, selector: str) -> np.ndarray:
    """A canvas's pixels as (H, W, 4) uint8, read through base64 (an Array of 1.4 M numbers through
    the driver takes seconds)."""
    import base64

    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    data = page.evaluate(
        """(sel) => {
            const c = document.querySelector(sel);
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let s = "";
            for (let i = 0; i < d.length; i += 32768) s += String.fromCharCode.apply(null, d.subarray(i, i + 32768));
            return {w: c.width, h: c.height, b64: btoa(s)};
        }""",
        selector,
    )
    return np.frombuffer(base64.b64decode(data["b64"]), np.uint8).reshape(data["h"], data["w"], 4)


def _dialogs(page) -> list[str]:
    seen: list[str] = []
    page.on("dialog", lambda d: (seen.append(d.message), d.dismiss()))
    return seen


class _Fit:
    """The view's initial data -> canvas-pixel transform, recomputed (device pixel ratio 1)."""

    def __init__(self, coords: np.ndarray, width: int, height: int) -> None:
        lo, hi = coords.min(axis=0).astype(np.float64), coords.max(axis=0).astype(np.float64)
        self.c = (lo + hi) / 2
        self.s = min((width - 2 * PAD) / (hi[0] - lo[0]), (height - 2 * PAD) / (hi[1] - lo[1]))
        self.w, self.h = width, height

    def to_px(self, xy: np.ndarray) -> np.ndarray:
        return np.stack(
            [(xy[..., 0] - self.c[0]) * self.s + self.w / 2, self.h / 2 - (xy[..., 1] - self.c[1]) * self.s], -1
        )

    def to_data(self, px: np.ndarray) -> np.ndarray:
        return np.stack(
            [(px[..., 0] - self.w / 2) / self.s + self.c[0], self.c[1] - (px[..., 1] - self.h / 2) / self.s], -1
        )


def test_embedding_view_hover_search_colour_zoom_pan(browser_page, vocab_map):
    m, labels, kinds = vocab_map
    view = embedding_view(
        m, labels=labels, color_by={"token kind": kinds}, title="MiniLM vocabulary (t-SNE, 800 tokens)"
    )
    page = browser_page.open(view.to_html(), width=800, height=640)
    dialogs = _dialogs(page)
    root = page.locator('[data-llmdbg-view="embedding"]')
    page.wait_for_selector("[data-paint-ms]")
    canvas = root.locator("canvas")
    box = canvas.bounding_box()
    ox, oy = box["x"] + 1, box["y"] + 1  # inside the 1 px border
    before = _pixels(page, '[data-llmdbg-view="embedding"] canvas')
    assert before.shape == (480, 720, 4)
    inked = (before[..., :3] < 235).any(-1)
    assert inked.mean() > 0.002, "the points were not drawn"

    # hover: the view's grid index finds the same point as a brute-force search
    fit = _Fit(m.coords, 720, 480)
    px = fit.to_px(m.coords.astype(np.float64))
    rng = np.random.default_rng(1)
    # whole pixels: mouse events carry integer client coordinates
    targets = np.round(
        np.concatenate([px[rng.choice(len(px), 12, replace=False)] + rng.normal(0, 3, (12, 2)), [[3, 3]]])
    )
    for t in targets:
        page.mouse.move(ox + t[0], oy + t[1])
        d = np.hypot(*(px - t).T)
        expected = int(np.argmin(d)) if d.min() <= PICK_PX else None
        got = root.get_attribute("data-hovered")
        if expected is None:
            assert got is None
        else:
            assert got is not None and np.isclose(d[int(got)], d[expected], atol=1e-3), (t, got, expected)
    # hover the hostile labels: shown as text, never as markup
    for k in (0, 1):
        t = np.round(px[k])
        page.mouse.move(ox + t[0], oy + t[1])
        hovered = int(root.get_attribute("data-hovered"))
        assert np.hypot(*(px[hovered] - t)) <= np.hypot(*(px[k] - t)) + 1e-3
        if hovered == k:
            assert root.locator(".llmdbg-tip").text_content().split("\n")[0] == HOSTILE[k]
    hovered_px = _pixels(page, '[data-llmdbg-view="embedding"] canvas')
    assert (hovered_px != before).any(), "hover drew no ring"
    assert page.locator("img").count() == 0 and page.locator("script:not([type])").count() == 0

    # search: the matches are exactly the labels that contain the text
    page.mouse.move(0, 0)
    root.locator(".llmdbg-search").fill("##")
    n_sub = sum("##" in s for s in labels)
    assert int(root.get_attribute("data-matches")) == n_sub > 0
    assert root.locator(".llmdbg-matches").text_content() == f"{n_sub} matches"
    searched = _pixels(page, '[data-llmdbg-view="embedding"] canvas')
    assert (searched != before).any()

    def greyish(px: np.ndarray) -> float:
        rgb = px[..., :3].astype(int)
        flat = (np.ptp(rgb, axis=-1) < 8) & (rgb[..., 0] > 200) & (rgb[..., 0] < 250)
        return float(flat.mean())

    assert greyish(searched) > 3 * greyish(before) + 0.001, "non-matches are not faded"
    root.locator(".llmdbg-search").fill("onerror")
    assert root.get_attribute("data-matches") == "1"
    root.locator(".llmdbg-search").fill("")
    assert root.get_attribute("data-matches") == "0"

    # colour: the menu lists the colourings; switching repaints
    options = root.locator(".llmdbg-color-by option").all_text_contents()
    assert options == ["colour: token kind", "colour: label"]
    legend = root.locator(".llmdbg-legend").text_content()
    assert "word piece" in legend and "word" in legend
    root.locator(".llmdbg-color-by").select_option("1")
    assert root.get_attribute("data-color-by") == "label"
    recoloured = _pixels(page, '[data-llmdbg-view="embedding"] canvas')
    assert (recoloured != before).any()
    root.locator(".llmdbg-color-by").select_option("0")

    # zoom with the wheel around the cursor, pan with a drag: the ink lands where the points go
    def ink_near(img: np.ndarray, where: np.ndarray) -> float:
        ink = (img[..., :3] < 235).any(-1)
        near = np.zeros_like(ink)
        inside = where[(where[:, 0] >= 0) & (where[:, 1] >= 0) & (where[:, 0] < 720) & (where[:, 1] < 480)]
        for dx in range(-1, 4):
            for dy in range(-1, 4):
                xs = np.clip(np.round(inside[:, 0]).astype(int) + dx, 0, 719)
                ys = np.clip(np.round(inside[:, 1]).astype(int) + dy, 0, 479)
                near[ys, xs] = True
        return float((ink & near).sum() / max(ink.sum(), 1))

    page.mouse.move(ox + 360, oy + 240)
    page.mouse.wheel(0, -400)
    page.wait_for_function("document.querySelector('[data-llmdbg-view=embedding]').dataset.zoom > 1.5")
    k = float(root.get_attribute("data-zoom"))
    page.mouse.move(0, 0)  # off the canvas: no hover ring in the pixels
    zoomed = _pixels(page, '[data-llmdbg-view="embedding"] canvas')
    centre = np.array([360.0, 240.0])
    at = centre + (px - centre) * k
    assert ink_near(zoomed, at) > 0.97 and ink_near(zoomed, px) < 0.8
    page.mouse.move(ox + 360, oy + 240)
    page.mouse.down()
    page.mouse.move(ox + 200, oy + 140, steps=4)
    page.mouse.up()
    page.mouse.move(0, 0)
    panned = _pixels(page, '[data-llmdbg-view="embedding"] canvas')
    assert ink_near(panned, at - [160, 100]) > 0.97 and (panned != zoomed).any()
    root.locator(".llmdbg-reset").click()
    page.mouse.move(0, 0)
    assert ink_near(_pixels(page, '[data-llmdbg-view="embedding"] canvas'), px) > 0.97
    SHOTS.mkdir(parents=True, exist_ok=True)
    root.locator(".llmdbg-search").fill("##")
    page.mouse.move(ox + px[5, 0], oy + px[5, 1])
    root.screenshot(path=str(SHOTS / "embedding.png"))
    assert not dialogs
    browser_page.assert_clean()


def test_embedding_view_empty_and_many_points(browser_page):
    page = browser_page.open(embedding_view(np.zeros((0, 2))).to_html())
    empty = page.locator('[data-llmdbg-view="embedding"] .llmdbg-empty')
    assert empty.count() == 1 and "empty" in empty.text_content()
    assert page.locator('[data-llmdbg-view="embedding"] canvas').count() == 0
    # 200,000 points: drawn, hoverable and searchable
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(200_000, 2)).astype(np.float32)
    view = embedding_view(coords, labels=[f"t{i % 1000}" for i in range(200_000)])
    page = browser_page.open(view.to_html())
    root = page.locator('[data-llmdbg-view="embedding"]')
    page.wait_for_selector("[data-paint-ms]")
    box = root.locator("canvas").bounding_box()
    page.mouse.move(box["x"] + 360, box["y"] + 240)
    assert root.get_attribute("data-hovered") is not None
    root.locator(".llmdbg-search").fill("t999")
    assert root.get_attribute("data-matches") == "200"
    browser_page.assert_clean()


def _watch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = llmdbg.watch(model, opt, every=10, keep_batches=False)  # no temporary path in the screenshot
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(100):
            loss = ((model(x) - y) ** 2).mean()
            if i == 60:
                loss = loss * 1000  # a loss spike: the detectors report it
            loss.backward()
            w.step(loss=loss)
            opt.step()
            opt.zero_grad()
            if i % 25 == 0:
                w.eval(i, val_loss=float(loss.detach()) * 1.1)
    # an event carrying hostile text, as a module name or message might
    w.state.events.append(Event(step=20, module=HOSTILE[1], kind="custom", severity="medium", message=HOSTILE[0]))
    w.close()
    return w


def test_training_view_click_an_event(browser_page):
    w = _watch()
    assert any(e.kind == "loss_spike" and e.step == 60 for e in w.events)
    page = browser_page.open(training_view(w, title="Training run").to_html())
    dialogs = _dialogs(page)
    root = page.locator('[data-llmdbg-view="training"]')
    sel = '[data-llmdbg-view="training"] canvas'
    before = _pixels(page, sel)
    assert (before[..., :3] < 200).any(-1).mean() > 0.002, "no curve was drawn"
    detail = root.locator(".llmdbg-detail")
    assert detail.text_content() == "No event selected."
    markers = root.locator(".llmdbg-event-marker")
    assert markers.count() >= 2
    spike = root.locator('.llmdbg-event-marker[aria-label*="step 60"]').first
    spike.click()
    assert root.get_attribute("data-selected-step") == "60"
    text = detail.text_content()
    assert "step 60" in text and "loss_spike" in text and "(whole model)" in text and "loss" in text
    selected = _pixels(page, sel)
    assert (selected != before).any(), "the selected event's line was not drawn"
    assert "llmdbg-selected" in spike.get_attribute("class")
    # the hostile event: its message and module are text
    root.locator('.llmdbg-event-marker[aria-label*="step 20"]').first.click()
    assert root.locator(".llmdbg-event-message").first.text_content() == HOSTILE[0]
    assert root.locator(".llmdbg-event-module").first.text_content() == "module: " + HOSTILE[1]
    assert page.locator("img").count() == 0
    # hover: the readout gives the step's values from the history
    box = root.locator("canvas").bounding_box()
    x40 = 58 + 40 / 99 * (760 - 58 - 12)  # the view's step axis: 58 px left margin, 12 right, steps 0-99
    page.mouse.move(box["x"] + 1 + x40, box["y"] + 60)
    loss = w.history["loss"].loc[40]
    assert root.locator(".llmdbg-readout").text_content().startswith(f"step 40 · loss {float(f'{loss:.4g}'):g}")
    hovered = _pixels(page, sel)
    assert (hovered != selected).any(), "no crosshair drawn"
    # the log-scale switch redraws
    root.locator(".llmdbg-log").click()
    assert (_pixels(page, sel) != hovered).any()
    root.locator(".llmdbg-log").click()
    spike.click()
    page.mouse.move(0, 0)
    SHOTS.mkdir(parents=True, exist_ok=True)
    root.screenshot(path=str(SHOTS / "training.png"))
    assert not dialogs
    browser_page.assert_clean()


def test_training_view_empty_run_says_no_data(browser_page):
    w = llmdbg.watch(torch.nn.Linear(2, 1))
    page = browser_page.open(training_view(w).to_html())
    w.close()
    empty = page.locator('[data-llmdbg-view="training"] .llmdbg-empty')
    assert empty.count() == 1 and empty.text_content().startswith("No data")
    assert page.locator('[data-llmdbg-view="training"] canvas').count() == 0
    browser_page.assert_clean()
