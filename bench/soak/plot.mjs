// A hand-built SVG of the sidecars' resources over time: one panel per metric, one polyline per
// sidecar process (a restarted sidecar's new process starts a new line in the same colour), and
// the chaos events as numbered vertical marks. No dependency: it is just text.

const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39"];
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

export function renderPlot({ samples, events, t0, panels, title }) {
  const W = 1000;
  const H = 190;
  const L = 60;
  const R = 150;
  const top = 48;
  const names = [...new Set(samples.map((s) => s.name))].sort();
  const colour = new Map(names.map((n, i) => [n, COLOURS[i % COLOURS.length]]));
  const tMax = Math.max(1, ...samples.map((s) => (s.t - t0) / 1000));
  const parts = [];
  let y0 = top;
  for (const p of panels) {
    const vals = samples.map((s) => s[p.key]).filter((v) => typeof v === "number");
    const vMax = Math.max(1e-9, ...vals) * 1.05;
    const x = (t) => L + ((t - t0) / 1000 / tMax) * (W - L - R);
    const y = (v) => y0 + H - (v / vMax) * H;
    parts.push(`<text x="${L}" y="${y0 - 6}" font-size="13" font-weight="bold">${esc(p.label)}</text>`);
    parts.push(`<rect x="${L}" y="${y0}" width="${W - L - R}" height="${H}" fill="none" stroke="#999"/>`);
    for (let i = 0; i <= 4; i++) {
      const v = (vMax * i) / 4;
      parts.push(`<text x="${L - 4}" y="${y(v) + 4}" font-size="10" text-anchor="end">${v >= 100 ? v.toFixed(0) : v.toPrecision(2)}</text>`);
    }
    for (const e of events) {
      const ex = x(e.t0);
      parts.push(`<line x1="${ex.toFixed(1)}" y1="${y0}" x2="${ex.toFixed(1)}" y2="${y0 + H}" stroke="#ccc" stroke-dasharray="2,2"/>`);
      parts.push(`<text x="${(ex + 1).toFixed(1)}" y="${y0 + 9}" font-size="8" fill="#888">${e.n}</text>`);
    }
    const series = new Map();
    for (const s of samples) {
      if (typeof s[p.key] !== "number") continue;
      const k = `${s.name}\u0000${s.pid}`;
      if (!series.has(k)) series.set(k, { name: s.name, pts: [] });
      series.get(k).pts.push(`${x(s.t).toFixed(1)},${y(s[p.key]).toFixed(1)}`);
    }
    for (const { name, pts } of series.values()) {
      parts.push(`<polyline fill="none" stroke="${colour.get(name)}" stroke-width="1.2" points="${pts.join(" ")}"/>`);
    }
    y0 += H + 40;
  }
  // x axis labels under the last panel, legend on the right
  const xAxisY = y0 - 40 + 14;
  for (let i = 0; i <= 6; i++) {
    const t = (tMax * i) / 6;
    parts.push(`<text x="${(L + (t / tMax) * (W - L - R)).toFixed(1)}" y="${xAxisY}" font-size="10" text-anchor="middle">${t.toFixed(0)} s</text>`);
  }
  names.forEach((n, i) => {
    parts.push(`<rect x="${W - R + 12}" y="${top + i * 16}" width="10" height="10" fill="${colour.get(n)}"/>`);
    parts.push(`<text x="${W - R + 26}" y="${top + i * 16 + 9}" font-size="11">${esc(n)}</text>`);
  });
  const height = y0 + 10;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}" viewBox="0 0 ${W} ${height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="${L}" y="16" font-size="14">${esc(title)}</text>
${parts.join("\n")}
</svg>
`;
}
