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

function clearError() {
  document.getElementById("error").hidden = true;
}

async function api(path, method, body) {
  const init = { method: method || "GET", headers: { Authorization: "Bearer " + token() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const answer = await res.json().catch(() => ({}));
  if (res.status === 401) {
    localStorage.removeItem(TOKEN_KEY);
  }
  if (res.status === 403) {
    throw new Error("403: this needs an operator token (use Change token)");
  }
  if (!res.ok) {
    throw new Error(`${res.status}: ${answer.error || res.statusText}`);
  }
  return answer;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
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

function span(ms) {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
  const m = Math.round(ms / 60000);
  if (m < 120) return `${m} min`;
  if (m < 2880) return `${Math.floor(m / 60)} h ${m % 60} min`;
  return `${Math.floor(m / 1440)} days`;
}

function link(path, params, text) {
  return el("a", { href: path + "?" + new URLSearchParams(params) }, text);
}

function deviceLink(id) {
  return link("/ui/device", { id }, id);
}

function merchantLink(merchant, name) {
  return link("/ui/merchant", { id: merchant }, name || merchant);
}

function storeLink(merchant, store) {
  if (!store) return "(no store)";
  return link("/ui/merchant", { id: merchant, store }, store);
}

function fill(tableId, rows, empty) {
  const table = document.getElementById(tableId);
  const body = table.querySelector("tbody");
  if (!rows.length && empty) {
    const cols = table.querySelectorAll("thead th").length || 1;
    rows = [el("tr", { class: "empty" }, el("td", { colspan: cols, class: "muted" }, empty))];
  }
  body.replaceChildren(...rows);
}

const card = (label, value, cls) => el("div", { class: cls || "" }, el("b", {}, value), label);

function countCards(t, lowPct) {
  return [
    card("terminals", t.devices),
    card("online", t.online, "ok"),
    card("offline", t.offline, t.offline ? "bad" : ""),
    card("never online", t.unknown, "muted"),
    card(`battery below ${lowPct}%`, t.low_battery, t.low_battery ? "warn" : ""),
    card("alerting", t.alerting, t.alerting ? "bad" : ""),
  ];
}

function gradeClass(grade) {
  return grade === "healthy" ? "ok" : grade === "degraded" ? "warn" : "bad";
}

function stateText(d) {
  if (d.online === true) return "online";
  if (d.online === false) return "offline (" + (d.state || "").replace("_", " ") + ")";
  return "never online";
}

// A terminal in a list: id, where, state, score and the main reason.
function deviceRow(d, withMerchant) {
  const cells = [el("td", {}, deviceLink(d.device_id))];
  if (withMerchant) cells.push(el("td", {}, merchantLink(d.merchant_id)));
  cells.push(
    el("td", {}, storeLink(d.merchant_id, d.store_id)),
    el("td", { class: d.online === false ? "bad" : d.online ? "ok" : "muted" }, stateText(d)),
    el("td", { class: "score " + gradeClass(d.health_grade) }, d.health_score),
    el("td", {}, d.main_reason || ""),
  );
  return el("tr", {}, ...cells);
}

function alertRow(a, withSubject) {
  const cells = [];
  if (withSubject) cells.push(el("td", {}, a.scope === "device" ? deviceLink(a.subject) : a.subject));
  cells.push(
    el("td", {}, a.rule),
    el("td", { class: a.state === "firing" ? "bad" : a.state === "pending" ? "warn" : "muted" },
      a.state + (a.silenced_by ? " (silenced)" : "")),
    el("td", { class: a.severity === "critical" ? "bad" : "warn" }, a.severity),
    el("td", {}, when(a.fired_at_ms || a.pending_since_ms)),
    el("td", {}, (a.annotations || {}).summary || ""),
  );
  return el("tr", { "data-state": a.state }, ...cells);
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
      el("tr", {}, el("td", {}, deviceLink(d.device_id)), el("td", {}, merchantLink(d.merchant_id)),
        el("td", {}, storeLink(d.merchant_id, d.store_id)), el("td", {}, d.model || ""), el("td", {}, d.serial || ""))));
}

// ---- Fleet ----------------------------------------------------------------

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
  document.getElementById("totals").replaceChildren(...countCards(fleet.totals, fleet.low_battery_below_pct));
  document.getElementById("as-of").textContent = "As of " + when(fleet.as_of_ms) + ".";
  fill("worst", fleet.worst.map((d) => deviceRow(d, true)), "Every terminal scores 100.");
  const rank = { critical: 0, warning: 1, info: 2 };
  const alerts = firing.alerts
    .filter((a) => a.scope === "device")
    .sort((a, b) => (rank[a.severity] ?? 3) - (rank[b.severity] ?? 3) || (a.fired_at_ms || 0) - (b.fired_at_ms || 0));
  fill("alerting", alerts.map((a) =>
    el("tr", {}, el("td", {}, deviceLink(a.subject)), el("td", {}, a.rule),
      el("td", { class: a.severity === "critical" ? "bad" : "warn" }, a.severity),
      el("td", {}, when(a.fired_at_ms)), el("td", {}, (a.annotations || {}).summary || ""))),
  "No terminal is alerting.");
  const row = (name, c, cls) =>
    el("tr", { class: cls }, el("td", {}, name), el("td", {}, c.devices), el("td", {}, c.online),
      el("td", { class: c.offline ? "bad" : "" }, c.offline), el("td", {}, c.unknown),
      el("td", { class: c.low_battery ? "warn" : "" }, c.low_battery),
      el("td", { class: c.alerting ? "bad" : "" }, c.alerting));
  const rows = [];
  for (const m of fleet.merchants) {
    rows.push(row(merchantLink(m.merchant_id, m.name ? `${m.name} (${m.merchant_id})` : m.merchant_id), m, "merchant"));
    for (const s of m.stores) rows.push(row(storeLink(m.merchant_id, s.store_id), s, "store"));
  }
  fill("merchants", rows, "No terminal has reported yet.");
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

// ---- Merchant and store -----------------------------------------------------

async function merchantPage() {
  const params = new URLSearchParams(location.search);
  const id = params.get("id");
  const store = params.get("store");
  if (!id) {
    showError("No merchant given: open one from the fleet page.");
    return;
  }
  const query = store ? "?store=" + encodeURIComponent(store) : "";
  const m = await api("/api/v1/merchants/" + encodeURIComponent(id) + query);
  const name = m.name ? `${m.name} (${m.merchant_id})` : m.merchant_id;
  document.title = "Tillwatch · " + (store ? `${store} of ${name}` : name);
  const title = document.getElementById("title");
  title.replaceChildren(store ? el("span", {}, `Store ${store} · `, merchantLink(m.merchant_id, name)) : name);
  document.getElementById("totals").replaceChildren(...countCards(m.totals, m.low_battery_below_pct));
  fill("stores", m.stores.map((s) =>
    el("tr", {}, el("td", {}, storeLink(m.merchant_id, s.store_id)), el("td", {}, s.name || ""),
      el("td", {}, s.time_zone || ""), el("td", {}, s.hours || ""), el("td", {}, s.devices), el("td", {}, s.online),
      el("td", { class: s.offline ? "bad" : "" }, s.offline),
      el("td", { class: s.alerting ? "bad" : "" }, s.alerting))), "No stores.");
  fill("devices", m.devices.map((d) => deviceRow(d, false)), "No terminals.");
  fill("alerts", m.alerts.map((a) => alertRow(a, true)), "No merchant or store alerts.");
  // Who served here on each rolled-up day: a terminal moved mid-day shows
  // under each store with its hours there.
  const history = await api("/api/v1/merchants/" + encodeURIComponent(id) + "/days" + query);
  const rows = [];
  for (const day of history.days) {
    for (const t of day.terminals) {
      rows.push(el("tr", {}, el("td", {}, day.day), el("td", {}, storeLink(m.merchant_id, t.store_id)),
        el("td", {}, deviceLink(t.device_id)), el("td", {}, t.hours_reported), el("td", {}, t.transactions ?? ""),
        el("td", { class: t.crashes + t.hangs > 0 ? "warn" : "" }, (t.crashes ?? 0) + (t.hangs ?? 0)),
        el("td", {}, t.battery_min_pct ?? ""), el("td", {}, t.minutes_online == null ? "" : Math.round(t.minutes_online))));
    }
  }
  fill("days", rows, history.days.length
    ? "No terminal reported here on the rolled-up days."
    : "No day has been rolled up yet (a day is rolled up once it has ended in every store's time zone).");
}

// ---- Device -----------------------------------------------------------------

const CHARTS = [
  ["battery_level_pct", "Battery (%)"],
  ["rssi_dbm", "Signal (dBm)"],
  ["payment_host_latency_ms", "Payment host latency (ms)"],
  ["transaction_latency_ms", "Transaction latency (ms)"],
  ["crashes", "Crashes"],
  ["offline_queue_len", "Offline payment queue"],
  ["completeness_pct", "Telemetry completeness (%, hourly)"],
];

let plots = [];

function chart(box, name, label, xs, ys, options) {
  const wrap = el("div", { class: "chart", "data-series": name, "data-points": xs.length }, el("h3", {}, label));
  box.append(wrap);
  if (!xs.length) {
    wrap.append(el("p", { class: "muted" }, "No data in this range."));
    return;
  }
  const width = Math.max(300, Math.min(560, wrap.clientWidth - 16));
  plots.push(new uPlot({
    width, height: 170,
    series: [{}, Object.assign({ label, stroke: "#2f6feb", width: 1.5, points: { show: xs.length < 80 } }, options || {})],
    axes: [{}, { size: 50 }],
    legend: { show: false },
    scales: options && options.range ? { y: { range: options.range } } : {},
  }, [xs, ys], wrap));
}

// Online (1) or offline (0) over the range, as steps.
function connectivitySteps(changes, fromMs, toMs) {
  const xs = [];
  const ys = [];
  for (const c of changes) {
    xs.push(Math.max(c.at_ms, fromMs) / 1000);
    ys.push(c.state === "online" ? 1 : 0);
  }
  if (xs.length) {
    xs.push(Math.min(toMs, Date.now()) / 1000);
    ys.push(ys[ys.length - 1]);
  }
  return [xs, ys];
}

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
  const [cx, cy] = connectivitySteps(data.connectivity, data.from_ms, data.to_ms);
  chart(box, "connectivity", "Connectivity (1 online, 0 offline)", cx, cy, {
    paths: uPlot.paths.stepped({ align: 1 }), fill: "rgba(47,111,235,0.12)", range: [0, 1.05], points: { show: false },
  });
  for (const [name, label] of CHARTS) {
    const points = data.series[name] || [];
    if (name === "completeness_pct" && data.resolution === "raw") continue;
    chart(box, name, label, points.map((p) => p[0] / 1000), points.map((p) => p[1]));
  }
  const c = data.completeness;
  const summary = document.getElementById("completeness");
  summary.textContent = c
    ? `${(100 * c.ratio).toFixed(1)}% of expected telemetry arrived in this range (${Math.round(c.received)} of ${c.expected} reports; it reports every ${Math.round(data.cadence_ms / 1000)} s).`
    : "Completeness unknown: the terminal's reporting interval is not learned yet.";
  summary.className = c && c.ratio < 0.9 ? "warn" : "";
  fill("gaps", data.gaps.map((g) =>
    el("tr", {}, el("td", {}, when(g.from_ms)), el("td", {}, when(g.to_ms)), el("td", {}, span(g.to_ms - g.from_ms)))),
  "No gaps in this range.");
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
  if (c && c.state) {
    state.textContent = (c.online ? "Online" : `Offline (${c.state.replace("_", " ")})`) + " since " + when(c.since_ms);
    state.className = "state " + (c.online ? "ok" : "bad");
  } else {
    state.textContent = "No connectivity state yet";
    state.className = "state muted";
  }
  const h = card.health;
  const score = document.getElementById("score");
  score.replaceChildren(el("b", {}, h.score), h.grade);
  score.className = "score-badge " + gradeClass(h.grade);
  document.getElementById("reasons").replaceChildren(
    ...(h.reasons.length
      ? h.reasons.map((r) => el("li", { "data-code": r.code }, el("span", { class: "points" }, "−" + r.points), r.detail))
      : [el("li", { class: "muted" }, "Nothing wrong: full marks.")]));
  const facts = [
    ["Merchant", merchantLink(d.merchant_id)], ["Store", storeLink(d.merchant_id, d.store_id)], ["Model", d.model],
    ["Serial", d.serial], ["Firmware", d.firmware_version], ["App", d.app_version], ["Time zone", d.time_zone],
    ["Last reading", when(d.last_seen_ms)], ["Reports every", c && c.cadence_ms ? `${Math.round(c.cadence_ms / 1000)} s` : ""],
  ];
  document.getElementById("facts").replaceChildren(
    ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v || "")]));
  fill("alerts", card.alerts.map((a) => alertRow(a, false)), "No alerts.");
  const queue = card.signals.offline_queue_len;
  const age = card.signals.offline_queue_oldest_age_s;
  document.getElementById("queue").textContent = queue
    ? `${queue.value} payment(s) waiting to reach the host` + (age && age.value ? `, the oldest for ${span(age.value * 1000)}` : "") + ` (at ${when(queue.sampled_at_ms)}).`
    : "Empty: every payment has reached the host.";
  fill("signals", Object.entries(card.signals).map(([k, v]) =>
    el("tr", {}, el("td", {}, k), el("td", {}, v.value), el("td", {}, when(v.sampled_at_ms)))));
  fill("history", card.connectivity_history.map((x) =>
    el("tr", {}, el("td", {}, when(x.at_ms)), el("td", {}, x.from || ""), el("td", {}, x.to))), "No changes yet.");
  for (const b of document.querySelectorAll(".ranges button")) {
    b.addEventListener("click", () => drawCharts(id, Number(b.dataset.hours)).catch((e) => showError(e.message)));
  }
  await drawCharts(id, 24);
}

