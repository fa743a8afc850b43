// rnnlens viewer: the heatmap's colours and its colour bar (loaded before viewer.js).
"use strict";

window.RnnlensColours = (function () {
  // diverging, centred on zero: red positive, blue negative, white at zero
  function colour(v, vmax) {
    if (!Number.isFinite(v)) return "#dddddd";
    const a = Math.max(-1, Math.min(1, v / (vmax || 1)));
    if (a >= 0) {
      const c = Math.round(255 * (1 - a));
      return `rgb(255,${c},${c})`;
    }
    const c = Math.round(255 * (1 + a));
    return `rgb(${c},${c},255)`;
  }

  // sequential 0..1 (a sigmoid gate): viridis, as the plots draw gates
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function sequential(v) {
    if (!Number.isFinite(v)) return "#dddddd";
    const x = Math.max(0, Math.min(1, v)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x)), f = x - i;
    const c = VIRIDIS[i].map((a, k) => Math.round(a + f * (VIRIDIS[i + 1][k] - a)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  function cellColour(v, d) {
    return d.scale === "unit" ? sequential(v) : colour(v, d.vmax);
  }

  // the colour scale: -vmax (blue) .. 0 (white) .. +vmax (red), labelled
  function drawColourBar(ctx, g, d, canvas) {
    const x0 = g.left + d.time * g.cw + 10 + g.strip;
    const h = Math.max(d.units * g.ch, 80);
    const unit = d.scale === "unit";
    const [lo, hi] = unit ? [0, 1] : [-d.vmax, d.vmax];
    const steps = 64;
    for (let i = 0; i < steps; i++) {
      const v = hi - ((hi - lo) * (i + 0.5)) / steps;  // top: the highest value
      ctx.fillStyle = cellColour(v, d);
      ctx.fillRect(x0, g.top + (i * h) / steps, 12, h / steps + 1);
    }
    ctx.strokeStyle = "#999";
    ctx.strokeRect(x0 + 0.5, g.top + 0.5, 11, h - 1);
    ctx.fillStyle = "#333";
    ctx.font = "10px sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    const label = (v) => (v < 0 ? "\u2212" : "") + (v === 0 || v === 1 ? String(Math.abs(v)) : Math.abs(v).toPrecision(2));
    ctx.fillText(label(hi), x0 + 15, g.top + 5);
    ctx.fillText(label((lo + hi) / 2), x0 + 15, g.top + h / 2);
    ctx.fillText(label(lo), x0 + 15, g.top + h - 5);
    canvas.dataset.colourBar = `${lo} ${hi}`;
    canvas.dataset.colourScale = d.scale;
    canvas.dataset.colourBarLeft = x0;
  }

  return { colour, sequential, cellColour, drawColourBar };
})();
