// llmdbg embedding view: a scatter of many points on a 2-D canvas (ImageData, no WebGL needed).
//
// Payload (see llmdbg/widgets/embedding.py): coords (N, 2) float32, labels = a string table and
// uint32 indices into it, colorings = [{name, names, index}] (categories per point), title.
// Hover finds the nearest point through a uniform grid over the data, search marks the points
// whose label contains the query, wheel zooms around the cursor, drag pans. Names are prefixed
// "emb" because this file is concatenated with common.js into one module scope.

const EMB_PALETTE = [
  [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
  [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
  [174, 199, 232], [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213],
  [196, 156, 148], [247, 182, 210], [199, 199, 199], [219, 219, 141], [158, 218, 229],
];
const EMB_PICK_PX = 10; // hover radius in CSS pixels
const EMB_CSS =
    ".llmdbg-embedding{font:13px system-ui,sans-serif;color:#1d2430;position:relative;max-width:760px}" +
    ".llmdbg-embedding .llmdbg-bar{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin:4px 0}" +
    ".llmdbg-embedding canvas{border:1px solid #dde2ea;cursor:crosshair;touch-action:none;display:block}" +
    ".llmdbg-embedding .llmdbg-tip{position:absolute;pointer-events:none;background:#1d2430;color:#fff;" +
    "padding:2px 6px;border-radius:3px;white-space:pre;max-width:420px;overflow:hidden;display:none}" +
    ".llmdbg-embedding .llmdbg-status{color:#5b6472;min-height:1.4em}" +
    ".llmdbg-embedding .llmdbg-legend span{display:inline-block;margin-right:10px}" +
    ".llmdbg-embedding .llmdbg-legend i{display:inline-block;width:10px;height:10px;margin-right:3px}";

function embEl(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// A uniform grid over the points' bounding box: cellStart[c] .. cellStart[c + 1] index cellItems.
function embGrid(x, y, n, box) {
  const side = Math.max(1, Math.min(2048, Math.ceil(Math.sqrt(n / 4))));
  const w = (box.x1 - box.x0) || 1, h = (box.y1 - box.y0) || 1;
  const cellOf = new Uint32Array(n);
  const counts = new Uint32Array(side * side + 1);
  for (let i = 0; i < n; i++) {
    let cx = Math.floor(((x[i] - box.x0) / w) * side), cy = Math.floor(((y[i] - box.y0) / h) * side);
    cx = cx < 0 ? 0 : cx >= side ? side - 1 : cx;
    cy = cy < 0 ? 0 : cy >= side ? side - 1 : cy;
    const c = cy * side + cx;
    cellOf[i] = c;
    counts[c + 1]++;
  }
  for (let c = 0; c < side * side; c++) counts[c + 1] += counts[c];
  const fill = counts.slice(0, side * side);
  const items = new Uint32Array(n);
  for (let i = 0; i < n; i++) items[fill[cellOf[i]]++] = i;
  return { side, start: counts, items, x0: box.x0, y0: box.y0, cw: w / side, ch: h / side };
}

// Nearest point to (qx, qy) within radius r (data units), visiting rings of cells outwards.
function embNearest(grid, x, y, visible, qx, qy, r) {
  const { side, start, items } = grid;
  const cx = Math.floor((qx - grid.x0) / grid.cw), cy = Math.floor((qy - grid.y0) / grid.ch);
  const reach = Math.min(side, Math.ceil(r / Math.min(grid.cw, grid.ch)) + 1);
  let best = -1, bestD = r * r;
  for (let ring = 0; ring <= reach; ring++) {
    // cells at Chebyshev distance `ring`; once a point is found, rings beyond its distance cannot win
    if (best >= 0 && (ring - 1) * Math.min(grid.cw, grid.ch) > Math.sqrt(bestD)) break;
    for (let gy = cy - ring; gy <= cy + ring; gy++) {
      if (gy < 0 || gy >= side) continue;
      const edge = gy === cy - ring || gy === cy + ring;
      for (let gx = cx - ring; gx <= cx + ring; gx += edge ? 1 : 2 * ring || 1) {
        if (gx < 0 || gx >= side) continue;
        const c = gy * side + gx;
        for (let k = start[c]; k < start[c + 1]; k++) {
          const i = items[k];
          if (visible && !visible[i]) continue;
          const dx = x[i] - qx, dy = y[i] - qy, d = dx * dx + dy * dy;
          if (d <= bestD) { bestD = d; best = i; }
        }
      }
    }
  }
  return best;
}

function render({ model, el }) {
  const payload = parsePayload(model);
  const body = startView(el, "embedding", payload, EMB_CSS);
  el.classList.add("llmdbg-embedding");
  const n = payload.n || 0;
  if (!n) {
    emptyMessage(body, payload.empty || "No points to show: the map is empty.");
    return;
  }
  const t0 = performance.now();
  let status0 = n.toLocaleString() + " points";
  const xy = decodeArray(payload.coords).data;
  const x = new Float32Array(n), y = new Float32Array(n);
  let box = { x0: Infinity, x1: -Infinity, y0: Infinity, y1: -Infinity };
  for (let i = 0; i < n; i++) {
    const a = xy[2 * i], b = xy[2 * i + 1];
    x[i] = a; y[i] = b;
    if (a < box.x0) box.x0 = a;
    if (a > box.x1) box.x1 = a;
    if (b < box.y0) box.y0 = b;
    if (b > box.y1) box.y1 = b;
  }
  const strings = payload.labels.strings;
  const labelIdx = decodeArray(payload.labels.index).data;
  if (payload.total > n) status0 = n.toLocaleString() + " of " + payload.total.toLocaleString() + " points (a random sample)";
  const colorings = (payload.colorings || []).map((c) =>
    c.labels ? { name: c.name, names: strings, index: labelIdx } : { name: c.name, names: c.names, index: decodeArray(c.index).data }
  );

  // -- DOM: toolbar, canvas, tooltip, status ---------------------------------------------------
  const bar = embEl("div", "llmdbg-bar");
  const search = embEl("input", "llmdbg-search");
  search.type = "search";
  search.placeholder = "search tokens or text";
  search.setAttribute("aria-label", "search labels");
  const colorBy = embEl("select", "llmdbg-color-by");
  colorBy.setAttribute("aria-label", "colour by");
  colorings.forEach((c, k) => {
    const o = embEl("option", "", "colour: " + c.name);
    o.value = String(k);
    colorBy.appendChild(o);
  });
  if (!colorings.length) colorBy.disabled = true;
  const reset = embEl("button", "llmdbg-reset", "reset view");
  reset.type = "button";
  const matches = embEl("span", "llmdbg-matches", "");
  bar.append(search, colorBy, reset, matches);
  body.appendChild(bar);
  const cssW = Math.max(200, Math.min(payload.width || 720, 1400)), cssH = Math.max(150, payload.height || 480);
  const dpr = Math.max(1, Math.min(2, window.devicePixelRatio || 1));
  const canvas = embEl("canvas", "llmdbg-canvas");
  canvas.width = Math.round(cssW * dpr);
  canvas.height = Math.round(cssH * dpr);
  canvas.style.width = cssW + "px";
  canvas.style.height = cssH + "px";
  body.appendChild(canvas);
  const tip = embEl("div", "llmdbg-tip");
  body.appendChild(tip);
  const status = embEl("div", "llmdbg-status", status0);
  body.appendChild(status);
  const legend = embEl("div", "llmdbg-legend");
  body.appendChild(legend);
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;

  // -- view transform: pixel = (data - centre) * scale + canvas centre ----------------------------
  const pad = 12 * dpr;
  const fit = () => {
    const w = (box.x1 - box.x0) || 1, h = (box.y1 - box.y0) || 1;
    return { cx: (box.x0 + box.x1) / 2, cy: (box.y0 + box.y1) / 2, s: Math.min((W - 2 * pad) / w, (H - 2 * pad) / h) };
  };
  let view = fit();
  const toPx = (vx, vy) => [(vx - view.cx) * view.s + W / 2, H / 2 - (vy - view.cy) * view.s];
  const toData = (px, py) => [(px - W / 2) / view.s + view.cx, view.cy - (py - H / 2) / view.s];

  let grid = null; // built after the first paint: the paint must not wait for it
  let coloring = colorings.length ? 0 : -1;
  let matched = null; // Uint8Array per point, or null when no search
  let nMatched = 0;
  let hovered = -1;
  let base = null; // ImageData of the points, reused while only the hover changes

  const colorOf = (i) => {
    if (coloring < 0) return EMB_PALETTE[0];
    return EMB_PALETTE[colorings[coloring].index[i] % EMB_PALETTE.length];
  };

  function paintPoints() {
    const img = ctx.createImageData(W, H);
    const d = img.data;
    const buf = new Uint32Array(d.buffer);
    buf.fill(0xffffffff); // white, opaque
    const size = dpr >= 2 ? 3 : 2;
    const put = (i, rgb, alpha, sz) => {
      const px = Math.round((x[i] - view.cx) * view.s + W / 2), py = Math.round(H / 2 - (y[i] - view.cy) * view.s);
      if (px < 0 || py < 0 || px >= W || py >= H) return;
      for (let dy = 0; dy < sz; dy++) {
        const yy = py + dy;
        if (yy >= H) break;
        for (let dx = 0; dx < sz; dx++) {
          const xx = px + dx;
          if (xx >= W) break;
          const o = (yy * W + xx) * 4;
          d[o] = d[o] + (rgb[0] - d[o]) * alpha;
          d[o + 1] = d[o + 1] + (rgb[1] - d[o + 1]) * alpha;
          d[o + 2] = d[o + 2] + (rgb[2] - d[o + 2]) * alpha;
        }
      }
    };
    if (matched) {
      const grey = [190, 194, 200];
      for (let i = 0; i < n; i++) if (!matched[i]) put(i, grey, 0.35, size);
      for (let i = 0; i < n; i++) if (matched[i]) put(i, colorOf(i), 1, size + 2);
    } else {
      const alpha = n > 50000 ? 0.6 : 0.85;
      for (let i = 0; i < n; i++) put(i, colorOf(i), alpha, size);
    }
    base = img;
  }

  function draw() {
    if (!base) paintPoints();
    ctx.putImageData(base, 0, 0);
    if (hovered >= 0) {
      const [px, py] = toPx(x[hovered], y[hovered]);
      ctx.beginPath();
      ctx.arc(px + dpr, py + dpr, 6 * dpr, 0, 2 * Math.PI);
      ctx.lineWidth = 2 * dpr;
      ctx.strokeStyle = "#111";
      ctx.stroke();
    }
  }
  let pending = false;
  const redraw = (full) => {
    if (full) base = null;
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; draw(); });
  };

  function updateLegend() {
    legend.textContent = "";
    if (coloring < 0) return;
    const c = colorings[coloring];
    if (c.names.length > 20) {
      legend.appendChild(embEl("span", "", c.names.length.toLocaleString() + " " + c.name + " values (colours repeat)"));
      return;
    }
    c.names.forEach((name, k) => {
      const s = embEl("span");
      const sw = embEl("i");
      const rgb = EMB_PALETTE[k % EMB_PALETTE.length];
      sw.style.background = "rgb(" + rgb.join(",") + ")";
      s.append(sw, document.createTextNode(tokenText(name)));
      legend.appendChild(s);
    });
  }

  // -- first paint, then the index ------------------------------------------------------------
  paintPoints();
  ctx.putImageData(base, 0, 0);
  updateLegend();
  grid = embGrid(x, y, n, box);
  el.setAttribute("data-render-ms", String(Math.round(performance.now() - t0)));
  // the frame after the first putImageData: milliseconds since the page started loading
  requestAnimationFrame(() => el.setAttribute("data-paint-ms", String(Math.round(performance.now()))));

  // -- interactions --------------------------------------------------------------------------
  const pointer = (ev) => {
    // canvas pixels from the event, inside the border
    const r = canvas.getBoundingClientRect();
    return [
      ((ev.clientX - r.left - canvas.clientLeft) / canvas.clientWidth) * W,
      ((ev.clientY - r.top - canvas.clientTop) / canvas.clientHeight) * H,
    ];
  };
  const describe = (i) => {
    let s = tokenText(strings[labelIdx[i]]);
    for (const c of colorings) if (c.name !== "label") s += "\n" + c.name + ": " + tokenText(c.names[c.index[i]]);
    return s;
  };
  let drag = null;
  canvas.addEventListener("mousemove", (ev) => {
    const [px, py] = pointer(ev);
    if (drag) {
      view.cx = drag.cx - (px - drag.px) / view.s;
      view.cy = drag.cy + (py - drag.py) / view.s;
      redraw(true);
      return;
    }
    const [qx, qy] = toData(px, py);
    const i = embNearest(grid, x, y, matched && nMatched ? matched : null, qx, qy, (EMB_PICK_PX * dpr) / view.s);
    if (i !== hovered) {
      hovered = i;
      redraw(false);
    }
    if (i < 0) {
      tip.style.display = "none";
      status.textContent = status0;
      el.removeAttribute("data-hovered");
      return;
    }
    tip.textContent = describe(i);
    tip.style.display = "block";
    tip.style.left = canvas.offsetLeft + px / dpr + 12 + "px";
    tip.style.top = canvas.offsetTop + py / dpr + 12 + "px";
    status.textContent = "point " + i + ": " + tokenText(strings[labelIdx[i]]);
    el.setAttribute("data-hovered", String(i));
  });
  canvas.addEventListener("mouseleave", () => {
    drag = null;
    hovered = -1;
    tip.style.display = "none";
    redraw(false);
  });
  canvas.addEventListener("mousedown", (ev) => {
    const [px, py] = pointer(ev);
    drag = { px, py, cx: view.cx, cy: view.cy };
  });
  window.addEventListener("mouseup", () => { drag = null; });
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const [px, py] = pointer(ev);
    const [qx, qy] = toData(px, py);
    const k = Math.exp(-ev.deltaY * 0.0015);
    view.s = Math.max(1e-9, view.s * k);
    // keep the data point under the cursor where it is
    view.cx = qx - (px - W / 2) / view.s;
    view.cy = qy + (py - H / 2) / view.s;
    el.setAttribute("data-zoom", (view.s / fit().s).toPrecision(4));
    redraw(true);
  }, { passive: false });
  reset.addEventListener("click", () => {
    view = fit();
    el.setAttribute("data-zoom", "1");
    redraw(true);
  });
  colorBy.addEventListener("change", () => {
    coloring = Number(colorBy.value);
    el.setAttribute("data-color-by", colorings[coloring].name);
    updateLegend();
    redraw(true);
  });
  let lower = null;
  search.addEventListener("input", () => {
    const q = search.value.trim().toLowerCase();
    if (!q) {
      matched = null;
      nMatched = 0;
      matches.textContent = "";
    } else {
      // match the string table once, then the points through their indices
      if (!lower) lower = strings.map((t) => String(t).toLowerCase()); // once, on the first search
      const hit = new Uint8Array(strings.length);
      for (let k = 0; k < strings.length; k++) hit[k] = lower[k].includes(q) ? 1 : 0;
      matched = new Uint8Array(n);
      nMatched = 0;
      for (let i = 0; i < n; i++) if (hit[labelIdx[i]]) { matched[i] = 1; nMatched++; }
      matches.textContent = nMatched.toLocaleString() + " match" + (nMatched === 1 ? "" : "es");
    }
    el.setAttribute("data-matches", String(nMatched));
    hovered = -1;
    tip.style.display = "none";
    redraw(true);
  });
  el.setAttribute("data-color-by", coloring >= 0 ? colorings[coloring].name : "");
}