// ---- Alerts -------------------------------------------------------------------

async function loadAlerts() {
  const tab = document.querySelector(".tabs button.active").dataset.state;
  const [list, silences] = await Promise.all([
    api("/api/v1/alerts?limit=500&state=" + (tab === "silenced" ? "open" : tab)),
    api("/api/v1/silences"),
  ]);
  let alerts = list.alerts;
  if (tab === "silenced") alerts = alerts.filter((a) => a.silenced_by);
  fill("alert-list", alerts.map((a) => alertRow(a, true)), `No ${tab} alerts.`);
  fill("silences", silences.silences.map((s) =>
    el("tr", { "data-silence": s.silence_id }, el("td", {}, s.matchers.join(", ")), el("td", {}, when(s.starts_at_ms)),
      el("td", {}, when(s.ends_at_ms)), el("td", {}, s.created_by), el("td", {}, s.comment),
      el("td", {}, el("button", {
        class: "end", onclick: () => api("/api/v1/silences/" + encodeURIComponent(s.silence_id), "DELETE")
          .then(loadAlerts, (e) => showError(e.message)),
      }, "End")))), "No active silences.");
}

async function alertsPage() {
  for (const b of document.querySelectorAll(".tabs button")) {
    b.addEventListener("click", () => {
      for (const o of document.querySelectorAll(".tabs button")) o.classList.toggle("active", o === b);
      loadAlerts().catch((e) => showError(e.message));
    });
  }
  document.getElementById("new-silence").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = ev.target;
    const matchers = form.matchers.value.split(",").map((m) => m.trim()).filter(Boolean);
    try {
      clearError();
      await api("/api/v1/silences", "POST", { matchers, for: form.duration.value.trim(), comment: form.comment.value });
      form.reset();
      await loadAlerts();
    } catch (e) {
      showError(e.message);
    }
  });
  await loadAlerts();
}

