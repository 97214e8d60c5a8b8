// The attention view: a layer x head grid (colour: normalised entropy or sink score), a head's map
// on canvas (downsampled by max, so T = 4,096 fits 512 px), hover a row for where that token looks
// and who looks at it, rollout / flow when the payload has them. Payload: see widgets/attention.py.

const ATTN_CSS = `
.llmdbg-attn-main { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.llmdbg-attn-panel { min-width: 120px; }
.llmdbg-legend { max-width: 200px; }
.llmdbg-attn-stack { position: relative; }
.llmdbg-attn-stack .llmdbg-map-overlay { position: absolute; left: 0; top: 0; cursor: crosshair; }
.llmdbg-attn-label { margin: 6px 0 2px; color: #888; }
.llmdbg-focus { margin-top: 6px; max-width: 520px; white-space: pre-wrap; min-height: 3em; }
.llmdbg-tokens { margin: 4px 0 8px; max-width: 520px; line-height: 1.9; }
.llmdbg-tokens span { padding: 1px 3px; margin: 0 1px; border-radius: 3px; border: 1px solid #8883;
  white-space: pre; cursor: default; }
.llmdbg-tokens span.llmdbg-hot { outline: 2px solid #e4572e; }
.llmdbg-note { color: #888; margin: 4px 0; max-width: 520px; }
`;

const ATTN_LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const c = viridis(Math.sqrt(i / 255));
    lut[3 * i] = c[0]; lut[3 * i + 1] = c[1]; lut[3 * i + 2] = c[2];
  }
  return lut;
})();

