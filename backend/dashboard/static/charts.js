/* Two small charts drawn by hand: stacked SVG bars per minute, and HTML bars per denial reason. */
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

/** Stacked columns: series = [{label, allowed, denied}], newest last. Drawn at the container's own width
    (one unit a pixel), so the axis stays legible on a phone; fewer time labels when they would crowd. */
function drawMinuteBars(container, series) {
  const width = Math.max(240, Math.round(container.clientWidth) || 560), height = 180, left = 34, bottom = 20, top = 8;
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
  const every = 5 * Math.max(1, Math.ceil(44 / (5 * step))); // a label at least ~44 px from the next
  series.forEach((s, i) => {
    const x = left + i * step + 1;
    const w = Math.max(1, step - 2);
    const hOk = scale(s.allowed), hBad = scale(s.denied);
    const g = svgEl("g", {});
    g.appendChild(svgEl("title", {}, `${s.label}: ${s.allowed} allowed, ${s.denied} denied`));
    g.appendChild(svgEl("rect", { x, y: height - bottom - hOk, width: w, height: hOk, class: "bar-ok" }));
    g.appendChild(svgEl("rect", { x, y: height - bottom - hOk - hBad, width: w, height: hBad, class: "bar-bad" }));
    svg.appendChild(g);
    const last = i === series.length - 1;
    if ((i % every === 0 && (series.length - i) * step > 48) || last) { // the newest ends at the edge
      const at = last ? { x: width, "text-anchor": "end" } : { x: x + w / 2, "text-anchor": "middle" };
      svg.appendChild(svgEl("text", { ...at, y: height - 5, class: "axis" }, s.label));
    }
  });
  container.replaceChildren(svg);
}

/** Denials by reason: one row per reason, its words in both languages beside a bar (HTML, so the words
    wrap on a phone). entries = [{reason, name, en, zh, taps}], most taps first. */
function drawReasonBars(container, entries) {
  if (!entries.length) {
    container.innerHTML = '<p class="muted">No denials today.</p>';
    return;
  }
  const max = Math.max(1, ...entries.map((e) => e.taps));
  container.innerHTML = `<div class="hbars" role="img" aria-label="denials by reason">${entries.map((e) => `
    <div class="hbar" data-reason="${esc(e.name)}" title="${esc(e.name)}: ${e.taps}">
      <span class="label">${reasonHtml(e.reason, e.en, e.zh) || esc(e.name)}</span>
      <span class="track"><span class="fill" style="width: ${((85 * e.taps) / max).toFixed(1)}%"></span><span class="count">${e.taps}</span></span>
    </div>`).join("")}</div>`;
}
