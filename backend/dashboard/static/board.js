/* The operator board: log in, poll the API every 2 s, render stations, charts, alarms, live taps;
   operator actions (block/unblock, top-up, fare tables, emergency free exit) only for operators, each
   answered beside its own control. When a poll fails the board says since when the backend is
   unreachable and shows every gate figure as stale (last seen as a clock time, not "0 s ago"). */
"use strict";

const TOKEN = "faregate.operator.token";
const ROLE = "faregate.operator.role";
const USER = "faregate.operator.user";
const REFRESH_MS = 2000;
const STALE_S = 20; // a gate heartbeats every few seconds: silent this long means something is wrong
const MODES = ["NORMAL", "FREE EXIT", "CLOSED", "MAINTENANCE"];
const RANK = { viewer: 0, operator: 1, admin: 2 };
// latency thresholds, ms: at most `ok` is green, at most `warn` amber, above it red. Tap to barrier open
// includes the phone's RF read and write (about 90 ms in the simulator); riders notice from ~300 ms.
const LATENCY = {
  tapToOpen: { ok: 200, warn: 500 },
  host: { ok: 2, warn: 10 }, // the gate's own processing per tap, p99
  decision: { ok: 100, warn: 250 }, // phone in the field to decision (the RF read included), from its taps
};

let timer = null;
let currentPhone = null;
let lastGates = [];
let lastView = null; // what the last good poll returned, shown as stale while the backend is away
let lastGood = null; // when that was
let unreachableSince = null;
let busy = false;
const stationNotes = new Map(); // station id -> [message, kind]: feedback beside its mode buttons

const op = (method, path, body) => apiCall(TOKEN, method, API + path, body);
const canChange = () => (RANK[sessionStorage.getItem(ROLE)] ?? -1) >= RANK.operator;

/** An action's failure, told beside its control (`el`); a lapsed session goes back to the login. */
function showError(el, error) {
  if (error instanceof ApiError && error.status === 401) {
    logout("Your session ended; log in again.");
    return;
  }
  say(el, errorText(error), "error");
}

// ------------------------------------------------------------------ login / roles

function applyRole() {
  const role = sessionStorage.getItem(ROLE) || "";
  $("who-name").textContent = sessionStorage.getItem(USER) || "";
  $("who-role").textContent = role;
  document.body.classList.toggle("read-only", !canChange());
  for (const el of document.querySelectorAll(".op-only")) {
    el.hidden = !canChange() || (el.id === "phone-actions" && !currentPhone);
    for (const control of el.querySelectorAll("button, input, textarea, select")) control.disabled = !canChange();
  }
}

function showBoard() {
  $("login-view").hidden = true;
  $("board").hidden = false;
  $("who").hidden = false;
  applyRole();
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

function logout(message) {
  const token = sessionStorage.getItem(TOKEN);
  if (token && !message) op("POST", "/logout").catch(() => {});
  for (const key of [TOKEN, ROLE, USER]) sessionStorage.removeItem(key);
  clearInterval(timer);
  currentPhone = null;
  unreachableSince = outage($("backend-banner"), null);
  $("board").hidden = true;
  $("who").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    const username = $("login-user").value.trim();
    const token = await apiCall(TOKEN, "POST", `${API}/login`, { username, password: $("login-pass").value });
    sessionStorage.setItem(TOKEN, token.access_token);
    sessionStorage.setItem(ROLE, token.role);
    sessionStorage.setItem(USER, username);
    $("login-pass").value = "";
    showBoard();
  } catch (error) {
    $("login-error").textContent = error instanceof ApiError ? error.detail : String(error);
  }
});
$("logout").addEventListener("click", () => logout());

// ------------------------------------------------------------------ polling and rendering

