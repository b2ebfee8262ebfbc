// Small numeric helpers.

export function median(xs) {
  const v = xs.filter((x) => typeof x === "number" && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/** a ÷ b, only when both are positive (a ratio of a negative "added latency" means nothing). */
export function ratio(a, b) {
  return typeof a === "number" && typeof b === "number" && a > 0 && b > 0 ? a / b : null;
}

/** Rounds to a sensible number of significant digits for tables (keeps the JSON exact). */
export function fmt(x, { digits = 3, unit = "" } = {}) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x === "string") return x;
  const abs = Math.abs(x);
  if (Number.isInteger(x) && abs < 1000) return String(x) + unit;
  let s;
  if (abs >= 1000) s = Math.round(x).toLocaleString("en-US");
  else if (abs >= 100) s = x.toFixed(0);
  else if (abs >= 10) s = x.toFixed(digits >= 3 ? 1 : 0);
  else if (abs >= 1) s = x.toFixed(2);
  else s = x.toPrecision(Math.max(1, digits - 1));
  return s + unit;
}

export function fmtRatio(x) {
  return x === null || x === undefined ? "–" : `${x.toFixed(2)}×`;
}
