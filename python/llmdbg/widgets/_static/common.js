// llmdbg views: helpers shared by every view. Python concatenates this file, the view's own file
// (which defines `function render({ model, el })`) and `export default { render };` into one ES
// module, so the names below are visible to every view file; view files must not redefine them.
//
//   decodeArray(enc)            payload array {dtype, shape, b64[, scale]} -> {data, shape, dtype, scale}
//   arrayRow(arr, i)            row i of a 2-D (or last-axis) decoded array as Float32Array (dequantised)
//   h(tag, attrs, ...children)  create an element; strings become text nodes (never HTML)
//   setText(node, value)        node.textContent = String(value)
//   tokenText(s)                a token as displayable text (bidi controls and blanks made visible)
//   startView(el, name, payload, css)  root set-up: data-llmdbg-view, scoped style, title; returns body
//   emptyMessage(parent, text)  the "nothing to show" box (class llmdbg-empty)
//   viridis(t), diverging(t), categorical(i), css(rgb)   colour maps -> [r, g, b] in 0..255
//   fmt(x, digits)              number for humans
//   makeCanvas(w, h, cls)       canvas with its CSS size fixed
//   drawMatrix(ctx, get, rows, cols, x, y, w, h, colour)  matrix into a w x h box, downsampled by max
//   tooltip(root)               {show(x, y, lines), hide()} positioned inside root
//   parsePayload(model)         JSON.parse(model.get("_payload"))

const LLMDBG_CSS = `
.llmdbg-root { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; font-size: 12.5px;
  line-height: 1.4; color: inherit; position: relative; max-width: 100%; }
.llmdbg-root .llmdbg-title { font-weight: 600; margin: 0 0 6px 0; }
.llmdbg-root .llmdbg-empty { padding: 12px 14px; border: 1px dashed #8888; border-radius: 6px;
  color: #777; background: #8881; }
.llmdbg-root .llmdbg-controls { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin: 4px 0 8px; }
.llmdbg-root button { font: inherit; padding: 2px 8px; border: 1px solid #8886; border-radius: 4px;
  background: transparent; color: inherit; cursor: pointer; }
.llmdbg-root button.llmdbg-on { background: #3b6ea533; border-color: #3b6ea5; }
.llmdbg-root .llmdbg-tip { position: absolute; pointer-events: none; z-index: 10; padding: 4px 8px;
  background: #222e; color: #fff; border-radius: 4px; font-size: 12px; white-space: pre; display: none; }
.llmdbg-root .llmdbg-muted { color: #888; }
.llmdbg-root canvas { display: block; }
`;

const LLMDBG_BIDI = /[\u202A-\u202E\u2066-\u2069\u200E\u200F]/g;

function parsePayload(model) {
  return JSON.parse(model.get("_payload"));
}

function base64Bytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// IEEE half -> float through a 65,536-entry table, built once.
let LLMDBG_HALF = null;
function halfTable() {
  if (LLMDBG_HALF) return LLMDBG_HALF;
  LLMDBG_HALF = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    LLMDBG_HALF[h] = e === 0 ? s * f * 2 ** -24 : e === 31 ? (f ? NaN : s * Infinity) : s * (1 + f / 1024) * 2 ** (e - 15);
  }
  return LLMDBG_HALF;
}

const LLMDBG_TYPED = {
  float32: Float32Array, float64: Float64Array, int8: Int8Array, uint8: Uint8Array,
  int16: Int16Array, uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array,
};

function decodeArray(enc) {
  if (!enc || typeof enc.b64 !== "string") throw new Error("not an encoded array");
  const bytes = base64Bytes(enc.b64);
  let data;
  if (enc.dtype === "float16") {
    const raw = new Uint16Array(bytes.buffer, 0, bytes.length / 2), table = halfTable();
    data = new Float32Array(raw.length);
    for (let i = 0; i < raw.length; i++) data[i] = table[raw[i]];
  } else {
    const T = LLMDBG_TYPED[enc.dtype];
    if (!T) throw new Error("unknown dtype " + enc.dtype);
    data = new T(bytes.buffer, 0, bytes.length / T.BYTES_PER_ELEMENT);
  }
  const scale = enc.scale ? decodeArray(enc.scale).data : null;
  return { data, shape: enc.shape.slice(), dtype: enc.dtype, scale };
}