async function refresh() {
  if (busy) return; // a slow backend: skip a beat rather than pile requests up
  busy = true;
  try {
    // each gate row carries its own figures too (tap-to-open p50/p99, alarm counters), as the ingest
    // stored them from the gate's latest status message
    const [gates, summary, latest, offline, tables, blocked, lost] = await Promise.all([
      op("GET", "/gates?limit=1000"),
      apiCall(TOKEN, "GET", "/dashboard/api/summary?minutes=30"),
      op("GET", "/alarms?open_only=true&limit=100"),
      // a gate going offline must not be pushed off the list by a burst of other alarms
      op("GET", "/alarms?open_only=true&kind=gate_offline&limit=100"),
      op("GET", "/fare-tables?limit=8"),
      op("GET", "/phones?status=blocked&limit=50"),
      op("GET", "/phones?status=lost&limit=50"),
    ]);
    const seen = new Set(offline.map((a) => a.id));
    const alarms = offline.concat(latest.filter((a) => !seen.has(a.id)));
    await loadNames(tables.length ? tables[0].version : null); // station names: newest fare table
    if (currentPhone) await renderPhone(currentPhone);
    lastGates = gates;
    lastGood = new Date();
    unreachableSince = outage($("backend-banner"), null);
    lastView = { gates, summary, alarms, more: latest.length >= 100, target: targetTable(tables, gates) };
    renderKpis(gates, summary, alarms, lastView.more);
    renderCharts(summary);
    renderStations(gates, summary, lastView.target);
    renderAlarms(alarms, gates);
    renderRecent(summary.recent);
    renderFareTables(tables, gates);
    renderBlocked(blocked.concat(lost));
    $("live").classList.toggle("stale", false);
    $("live").title = `updated ${hms(lastGood)}`;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      logout("Your session ended; log in again.");
      return;
    }
    unreachableSince = outage($("backend-banner"), unreachableSince || new Date(), error, lastGood);
    $("live").classList.toggle("stale", true);
    $("live").title = `no answer since ${hms(unreachableSince)}`;
    if (lastView) { // the same figures, marked stale: nothing reads "online" or "0 s ago" any more
      renderKpis(lastView.gates, lastView.summary, lastView.alarms, lastView.more);
      renderStations(lastView.gates, lastView.summary, lastView.target);
    }
  } finally {
    busy = false;
  }
}

function gateHealth(gate) {
  if (unreachableSince) return "stale"; // the backend cannot tell us: unknown, never "online"
  if (gate.state === "offline") return "offline";
  if (gate.state !== "online") return gate.state || "unknown";
  if (gate.last_seen && Date.now() - new Date(gate.last_seen).getTime() > STALE_S * 1000) return "silent";
  return "online";
}

function renderKpis(gates, summary, alarms, more) {
  $("kpi-revenue").textContent = yuan(summary.revenue_today_fen);
  $("kpi-taps").textContent = String(summary.taps_today);
  $("kpi-denied").textContent = String(summary.denied_today);
  const online = gates.filter((g) => gateHealth(g) === "online").length;
  $("kpi-online").textContent = unreachableSince ? "unknown" : `${online} / ${gates.length}`;
  $("kpi-online").className = `value ${online < gates.length ? "warn" : ""}`;
  $("kpi-online").title = unreachableSince ? `stale: no answer from the backend since ${hms(unreachableSince)}` : "";
  $("kpi-alarms").textContent = more ? `${alarms.length}+` : String(alarms.length);
  $("kpi-alarms").className = `value ${alarms.length ? "warn" : ""}`;
}

function renderCharts(summary) {
  drawMinuteBars($("chart-taps"), summary.per_minute.map((m) => ({
    label: new Date(m.minute).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false }),
    allowed: m.allowed,
    denied: m.denied,
  })));
  drawReasonBars($("chart-denials"), summary.denial_reasons);
}

/** A latency figure coloured against its thresholds (LATENCY), with the thresholds in its tooltip. */
function latencyHtml(label, ms, limits, digits) {
  if (ms == null) return "";
  const level = ms <= limits.ok ? "ok" : ms <= limits.warn ? "warn" : "bad";
  const title = `${label} ${ms.toFixed(digits)} ms: green up to ${limits.ok} ms, amber up to ${limits.warn} ms, red above`;
  return `<span class="lat lat-${level}" data-level="${level}" title="${esc(title)}">${esc(label)} ${esc(ms.toFixed(digits))}</span>`;
}

