// llmdbg training view: loss and gradient-norm curves of a watched run, with its events marked.
//
// Payload (see llmdbg/widgets/training.py): steps (N,) int32, series = [{name, values (N,)
// float32 with NaN where missing, log}], val = {steps, values} or null, events = [{step,
// module, kind, severity, message}]. Event markers are buttons above the curves (one per pixel
// column, so thousands of events stay clickable); a click shows the events of that step in the
// detail panel and draws its line on the canvas. Names are prefixed "trn" because this file is
// concatenated with common.js into one module scope.

const TRN_SEVERITY = {
  info: "#7f8c8d", low: "#2e86c1", medium: "#d68910", high: "#c0392b", critical: "#7b241c",
};
const TRN_BIN_PX = 8;
const TRN_RANK = { info: 0, low: 1, medium: 2, high: 3, critical: 4 };
const TRN_COLORS = ["#3b6ea5", "#8e44ad", "#16a085"];
const TRN_CSS =
    ".llmdbg-training{font:13px system-ui,sans-serif;color:#1d2430;max-width:780px}" +
    ".llmdbg-training .llmdbg-bar{display:flex;gap:12px;align-items:center;margin:4px 0}" +
    ".llmdbg-training .llmdbg-markers{position:relative;height:16px}" +
    ".llmdbg-training .llmdbg-event-marker{position:absolute;top:0;width:10px;height:14px;padding:0;" +
    "margin-left:-5px;border:1px solid #fff;border-radius:2px;cursor:pointer;opacity:.85}" +
    ".llmdbg-training .llmdbg-event-marker.llmdbg-selected{outline:2px solid #111;opacity:1}" +
    ".llmdbg-training canvas{border:1px solid #dde2ea;display:block}" +
    ".llmdbg-training .llmdbg-readout{color:#5b6472;min-height:1.4em}" +
    ".llmdbg-training .llmdbg-detail{border-left:3px solid #dde2ea;padding:4px 8px;margin-top:6px;" +
    "white-space:pre-wrap}" +
    ".llmdbg-training .llmdbg-event-advice{margin:2px 0 6px;padding-left:18px;white-space:normal}" +
    ".llmdbg-training .llmdbg-detail b{margin-right:6px}";

function trnEl(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function trnFmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : String(Number(v.toPrecision(4)));
}