// Row i of the last axis (with a quantised array's scale applied), as a new Float32Array.
function arrayRow(arr, i) {
  const n = arr.shape[arr.shape.length - 1];
  const row = new Float32Array(n);
  const s = arr.scale ? arr.scale[i] : 1;
  const base = i * n;
  for (let j = 0; j < n; j++) row[j] = arr.data[base + j] * s;
  return row;
}

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style" && typeof v === "object") Object.assign(node.style, v);
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = String(v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function setText(node, value) {
  node.textContent = value === null || value === undefined ? "" : String(value);
  return node;
}

// Tokens are shown as text; bidirectional controls would reorder what surrounds them ("Trojan
// Source"), so they are written as code points, and an empty token as a visible mark.
function tokenText(s) {
  const t = String(s ?? "").replace(LLMDBG_BIDI, (c) => "\u27e8U+" + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0") + "\u27e9");
  return t === "" ? "\u2205" : t;
}

function startView(el, name, payload, css) {
  el.setAttribute("data-llmdbg-view", name);
  el.classList.add("llmdbg-root");
  for (const child of Array.from(el.children)) if (child.tagName !== "NOSCRIPT") child.remove();
  el.appendChild(h("style", {}, LLMDBG_CSS + (css || "")));
  if (payload && payload.title) el.appendChild(h("div", { class: "llmdbg-title" }, String(payload.title)));
  const body = h("div", { class: "llmdbg-body" });
  el.appendChild(body);
  return body;
}

function emptyMessage(parent, text) {
  const box = h("div", { class: "llmdbg-empty", role: "status" }, text);
  parent.appendChild(box);
  return box;
}

function clamp01(t) {
  return t < 0 ? 0 : t > 1 ? 1 : t;
}

// viridis, 9 stops, linear in between
const LLMDBG_VIRIDIS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];
function viridis(t) {
  if (!Number.isFinite(t)) return [200, 200, 200];
  const x = clamp01(t) * (LLMDBG_VIRIDIS.length - 1), i = Math.min(Math.floor(x), LLMDBG_VIRIDIS.length - 2), f = x - i;
  const a = LLMDBG_VIRIDIS[i], b = LLMDBG_VIRIDIS[i + 1];
  return [a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])].map(Math.round);
}

// t in [-1, 1]: blue (negative) - white - red (positive)
function diverging(t) {
  if (!Number.isFinite(t)) return [200, 200, 200];
  const x = Math.max(-1, Math.min(1, t));
  const end = x < 0 ? [33, 102, 172] : [178, 24, 43];
  const f = Math.abs(x);
  return [255 + f * (end[0] - 255), 255 + f * (end[1] - 255), 255 + f * (end[2] - 255)].map(Math.round);
}

const LLMDBG_CATEGORICAL = [
  [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
  [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
];
function categorical(i) {
  return LLMDBG_CATEGORICAL[((i % 10) + 10) % 10];
}

function css(rgb, alpha) {
  return alpha === undefined ? `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})` : `rgba(${rgb[0]}, ${rgb[1]}, ${rgb[2]}, ${alpha})`;
}

function fmt(x, digits) {
  if (x === null || x === undefined) return "\u2013";
  if (typeof x !== "number") return String(x);
  if (!Number.isFinite(x)) return String(x);
  if (Number.isInteger(x) && Math.abs(x) < 1e15) return x.toLocaleString("en-US");
  return Number(x.toPrecision(digits || 4)).toString();
}

function makeCanvas(w, h_, cls) {
  const c = document.createElement("canvas");
  c.width = Math.max(1, Math.round(w));
  c.height = Math.max(1, Math.round(h_));
  c.style.width = c.width + "px";
  c.style.height = c.height + "px";
  if (cls) c.className = cls;
  return c;
}

// Draws get(r, c) for a rows x cols matrix into the w x h pixel box at (x, y). Each pixel shows
// the largest value among the cells it covers, so a sharp peak survives downsampling (a mean
// would wash a single strong key out of a 4,096-wide row). colour(v) -> [r, g, b].
function drawMatrix(ctx, get, rows, cols, x, y, w, h_, colour) {
  w = Math.max(1, Math.round(w));
  h_ = Math.max(1, Math.round(h_));
  const img = ctx.createImageData(w, h_);
  const d = img.data;
  for (let py = 0; py < h_; py++) {
    const r0 = Math.floor((py * rows) / h_), r1 = Math.max(r0 + 1, Math.floor(((py + 1) * rows) / h_));
    for (let px = 0; px < w; px++) {
      const c0 = Math.floor((px * cols) / w), c1 = Math.max(c0 + 1, Math.floor(((px + 1) * cols) / w));
      let best = -Infinity;
      for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) {
        const v = get(r, c);
        if (v > best) best = v;
      }
      const rgb = colour(best);
      const o = (py * w + px) * 4;
      d[o] = rgb[0]; d[o + 1] = rgb[1]; d[o + 2] = rgb[2]; d[o + 3] = 255;
    }
  }
  ctx.putImageData(img, Math.round(x), Math.round(y));
}

function tooltip(root) {
  const tip = h("div", { class: "llmdbg-tip", role: "tooltip" });
  root.appendChild(tip);
  return {
    node: tip,
    show(x, y, lines) {
      tip.textContent = (Array.isArray(lines) ? lines : [lines]).join("\n");
      tip.style.display = "block";
      tip.style.left = Math.round(x + 12) + "px";
      tip.style.top = Math.round(y + 12) + "px";
    },
    hide() {
      tip.style.display = "none";
    },
  };
}

// Mouse position relative to an element's top-left corner (CSS pixels).
function localPoint(event, node) {
  const r = node.getBoundingClientRect();
  return [event.clientX - r.left, event.clientY - r.top];
}
