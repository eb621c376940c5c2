/* Two small SVG charts drawn by hand: stacked bars per minute and horizontal bars per category. */
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

/** Stacked columns: series = [{label, allowed, denied}], newest last. */
function drawMinuteBars(container, series) {
  const width = 560, height = 180, left = 34, bottom = 20, top = 8;
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "taps per minute" });
  const max = Math.max(1, ...series.map((s) => s.allowed + s.denied));
  const plotH = height - bottom - top;
  const step = (width - left - 4) / Math.max(1, series.length);
  const scale = (n) => (n / max) * plotH;
  for (const tick of [0, Math.ceil(max / 2), max]) {
    const y = height - bottom - scale(tick);
    svg.appendChild(svgEl("line", { x1: left, x2: width, y1: y, y2: y, class: "grid" }));
    svg.appendChild(svgEl("text", { x: left - 4, y: y + 4, class: "axis", "text-anchor": "end" }, String(tick)));
  }
  series.forEach((s, i) => {
    const x = left + i * step + 1;
    const w = Math.max(1, step - 2);
    const hOk = scale(s.allowed), hBad = scale(s.denied);
    const g = svgEl("g", {});
    g.appendChild(svgEl("title", {}, `${s.label}: ${s.allowed} allowed, ${s.denied} denied`));
    g.appendChild(svgEl("rect", { x, y: height - bottom - hOk, width: w, height: hOk, class: "bar-ok" }));
    g.appendChild(svgEl("rect", { x, y: height - bottom - hOk - hBad, width: w, height: hBad, class: "bar-bad" }));
    svg.appendChild(g);
    if (i % 5 === 0 || i === series.length - 1) {
      svg.appendChild(svgEl("text", { x: x + w / 2, y: height - 5, class: "axis", "text-anchor": "middle" }, s.label));
    }
  });
  container.replaceChildren(svg);
}

/** Horizontal bars: entries = [[label, count]]. */
function drawCategoryBars(container, entries) {
  if (!entries.length) {
    container.innerHTML = '<p class="muted">No denials today.</p>';
    return;
  }
  const rowH = 22, labelW = 190, width = 560;
  const height = entries.length * rowH + 4;
  const max = Math.max(1, ...entries.map((e) => e[1]));
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "denials by reason" });
  entries.forEach(([label, count], i) => {
    const y = i * rowH + 2;
    const w = ((width - labelW - 50) * count) / max;
    svg.appendChild(svgEl("text", { x: labelW - 6, y: y + 15, class: "axis", "text-anchor": "end" }, label));
    svg.appendChild(svgEl("rect", { x: labelW, y: y + 3, width: Math.max(1, w), height: rowH - 6, class: "bar-bad" }));
    svg.appendChild(svgEl("text", { x: labelW + w + 6, y: y + 15, class: "axis" }, String(count)));
  });
  container.replaceChildren(svg);
}