function render({ model, el }) {
  const payload = parsePayload(model);
  const body = startView(el, "training", payload, TRN_CSS);
  el.classList.add("llmdbg-training");
  const n = payload.n || 0;
  const events = payload.events || [];
  if (!n && !events.length) {
    emptyMessage(body, payload.empty || "No data: the run has no recorded step or event yet.");
    return;
  }
  const steps = n ? decodeArray(payload.steps).data : new Int32Array(0);
  const series = (payload.series || []).map((s, k) => ({
    name: s.name, values: decodeArray(s.values).data, log: !!s.log, color: TRN_COLORS[k % TRN_COLORS.length],
  }));
  const bad = n && payload.nonfinite ? decodeArray(payload.nonfinite).data : null; // steps whose loss or norm was NaN/Inf
  const val = payload.val ? { steps: decodeArray(payload.val.steps).data, values: decodeArray(payload.val.values).data } : null;

  // -- DOM ------------------------------------------------------------------------------------
  const bar = trnEl("div", "llmdbg-bar");
  const logBox = trnEl("input", "llmdbg-log");
  logBox.type = "checkbox";
  logBox.checked = series.some((s) => s.log);
  const logLabel = trnEl("label", "", "");
  logLabel.append(logBox, document.createTextNode(" log scale"));
  const more = payload.events_left_out ? " (" + payload.events_left_out + " more not shown)" : "";
  const counts = trnEl("span", "llmdbg-counts", n.toLocaleString() + " steps, " + events.length + " events" + more);
  bar.append(logLabel, counts);
  body.appendChild(bar);
  const markers = trnEl("div", "llmdbg-markers");
  body.appendChild(markers);
  const cssW = 760, panelH = 170, cssH = panelH * Math.max(1, series.length) + 24;
  const dpr = Math.max(1, Math.min(2, window.devicePixelRatio || 1));
  const canvas = trnEl("canvas", "llmdbg-canvas");
  canvas.width = cssW * dpr;
  canvas.height = cssH * dpr;
  canvas.style.width = cssW + "px";
  canvas.style.height = cssH + "px";
  body.appendChild(canvas);
  const readout = trnEl("div", "llmdbg-readout", "hover the curves for values; click an event marker");
  body.appendChild(readout);
  const detail = trnEl("div", "llmdbg-detail", events.length ? "No event selected." : "No events in this run.");
  body.appendChild(detail);
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);

  // -- geometry -------------------------------------------------------------------------------
  const left = 58, right = 12;
  let s0 = Infinity, s1 = -Infinity;
  for (const s of steps) { if (s < s0) s0 = s; if (s > s1) s1 = s; }
  for (const e of events) { if (e.step < s0) s0 = e.step; if (e.step > s1) s1 = e.step; }
  if (val) for (const s of val.steps) { if (s < s0) s0 = s; if (s > s1) s1 = s; }
  if (s1 <= s0) { s0 -= 1; s1 += 1; }
  const xOf = (step) => left + ((step - s0) / (s1 - s0)) * (cssW - left - right);
  const stepOf = (px) => s0 + ((px - left) / (cssW - left - right)) * (s1 - s0);

  let selected = -1; // index into `groups`
  let hoverStep = null;

  // one marker per pixel column: the most severe event gives its colour
  const groups = [];
  {
    const byCol = new Map();
    events.forEach((e, k) => {
      const col = Math.round(xOf(e.step) / TRN_BIN_PX); // events closer than a marker's width share it
      if (!byCol.has(col)) byCol.set(col, { x: Math.round(xOf(e.step)), items: [] });
      byCol.get(col).items.push(k);
    });
    for (const g of [...byCol.values()].sort((a, b) => a.x - b.x)) {
      g.top = g.items.reduce((a, k) => (TRN_RANK[events[k].severity] > TRN_RANK[events[a].severity] ? k : a), g.items[0]);
      groups.push(g);
    }
  }
  const buttons = groups.map((g, gi) => {
    const b = trnEl("button", "llmdbg-event-marker");
    b.type = "button";
    b.style.left = g.x + 1 + "px"; // the canvas border
    b.style.background = TRN_SEVERITY[events[g.top].severity] || "#555";
    const e = events[g.top];
    b.setAttribute(
      "aria-label",
      "step " + e.step + ": " + e.kind + (g.items.length > 1 ? " and " + (g.items.length - 1) + " more" : "")
    );
    b.title = b.getAttribute("aria-label");
    b.addEventListener("click", () => select(gi));
    markers.appendChild(b);
    return b;
  });

  function select(gi) {
    selected = gi;
    buttons.forEach((b, k) => b.classList.toggle("llmdbg-selected", k === gi));
    detail.textContent = "";
    for (const k of groups[gi].items) {
      const e = events[k];
      const row = trnEl("div", "llmdbg-event");
      const head = trnEl("b", "", "step " + e.step + " ·");
      const kind = trnEl("span", "llmdbg-event-kind", e.kind + " (" + e.severity + ")");
      const mod = trnEl("div", "llmdbg-event-module", "module: " + (e.module ? tokenText(e.module) : "(whole model)"));
      const msg = trnEl("div", "llmdbg-event-message", e.message);
      row.style.borderColor = TRN_SEVERITY[e.severity] || "#555";
      row.append(head, kind, mod, msg);
      if (e.rank !== null && e.rank !== undefined) row.insertBefore(trnEl("div", "llmdbg-event-rank", "rank " + e.rank), msg);
      if (e.advice && e.advice.length) {
        const list = trnEl("ul", "llmdbg-event-advice");
        for (const a of e.advice) list.appendChild(trnEl("li", "", a));
        row.appendChild(list);
      }
      detail.appendChild(row);
    }
    el.setAttribute("data-selected-step", String(events[groups[gi].top].step));
    draw();
  }

  function draw() {
    ctx.clearRect(0, 0, cssW, cssH);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, cssW, cssH);
    const useLog = logBox.checked;
    series.forEach((s, k) => {
      const top = k * panelH + 8, bottom = top + panelH - 26;
      const vals = s.values;
      const extra = s.name === "loss" && val ? val.values : null;
      let lo = Infinity, hi = -Infinity;
      const scan = (v) => {
        if (!Number.isFinite(v) || (useLog && v <= 0)) return;
        const t = useLog ? Math.log10(v) : v;
        if (t < lo) lo = t;
        if (t > hi) hi = t;
      };
      vals.forEach(scan);
      if (extra) extra.forEach(scan);
      if (!(hi >= lo)) { lo = 0; hi = 1; }
      if (hi === lo) { lo -= 0.5; hi += 0.5; }
      const yOf = (v) => bottom - (((useLog ? Math.log10(v) : v) - lo) / (hi - lo)) * (bottom - top);
      // frame and axis labels
      ctx.strokeStyle = "#dde2ea";
      ctx.lineWidth = 1;
      ctx.strokeRect(left, top, cssW - left - right, bottom - top);
      ctx.fillStyle = "#5b6472";
      ctx.font = "11px system-ui,sans-serif";
      ctx.textAlign = "right";
      const tick = (t) => (useLog ? trnFmt(Math.pow(10, t)) : trnFmt(t));
      ctx.fillText(tick(hi), left - 4, top + 9);
      ctx.fillText(tick(lo), left - 4, bottom);
      ctx.save();
      ctx.translate(12, (top + bottom) / 2);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "center";
      ctx.fillText(s.name + (useLog ? " (log)" : ""), 0, 0);
      ctx.restore();
      // events: thin lines, the selected one thick
      groups.forEach((g, gi) => {
        ctx.strokeStyle = TRN_SEVERITY[events[g.top].severity] || "#555";
        ctx.globalAlpha = gi === selected ? 1 : 0.35;
        ctx.lineWidth = gi === selected ? 3 : 1;
        ctx.beginPath();
        ctx.moveTo(g.x, top);
        ctx.lineTo(g.x, bottom);
        ctx.stroke();
      });
      ctx.globalAlpha = 1;
      // the curve; non-finite steps as red crosses on the top edge (missing values leave a gap)
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      let pen = false;
      for (let i = 0; i < vals.length; i++) {
        const v = vals[i];
        if (!Number.isFinite(v) || (useLog && v <= 0)) {
          pen = false;
          if (bad && bad[i]) {
            const px = xOf(steps[i]);
            ctx.save();
            ctx.strokeStyle = "#c0392b";
            ctx.beginPath();
            ctx.moveTo(px - 3, top + 1); ctx.lineTo(px + 3, top + 7);
            ctx.moveTo(px + 3, top + 1); ctx.lineTo(px - 3, top + 7);
            ctx.stroke();
            ctx.restore();
          }
          continue;
        }
        const px = xOf(steps[i]), py = yOf(v);
        if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
        pen = true;
      }
      ctx.stroke();
      if (extra) {
        ctx.fillStyle = "#e67e22";
        for (let i = 0; i < extra.length; i++) {
          const v = extra[i];
          if (!Number.isFinite(v) || (useLog && v <= 0)) continue;
          ctx.beginPath();
          ctx.arc(xOf(val.steps[i]), yOf(v), 3, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
    });
    // step axis
    ctx.fillStyle = "#5b6472";
    ctx.textAlign = "left";
    ctx.fillText("step " + trnFmt(s0), left, cssH - 6);
    ctx.textAlign = "right";
    ctx.fillText(trnFmt(s1), cssW - right, cssH - 6);
    if (hoverStep !== null) {
      ctx.strokeStyle = "#111";
      ctx.globalAlpha = 0.5;
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(xOf(hoverStep), 0);
      ctx.lineTo(xOf(hoverStep), cssH - 18);
      ctx.stroke();
      ctx.globalAlpha = 1;
    }
  }

  // nearest recorded step to the cursor (steps are sorted)
  const nearest = (step) => {
    let a = 0, b = steps.length - 1;
    if (b < 0) return -1;
    while (b - a > 1) {
      const m = (a + b) >> 1;
      if (steps[m] < step) a = m; else b = m;
    }
    return Math.abs(steps[a] - step) <= Math.abs(steps[b] - step) ? a : b;
  };
  canvas.addEventListener("mousemove", (ev) => {
    const r = canvas.getBoundingClientRect();
    const i = nearest(stepOf(ev.clientX - r.left - canvas.clientLeft));
    if (i < 0) return;
    hoverStep = steps[i];
    readout.textContent =
      "step " + steps[i] + " · " + series.map((s) => s.name + " " + trnFmt(s.values[i])).join(" · ");
    draw();
  });
  canvas.addEventListener("mouseleave", () => { hoverStep = null; draw(); });
  logBox.addEventListener("change", draw);
  draw();
  if (!n) {
    const note = trnEl("div", "llmdbg-empty", "No steps recorded: only events to show.");
    note.setAttribute("role", "status");
    body.insertBefore(note, canvas);
  }
}