function latencyCell(gate, day) {
  const parts = [
    latencyHtml("p50", gate.tap_to_open_p50_ms, LATENCY.tapToOpen, 0),
    latencyHtml("p99", gate.tap_to_open_p99_ms, LATENCY.tapToOpen, 0),
  ].filter(Boolean);
  if (parts.length) { // tap to barrier open, as the gate measured it; then its own processing
    const host = latencyHtml("own p99", gate.host_p99_ms, LATENCY.host, 1);
    return `${parts.join(" · ")} ms${host ? ` <span class="muted">·</span> ${host} ms` : ""}`;
  }
  if (!day || !day.taps) return "—";
  return `${latencyHtml("mean", day.mean_latency_us / 1000, LATENCY.decision, 1)} · ${latencyHtml("max", day.max_latency_us / 1000, LATENCY.decision, 1)} ms`;
}

/** The fare table version every gate should be on: the published one once it is active. */
function targetTable(tables, gates) {
  const published = tables.find((t) => t.state === "published");
  if (published && new Date(published.activate_at).getTime() <= Date.now()) return published.version;
  return Math.max(0, ...gates.map((g) => g.fare_table_version || 0));
}

function renderStations(gates, summary, latestTable) {
  const days = Object.fromEntries(summary.gates.map((g) => [g.gate_id, g]));
  const stations = new Map();
  for (const gate of gates) {
    if (!stations.has(gate.station_id)) stations.set(gate.station_id, []);
    stations.get(gate.station_id).push(gate);
  }
  const blocks = [];
  for (const [station, list] of stations) {
    const online = list.filter((g) => gateHealth(g) === "online").length;
    const freeExit = list.some((g) => g.mode === 1 || g.commanded_mode === 1);
    const count = unreachableSince
      ? `<span class="badge stale">${list.length} ${list.length === 1 ? "gate" : "gates"}: state unknown</span>`
      : `<span class="badge ${online === list.length ? "ok" : "bad"}">${online}/${list.length} online</span>`;
    const [note, noteKind] = stationNotes.get(station) || ["", "info"];
    blocks.push(`
      <div class="station" data-station="${station}">
        <div class="station-head">
          <h3>${stationHtml(station)}</h3>
          ${count}
          ${freeExit ? '<span class="badge bad">EMERGENCY FREE EXIT</span>' : ""}
          <span class="spacer"></span>
          <span class="op-only">
            <button type="button" class="danger" data-mode="1" data-station="${station}">Emergency free exit</button>
            <button type="button" data-mode="0" data-station="${station}">Back to normal</button>
          </span>
        </div>
        <p class="feedback ${noteKind} station-feedback" role="status" ${note ? "" : "hidden"}>${esc(note)}</p>
        <table class="rows gates"><thead><tr>
          <th>Gate</th><th>State</th><th>Mode</th><th>Last seen</th><th>Last tap</th><th>Taps / denied today</th>
          <th title="tap to barrier open as the gate measures it, p50 / p99 of its latest taps (green up to ${LATENCY.tapToOpen.ok} ms, amber up to ${LATENCY.tapToOpen.warn} ms, red above), and its own processing p99; else phone-in-field to decision, mean / max today">Latency</th><th>Fare table</th><th>Deny-list</th><th>Backlog</th><th>Alarms</th><th>Software</th>
        </tr></thead><tbody>
        ${list.map((g) => gateRow(g, days[g.gate_id], latestTable)).join("")}
        </tbody></table>
      </div>`);
  }
  $("stations").innerHTML = blocks.join("") || '<p class="muted">No gate has reported yet.</p>';
  applyRole();
}