// Max-pooled draw of an R x K matrix (typed data, optional per-row scale) into a w x h canvas.
function attnDrawMatrix(ctx, m, w, h_) {
  const { data, scale, R, K, vmax } = m;
  const img = ctx.createImageData(w, h_);
  const d = img.data;
  const inv = vmax > 0 ? 255 / vmax : 0;
  const cs0 = new Int32Array(w), cs1 = new Int32Array(w);
  for (let px = 0; px < w; px++) {
    cs0[px] = Math.floor((px * K) / w);
    cs1[px] = Math.max(cs0[px] + 1, Math.floor(((px + 1) * K) / w));
  }
  for (let py = 0; py < h_; py++) {
    const r0 = Math.floor((py * R) / h_), r1 = Math.max(r0 + 1, Math.floor(((py + 1) * R) / h_));
    for (let px = 0; px < w; px++) {
      let best = 0;
      for (let r = r0; r < r1; r++) {
        const s = scale ? scale[r] : 1, base = r * K;
        for (let c = cs0[px]; c < cs1[px]; c++) {
          const v = data[base + c] * s;
          if (v > best) best = v;
        }
      }
      const li = 3 * Math.min(255, Math.max(0, Math.round(best * inv)));
      const o = (py * w + px) * 4;
      d[o] = ATTN_LUT[li]; d[o + 1] = ATTN_LUT[li + 1]; d[o + 2] = ATTN_LUT[li + 2]; d[o + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
}

function attnMatrix(enc) {
  const a = decodeArray(enc);
  const R = a.shape[0], K = a.shape[1];
  let vmax = 0;
  for (let r = 0; r < R; r++) {
    const s = a.scale ? a.scale[r] : 1, base = r * K;
    for (let c = 0; c < K; c++) { const v = a.data[base + c] * s; if (v > vmax) vmax = v; }
  }
  return { data: a.data, scale: a.scale, R, K, vmax };
}

function attnRow(m, r) {
  const out = new Float32Array(m.K), s = m.scale ? m.scale[r] : 1, base = r * m.K;
  for (let c = 0; c < m.K; c++) out[c] = m.data[base + c] * s;
  return out;
}

function attnColumn(m, c) {
  const out = new Float32Array(m.R);
  for (let r = 0; r < m.R; r++) out[r] = m.data[r * m.K + c] * (m.scale ? m.scale[r] : 1);
  return out;
}

function attnTop(values, k) {
  const idx = [];
  for (let i = 0; i < values.length; i++) {
    if (!(values[i] > 0)) continue;
    if (idx.length < k) { idx.push(i); idx.sort((a, b) => values[b] - values[a]); }
    else if (values[i] > values[idx[k - 1]]) { idx[k - 1] = i; idx.sort((a, b) => values[b] - values[a]); }
  }
  return idx;
}

function attnStrip(canvas, values, vmax) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h_ = canvas.height, n = values.length;
  const img = ctx.createImageData(w, h_), d = img.data, inv = vmax > 0 ? 255 / vmax : 0;
  for (let px = 0; px < w; px++) {
    const a = Math.floor((px * n) / w), b = Math.max(a + 1, Math.floor(((px + 1) * n) / w));
    let best = 0;
    for (let i = a; i < b; i++) if (values[i] > best) best = values[i];
    const li = 3 * Math.min(255, Math.round(best * inv));
    for (let py = 0; py < h_; py++) {
      const o = (py * w + px) * 4;
      d[o] = ATTN_LUT[li]; d[o + 1] = ATTN_LUT[li + 1]; d[o + 2] = ATTN_LUT[li + 2]; d[o + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
}

function render({ model, el }) {
  const p = parsePayload(model);
  const body = startView(el, "attention", p, ATTN_CSS);
  if (p.empty) { emptyMessage(body, p.empty); return; }
  const g = p.grid, L = g.layers, H = g.heads;
  // the model's layer and head numbers (a trace captured with an AttentionQuery holds some only)
  const layerId = (l) => (g.layer_ids ? g.layer_ids[l] : l), headId = (hh) => (g.head_ids ? g.head_ids[hh] : hh);
  const cross = !!p.query_tokens; // cross-attention: queries belong to another sequence
  const colours = { entropy: g.entropy ? decodeArray(g.entropy).data : null, sink: g.sink ? decodeArray(g.sink).data : null };
  const tokens = p.tokens || [];
  const rows = p.rows ? decodeArray(p.rows).data : null;
  const rowOf = new Map();
  if (rows) rows.forEach((q, r) => rowOf.set(q, r));
  const mapsByHead = new Map((p.maps || []).map((m) => [m.layer + "," + m.head, m.map]));
  const cache = new Map();
  const state = { colour: colours.entropy ? "entropy" : "sink", layer: null, head: null, mode: "head", focus: null, row: null };

  // controls
  const controls = h("div", { class: "llmdbg-controls" });
  const colourButtons = {};
  if (colours.entropy && colours.sink) {
    controls.appendChild(h("span", { class: "llmdbg-muted" }, "colour by"));
    for (const [key, label] of [["entropy", "entropy"], ["sink", "sink score"]]) {
      colourButtons[key] = h("button", { type: "button", "data-colour": key, onclick: () => { state.colour = key; drawGrid(); } }, label);
      controls.appendChild(colourButtons[key]);
    }
  }
  const modeButtons = {};
  const modes = [["head", "head map"]];
  if (p.rollout) modes.push(["rollout", "rollout"]);
  if (p.flow) modes.push(["flow", "flow"]);
  if (modes.length > 1) {
    controls.appendChild(h("span", { class: "llmdbg-muted", style: { marginLeft: "10px" } }, "show"));
    for (const [key, label] of modes) {
      modeButtons[key] = h("button", { type: "button", "data-mode": key, onclick: () => { state.mode = key; showPanel(); } }, label);
      controls.appendChild(modeButtons[key]);
    }
  }
  body.appendChild(controls);

  const main = h("div", { class: "llmdbg-attn-main" });
  body.appendChild(main);
  const tip = tooltip(el);

  // grid
  const cell = Math.max(8, Math.min(22, Math.floor(360 / Math.max(H, 1)))), left = 26, top = 16;
  const gridCanvas = makeCanvas(left + H * cell + 1, top + L * cell + 1, "llmdbg-grid");
  const legend = h("div", { class: "llmdbg-attn-label llmdbg-legend" });
  const gridPanel = h("div", { class: "llmdbg-attn-panel" }, h("div", { class: "llmdbg-attn-label" }, "layer \u00d7 head (click a head)"), gridCanvas, legend);
  main.appendChild(gridPanel);

  function drawGrid() {
    for (const [k, b] of Object.entries(colourButtons)) b.classList.toggle("llmdbg-on", k === state.colour);
    const ctx = gridCanvas.getContext("2d");
    ctx.clearRect(0, 0, gridCanvas.width, gridCanvas.height);
    ctx.fillStyle = "#888"; ctx.font = "10px sans-serif"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
    const labelEvery = Math.ceil(12 / cell);
    for (let l = 0; l < L; l += labelEvery) ctx.fillText(String(layerId(l)), left - 4, top + l * cell + cell / 2);
    ctx.textAlign = "center"; ctx.textBaseline = "alphabetic";
    for (let hh = 0; hh < H; hh += labelEvery) ctx.fillText(String(headId(hh)), left + hh * cell + cell / 2, top - 4);
    // colours span the grid's own range (the tooltip gives the values): heads of one model often
    // differ by a few hundredths of normalised entropy
    const values = colours[state.colour];
    let lo = Infinity, hi = -Infinity;
    if (values) for (const v of values) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const span = hi > lo ? hi - lo : 1;
    setText(legend, values && Number.isFinite(lo)
      ? `${state.colour === "entropy" ? "normalised entropy" : "sink score"}: ${fmt(lo, 3)} (dark) \u2013 ${fmt(hi, 3)} (light)` : "");
    for (let l = 0; l < L; l++) for (let hh = 0; hh < H; hh++) {
      const v = values ? (values[l * H + hh] - lo) / span : NaN;
      ctx.fillStyle = css(viridis(v));
      ctx.fillRect(left + hh * cell, top + l * cell, cell - 1, cell - 1);
    }
    if (state.layer !== null) {
      ctx.strokeStyle = "#e4572e"; ctx.lineWidth = 2;
      ctx.strokeRect(left + state.head * cell - 1, top + state.layer * cell - 1, cell + 1, cell + 1);
    }
  }

  function cellAt(event) {
    const [x, y] = localPoint(event, gridCanvas);
    const hh = Math.floor((x - left) / cell), l = Math.floor((y - top) / cell);
    return l >= 0 && l < L && hh >= 0 && hh < H ? [l, hh] : null;
  }
  gridCanvas.addEventListener("mousemove", (event) => {
    const c = cellAt(event);
    if (!c) { tip.hide(); return; }
    const [l, hh] = c, i = l * H + hh;
    const lines = [`layer ${layerId(l)}, head ${headId(hh)}`];
    if (colours.entropy) lines.push(`entropy (normalised) ${fmt(colours.entropy[i], 3)}`);
    if (colours.sink) {
      const tok = g.sink_token && g.sink_token[l] ? g.sink_token[l][hh] : null;
      lines.push(`sink score ${fmt(colours.sink[i], 3)}` + (tok !== null && tok !== undefined ? ` on ${tokenText(tok)}` : ""));
    }
    const flags = g.flags && g.flags[l] ? g.flags[l][hh] : "";
    if (flags) lines.push("flags " + flags + "  (S sink, C collapsed, U uniform)");
    const [rx, ry] = localPoint(event, el);
    tip.show(rx, ry, lines);
  });
  gridCanvas.addEventListener("mouseleave", () => tip.hide());
  gridCanvas.addEventListener("click", (event) => {
    const c = cellAt(event);
    if (!c) return;
    state.layer = c[0]; state.head = c[1]; state.mode = "head";
    drawGrid(); showPanel();
  });

  // the map panel
  const panel = h("div", { class: "llmdbg-attn-panel llmdbg-map-panel" });
  main.appendChild(panel);

  function currentMatrix() {
    const key = state.mode === "head" ? state.layer + "," + state.head : state.mode;
    if (cache.has(key)) return cache.get(key);
    const enc = state.mode === "head" ? mapsByHead.get(key) : p[state.mode];
    const m = enc ? attnMatrix(enc) : null;
    cache.set(key, m);
    return m;
  }

  function showPanel() {
    for (const [k, b] of Object.entries(modeButtons)) b.classList.toggle("llmdbg-on", k === state.mode);
    panel.replaceChildren();
    const heading = state.mode === "head"
      ? (state.layer === null ? "no head selected" : `layer ${layerId(state.layer)}, head ${headId(state.head)}`)
      : state.mode === "rollout" ? "attention rollout (all layers)" : "attention flow (all layers)";
    panel.appendChild(h("div", { class: "llmdbg-attn-label llmdbg-map-title" }, heading));
    if (p.per_query) { showPerQuery(); return; }
    const m = state.mode === "head" && state.layer === null ? null : currentMatrix();
    if (!m) {
      panel.appendChild(h("div", { class: "llmdbg-note" }, p.note ||
        (state.layer === null ? "Click a head in the grid to open its map."
          : `The map of layer ${layerId(state.layer)}, head ${headId(state.head)} is not in this view: build it with layers=[${state.layer}], heads=[${state.head}].`)));
      return;
    }
    showMatrix(m);
  }

  function showMatrix(m) {
    const c = Math.min(20, 512 / Math.max(m.K, m.R));
    const w = Math.max(1, Math.round(m.K * c)), hh = Math.max(1, Math.round(m.R * c));
    const base = makeCanvas(w, hh, "llmdbg-map"), over = makeCanvas(w, hh, "llmdbg-map-overlay");
    attnDrawMatrix(base.getContext("2d"), m, w, hh);
    const rowStrip = makeCanvas(w, 14, "llmdbg-row-strip"), colStrip = makeCanvas(w, 14, "llmdbg-col-strip");
    const focus = h("div", { class: "llmdbg-focus" }, "Hover the map (a query row) or a token to see where it looks and who looks at it.");
    let spans = null;
    if (tokens.length && tokens.length <= 400) {
      spans = tokens.map((t, i) => h("span", { "data-pos": i, title: "position " + i }, tokenText(t)));
      const list = h("div", { class: "llmdbg-tokens" }, spans);
      list.addEventListener("mouseover", (event) => {
        const pos = event.target && event.target.getAttribute ? event.target.getAttribute("data-pos") : null;
        if (pos !== null) focusOn(Number(pos));
      });
      panel.appendChild(list);
    }
    panel.append(
      h("div", { class: "llmdbg-attn-stack", style: { width: w + "px", height: hh + "px" } }, base, over),
      h("div", { class: "llmdbg-attn-label" }, "where it looks (its row, over keys)"), rowStrip,
      h("div", { class: "llmdbg-attn-label" }, "who looks at it (its column, over queries)"), colStrip,
      focus,
    );
    const octx = over.getContext("2d");
    function focusOn(q) {
      state.focus = q;
      const r = cross ? state.row : rows ? rowOf.get(q) : q;
      octx.clearRect(0, 0, w, hh);
      octx.fillStyle = "rgba(228, 87, 46, 0.35)"; octx.strokeStyle = "rgba(228, 87, 46, 0.95)"; octx.lineWidth = 1;
      const lines = [];
      const name = (i) => `${tokenText(tokens[i] ?? String(i))} (${i})`;
      const qname = (i) => (cross ? `query ${i}` : name(i));
      if (r !== undefined && r !== null && r < m.R) {
        const y0 = Math.floor((r * hh) / m.R), y1 = Math.max(y0 + 2, Math.floor(((r + 1) * hh) / m.R));
        octx.fillRect(0, y0, w, y1 - y0); octx.strokeRect(0.5, y0 + 0.5, w - 1, y1 - y0 - 1);
        const row = attnRow(m, r);
        attnStrip(rowStrip, row, m.vmax);
        const who = cross ? qname(rows ? rows[r] : r) : name(q);
        lines.push(`${who} looks at: ` + attnTop(row, 5).map((k) => `${name(k)} ${fmt(row[k], 3)}`).join(" \u00b7 "));
        if (spans) spans.forEach((s, k) => { s.style.background = css([228, 87, 46], (0.85 * row[k]) / (m.vmax || 1)); });
      } else if (!cross) {
        rowStrip.getContext("2d").clearRect(0, 0, w, rowStrip.height);
        lines.push(`${name(q)}: its row is not in this view (rows=)`);
      }
      if (q !== null && q < m.K) {
        const x0 = Math.floor((q * w) / m.K), x1 = Math.max(x0 + 2, Math.floor(((q + 1) * w) / m.K));
        octx.fillRect(x0, 0, x1 - x0, hh); octx.strokeRect(x0 + 0.5, 0.5, x1 - x0 - 1, hh - 1);
        const col = attnColumn(m, q);
        attnStrip(colStrip, col, m.vmax);
        const qs = rows ? (i) => rows[i] : (i) => i;
        lines.push(`${cross ? name(q) + " is " : ""}looked at by: ` + attnTop(col, 5).map((i) => `${qname(qs(i))} ${fmt(col[i], 3)}`).join(" \u00b7 "));
      }
      if (spans) spans.forEach((s, k) => s.classList.toggle("llmdbg-hot", k === q));
      focus.setAttribute("data-row", String(cross ? state.row : q));
      setText(focus, lines.join("\n"));
    }
    over.addEventListener("mousemove", (event) => {
      const [, y] = localPoint(event, over);
      const r = Math.min(m.R - 1, Math.max(0, Math.floor((y * m.R) / hh)));
      if (cross) { state.row = r; focusOn(null); return; }
      const q = rows ? rows[r] : r;
      if (q !== state.focus) focusOn(q);
    });
    if (state.focus !== null) focusOn(state.focus);
  }

  // Long-context statistics: per query entropy, largest weight and sink mass along the sequence.
  function showPerQuery() {
    panel.appendChild(h("div", { class: "llmdbg-note" }, p.note));
    if (state.layer === null) return;
    const pq = p.per_query;
    if (!pq._decoded) pq._decoded = { entropy: decodeArray(pq.entropy), max_prob: decodeArray(pq.max_prob), sink_mass: decodeArray(pq.sink_mass) };
    const D = pq._decoded, T = D.entropy.shape[2], off = (state.layer * D.entropy.shape[1] + state.head) * T;
    const series = [["entropy", [59, 110, 165]], ["max_prob", [44, 160, 44]], ["sink_mass", [228, 87, 46]]];
    const w = 512, hh = 160;
    const chart = makeCanvas(w, hh, "llmdbg-map"), over = makeCanvas(w, hh, "llmdbg-map-overlay");
    const ctx = chart.getContext("2d");
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, w, hh);
    for (const [name, colour] of series) {
      const v = D[name].data;
      let top = 0;
      for (let i = 0; i < T; i++) if (v[off + i] > top) top = v[off + i];
      ctx.strokeStyle = css(colour); ctx.lineWidth = 1.5; ctx.beginPath();
      let started = false;
      for (let i = 0; i < T; i++) {
        const x = T > 1 ? (i * (w - 1)) / (T - 1) : w / 2, val = v[off + i];
        if (!Number.isFinite(val)) { started = false; continue; }
        const y = hh - 4 - ((hh - 8) * val) / (top || 1);
        if (started) ctx.lineTo(x, y); else { ctx.moveTo(x, y); started = true; }
      }
      ctx.stroke();
    }
    const legend = h("div", { class: "llmdbg-attn-label" }, series.map(([n, c]) => h("span", { style: { color: css(c), marginRight: "10px" } }, n + " (scaled to its max)")));
    const focus = h("div", { class: "llmdbg-focus" }, "Hover the chart to read one query's statistics.");
    panel.append(h("div", { class: "llmdbg-attn-stack", style: { width: w + "px", height: hh + "px" } }, chart, over), legend, focus);
    const octx = over.getContext("2d");
    over.addEventListener("mousemove", (event) => {
      const [x] = localPoint(event, over);
      const i = Math.min(T - 1, Math.max(0, Math.round((x * (T - 1)) / (w - 1))));
      octx.clearRect(0, 0, w, hh);
      const px = T > 1 ? (i * (w - 1)) / (T - 1) : w / 2;
      octx.fillStyle = "rgba(228, 87, 46, 0.8)"; octx.fillRect(Math.round(px) - 1, 0, 2, hh);
      focus.setAttribute("data-row", String(i));
      setText(focus, `${tokenText(tokens[i] ?? String(i))} (${i}): entropy ${fmt(D.entropy.data[off + i], 3)} nats, ` +
        `max weight ${fmt(D.max_prob.data[off + i], 3)}, sink mass ${fmt(D.sink_mass.data[off + i], 3)}`);
    });
  }

  // start on the first head that has a map (or the first head)
  const first = (p.maps || [])[0];
  if (first) { state.layer = first.layer; state.head = first.head; }
  else if (p.per_query) { state.layer = 0; state.head = 0; }
  drawGrid();
  showPanel();
}