// ---- Jobs ---------------------------------------------------------------------

// Jobs placed in columns by depth: sources first, each job right of what it reads.
// With `owner`, the other teams' jobs are drawn faint.
function lineageGraph(jobs, owner) {
  const depth = {};
  const byName = Object.fromEntries(jobs.map((j) => [j.name, j]));
  const visit = (name, seen) => {
    if (depth[name] != null) return depth[name];
    if (seen.has(name) || !byName[name]) return 0;
    seen.add(name);
    const ups = byName[name].inputs.filter((i) => i.job).map((i) => visit(i.job, seen) + 1);
    depth[name] = Math.max(1, ...ups);
    return depth[name];
  };
  jobs.forEach((j) => visit(j.name, new Set()));
  const sources = [...new Set(jobs.flatMap((j) => j.inputs.filter((i) => i.source).map((i) => i.source)))];
  const columns = [sources.map((s) => el("div", { class: "node source" }, s))];
  for (const j of jobs) {
    const d = depth[j.name];
    while (columns.length <= d) columns.push([]);
    const reads = j.inputs.map((i) => i.job || i.source).join(", ");
    const p = j.partitions;
    const faint = owner && j.owner !== owner ? " other" : "";
    columns[d].push(el("div", { class: "node" + (p.failed ? " failed" : "") + faint, "data-job": j.name, title: j.description || "" },
      el("b", {}, j.name), el("small", {}, `${j.grain} · reads ${reads || "nothing"}`),
      el("small", {}, `${p.succeeded} ok · ${p.failed} failed · ${p.stale} stale`)));
  }
  return columns.map((nodes) => el("div", { class: "column" }, ...nodes));
}

