// Tillwatch's pages: plain browser JavaScript over the JSON API (no build
// step). The token is kept in this browser's localStorage.
"use strict";

const TOKEN_KEY = "tillwatch.token";

function token() {
  let t = localStorage.getItem(TOKEN_KEY);
  if (!t) {
    t = (window.prompt("API token (tillwatch prints one when it starts):") || "").trim();
    if (t) localStorage.setItem(TOKEN_KEY, t);
  }
  return t;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = false;
}

async function api(path) {
  const res = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  const body = await res.json().catch(() => ({}));
  if (res.status === 401) {
    localStorage.removeItem(TOKEN_KEY);
  }
  if (!res.ok) {
    throw new Error(`${res.status}: ${body.error || res.statusText}`);
  }
  return body;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  }
  return e;
}

function when(ms) {
  if (ms == null) return "";
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z";
}

function deviceLink(id) {
  return el("a", { href: "/ui/device?id=" + encodeURIComponent(id) }, id);
}

function fill(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows);
}

function setupHeader() {
  document.getElementById("signout").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    token();
    location.reload();
  });
  document.getElementById("search").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const q = document.getElementById("q").value.trim();
    if (!q) return;
    try {
      const found = await api("/api/v1/search?q=" + encodeURIComponent(q));
      if (found.devices.length === 1) {
        location.href = "/ui/device?id=" + encodeURIComponent(found.devices[0].device_id);
        return;
      }
      if (document.body.dataset.page !== "fleet") {
        location.href = "/ui/?q=" + encodeURIComponent(q);
        return;
      }
      showResults(found.devices, q);
    } catch (e) {
      showError(e.message);
    }
  });
}

function showResults(devices, q) {
  const section = document.getElementById("results");
  section.hidden = false;
  section.querySelector("h2").textContent = `${devices.length} terminal(s) for "${q}"`;
  section.querySelector("tbody").replaceChildren(
    ...devices.map((d) =>
      el("tr", {}, el("td", {}, deviceLink(d.device_id)), el("td", {}, d.merchant_id),
        el("td", {}, d.store_id || ""), el("td", {}, d.model || ""), el("td", {}, d.serial || ""))));
}

async function fleetPage() {
  const q = new URLSearchParams(location.search).get("q");
  if (q) {
    document.getElementById("q").value = q;
    api("/api/v1/search?q=" + encodeURIComponent(q)).then((f) => showResults(f.devices, q), (e) => showError(e.message));
  }
  const [fleet, firing] = await Promise.all([
    api("/api/v1/fleet"),
    api("/api/v1/alerts?state=firing&limit=200"),
  ]);
  const t = fleet.totals;
  const card = (label, value, cls) => el("div", { class: cls || "" }, el("b", {}, value), label);
  document.getElementById("totals").replaceChildren(
    card("terminals", t.devices),
    card("online", t.online, "ok"),
    card("offline", t.offline, t.offline ? "bad" : ""),
    card("never online", t.unknown, "muted"),
    card(`battery below ${fleet.low_battery_below_pct}%`, t.low_battery, t.low_battery ? "warn" : ""),
    card("alerting", t.alerting, t.alerting ? "bad" : ""));
  const rank = { critical: 0, warning: 1, info: 2 };
  const alerts = firing.alerts
    .filter((a) => a.scope === "device")
    .sort((a, b) => (rank[a.severity] ?? 3) - (rank[b.severity] ?? 3) || (a.fired_at_ms || 0) - (b.fired_at_ms || 0));
  fill("alerting", alerts.map((a) =>
    el("tr", {}, el("td", {}, deviceLink(a.subject)), el("td", {}, a.rule),
      el("td", { class: a.severity === "critical" ? "bad" : "warn" }, a.severity),
      el("td", {}, when(a.fired_at_ms)), el("td", {}, (a.annotations || {}).summary || ""))));
  const row = (name, c, cls) =>
    el("tr", { class: cls }, el("td", {}, name), el("td", {}, c.devices), el("td", {}, c.online),
      el("td", { class: c.offline ? "bad" : "" }, c.offline), el("td", {}, c.unknown),
      el("td", { class: c.low_battery ? "warn" : "" }, c.low_battery),
      el("td", { class: c.alerting ? "bad" : "" }, c.alerting));
  const rows = [];
  for (const m of fleet.merchants) {
    rows.push(row(m.name ? `${m.name} (${m.merchant_id})` : m.merchant_id, m, "merchant"));
    for (const s of m.stores) rows.push(row(s.store_id || "(no store)", s, "store"));
  }
  fill("merchants", rows);
  try {
    const c = await api("/api/v1/fleet/cohorts");
    document.getElementById("cohorts-title").textContent = `Cohorts on ${c.day}`;
    const num = (v, digits) => (v == null ? "" : Number(v).toFixed(digits));
    fill("cohorts", c.cohorts.map((r) =>
      el("tr", {}, el("td", {}, r.firmware_version || "?"), el("td", {}, r.app_version || "?"),
        el("td", {}, r.model || "?"), el("td", {}, r.devices), el("td", {}, r.transactions),
        el("td", {}, num(r.crashes_per_1000_transactions, 2)), el("td", {}, num(r.txn_latency_p95_ms, 0)),
        el("td", {}, num(r.battery_drain_pct_per_hour, 2)))));
  } catch (e) {
    // No day rolled up yet: say so instead of a table.
    document.getElementById("cohorts-title").textContent = "Cohorts (no day rolled up yet)";
  }
}