function gateRow(g, day, latestTable) {
  const health = gateHealth(g);
  const mode = g.mode == null ? "—" : MODES[g.mode] || String(g.mode);
  const pending = g.commanded_mode != null && g.commanded_mode !== g.mode && health === "online"
    ? ` <span class="muted">→ ${MODES[g.commanded_mode]}</span>` : "";
  const tableClass = g.fare_table_version != null && g.fare_table_version < latestTable ? "warn lagging" : "";
  const counts = [];
  if (g.tailgating_alarms) counts.push(`tailgating ${g.tailgating_alarms}`);
  if (g.forced_door_alarms) counts.push(`forced ${g.forced_door_alarms}`);
  const alarms = counts.join(" · ") || "—";
  const stale = health === "stale";
  // while the backend is away an age would keep growing from a clock we cannot trust: show the time
  const when = (iso) => (stale ? `at ${clock(iso)}` : ago(iso));
  const badge = stale
    ? `<span class="badge stale state" title="no news: the backend is unreachable">stale</span> <span class="muted">was ${esc(g.state || "unknown")}</span>`
    : `<span class="badge ${health === "online" ? "ok" : "bad"} state">${esc(health)}</span>`;
  return `<tr data-gate="${esc(g.gate_id)}" data-state="${esc(health)}" class="${health === "online" ? "" : stale ? "row-stale" : "row-bad"}">
    <td class="mono">${esc(g.gate_id)}</td>
    <td>${badge}</td>
    <td class="${g.mode === 1 ? "warn" : ""}">${esc(mode)}${pending}</td>
    <td class="last-seen" title="${esc(stamp(g.last_seen))}">${g.last_seen ? esc(when(g.last_seen)) : "never"}</td>
    <td>${day && day.last_tap ? esc(when(day.last_tap)) : "—"}</td>
    <td>${day ? `${day.taps} / ${day.denied}` : "0 / 0"}</td>
    <td class="latency">${latencyCell(g, day)}</td>
    <td class="${tableClass} fare-version">${g.fare_table_version ?? "—"}</td>
    <td>${g.denylist_version ?? "—"}</td>
    <td class="${g.journal_pending ? "warn" : ""}">${g.journal_pending ?? "—"}</td>
    <td class="gate-alarms ${counts.length ? "warn" : ""}">${esc(alarms)}</td>
    <td class="muted">${esc(g.software || "—")}</td>
  </tr>`;
}

/** "Gongyuanqian 公园前 · 1-2" for a gate the board knows, else its id. */
function gateHtml(gateId, stationId) {
  if (!gateId) return "";
  const gate = lastGates.find((g) => g.gate_id === gateId);
  const station = stationId ?? (gate ? gate.station_id : null);
  return station == null ? `<span class="mono">${esc(gateId)}</span>`
    : `${esc(stationName(station))} <span class="mono">${esc(gateId)}</span>`;
}

function renderAlarms(alarms, gates) {
  const rows = alarms.map((a) => `<tr data-kind="${esc(a.kind)}" class="sev-${esc(a.severity)}">
      <td title="${esc(stamp(a.created_at))}">${esc(clock(a.created_at))}</td>
      <td>${esc(a.kind.replaceAll("_", " "))}</td><td class="wrap">${gateHtml(a.gate_id)}</td>
      <td class="mono">${esc(a.card_id || "")}</td><td class="wrap">${esc(a.detail)}</td>
      <td><button type="button" class="op-only small" data-ack="${a.id}">Acknowledge</button></td></tr>`);
  // gates reporting alarm counters in their status (tailgating, forced door) that have no alarm row
  for (const g of gates) {
    if (g.tailgating_alarms) rows.push(`<tr data-kind="tailgating"><td>—</td><td>tailgating</td><td class="wrap">${gateHtml(g.gate_id, g.station_id)}</td><td></td><td class="wrap">${g.tailgating_alarms} since the gate started</td><td></td></tr>`);
    if (g.forced_door_alarms) rows.push(`<tr data-kind="forced_door"><td>—</td><td>forced door</td><td class="wrap">${gateHtml(g.gate_id, g.station_id)}</td><td></td><td class="wrap">${g.forced_door_alarms} since the gate started</td><td></td></tr>`);
  }
  const kinds = {};
  for (const a of alarms) kinds[a.kind] = (kinds[a.kind] || 0) + 1;
  $("alarm-kinds").textContent = Object.entries(kinds).map(([k, n]) => `${k.replaceAll("_", " ")} ${n}`).join(" · ");
  $("alarms").innerHTML = rows.join("") || '<tr><td colspan="6" class="muted">No open alarms.</td></tr>';
  applyRole();
}