// Records a failed partition as succeeded (operator token), asking why.
async function markSucceeded(r) {
  const reason = prompt(`Why mark ${r.job} ${r.partition} succeeded without running it? (kept on the run)`);
  if (!reason || !reason.trim()) return;
  try {
    clearError();
    await api(`/api/v1/jobs/${encodeURIComponent(r.job)}/partitions/${encodeURIComponent(r.partition)}/mark-succeeded`,
      "POST", { reason: reason.trim() });
    await loadJobs();
  } catch (e) {
    showError(e.message);
  }
}

function runRow(r, markable) {
  const status = r.reason === "marked" ? "succeeded (marked)" : r.status;
  return el("tr", { class: r.status === "failed" ? "failed" : "" },
    el("td", {}, r.job), el("td", {}, r.partition),
    el("td", { class: r.status === "failed" ? "bad" : r.status === "succeeded" ? "ok" : "" }, status,
      markable ? el("button", { type: "button", class: "mark", onclick: () => markSucceeded(r) }, "Mark succeeded") : ""),
    el("td", {}, r.reason), el("td", {}, when(r.started_ms)),
    el("td", {}, r.finished_ms ? span(r.finished_ms - r.started_ms) : ""),
    el("td", {}, el("details", {}, el("summary", {}, r.error ? r.error.slice(0, 80) : `${r.rows ?? ""} rows`),
      el("pre", {}, r.log.join("\n")))));
}

