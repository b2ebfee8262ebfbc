// The live traffic page (GET /ui): one HTML document, its script and its style sheet, all served
// by the admin API itself (no build step, nothing from elsewhere). The Content-Security-Policy
// allows only these same-origin files and same-origin fetches: no inline script, no eval, and no
// framing, since a page that frames the admin UI could trick a click on its weight control into a
// same-origin POST that the CSRF checks would let through.

/** Sent with the page and its assets. */
export const PAGE_HEADERS: Readonly<Record<string, string>> = {
  "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-frame-options": "DENY",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cross-origin-resource-policy": "same-origin",
  "cache-control": "no-store",
};

export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meshproxy traffic</title>
<link rel="stylesheet" href="/ui/style.css">
<link rel="icon" href="/ui/icon.svg">
<script src="/ui/app.js" defer></script>
</head>
<body>
<header>
  <h1>meshproxy traffic</h1>
  <p id="meta">connecting to the admin API…</p>
</header>
<p id="problem" role="alert" hidden></p>
<p id="empty" hidden></p>
<main id="services"></main>
<footer>Requests per second, error rate (5xx responses and requests the proxy failed itself, over all requests) and p99 response time per cluster, from this sidecar's own counters over the last seconds; refreshed every second.</footer>
</body>
</html>
`;

/** Served so that the browser's icon request finds something (a 404 would show as a console error). */
export const PAGE_ICON = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="4" cy="8" r="3" fill="#2b6cb0"/><circle cx="12" cy="4" r="2.5" fill="#2f855a"/><circle cx="12" cy="12" r="2.5" fill="#c05621"/><path d="M4 8 12 4M4 8l8 4" stroke="#4a5568" stroke-width="1"/></svg>
`;

export const PAGE_CSS = `:root { font-family: system-ui, sans-serif; color: #1d232a; background: #f6f7f9; }
body { margin: 0 auto; max-width: 72rem; padding: 1rem 1.5rem; }
h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
h2 { font-size: 1.15rem; margin: 0 0 .5rem; }
#meta, footer { color: #5b6670; font-size: .9rem; }
#problem { background: #fde8e8; border: 1px solid #e0a0a0; padding: .5rem .75rem; }
#empty { background: #fff; border: 1px dashed #b8c0c8; padding: 1rem; }
section.service { background: #fff; border: 1px solid #dde2e7; border-radius: 6px; padding: 1rem; margin: 1rem 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: right; padding: .35rem .6rem; border-bottom: 1px solid #eef0f3; font-variant-numeric: tabular-nums; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
td.cluster { color: #5b6670; font-size: .8rem; word-break: break-all; }
td.bad { color: #b3261e; font-weight: 600; }
.weights { margin-top: .75rem; display: flex; flex-wrap: wrap; gap: .75rem; align-items: center; }
.weights input { width: 5rem; }
.weights .status { color: #5b6670; }
.weights .status.error { color: #b3261e; }
`;