function renderRecent(taps) {
  $("recent").innerHTML = taps.map((t) => {
    const result = t.allowed ? "OK" : "DENIED";
    // what the gate's display told the rider, in both languages (nothing more to say for a plain OK)
    const why = t.reason ? reasonHtml(t.reason, t.reason_en, t.reason_zh) : "";
    return `<tr data-card="${esc(t.card_id)}" data-result="${result}" data-reason="${esc(t.reason_name)}" class="${t.allowed ? "" : "row-bad"}">
      <td>${esc(clock(t.time))}</td><td class="wrap">${gateHtml(t.gate_id, t.station_id)} ${t.direction === 0 ? "in" : "out"}</td>
      <td class="mono"><a href="#" data-phone="${esc(t.card_id)}">${esc(t.card_id)}</a></td>
      <td class="wrap"><span class="badge ${t.allowed ? "ok" : "bad"}">${result}</span> ${why}</td>
      <td>${t.fare ? yuan(t.fare) : ""}</td></tr>`;
  }).join("") || '<tr><td colspan="5" class="muted">No taps yet.</td></tr>';
}

function renderFareTables(tables, gates) {
  $("fare-tables").innerHTML = tables.map((t, i) => {
    const on = gates.filter((g) => g.fare_table_version === t.version).length;
    return `<tr data-version="${t.version}"><td>${t.version}</td><td>${esc(t.name)}</td><td>${esc(t.state)}</td>
      <td>${esc(stamp(t.activate_at))}</td><td>${esc(t.created_by)}</td>
      <td class="gates-on">${on} / ${gates.length}</td>
      <td>${i > 0 ? `<button type="button" class="op-only small" data-rollback="${t.version}">Publish again</button>` : ""}</td></tr>`;
  }).join("") || '<tr><td colspan="7" class="muted">No fare table published.</td></tr>';
  applyRole();
}

// ------------------------------------------------------------------ phone

function renderBlocked(phones) {
  $("blocked-list").innerHTML = phones.map((p) =>
    `<a href="#" data-phone="${esc(p.card_id)}" title="${esc(PHONE_STATUSES[p.status]?.[0] || p.status)}: ${esc(p.status_reason)}">${esc(p.card_id)}</a>`,
  ).join(" ") || '<span class="muted">none</span>';
}

async function renderPhone(cardId) {
  let phone = null;
  try {
    phone = await op("GET", `/phones/${cardId}`);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) throw error;
  }
  const [ledger, trips, taps] = phone
    ? await Promise.all([
      op("GET", `/phones/${cardId}/ledger?limit=20&newest_first=true`),
      op("GET", `/phones/${cardId}/trips?limit=20`),
      op("GET", `/taps?card_id=${cardId}&limit=10`),
    ])
    : [[], [], []];
  $("phone-detail").innerHTML = phone
    ? `<dl class="facts" data-card="${esc(phone.card_id)}">
        <dt>Phone</dt><dd class="mono">${esc(phone.card_id)}</dd>
        <dt>Status</dt><dd><span id="phone-status" data-status="${esc(phone.status)}" class="badge ${phone.status === "active" ? "ok" : "bad"}">${wordsHtml(PHONE_STATUSES, phone.status)}</span>
          ${phone.status !== "active" && phone.status_reason ? `<span class="status-reason">${esc(phone.status_reason)}</span>` : ""}</dd>
        <dt>Balance</dt><dd id="phone-balance">${yuan(phone.balance)}</dd>
        <dt>Last tap</dt><dd>${esc(stamp(phone.last_tap_time))}</dd>
        ${phone.replaced_by ? `<dt>Replaced by</dt><dd class="mono">${esc(phone.replaced_by)}</dd>` : ""}
      </dl>`
    : `<p class="muted">No phone ${esc(cardId)} known yet (it has never tapped).${canChange() ? " It can still be blocked." : ""}</p>`;
  $("phone-tables").innerHTML = `
    <h4>Recent taps</h4><table class="rows"><thead><tr><th>Time</th><th>Station, gate</th><th>Result</th><th>Fare</th><th>Balance</th></tr></thead>
    <tbody id="phone-taps">${taps.map((t) => `<tr data-result="${t.allowed ? "OK" : "DENIED"}" data-reason="${esc(t.reason)}"><td>${esc(stamp(t.time))}</td><td class="wrap">${gateHtml(t.gate_id, t.station_id)}</td>
      <td class="wrap"><span class="badge ${t.allowed ? "ok" : "bad"}">${t.allowed ? "OK" : "DENIED"}</span> ${t.reason ? reasonHtml(t.reason) : ""}</td><td>${yuan(t.fare)}</td><td>${yuan(t.balance_after)}</td></tr>`).join("") || '<tr><td colspan="5" class="muted">none</td></tr>'}</tbody></table>
    <h4>Ledger</h4><table class="rows"><thead><tr><th>Time</th><th>Kind</th><th>Amount</th><th>Balance</th></tr></thead>
    <tbody id="phone-ledger">${ledger.map(ledgerRow).join("") || '<tr><td colspan="4" class="muted">none</td></tr>'}</tbody></table>
    <h4>Trips</h4><table class="rows"><thead><tr><th>Entry</th><th>From</th><th>To</th><th>Fare</th><th>State</th></tr></thead>
    <tbody id="phone-trips">${trips.map((t) => `<tr data-state="${esc(t.state)}"><td>${esc(stamp(t.entry_time))}</td><td class="wrap">${stationHtml(t.entry_station)}</td><td class="wrap">${stationHtml(t.exit_station)}</td><td>${yuan(t.fare)}</td><td>${wordsHtml(TRIP_STATES, t.state)}</td></tr>`).join("") || '<tr><td colspan="5" class="muted">none</td></tr>'}</tbody></table>`;
}