// A job's pause: who, since when and why, and the button that ends it; or
// the button that starts one (asking why).
function pauseCell(j) {
  const act = async (action, body) => {
    try {
      clearError();
      await api(`/api/v1/jobs/${encodeURIComponent(j.name)}/${action}`, "POST", body);
      await loadJobs();
    } catch (e) {
      showError(e.message);
    }
  };
  if (j.paused) {
    return [el("span", { class: "warn" }, `paused by ${j.paused.by} ${when(j.paused.at_ms)}: ${j.paused.reason} `),
      el("button", { type: "button", onclick: () => act("resume") }, "Resume")];
  }
  return [el("button", { type: "button", onclick: () => {
    const reason = prompt(`Why pause ${j.name}? (shown to everyone)`);
    if (reason && reason.trim()) act("pause", { reason: reason.trim() });
  } }, "Pause")];
}

async function loadJobs() {
  // `?owner=` shows one team's jobs (and the runs of those jobs).
  const owner = new URLSearchParams(location.search).get("owner") || "";
  const only = owner ? `&owner=${encodeURIComponent(owner)}` : "";
  const [all, runs, failed] = await Promise.all([
    api("/api/v1/jobs"),
    api(`/api/v1/runs?limit=30${only}`),
    api(`/api/v1/runs?status=failed&limit=30${only}`),
  ]);
  const select = document.getElementById("owner-filter").owner;
  const owners = [...new Set(all.jobs.map((j) => j.owner))].sort();
  if (select.options.length !== owners.length + 1) {
    select.replaceChildren(el("option", { value: "" }, "every team"), ...owners.map((o) => el("option", { value: o }, o)));
  }
  select.value = owner;
  const jobs = { ...all, jobs: all.jobs.filter((j) => !owner || j.owner === owner) };
  const mine = new Set(jobs.jobs.map((j) => j.name));
  document.getElementById("watermark").textContent = jobs.watermark_ms
    ? `Ingest watermark: every reading sampled before ${when(jobs.watermark_ms)} has arrived.`
    : "No ingest watermark yet (no gateway has written).";
  // Gateways whose watermark stopped advancing no longer hold the rollups back.
  const stalled = (jobs.writers || []).filter((w) => w.stalled);
  const notice = document.getElementById("stalled");
  notice.hidden = !stalled.length;
  notice.replaceChildren(...stalled.map((w) => el("p", {},
    `Gateway ${w.writer} has not advanced its ingest watermark since ${when(w.watermark_ms)}: the rollups no longer wait for it ` +
    `(after ${span(jobs.watermark_stall_after_ms)}). If it was taken away for good: tillwatch gateway retire ${w.writer}`)));
  // Teams' job declarations the scheduler refused, with file and line.
  const refused = document.getElementById("refused");
  refused.hidden = !(jobs.refused || []).length;
  refused.replaceChildren(...(jobs.refused || []).map((r) => el("p", {}, `Refused: ${r}`)));
  document.getElementById("lineage").replaceChildren(...lineageGraph(all.jobs, owner));
  fill("jobs", jobs.jobs.map((j) =>
    el("tr", { "data-job": j.name }, el("td", {}, j.name), el("td", { class: "muted" }, j.description || ""),
      el("td", {}, j.grain, ...(j.output_kept_ms ? [el("small", { title: "Older partitions of its output are deleted by retention" },
        ` · kept ${Math.round(j.output_kept_ms / 86400000)} days`)] : [])), el("td", {}, j.schedule), el("td", { class: "owner" }, j.owner || "",
        ...((j.notify || []).length ? [el("small", { title: "Receivers told of its failures" }, ` · tells ${j.notify.join(", ")}`)] : [])),
      el("td", {}, j.partitions.succeeded), el("td", { class: j.partitions.failed ? "bad" : "" }, j.partitions.failed),
      el("td", {}, j.partitions.running), el("td", {}, j.partitions.queued),
      el("td", { class: j.partitions.stale ? "warn" : "" }, j.partitions.stale),
      el("td", { class: "pause" }, ...pauseCell(j)))));
  fill("due", jobs.due.filter((t) => t.reason !== "scheduled" && mine.has(t.job)).map((t) =>
    el("tr", {}, el("td", {}, t.job), el("td", {}, t.partition), el("td", { class: t.reason === "stale" ? "warn" : "" }, t.reason),
      el("td", {}, t.attempt))), "Nothing stale or waiting to retry.");
  // A failed run that is its partition's newest can be marked succeeded.
  const newest = {};
  for (const r of [...runs.runs, ...failed.runs]) {
    const k = `${r.job}/${r.partition}`;
    if (!newest[k] || newest[k].started_ms < r.started_ms) newest[k] = r;
  }
  fill("failures", failed.runs.map((r) => runRow(r, newest[`${r.job}/${r.partition}`].run_id === r.run_id)), "No failed runs.");
  fill("runs", runs.runs.map((r) => runRow(r, false)), "No runs yet.");
  const target = document.getElementById("backfill").job;
  if (target.options.length !== jobs.jobs.length) {
    target.replaceChildren(...jobs.jobs.map((j) => el("option", { value: j.name }, `${j.name} (${j.grain})`)));
  }
}

