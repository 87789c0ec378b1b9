// A tiny canvas line chart (vendored, no dependencies): LineChart(canvas, {title, yLabel}).setSeries([...]).
"use strict";
const PALETTE = ["#1a73e8", "#d93025", "#188038", "#e37400", "#9334e6", "#12a4af"];

// Tick labels with as many decimals as the axis span needs (1012.5, not 1.01e+3).
function fmtTick(v, span) {
  const digits = Math.max(0, Math.min(6, 2 - Math.floor(Math.log10(Math.abs(span) || 1))));
  return v.toFixed(digits);
}

class LineChart {
  constructor(canvas, options) {
    this.canvas = canvas;
    this.title = (options && options.title) || "";
    this.series = [];
  }
  // series: [{label, points: [[x, y], ...]}]
  setSeries(series) { this.series = series; this.draw(); }
  pointCount() { return this.series.reduce((n, s) => n + s.points.length, 0); }
  draw() {
    const c = this.canvas, ctx = c.getContext("2d"), w = c.width, h = c.height;
    const pad = { l: 56, r: 12, t: 24, b: 28 };
    ctx.clearRect(0, 0, w, h);
    ctx.fillStyle = "#1d232a"; ctx.font = "13px sans-serif"; ctx.fillText(this.title, pad.l, 16);
    const all = this.series.flatMap(s => s.points);
    if (!all.length) { ctx.fillStyle = "#888"; ctx.fillText("no points yet", w / 2 - 40, h / 2); return; }
    let [x0, x1] = [Math.min(...all.map(p => p[0])), Math.max(...all.map(p => p[0]))];
    let [y0, y1] = [Math.min(...all.map(p => p[1])), Math.max(...all.map(p => p[1]))];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    const X = x => pad.l + (x - x0) / (x1 - x0) * (w - pad.l - pad.r);
    const Y = y => h - pad.b - (y - y0) / (y1 - y0) * (h - pad.t - pad.b);
    ctx.strokeStyle = "#ccc"; ctx.fillStyle = "#555"; ctx.font = "11px sans-serif"; ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = y0 + (y1 - y0) * i / 4, yy = Y(y);
      ctx.beginPath(); ctx.moveTo(pad.l, yy); ctx.lineTo(w - pad.r, yy); ctx.stroke();
      ctx.fillText(fmtTick(y, y1 - y0), 4, yy + 4);
      const x = x0 + (x1 - x0) * i / 4;
      ctx.fillText(String(Math.round(x)), X(x) - 10, h - 8);
    }
    this.series.forEach((s, i) => {
      ctx.strokeStyle = PALETTE[i % PALETTE.length]; ctx.lineWidth = 1.6; ctx.beginPath();
      s.points.forEach((p, j) => (j ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1]))));
      ctx.stroke();
      ctx.fillStyle = ctx.strokeStyle; ctx.fillText(s.label, w - pad.r - 90, pad.t + 12 * (i + 1));
    });
  }
}
window.LineChart = LineChart;