async function lookUp(cardId) {
  const id = cardId.trim().toLowerCase();
  if (!/^[0-9a-f]{16}$/.test(id)) {
    say($("phone-feedback"), "A card id is 16 hexadecimal digits.", "error");
    return;
  }
  $("phone-id").value = id;
  currentPhone = id;
  $("token-out").textContent = "";
  for (const el of ["phone-feedback", "block-feedback", "topup-feedback"]) say($(el), "");
  try {
    await renderPhone(id);
    applyRole();
  } catch (error) {
    showError($("phone-feedback"), error);
  }
}

/** Feedback beside a station's mode buttons; kept across the 2 s re-render until the next command. */
function noteStation(station, message, kind) {
  stationNotes.set(station, [message, kind]);
  const el = document.querySelector(`.station[data-station="${station}"] .station-feedback`);
  if (el) {
    say(el, message, kind);
    el.classList.add("station-feedback");
  }
}

$("phone-form").addEventListener("submit", (event) => {
  event.preventDefault();
  lookUp($("phone-id").value);
});

document.addEventListener("click", async (event) => {
  const target = event.target.closest("[data-phone], [data-mode], [data-ack], [data-rollback]");
  if (!target) return;
  event.preventDefault();
  // each action answers beside its own control: the phone card, the alarm list, the fare tables
  const where = target.dataset.ack ? $("alarm-feedback") : target.dataset.rollback ? $("rollback-feedback") : $("phone-feedback");
  try {
    if (target.dataset.phone) {
      await lookUp(target.dataset.phone);
      $("phone-card").scrollIntoView({ behavior: "smooth" });
    } else if (target.dataset.mode !== undefined) {
      await commandStation(Number(target.dataset.station), Number(target.dataset.mode));
    } else if (target.dataset.ack) {
      const row = target.closest("tr");
      const what = row ? `${row.children[1].textContent} at ${row.children[0].textContent}` : `alarm ${target.dataset.ack}`;
      await op("POST", `/alarms/${target.dataset.ack}/acknowledge`);
      say(where, `Acknowledged: ${what}.`, "ok");
      refresh();
    } else if (target.dataset.rollback) {
      const version = Number(target.dataset.rollback);
      if (!confirm(`Publish the rules of fare table ${version} again, as a new version?`)) return;
      say(where, `Publishing the rules of version ${version} again…`, "info");
      const row = await op("POST", `/fare-tables/${version}/rollback`, {});
      say(where, `Rules of version ${version} published again as version ${row.version}; watch the gates adopt it.`, "ok");
      refresh();
    }
  } catch (error) {
    showError(where, error);
  }
});

