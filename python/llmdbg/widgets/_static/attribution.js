// The attribution view: source tokens coloured by score (diverging: red raises the target, blue
// lowers it), a bar per token on canvas, hover for every method's score, and for generated text
// the generated tokens, each clickable to show its row of scores. Payload: widgets/attribution.py.

const ATTR_CSS = `
.llmdbg-attr-tokens { line-height: 2.1; max-width: 760px; }
.llmdbg-attr-tokens span { padding: 1px 3px; margin: 0 1px; border-radius: 3px; white-space: pre;
  border: 1px solid #8883; cursor: default; }
.llmdbg-attr-tokens span.llmdbg-hidden { color: #aaa; background: repeating-linear-gradient(45deg, #8881, #8881 3px, transparent 3px, transparent 6px); }
.llmdbg-attr-tokens span.llmdbg-generated { border-style: dashed; }
.llmdbg-attr-targets { line-height: 2.1; max-width: 760px; margin-top: 6px; }
.llmdbg-attr-targets span { padding: 1px 4px; margin: 0 1px; border-radius: 3px; white-space: pre;
  border: 1px solid #8886; cursor: pointer; }
.llmdbg-attr-targets span.llmdbg-selected { outline: 2px solid #e4572e; background: #e4572e22; }
.llmdbg-attr-label { color: #888; margin: 6px 0 2px; }
.llmdbg-attr-detail { margin-top: 6px; white-space: pre-wrap; min-height: 1.5em; }
`;