async function watchBackfill(job, answer, body) {
  const bar = document.getElementById("progress");
  const text = document.getElementById("progress-text");
  bar.hidden = false;
  const url = answer.progress;
  for (;;) {
    const p = await api(url);
    bar.max = p.total;
    bar.value = p.finished;
    const failed = p.partitions.filter((x) => x.state === "failed").length;
    text.textContent = `${job} ${body.from} to ${body.to}: ${p.finished} of ${p.total} partition(s) finished` +
      (failed ? `, ${failed} failed` : "");
    if (p.finished >= p.total) break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  await loadJobs();
}

async function jobsPage() {
  document.getElementById("owner-filter").owner.addEventListener("change", async (ev) => {
    const params = new URLSearchParams(location.search);
    if (ev.target.value) params.set("owner", ev.target.value);
    else params.delete("owner");
    history.replaceState(null, "", params.size ? `?${params}` : location.pathname);
    await loadJobs().catch((e) => showError(e.message));
  });
  document.getElementById("backfill").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = ev.target;
    const body = { from: form.from.value.trim(), to: form.to.value.trim(), downstream: form.downstream.checked };
    try {
      clearError();
      const answer = await api(`/api/v1/jobs/${encodeURIComponent(form.job.value)}/backfill`, "POST", body);
      await watchBackfill(form.job.value, answer, body);
    } catch (e) {
      showError(e.message);
    }
  });
  await loadJobs();
}

setupHeader();
const PAGES = { fleet: fleetPage, device: devicePage, merchant: merchantPage, alerts: alertsPage, jobs: jobsPage };
PAGES[document.body.dataset.page]().catch((e) => showError(e.message));