async function phoneChange(kind) {
  const reason = $("block-reason").value.trim();
  if (!currentPhone) return;
  const where = $("block-feedback");
  if (!reason) {
    say(where, "Give a reason: it is kept in the deny-list history and the audit log.", "error");
    return;
  }
  try {
    say(where, `${kind === "block" ? "Blocking" : "Unblocking"} ${currentPhone}…`, "info");
    const version = await op("POST", `/phones/${currentPhone}/${kind}`, { reason });
    let message = `Phone ${currentPhone} ${kind}ed: deny-list version ${version.version} sent to every gate.`;
    if (kind === "unblock") {
      // the wallet itself may carry a blocked flag written by a gate: clear it at the next tap
      await op("POST", "/actions", { card_id: currentPhone, unblock: true, reason });
      message += " Its wallet is unblocked at its next tap.";
    }
    say(where, message, "ok");
    await renderPhone(currentPhone);
    refresh();
  } catch (error) {
    showError(where, error);
  }
}

$("block-btn").addEventListener("click", () => phoneChange("block"));
$("unblock-btn").addEventListener("click", () => phoneChange("unblock"));

$("topup-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const fen = parseYuan($("topup-yuan").value);
  const where = $("topup-feedback");
  if (!fen) {
    say(where, "Top-up: an amount in yuan such as 20 or 12.50.", "error");
    return;
  }
  try {
    const action = await op("POST", "/actions", { card_id: currentPhone, topup: fen, reason: "operator top-up" });
    say(where, `Top-up of ${yuan(fen)} queued (action ${action.id}): added at the phone's next tap.`, "ok");
    $("topup-yuan").value = "";
  } catch (error) {
    showError(where, error);
  }
});

$("token-btn").addEventListener("click", async () => {
  try {
    const issued = await op("POST", `/phones/${currentPhone}/commuter-token`);
    say($("topup-feedback"), "");
    $("token-out").textContent = `Commuter token for ${issued.card_id} (shown once): ${issued.token}`;
  } catch (error) {
    showError($("topup-feedback"), error);
  }
});

// ------------------------------------------------------------------ stations and fare tables

async function commandStation(station, mode) {
  const gates = lastGates.filter((g) => g.station_id === station);
  const what = mode === 1 ? "EMERGENCY FREE EXIT (all barriers open)" : "normal service";
  if (!confirm(`Put the ${gates.length} gates of ${stationName(station)} (${station}) into ${what}?`)) return;
  const reason = mode === 1 ? "emergency free exit from the operator board" : "back to normal from the operator board";
  noteStation(station, `Commanding ${gates.length} gates to ${MODES[mode]}…`, "info");
  const results = await Promise.allSettled(gates.map((g) => op("POST", `/gates/${g.gate_id}/mode`, { mode, reason })));
  const failed = results.filter((r) => r.status === "rejected");
  if (failed.length && failed[0].reason instanceof ApiError && failed[0].reason.status === 401) {
    logout("Your session ended; log in again.");
    return;
  }
  if (failed.length) {
    noteStation(station, `${failed.length} of ${gates.length} gates not commanded: ${errorText(failed[0].reason)}`, "error");
  } else {
    noteStation(station, `${gates.length} gates commanded to ${MODES[mode]}; the Mode column shows when each is in it.`, "ok");
  }
  refresh();
}

$("fare-file").addEventListener("change", async () => {
  const file = $("fare-file").files[0];
  if (file) $("fare-rules").value = await file.text();
});

$("fare-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const rules = $("fare-rules").value;
  const where = $("fare-feedback");
  if (!rules.trim()) {
    say(where, "Paste fare rules or choose a file first.", "error");
    return;
  }
  const file = $("fare-file").files[0];
  const format = (file && file.name.endsWith(".json")) || rules.trimStart().startsWith("{") ? "json" : "toml";
  try {
    const body = { rules, format };
    const when = $("fare-activate").value; // local time typed by the operator; empty = at once
    if (when) body.activate_at = new Date(when).toISOString();
    say(where, "Compiling and publishing…", "info");
    const table = await op("POST", "/fare-tables", body);
    say(where, `Fare table version ${table.version} (${table.name}) published; the gate list shows which gates use it.`, "ok");
    refresh();
  } catch (error) {
    showError(where, error);
  }
});

// ------------------------------------------------------------------ start

if (sessionStorage.getItem(TOKEN)) showBoard();
else logout("");
