/* Shared helpers of the board and the commuter page: API calls with a bearer token, money, escaping,
   station names and reasons in words, feedback beside a control, the "backend unreachable" banner, and
   narrow-screen tables (each cell labelled with its column, so a 390 px phone stacks rows, never scrolls). */
"use strict";

const API = "/api/v1";
const NAMES = "/dashboard/api";
const CALL_TIMEOUT_MS = 10000; // a backend that accepts but never answers counts as unreachable too

class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

/** The backend could not be reached (connection refused, timed out) or a proxy said it is gone. */
function isUnreachable(error) {
  return !(error instanceof ApiError) || [502, 503, 504].includes(error.status);
}

/** Call the REST API with the token stored under `tokenKey` in sessionStorage. */
async function apiCall(tokenKey, method, url, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(tokenKey);
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const abort = new AbortController();
  init.signal = abort.signal;
  const timer = setTimeout(() => abort.abort(), CALL_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    throw new Error(error.name === "AbortError" ? `no answer within ${CALL_TIMEOUT_MS / 1000} s` : "no connection");
  } finally {
    clearTimeout(timer);
  }
  if (response.status === 204) return null;
  let data = null;
  const text = await response.text();
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) {
    let detail = data && data.detail !== undefined ? data.detail : text;
    if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    throw new ApiError(response.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return data;
}

/** Integer fen -> "¥12.30" without floating point. */
function yuan(fen) {
  if (fen === null || fen === undefined) return "—";
  const sign = fen < 0 ? "-" : "";
  const abs = Math.abs(fen);
  return `${sign}¥${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, "0")}`;
}

/** "12.3" yuan typed by a person -> integer fen, or null when it is not a valid amount. */
function parseYuan(text) {
  const match = /^\s*(\d{1,7})(?:\.(\d{1,2}))?\s*$/.exec(text);
  if (!match) return null;
  return Number(match[1]) * 100 + Number((match[2] || "0").padEnd(2, "0"));
}

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

/** HH:MM:SS, 24-hour, in the browser's time zone. */
function hms(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

function clock(iso) {
  if (!iso) return "—";
  return hms(new Date(iso));
}

function stamp(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return `${d.toLocaleDateString()} ${hms(d)}`;
}

function ago(iso, now) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round(((now || Date.now()) - new Date(iso).getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

function $(id) { return document.getElementById(id); }

/** Words for an API error, for a person: "Refused: ..." or "The backend cannot be reached ...". */
function errorText(error) {
  if (error instanceof Error && error.message.startsWith("no answer")) {
    return `The backend gave ${error.message}: it may or may not have done it; look before trying again.`;
  }
  if (!(error instanceof ApiError)) return `The backend cannot be reached (${error.message || error}); nothing was changed.`;
  if (isUnreachable(error)) return `The backend is not answering (${error.status}); try again.`;
  return `Refused (${error.status}): ${error.detail}`;
}

/** Feedback beside the control that caused it: `el` is that control's own status line. */
function say(el, message, kind) {
  el.textContent = message;
  el.className = `feedback ${kind || "info"}`;
  el.hidden = !message;
  if (message && kind !== "info" && el.scrollIntoView) el.scrollIntoView({ block: "nearest" });
}

// ------------------------------------------------------------------ stations and reasons in words

const names = { stations: {}, reasons: {}, version: undefined };

/** Fetch the station names (newest fare table) and reason words; again when the table changes. */
async function loadNames(version) {
  if (version !== undefined && version === names.version) return;
  const get = async (path) => {
    const response = await fetch(NAMES + path, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new ApiError(response.status, response.statusText);
    return response.json();
  };
  const [stations, reasons] = await Promise.all([get("/stations"), get("/reasons")]);
  names.stations = stations.names;
  names.version = version === undefined ? stations.fare_table_version : version;
  names.reasons = Object.fromEntries(reasons.map((r) => [r.reason, r]));
}

/** "Gongyuanqian 公园前" when a fare table names the station, else "Station 109". */
function stationName(id) {
  if (id === null || id === undefined) return "—";
  return names.stations[id] || `Station ${id}`;
}

/** A station as HTML: its name, and its id small beside it. */
function stationHtml(id) {
  if (id === null || id === undefined) return "—";
  const name = names.stations[id];
  return name ? `${esc(name)} <span class="muted id">${esc(id)}</span>` : `Station ${esc(id)}`;
}

/** A reason code in both languages (the gate display's words without amounts), as HTML. */
function reasonHtml(code, en, zh) {
  const words = names.reasons[code];
  en = en ?? (words ? words.en : "");
  zh = zh ?? (words ? words.zh : "");
  if (!en && !zh) return words && words.name !== "OK" ? esc(words.name) : "";
  return `<span class="words"><span lang="en">${esc(en)}</span> <span lang="zh" class="zh">${esc(zh)}</span></span>`;
}

const TRIP_STATES = {
  open: ["In progress", "行程中"], complete: ["Complete", "已完成"],
  missing_exit: ["No exit recorded", "无出站记录"], no_entry: ["No entry recorded", "无进站记录"],
};
const PHONE_STATUSES = { active: ["Active", "正常"], blocked: ["Blocked", "已锁定"], lost: ["Reported lost", "已挂失"] };
/** Ledger entry kinds (docs/ledger.md) in words; an unknown kind reads as itself. */
const LEDGER_KINDS = {
  fare: ["Fare", "车费"], missing_exit: ["Fare for a trip without exit", "未出站补扣"],
  topup: ["Top-up", "充值"], refund: ["Refund", "退款"], adjustment: ["Adjustment", "调整"],
  transfer: ["Balance moved in", "余额转入"], transfer_out: ["Balance moved out", "余额转出"],
  payment: ["Payment received", "收款"], refund_granted: ["Refund granted", "批准退款"],
  adjustment_granted: ["Adjustment granted", "批准调整"], opening: ["Opening balance", "初始余额"],
  unconfirmed: ["Unconfirmed write", "写卡待确认"], landed: ["Unconfirmed write landed", "写卡已确认"],
  voided: ["Unconfirmed write voided", "写卡未生效"], overdraft_recovery: ["Overdraft recovered", "透支追缴"],
  tap: ["Tap", "刷卡"],
};

/** A word pair from one of the tables above as HTML ("Top-up 充值"); unknown keys read as themselves. */
function wordsHtml(table, key) {
  const pair = table[key];
  if (!pair) return esc(String(key ?? "—").replaceAll("_", " "));
  return `<span class="words"><span lang="en">${esc(pair[0])}</span> <span lang="zh" class="zh">${esc(pair[1])}</span></span>`;
}

/** One ledger entry (docs/ledger.md) as a row: its kind in words, so a top-up, an adjustment and a fare
    read differently; money in green and signed, money out plain. */
function ledgerRow(l) {
  const amount = l.amount ?? 0;
  const legs = l.legs || [];
  // a payment or grant not yet written to the phone moves nothing in its wallet: say what is on its way
  const coming = legs.some((g) => g.account.startsWith("wallet:")) ? null : legs.find((g) => g.account === "undelivered");
  const money = coming
    ? `<span class="muted" title="written to the phone at its next tap">${yuan(coming.amount)} on its way</span>`
    : `${amount > 0 ? "+" : ""}${yuan(amount)}`;
  return `<tr data-kind="${esc(l.kind)}"><td>${esc(stamp(l.time))}</td><td>${wordsHtml(LEDGER_KINDS, l.kind)}</td>
    <td class="${amount > 0 ? "amount-in" : "amount-out"}">${money}</td><td>${l.balance_after == null ? "—" : yuan(l.balance_after)}</td></tr>`;
}

// ------------------------------------------------------------------ the backend gone away

/** Show or clear the "backend unreachable since HH:MM:SS" banner; returns the time it was first seen. */
function outage(banner, since, error, lastGood) {
  if (!since) {
    banner.hidden = true;
    document.body.classList.remove("stale");
    return null;
  }
  const cause = error instanceof ApiError ? `it answers ${error.status}: ${error.detail}` : error.message || String(error);
  const what = isUnreachable(error) ? "Backend unreachable" : "Backend failing";
  const shown = lastGood ? `; the figures below are from ${hms(lastGood)} and stale` : "";
  banner.textContent = `${what} since ${hms(since)} (${cause})${shown}. Retrying every few seconds.`;
  banner.hidden = false;
  document.body.classList.add("stale");
  return since;
}

// ------------------------------------------------------------------ narrow screens

/** Label every body cell with its column's heading: on a phone a row stacks as "heading: value" lines. */
function labelCells(table) {
  const heads = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
  for (const row of table.querySelectorAll("tbody tr")) {
    [...row.children].forEach((cell, i) => {
      if (heads[i] && cell.dataset.label !== heads[i]) cell.dataset.label = heads[i];
    });
  }
}

new MutationObserver((changes) => {
  const tables = new Set();
  for (const change of changes) {
    const table = change.target.closest ? change.target.closest("table.rows") : null;
    if (table) tables.add(table);
    for (const node of change.addedNodes) {
      if (node.querySelectorAll) for (const t of node.querySelectorAll("table.rows")) tables.add(t);
    }
  }
  tables.forEach(labelCells);
}).observe(document.documentElement, { childList: true, subtree: true });