const CHARTS = [
  ["battery_pct", "Battery (%)"],
  ["rssi_dbm", "Signal (dBm)"],
  ["host_latency_ms", "Payment host latency (ms)"],
  ["txn_latency_ms", "Transaction latency (ms)"],
  ["crashes", "Crashes"],
  ["offline_queue", "Offline payment queue"],
];

let plots = [];

async function drawCharts(id, hours) {
  for (const b of document.querySelectorAll(".ranges button")) {
    b.classList.toggle("active", Number(b.dataset.hours) === hours);
  }
  const to = Date.now();
  const from = to - hours * 3600 * 1000;
  const data = await api(`/api/v1/devices/${encodeURIComponent(id)}/series?from=${from}&to=${to}`);
  document.getElementById("resolution").textContent =
    data.resolution === "raw" ? "Every reading." : "Hourly rollups (latency: p95; battery: mean; signal: median).";
  plots.forEach((p) => p.destroy());
  plots = [];
  const box = document.getElementById("charts");
  box.replaceChildren();
  for (const [name, label] of CHARTS) {
    const points = data.series[name] || [];
    const wrap = el("div", { class: "chart", "data-series": name, "data-points": points.length }, el("h3", {}, label));
    box.append(wrap);
    if (!points.length) {
      wrap.append(el("p", { class: "muted" }, "No data in this range."));
      continue;
    }
    const xs = points.map((p) => p[0] / 1000);
    const ys = points.map((p) => p[1]);
    plots.push(new uPlot({
      width: 420, height: 180,
      series: [{}, { label, stroke: "#2f6feb", width: 1.5, points: { show: points.length < 80 } }],
      axes: [{}, { size: 50 }],
      legend: { show: false },
    }, [xs, ys], wrap));
  }
}

async function devicePage() {
  const id = new URLSearchParams(location.search).get("id");
  if (!id) {
    showError("No device given: open a device from the fleet page or search.");
    return;
  }
  const card = await api("/api/v1/devices/" + encodeURIComponent(id));
  const d = card.device;
  document.title = "Tillwatch · " + d.device_id;
  document.getElementById("title").textContent = d.device_id;
  const c = card.connectivity;
  const state = document.getElementById("state");
  if (c) {
    state.textContent = (c.online ? "Online" : `Offline (${c.state.replace("_", " ")})`) + " since " + when(c.since_ms);
    state.className = "state " + (c.online ? "ok" : "bad");
  } else {
    state.textContent = "No connectivity state yet";
    state.className = "state muted";
  }
  const facts = [
    ["Merchant", d.merchant_id], ["Store", d.store_id], ["Model", d.model], ["Serial", d.serial],
    ["Firmware", d.firmware_version], ["App", d.app_version], ["Time zone", d.time_zone],
    ["Last reading", when(d.last_seen_ms)], ["Reports every", c && c.cadence_ms ? `${Math.round(c.cadence_ms / 1000)} s` : ""],
  ];
  document.getElementById("facts").replaceChildren(
    ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v || "")]));
  fill("alerts", card.alerts.map((a) =>
    el("tr", {}, el("td", {}, a.rule), el("td", { class: a.state === "firing" ? "bad" : "" }, a.state),
      el("td", {}, a.severity), el("td", {}, when(a.fired_at_ms || a.pending_since_ms)),
      el("td", {}, (a.annotations || {}).summary || ""))));
  fill("signals", Object.entries(card.signals).map(([k, v]) =>
    el("tr", {}, el("td", {}, k), el("td", {}, v.value), el("td", {}, when(v.sampled_at_ms)))));
  fill("history", card.connectivity_history.map((h) =>
    el("tr", {}, el("td", {}, when(h.at_ms)), el("td", {}, h.from || ""), el("td", {}, h.to))));
  for (const b of document.querySelectorAll(".ranges button")) {
    b.addEventListener("click", () => drawCharts(id, Number(b.dataset.hours)).catch((e) => showError(e.message)));
  }
  await drawCharts(id, 24);
}

setupHeader();
const page = document.body.dataset.page === "device" ? devicePage : fleetPage;
page().catch((e) => showError(e.message));