function render({ model, el }) {
  const p = parsePayload(model);
  const body = startView(el, "attribution", p, ATTR_CSS);
  const sources = p.sources || [];
  if (!sources.length || !(p.methods || []).length) { emptyMessage(body, p.empty || "This attribution has no tokens."); return; }
  const methods = p.methods.map((m) => ({ name: m.name, a: decodeArray(m.scores) }));
  const S = sources.length, n = methods[0].a.shape[0];
  const visible = p.visible ? decodeArray(p.visible) : null;
  const targets = p.targets || null;
  const state = { method: 0, target: n > 1 ? null : 0 }; // null: the sum over targets
  const P = p.prompt_length;

  function rowOf(m, k) {
    const out = new Float32Array(S), a = methods[m].a.data;
    if (k === null) { for (let t = 0; t < n; t++) for (let j = 0; j < S; j++) out[j] += a[t * S + j]; }
    else for (let j = 0; j < S; j++) out[j] = a[k * S + j];
    return out;
  }
  function isVisible(k, j) {
    if (!visible) return true;
    if (k === null) { for (let t = 0; t < visible.shape[0]; t++) if (visible.data[t * S + j]) return true; return false; }
    return visible.data[Math.min(k, visible.shape[0] - 1) * S + j] === 1;
  }

  const controls = h("div", { class: "llmdbg-controls" });
  const methodButtons = methods.map((m, i) => h("button", { type: "button", "data-method": i, onclick: () => { state.method = i; update(); } }, m.name));
  if (methods.length > 1) controls.append(h("span", { class: "llmdbg-muted" }, "colour by"), ...methodButtons);
  else controls.append(h("span", { class: "llmdbg-muted" }, methods[0].name));
  body.appendChild(controls);

  body.appendChild(h("div", { class: "llmdbg-attr-label" }, P !== null && P !== undefined && p.source_kind === "prompt+generated" ? "source: the prompt, then the generated tokens" : "source tokens"));
  const spans = sources.map((t, j) => h("span", { "data-pos": j, class: P !== null && P !== undefined && j >= P ? "llmdbg-generated" : "" }, tokenText(t)));
  const tokenBox = h("div", { class: "llmdbg-attr-tokens" }, spans);
  body.appendChild(tokenBox);

  const W = Math.min(760, Math.max(240, S * 14)), BH = 90;
  const bars = makeCanvas(W, BH, "llmdbg-bars");
  body.append(h("div", { class: "llmdbg-attr-label" }, "score per source token"), bars);

  let targetSpans = null;
  if (targets && (n > 1 || p.generation)) {
    const all = h("span", { "data-target": "all", title: "sum over every generated token" }, "\u03a3 all");
    targetSpans = targets.map((t, k) => h("span", { "data-target": k, title: "step " + k }, tokenText(t)));
    const box = h("div", { class: "llmdbg-attr-targets" }, all, targetSpans);
    box.addEventListener("click", (event) => {
      const v = event.target && event.target.getAttribute ? event.target.getAttribute("data-target") : null;
      if (v === null) return;
      state.target = v === "all" ? null : Number(v);
      update();
    });
    body.append(h("div", { class: "llmdbg-attr-label" }, "generated tokens (click one to explain it)"), box);
    targetSpans.all = all;
  } else if (targets && targets.length) {
    body.appendChild(h("div", { class: "llmdbg-attr-label" }, "target: " + targets.map(tokenText).join(" ")));
  }
  const detail = h("div", { class: "llmdbg-attr-detail" });
  body.appendChild(detail);
  const tip = tooltip(el);

  let current = null, vmax = 1;
  function update() {
    methodButtons.forEach((b, i) => b.classList.toggle("llmdbg-on", i === state.method));
    current = rowOf(state.method, state.target);
    vmax = 0;
    for (let j = 0; j < S; j++) if (isVisible(state.target, j) && Math.abs(current[j]) > vmax) vmax = Math.abs(current[j]);
    vmax = vmax || 1;
    spans.forEach((s, j) => {
      const vis = isVisible(state.target, j);
      s.classList.toggle("llmdbg-hidden", !vis);
      s.style.background = vis ? css(diverging(current[j] / vmax)) : "";
      s.style.color = vis && Math.abs(current[j] / vmax) > 0.55 ? "#fff" : "";
    });
    if (targetSpans) {
      targetSpans.forEach((s, k) => s.classList.toggle("llmdbg-selected", k === state.target));
      targetSpans.all.classList.toggle("llmdbg-selected", state.target === null);
    }
    drawBars();
    const named = (k) => (targets && targets[k] !== undefined ? tokenText(targets[k]) : "#" + k);
    const what = state.target === null ? "all generated tokens (sum)"
      : !p.generation ? (targets && targets.length ? `the target ${named(0)}` : "the target")
      : `generated token ${named(state.target)} (step ${state.target})`;
    const lines = [`explaining ${what} with ${methods[state.method].name}`];
    if (state.target !== null && p.step_scores) {
      const st = Object.entries(p.step_scores).map(([k, v]) => `${k} ${fmt(v[state.target], 3)}`).join(", ");
      if (st) lines.push(st);
    }
    detail.setAttribute("data-target", state.target === null ? "all" : String(state.target));
    setText(detail, lines.join("\n"));
  }

  function drawBars() {
    const ctx = bars.getContext("2d");
    ctx.clearRect(0, 0, W, BH);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, BH);
    const mid = BH / 2, bw = W / S;
    ctx.fillStyle = "#bbb"; ctx.fillRect(0, Math.round(mid), W, 1);
    for (let j = 0; j < S; j++) {
      if (!isVisible(state.target, j)) continue;
      const v = current[j] / vmax, hgt = Math.abs(v) * (mid - 3);
      ctx.fillStyle = css(v >= 0 ? [178, 24, 43] : [33, 102, 172]);
      ctx.fillRect(Math.floor(j * bw) + 1, v >= 0 ? mid - hgt : mid + 1, Math.max(1, Math.floor(bw) - 2), hgt);
    }
    if (P !== null && P !== undefined && P < S) { ctx.fillStyle = "#333"; ctx.fillRect(Math.round(P * bw) - 1, 0, 1, BH); }
  }

  function hover(j, event) {
    const lines = [`${tokenText(sources[j])}  (position ${j})`];
    if (!isVisible(state.target, j)) lines.push("not visible to this step");
    for (let m = 0; m < methods.length; m++) lines.push(`${methods[m].name}: ${fmt(rowOf(m, state.target)[j], 4)}`);
    const [x, y] = localPoint(event, el);
    tip.show(x, y, lines);
  }
  tokenBox.addEventListener("mousemove", (event) => {
    const pos = event.target && event.target.getAttribute ? event.target.getAttribute("data-pos") : null;
    if (pos === null) { tip.hide(); return; }
    hover(Number(pos), event);
  });
  tokenBox.addEventListener("mouseleave", () => tip.hide());
  bars.addEventListener("mousemove", (event) => {
    const [x] = localPoint(event, bars);
    hover(Math.min(S - 1, Math.max(0, Math.floor((x * S) / W))), event);
  });
  bars.addEventListener("mouseleave", () => tip.hide());
  update();
}