// Plain browser JavaScript, no framework: every value from the proxy goes in through textContent
// or an input's value, never as HTML (cluster and subset names come from config entries).
export const PAGE_JS = `"use strict";
(function () {
  var POLL_MS = 1000;
  var $ = function (id) { return document.getElementById(id); };
  // Per service: the weight inputs the operator is editing are not overwritten by the next poll.
  var editing = {};

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fixed(v, digits) { return v === null || v === undefined ? "–" : v.toFixed(digits); }
  function percent(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(2) + " %"; }
  function label(c) { return c.subset !== "" ? c.subset : c.service; }

  function row(c) {
    var tr = el("tr", { "data-cluster": c.name, "data-subset": c.subset });
    tr.appendChild(el("td", { "data-field": "subset" }, label(c)));
    tr.appendChild(el("td", { "data-field": "name", "class": "cluster" }, c.name));
    tr.appendChild(el("td", { "data-field": "weight" }, c.weight_percent === null ? "failover" : fixed(c.weight_percent, 2) + " %"));
    tr.appendChild(el("td", { "data-field": "rps" }, fixed(c.requests_per_second, 2)));
    var err = el("td", { "data-field": "error_rate" }, percent(c.error_rate));
    if (c.error_rate) err.className = "bad";
    tr.appendChild(err);
    tr.appendChild(el("td", { "data-field": "p99" }, c.p99_ms === null ? "–" : fixed(c.p99_ms, 1) + " ms"));
    tr.appendChild(el("td", { "data-field": "requests" }, String(c.requests_total)));
    tr.appendChild(el("td", { "data-field": "errors" }, String(c.errors_total)));
    return tr;
  }

  function weightControl(svc, doc) {
    var legs = svc.clusters.filter(function (c) { return c.subset !== "" && c.service === svc.name && c.weight_percent !== null; });
    var box = el("div", { "class": "weights", "data-role": "weights" });
    if (legs.length === 0) return box;
    if (!doc.weights_writable) {
      box.appendChild(el("span", { "class": "status" }, "Weights are read-only here: " + (doc.weights_read_only_reason || "")));
      return box;
    }
    var inputs = [];
    legs.forEach(function (c) {
      var lab = el("label", {}, c.subset + " ");
      var input = el("input", { type: "number", min: "0", max: "100", step: "0.01", "data-subset": c.subset, "aria-label": "weight of " + c.subset + " in percent" });
      input.value = String(c.weight_percent);
      input.addEventListener("input", function () { editing[svc.name] = true; });
      lab.appendChild(input);
      lab.appendChild(document.createTextNode(" %"));
      box.appendChild(lab);
      inputs.push(input);
    });
    var button = el("button", { type: "button", "data-role": "apply" }, "Apply weights");
    var status = el("span", { "class": "status", "data-role": "status", role: "status" });
    button.addEventListener("click", function () {
      var parts = inputs.map(function (i) { return i.getAttribute("data-subset") + ":" + i.value.trim(); });
      button.disabled = true;
      status.className = "status";
      status.textContent = "writing…";
      // No body and no Content-Type: the admin API refuses form and text bodies (CSRF); the
      // browser adds Origin and Sec-Fetch-Site: same-origin, which it accepts.
      fetch("/splits/" + encodeURIComponent(svc.name) + "?weights=" + encodeURIComponent(parts.join(",")), { method: "POST", cache: "no-store" })
        .then(function (res) { return res.text().then(function (t) { return { ok: res.ok, status: res.status, text: t }; }); })
        .then(function (r) {
          var msg = r.text;
          try { msg = JSON.parse(r.text).message || msg; } catch (e) { /* a plain-text refusal */ }
          status.className = r.ok ? "status" : "status error";
          status.textContent = (r.ok ? "" : "HTTP " + r.status + ": ") + msg;
          if (r.ok) editing[svc.name] = false;
        }, function (e) {
          status.className = "status error";
          status.textContent = "the admin API did not answer: " + e;
        })
        .then(function () { button.disabled = false; });
    });
    box.appendChild(button);
    box.appendChild(status);
    return box;
  }

  function render(doc) {
    $("problem").hidden = true;
    $("meta").textContent = "sidecar " + (doc.service || "?") + " · control plane " + (doc.control_plane || "?") +
      " · snapshot " + (doc.snapshot_version === null ? "none" : doc.snapshot_version) + " · window " + doc.window_seconds.toFixed(1) + " s";
    var empty = $("empty");
    empty.hidden = doc.services.length > 0;
    empty.textContent = doc.empty_reason || "";
    var main = $("services");
    var keep = {};
    doc.services.forEach(function (svc) {
      keep[svc.name] = true;
      var id = "svc-" + svc.name;
      var sec = document.getElementById(id);
      if (!sec) {
        sec = el("section", { id: id, "class": "service", "data-service": svc.name });
        sec.appendChild(el("h2", {}, svc.name));
        var table = el("table", {});
        var head = el("tr", {});
        ["subset", "cluster", "weight", "req/s", "error rate", "p99", "requests (total)", "failed (total)"].forEach(function (h) { head.appendChild(el("th", {}, h)); });
        table.appendChild(el("thead", {})).appendChild(head);
        table.appendChild(el("tbody", {}));
        sec.appendChild(table);
        sec.appendChild(el("div", { "data-role": "weights" }));
        main.appendChild(sec);
      }
      var body = sec.querySelector("tbody");
      body.replaceChildren.apply(body, svc.clusters.map(row));
      if (!editing[svc.name]) {
        var old = sec.querySelector("[data-role=weights]");
        var status = old.querySelector("[data-role=status]");
        var fresh = weightControl(svc, doc);
        var freshStatus = fresh.querySelector("[data-role=status]");
        if (status && freshStatus) { freshStatus.textContent = status.textContent; freshStatus.className = status.className; }
        sec.replaceChild(fresh, old);
      }
    });
    Array.prototype.slice.call(main.children).forEach(function (sec) {
      if (!keep[sec.getAttribute("data-service")]) main.removeChild(sec);
    });
    document.body.setAttribute("data-snapshot", String(doc.snapshot_version));
  }

  function poll() {
    fetch("/traffic.json", { cache: "no-store" })
      .then(function (res) {
        if (!res.ok) throw new Error("HTTP " + res.status);
        return res.json();
      })
      .then(render, function (e) {
        var p = $("problem");
        p.hidden = false;
        p.textContent = "Cannot read /traffic.json from the sidecar's admin API (" + e.message + "); retrying every second.";
      })
      .then(function () { setTimeout(poll, POLL_MS); });
  }
  poll();
})();
`;
