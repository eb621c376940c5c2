/* The commuter page: one's own phone through the self-service API (/api/v1/me) and its token. Stations
   by name, trips and statuses in words; each form answers beside itself; when the service cannot be
   reached the page says so and greys what it last showed. */
"use strict";

const TOKEN = "faregate.commuter.token";
const me = (method, path, body) => apiCall(TOKEN, method, `${API}/me${path}`, body);
let timer = null;
let unreachableSince = null;
let lastGood = null;

function signOut(message) {
  sessionStorage.removeItem(TOKEN);
  clearInterval(timer);
  $("me").hidden = true;
  $("forget").hidden = true;
  $("token-view").hidden = false;
  $("token-error").textContent = message || "";
  unreachableSince = outage($("backend-banner"), null);
}

async function load() {
  try {
    const [phone, trips, ledger] = await Promise.all([
      me("GET", ""), me("GET", "/trips?limit=50"), me("GET", "/ledger?limit=50&newest_first=true")]);
    const unnamed = trips.some((t) => [t.entry_station, t.exit_station].some((s) => s != null && !names.stations[s]));
    if (names.version === undefined || (unnamed && (!lastGood || Date.now() - lastGood > 60000))) await loadNames();
    lastGood = new Date();
    unreachableSince = outage($("backend-banner"), null);
    $("token-view").hidden = true;
    $("me").hidden = false;
    $("forget").hidden = false;
    $("balance").textContent = yuan(phone.balance);
    $("card").textContent = phone.card_id;
    $("status").innerHTML = wordsHtml(PHONE_STATUSES, phone.status);
    $("status").dataset.status = phone.status;
    $("status").className = `badge ${phone.status === "active" ? "ok" : "bad"}`;
    $("last-tap").textContent = stamp(phone.last_tap_time);
    $("trips").innerHTML = trips.map((t) => `<tr data-state="${esc(t.state)}"><td>${esc(stamp(t.entry_time))}</td><td>${stationHtml(t.entry_station)}</td>
      <td>${t.exit_time ? esc(stamp(t.exit_time)) : "—"}</td><td>${stationHtml(t.exit_station)}</td><td>${yuan(t.fare)}</td><td>${wordsHtml(TRIP_STATES, t.state)}</td></tr>`).join("")
      || '<tr><td colspan="6" class="muted">No trips yet.</td></tr>';
    $("ledger").innerHTML = ledger.map(ledgerRow).join("") || '<tr><td colspan="4" class="muted">Nothing yet.</td></tr>';
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) signOut("That token is not valid (any more).");
    else if (!$("me").hidden) unreachableSince = outage($("backend-banner"), unreachableSince || new Date(), error, lastGood);
    else $("token-error").textContent = errorText(error);
  }
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN, $("token").value.trim());
  $("token").value = "";
  load();
  clearInterval(timer);
  timer = setInterval(load, 5000);
});
$("forget").addEventListener("click", () => signOut(""));

$("topup-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const fen = parseYuan($("amount").value);
  const where = $("topup-feedback");
  if (!fen) {
    say(where, "Enter an amount in yuan, such as 50 or 12.50.", "error");
    return;
  }
  try {
    const intent = await me("POST", "/topup", { amount: fen });
    say(where, `Top-up of ${yuan(fen)} is waiting for payment (reference ${intent.reference}): once the payment is confirmed it is added at your next tap.`, "ok");
    $("amount").value = "";
  } catch (error) {
    say(where, errorText(error), "error");
  }
});

$("lost-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const newCard = $("new-card").value.trim().toLowerCase();
  const where = $("lost-feedback");
  if (!confirm(`Block this phone for good and move its balance to ${newCard}?`)) return;
  try {
    const fresh = await me("POST", "/report-lost", { new_card_id: newCard });
    say(where, `Your old phone is blocked. Your balance moves to ${fresh.card_id} at its next tap; this page now shows it.`, "ok");
    $("new-card").value = "";
    load();
  } catch (error) {
    say(where, errorText(error), "error");
  }
});

if (sessionStorage.getItem(TOKEN)) {
  load();
  timer = setInterval(load, 5000);
}
