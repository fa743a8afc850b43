// rnnlens viewer: vanilla JS, no external resources (the page works offline).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = {
    meta: null, data: null, values: null, t0: 0, t1: 1, units: [], dragging: false,
    geom: null, unit: null, corr: null, thresholdSet: false, contrib: null, clickUnit: null,
  };

  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.className = isError ? "error" : "";
  }

  async function api(path, params) {
    const query = new URLSearchParams(params).toString();
    const response = await fetch(path + (query ? "?" + query : ""), { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || ("HTTP " + response.status));
    return body;
  }

  function where() {
    return { layer: $("layer").value, field: $("field").value, direction: $("direction").value };
  }

  function layerMeta() {
    return state.meta.layers.find((l) => l.name === $("layer").value);
  }

  function fillSelect(select, options) {
    const previous = select.value;
    select.replaceChildren(...options.map((o) => new Option(o, o)));
    if (options.includes(previous)) select.value = previous;
  }

  function onLayerChange() {
    const layer = layerMeta();
    fillSelect($("field"), layer.fields);
    fillSelect($("direction"), layer.directions);
  }

  // ------------------------------------------------------------------ heatmap

  function decode(b64) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new Float32Array(bytes.buffer);
  }

  const { colour, cellColour, drawColourBar } = window.RnnlensColours;  // colours.js

  function geometry(d) {
    const cw = Math.max(12, Math.min(28, Math.floor(900 / d.time)));
    const ch = Math.max(6, Math.min(16, Math.floor(420 / d.units)));
    const tokens = d.tokens || [];
    const longest = tokens.reduce((m, t) => Math.max(m, t.length), 1);
    const rotate = longest > 2;  // short tokens (characters) stand upright
    const top = !tokens.length ? 16 : rotate ? Math.min(90, 12 + 7 * longest) : 20;
    const strip = state.corr ? 22 : 0;  // the correlation strip right of the last step
    const bar = 64;  // the colour bar right of everything
    const height = top + Math.max(ch * d.units, 80) + 22;
    return { cw, ch, rotate, left: 46, top, strip, bar, width: 46 + cw * d.time + 10 + strip + bar, height };
  }

  function draw() {
    const d = state.data;
    if (!d) return;
    const g = (state.geom = geometry(d));
    const canvas = $("heatmap");
    canvas.width = g.width;
    canvas.height = g.height;
    // geometry for tests and tools: step t spans x in [left + t*cellWidth, left + (t+1)*cellWidth)
    canvas.dataset.left = g.left;
    canvas.dataset.top = g.top;
    canvas.dataset.cellWidth = g.cw;
    canvas.dataset.cellHeight = g.ch;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, g.width, g.height);
    for (let t = 0; t < d.time; t++) {
      for (let u = 0; u < d.units; u++) {
        ctx.fillStyle = cellColour(state.values[t * d.units + u], d);
        ctx.fillRect(g.left + t * g.cw, g.top + u * g.ch, g.cw, g.ch);
      }
      if (!d.mask[t]) {  // masked step: hatched
        ctx.save();
        ctx.beginPath();
        ctx.rect(g.left + t * g.cw, g.top, g.cw, d.units * g.ch);
        ctx.clip();
        ctx.strokeStyle = "#888";
        for (let y = -g.cw; y < d.units * g.ch; y += 6) {
          ctx.moveTo(g.left + t * g.cw, g.top + y + g.cw);
          ctx.lineTo(g.left + (t + 1) * g.cw, g.top + y);
        }
        ctx.stroke();
        ctx.restore();
      }
    }
    // selected time range and units
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 2;
    ctx.strokeRect(g.left + state.t0 * g.cw, g.top - 3, (state.t1 - state.t0) * g.cw, d.units * g.ch + 6);
    ctx.lineWidth = 1;
    ctx.strokeStyle = "#e0a000";
    for (const u of state.units) {
      if (u < d.units) ctx.strokeRect(g.left + 0.5, g.top + u * g.ch + 0.5, d.time * g.cw - 1, g.ch - 1);
    }
    // each unit's r with the loaded feature, a strip right of the last step
    if (state.corr && state.corr.r.length === d.units) {
      const x0 = g.left + d.time * g.cw + 8;
      for (let u = 0; u < d.units; u++) {
        ctx.fillStyle = colour(state.corr.r[u], corrScale());
        ctx.fillRect(x0, g.top + u * g.ch, 14, g.ch);
      }
      ctx.strokeStyle = "#999";
      ctx.strokeRect(x0 + 0.5, g.top + 0.5, 13, d.units * g.ch - 1);
      canvas.dataset.corrLeft = x0;
    }
    drawColourBar(ctx, g, d, $("heatmap"));
    // unit labels
    ctx.fillStyle = "#333";
    ctx.font = "10px sans-serif";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const every = Math.max(1, Math.ceil(10 / g.ch));
    for (let u = 0; u < d.units; u += every) ctx.fillText(String(u), g.left - 4, g.top + (u + 0.5) * g.ch);
    drawContribution(ctx, g, d, canvas);
    // time axis: tokens on top (rotated when long), step numbers below
    const tokens = d.tokens || [];
    ctx.textAlign = "left";
    for (let t = 0; t < Math.min(tokens.length, d.time); t++) {
      ctx.save();
      ctx.translate(g.left + (t + 0.5) * g.cw, g.top - 6);
      if (g.rotate) {
        ctx.rotate(-Math.PI / 2);
      } else {
        ctx.textAlign = "center";
        ctx.font = "12px ui-monospace, monospace";
      }
      ctx.fillText(tokens[t], 0, 0);
      ctx.restore();
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const tick = Math.max(1, Math.ceil(24 / g.cw));
    for (let t = 0; t < d.time; t += tick) ctx.fillText(String(t), g.left + (t + 0.5) * g.cw, g.top + d.units * g.ch + 5);
  }

  // what each step wrote into the clicked cell's state: the tokens' backgrounds (and a row of
  // ticks under the step numbers when there are no tokens), red positive, blue negative
  function drawContribution(ctx, g, d, canvas) {
    const c = state.contrib;
    if (!c || c.sample !== d.sample || c.layer !== d.layer || c.direction !== d.direction) {
      delete canvas.dataset.contribution;
      return;
    }
    const vmax = c.values.reduce((m, v) => Math.max(m, Math.abs(v)), 0) || 1;
    for (let t = 0; t < Math.min(c.values.length, d.time); t++) {
      ctx.fillStyle = colour(c.values[t], vmax);
      ctx.fillRect(g.left + t * g.cw, 0, g.cw, g.top - 3);
    }
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 2;
    ctx.strokeRect(g.left + c.t * g.cw + 1, g.top + c.unit * g.ch + 1, g.cw - 2, g.ch - 2);
    ctx.lineWidth = 1;
    canvas.dataset.contribution = `${c.field}[${c.unit}]@${c.t}`;
  }

  async function showContribution(t, unit) {
    const d = state.data;
    try {
      const r = await api("/api/contribution", { ...where(), sample: d.sample, t, unit });
      state.contrib = r;
      draw();
      const [a, b] = r.steps;
      let best = a;
      for (let s = a; s <= b; s++) if (Math.abs(r.values[s]) > Math.abs(r.values[best])) best = s;
      const tok = d.tokens && d.tokens[best] !== undefined ? ` (${JSON.stringify(d.tokens[best])})` : "";
      const what = r.norm ? `‖${r.layer}.${r.field}[${unit}]‖` : `${r.layer}.${r.field}[${unit}]`;
      setStatus(`${what} at step ${t} = ${r.total.toFixed(4)}: the sum of what steps ` +
        `${a}–${b} wrote (tokens coloured by it) and the initial state's ${r.initial.toFixed(4)}; ` +
        `largest write: step ${best}${tok}, ${r.values[best].toFixed(4)}`);
    } catch (e) {
      state.contrib = null;
      draw();
      setStatus(e.message, true);
    }
  }

  // a first threshold from the data: the 90th percentile of this sample's valid values, so that
  // a first selection finds the units most active there (until the user sets one)
  function defaultThreshold(d) {
    const valid = [];
    for (let t = 0; t < d.time; t++) {
      if (!d.mask[t]) continue;
      for (let u = 0; u < d.units; u++) {
        const v = state.values[t * d.units + u];
        if (Number.isFinite(v)) valid.push(v);
      }
    }
    if (!valid.length) return null;
    valid.sort((a, b) => a - b);
    const q = valid[Math.min(valid.length - 1, Math.floor(0.9 * valid.length))];
    return Math.round(q * 100) / 100;
  }

  let loads = 0;  // the newest loadSample call: an older one's late answer must not overwrite it

  async function loadSample() {
    const sample = Number($("sample").value);
    const mine = ++loads;
    try {
      const d = await api("/api/sample", { ...where(), sample });
      if (mine !== loads) return;
      state.data = d;
      state.values = decode(d.values);
      if (!state.thresholdSet) {
        const q = defaultThreshold(d);
        if (q !== null) $("threshold").value = q;
        $("threshold").dataset.fromData = "1";
        state.thresholdSet = true;  // kept while paging through samples
      }
      state.t0 = Math.min(state.t0, d.time - 1);
      state.t1 = Math.min(Math.max(state.t1, state.t0 + 1), d.time);
      syncRangeInputs();
      draw();
      setStatus(`sample ${d.sample}: ${d.time} steps × ${d.units} units, ${d.mask.filter(Boolean).length} valid`);
      await refreshSelection();
    } catch (e) {
      if (mine === loads) setStatus(e.message, true);
    }
  }

  // ------------------------------------------------------------------ selection

  function syncRangeInputs() {
    $("t0").value = state.t0;
    $("t1").value = state.t1;
  }

  function stepAt(event) {
    const g = state.geom;
    const rect = $("heatmap").getBoundingClientRect();
    const x = event.clientX - rect.left;
    const y = event.clientY - rect.top;
    const t = Math.floor((x - g.left) / g.cw);
    return { t: Math.max(0, Math.min(state.data.time - 1, t)), x, y };
  }

  function onMouseDown(event) {
    if (!state.data) return;
    const { t, x, y } = stepAt(event);
    const g = state.geom;
    if (x < g.left) {  // a unit's row label: show that unit over the data set
      const u = Math.floor((y - g.top) / g.ch);
      if (u >= 0 && u < state.data.units) showUnit(u);
      return;
    }
    const u = Math.floor((y - g.top) / g.ch);
    state.clickUnit = u >= 0 && u < state.data.units ? u : null;
    state.dragging = true;
    state.anchor = t;
    state.t0 = t;
    state.t1 = t + 1;
    draw();
  }

  function onMouseMove(event) {
    if (!state.dragging) return;
    const { t } = stepAt(event);
    state.t0 = Math.min(state.anchor, t);
    state.t1 = Math.max(state.anchor, t) + 1;
    draw();
  }

  function onMouseUp() {
    if (!state.dragging) return;
    state.dragging = false;
    syncRangeInputs();
    refreshSelection();
    // a click on one cell (no drag): where that unit's state at that step came from
    if (state.t1 - state.t0 === 1 && state.clickUnit !== null) showContribution(state.t0, state.clickUnit);
  }

  function onRangeInput() {
    const t0 = Number($("t0").value);
    const t1 = Number($("t1").value);
    if (!Number.isInteger(t0) || !Number.isInteger(t1)) return;
    state.t0 = t0;
    state.t1 = t1;
    draw();
    refreshSelection();
  }

  async function refreshSelection() {
    if (!state.data) return;
    try {
      const r = await api("/api/select", {
        ...where(), sample: state.data.sample, t0: state.t0, t1: state.t1, threshold: $("threshold").value,
      });
      state.units = r.units;
      showUnits(r.units);
      draw();
    } catch (e) {
      state.units = [];
      showUnits([]);
      setStatus(e.message, true);
    }
  }

  function showUnits(units) {
    const box = $("selected-units");
    if (!units.length) {
      box.textContent = "none";
      return;
    }
    box.replaceChildren(...units.map((u) => {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = String(u);
      chip.title = "unit " + u + " over the whole data set";
      chip.addEventListener("click", () => showUnit(u));
      return chip;
    }));
  }

  // ------------------------------------------------------------------ match

  async function runMatch() {
    if (!state.data) return;
    setStatus("matching…");
    try {
      const r = await api("/api/match", {
        ...where(), sample: state.data.sample, t0: state.t0, t1: state.t1,
        threshold: $("threshold").value, k: $("k").value,
      });
      state.units = r.units;
      showUnits(r.units);
      draw();
      renderMatches(r);
      setStatus(`match: ${r.matches.length} span(s) over ${r.searched} sequences in ${r.elapsed_ms} ms`);
    } catch (e) {
      setStatus(e.message, true);
    }
  }

  function renderMatches(r) {
    $("match-info").textContent = r.units.length
      ? `units ${r.units.join(", ")} · ${r.matches.length} shown`
      : "no unit is on throughout the range and off around it";
    $("results").replaceChildren(...r.matches.map((m) => {
      const li = document.createElement("li");
      li.className = "result";
      li.dataset.sample = m.sample;
      li.dataset.start = m.start;
      li.dataset.end = m.end;
      const head = document.createElement("span");
      head.textContent = `sample ${m.sample} [${m.start}, ${m.end}) `;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = `score ${m.score.toFixed(3)} `;
      li.append(head, score);
      if (m.snippet) {
        m.snippet.tokens.forEach((tok, i) => {
          const t = m.snippet.offset + i;
          const span = document.createElement("span");
          span.textContent = tok + (state.meta.chars ? "" : " ");
          if (t >= m.start && t < m.end) span.className = "on";
          li.append(span);
        });
      }
      li.addEventListener("click", () => jumpTo(m.sample, m.start, m.end, li));
      return li;
    }));
  }

  async function jumpTo(sample, start, end, li) {
    for (const el of document.querySelectorAll("#results li.current")) el.classList.remove("current");
    if (li) li.classList.add("current");
    $("sample").value = sample;
    state.t0 = start;
    state.t1 = end;
    await loadSample();
  }

  // ------------------------------------------------------------------ one unit, whole data set

  function axes(canvas) {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.font = "10px sans-serif";
    ctx.fillStyle = "#333";
    return ctx;
  }

  async function showUnit(u) {
    setStatus(`unit ${u}: reading the whole data set…`);
    try {
      const s = await api("/api/unit", { ...where(), unit: u, threshold: $("threshold").value });
      state.unit = s;
      $("unit-title").textContent = `${$("layer").value}.${$("field").value}[${u}]`;
      // histogram
      const hist = $("unit-hist");
      let ctx = axes(hist);
      const top = Math.max(1, ...s.hist_counts);
      const bw = (hist.width - 20) / s.hist_counts.length;
      s.hist_counts.forEach((c, i) => {
        const h = (hist.height - 24) * (c / top);
        ctx.fillStyle = s.hist_edges[i] >= Number($("threshold").value) ? "#e08a00" : "#7a8fb8";
        ctx.fillRect(10 + i * bw, hist.height - 14 - h, Math.max(1, bw - 1), h);
      });
      ctx.fillStyle = "#333";
      ctx.fillText(`histogram over ${s.n_steps} valid steps`, 10, 10);
      ctx.fillText(s.min.toFixed(2), 10, hist.height - 2);
      ctx.textAlign = "right";
      ctx.fillText(s.max.toFixed(2), hist.width - 10, hist.height - 2);
      // mean ± std by time step
      const plot = $("unit-time");
      ctx = axes(plot);
      const m = s.mean_by_time;
      const sd = s.std_by_time;
      const lo = Math.min(...m.map((v, i) => (v === null ? Infinity : v - sd[i])));
      const hi = Math.max(...m.map((v, i) => (v === null ? -Infinity : v + sd[i])));
      const y = (v) => plot.height - 14 - ((v - lo) / (hi - lo || 1)) * (plot.height - 28);
      const x = (t) => 10 + (t / Math.max(1, m.length - 1)) * (plot.width - 20);
      ctx.fillStyle = "#dbe4f5";
      ctx.beginPath();
      m.forEach((v, t) => { if (v !== null) ctx.lineTo(x(t), y(v + sd[t])); });
      for (let t = m.length - 1; t >= 0; t--) if (m[t] !== null) ctx.lineTo(x(t), y(m[t] - sd[t]));
      ctx.fill();
      ctx.strokeStyle = "#2b4c9b";
      ctx.beginPath();
      m.forEach((v, t) => { if (v !== null) ctx.lineTo(x(t), y(v)); });
      ctx.stroke();
      ctx.fillStyle = "#333";
      ctx.fillText("mean ± std by time step", 10, 10);
      const on = s.fraction_on === undefined || s.fraction_on === null ? "" :
        `, ${(100 * s.fraction_on).toFixed(1)}% of steps > θ`;
      $("unit-info").textContent = `mean ${s.mean.toFixed(3)}, std ${s.std.toFixed(3)}${on}`;
      setStatus(`unit ${u}: ${s.n_steps} steps (${s.compute_ms} ms)`);
    } catch (e) {
      setStatus(e.message, true);
    }
  }

  // ------------------------------------------------------------------ correlation with a feature

  async function loadCorrelation() {
    if (!state.meta.feature) return;
    try {
      state.corr = await api("/api/correlation", where());
    } catch (e) {
      state.corr = null;
      setStatus(e.message, true);
    }
    renderCorrelation();
    draw();
  }

  function corrScale() {  // the strongest |r| is the most saturated colour
    return Math.max(1e-12, ...state.corr.r.map(Math.abs));
  }

  function renderCorrelation() {
    const c = state.corr;
    $("corr-info").textContent = c ? `with ${c.feature} (${c.n_points} valid steps; colour to max |r| ${corrScale().toFixed(3)})` : "–";
    $("corr-units").replaceChildren(...(c ? c.top : []).map((u) => {
      const li = document.createElement("li");
      li.className = "corr-unit";
      li.dataset.unit = u;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour(c.r[u], corrScale());
      li.append(swatch, document.createTextNode(` unit ${u}: r = ${c.r[u].toFixed(3)}`));
      li.addEventListener("click", () => showUnit(u));
      return li;
    }));
  }

  async function onWhereChange() {
    state.thresholdSet = false;  // another layer or field: its own scale
    await loadSample();
    await loadCorrelation();
  }

  // ------------------------------------------------------------------ start

  async function init() {
    try {
      state.meta = await api("/api/meta", {});
    } catch (e) {
      setStatus(e.message, true);
      return;
    }
    const m = state.meta;
    $("store-info").textContent = `${m.store}: ${m.n_samples} sequences × ${m.max_time} steps (${m.backend})`;
    fillSelect($("layer"), m.layers.map((l) => l.name));
    onLayerChange();
    $("sample").max = m.n_samples - 1;
    $("layer").addEventListener("change", () => { onLayerChange(); onWhereChange(); });
    $("field").addEventListener("change", onWhereChange);
    $("direction").addEventListener("change", onWhereChange);
    $("corr-panel").hidden = !m.feature;
    $("sample").addEventListener("change", loadSample);
    $("prev").addEventListener("click", () => { $("sample").value = Math.max(0, Number($("sample").value) - 1); loadSample(); });
    $("next").addEventListener("click", () => { $("sample").value = Math.min(m.n_samples - 1, Number($("sample").value) + 1); loadSample(); });
    $("t0").addEventListener("change", onRangeInput);
    $("t1").addEventListener("change", onRangeInput);
    $("threshold").addEventListener("change", () => {
      state.thresholdSet = true;
      $("threshold").dataset.fromData = "0";
      refreshSelection();
    });
    $("match").addEventListener("click", runMatch);
    const canvas = $("heatmap");
    canvas.addEventListener("mousedown", onMouseDown);
    canvas.addEventListener("mousemove", onMouseMove);
    window.addEventListener("mouseup", onMouseUp);
    await loadSample();
    await loadCorrelation();
    document.body.dataset.ready = "1";
  }

  init();
})();
