// The logit-lens view: layers (rows, embeddings first) x positions (columns) of top-1 tokens,
// shaded by probability; hover a cell for its top-k with probabilities (bars on canvas) and the
// target's rank and probability. Payload: see widgets/lens.py.

const LENS_CSS = `
.llmdbg-lens-wrap { overflow: auto; max-width: 100%; max-height: 420px; }
.llmdbg-lens-table { border-collapse: collapse; font-size: 12px; }
.llmdbg-lens-table th { font-weight: 600; padding: 2px 6px; color: #666; white-space: pre; position: sticky; top: 0; background: #fff; }
.llmdbg-lens-table th.llmdbg-row { position: sticky; left: 0; text-align: right; }
.llmdbg-lens-table td { padding: 2px 6px; border: 1px solid #8882; white-space: pre; cursor: default; text-align: center; }
.llmdbg-lens-table td.llmdbg-hot { outline: 2px solid #e4572e; }
.llmdbg-lens-table th.llmdbg-pad { color: #bbb; text-decoration: line-through; }
.llmdbg-lens-detail { display: flex; gap: 12px; align-items: flex-start; margin-top: 8px; }
.llmdbg-lens-text { white-space: pre; min-height: 4em; }
`;

function render({ model, el }) {
  const p = parsePayload(model);
  const body = startView(el, "lens", p, LENS_CSS);
  if (p.empty || !p.layers || !p.layers.length) { emptyMessage(body, p.empty || "This logit-lens result is empty."); return; }
  const top = decodeArray(p.top), probs = decodeArray(p.probs), ids = decodeArray(p.top_ids);
  const [R, P, K] = top.shape;
  const tprob = p.target_prob ? decodeArray(p.target_prob).data : null;
  const trank = p.target_rank ? decodeArray(p.target_rank).data : null;
  const state = { colour: "top" };

  const controls = h("div", { class: "llmdbg-controls" });
  const buttons = {};
  if (tprob) {
    controls.appendChild(h("span", { class: "llmdbg-muted" }, "shade by"));
    for (const [key, label] of [["top", "top-1 probability"], ["target", "target probability"]]) {
      buttons[key] = h("button", { type: "button", "data-colour": key, onclick: () => { state.colour = key; shade(); } }, label);
      controls.appendChild(buttons[key]);
    }
  } else controls.appendChild(h("span", { class: "llmdbg-muted" }, `top-${K} predictions per layer (${p.kind})`));
  body.appendChild(controls);

  const header = h("tr", {}, h("th", { class: "llmdbg-row" }, "layer \\ token"),
    p.positions.map((pos, j) => h("th", { class: p.real[j] ? "" : "llmdbg-pad", title: "position " + pos },
      tokenText(p.input_tokens ? p.input_tokens[j] : String(pos)))));
  const cells = [];
  const rowsEl = [];
  for (let r = R - 1; r >= 0; r--) { // the last layer (the model's own prediction) on top
    const tds = [];
    for (let j = 0; j < P; j++) {
      const td = h("td", { "data-layer": r, "data-pos": j }, tokenText(p.strings[top.data[(r * P + j) * K]]));
      tds.push(td);
      cells[r * P + j] = td;
    }
    rowsEl.push(h("tr", {}, h("th", { class: "llmdbg-row" }, p.layers[r] === 0 ? "emb" : String(p.layers[r])), tds));
  }
  const table = h("table", { class: "llmdbg-lens-table" }, h("thead", {}, header), h("tbody", {}, rowsEl));
  body.appendChild(h("div", { class: "llmdbg-lens-wrap" }, table));

  const bars = makeCanvas(220, 16 * K + 8, "llmdbg-lens-bars");
  const text = h("div", { class: "llmdbg-lens-text" }, "Hover a cell to see its top predictions.");
  body.appendChild(h("div", { class: "llmdbg-lens-detail" }, bars, text));

  function shade() {
    for (const [k, b] of Object.entries(buttons)) b.classList.toggle("llmdbg-on", k === state.colour);
    for (let r = 0; r < R; r++) for (let j = 0; j < P; j++) {
      const v = state.colour === "target" ? tprob[r * P + j] : probs.data[(r * P + j) * K];
      const td = cells[r * P + j];
      td.style.background = Number.isFinite(v) ? css([59, 110, 165], 0.06 + 0.7 * v) : "";
      td.style.color = Number.isFinite(v) && v > 0.6 ? "#fff" : "";
    }
  }

  let hot = null;
  function focus(r, j) {
    if (hot) hot.classList.remove("llmdbg-hot");
    hot = cells[r * P + j]; hot.classList.add("llmdbg-hot");
    const ctx = bars.getContext("2d");
    ctx.clearRect(0, 0, bars.width, bars.height);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, bars.width, bars.height);
    const lines = [`layer ${p.layers[r] === 0 ? "0 (embeddings)" : p.layers[r]}, position ${p.positions[j]}` +
      (p.input_tokens ? ` (${tokenText(p.input_tokens[j])})` : "")];
    const first = probs.data[(r * P + j) * K] || 1; // bars relative to the top-1 (values in the text)
    for (let k = 0; k < K; k++) {
      const o = (r * P + j) * K + k, pr = probs.data[o];
      ctx.fillStyle = css(categorical(0)); ctx.fillRect(0, 4 + 16 * k, Math.max(1, (218 * pr) / first), 12);
      lines.push(`${k + 1}. ${tokenText(p.strings[top.data[o]])}  p=${fmt(pr, 3)}  (id ${ids.data[o]})`);
    }
    if (tprob) {
      const rk = trank[r * P + j];
      lines.push(rk < 0 ? "no target here" : `target: rank ${rk}, p=${fmt(tprob[r * P + j], 3)}`);
    }
    text.setAttribute("data-cell", `${r},${j}`);
    setText(text, lines.join("\n"));
  }
  table.addEventListener("mouseover", (event) => {
    const td = event.target && event.target.closest ? event.target.closest("td") : null;
    if (!td) return;
    focus(Number(td.getAttribute("data-layer")), Number(td.getAttribute("data-pos")));
  });
  shade();
}
