/* The commuter page: one's own phone through the self-service API (/api/v1/me) and its token. */
"use strict";

const TOKEN = "faregate.commuter.token";
const me = (method, path, body) => apiCall(TOKEN, method, `${API}/me${path}`, body);
let timer = null;

function flash(message, kind) {
  $("flash").textContent = message;
  $("flash").className = `flash ${kind || "info"}`;
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN);
  clearInterval(timer);
  $("me").hidden = true;
  $("forget").hidden = true;
  $("token-view").hidden = false;
  $("token-error").textContent = message || "";
}

async function load() {
  try {
    const [phone, trips] = await Promise.all([me("GET", ""), me("GET", "/trips?limit=50")]);
    $("token-view").hidden = true;
    $("me").hidden = false;
    $("forget").hidden = false;
    $("balance").textContent = yuan(phone.balance);
    $("card").textContent = phone.card_id;
    $("status").textContent = phone.status;
    $("status").className = `badge ${phone.status === "active" ? "ok" : "bad"}`;
    $("last-tap").textContent = stamp(phone.last_tap_time);
    $("trips").innerHTML = trips.map((t) => `<tr><td>${esc(stamp(t.entry_time))}</td><td>${t.entry_station ?? "—"}</td>
      <td>${esc(stamp(t.exit_time))}</td><td>${t.exit_station ?? "—"}</td><td>${yuan(t.fare)}</td><td>${esc(t.state)}</td></tr>`).join("")
      || '<tr><td colspan="6" class="muted">No trips yet.</td></tr>';
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) signOut("That token is not valid (any more).");
    else flash(String(error.detail || error), "error");
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
  if (!fen) {
    flash("Enter an amount in yuan, such as 50 or 12.50.", "error");
    return;
  }
  try {
    const intent = await me("POST", "/topup", { amount: fen });
    flash(`Top-up of ${yuan(fen)} is waiting for payment (reference ${intent.reference}): once the payment is confirmed it is added at your next tap.`, "ok");
    $("amount").value = "";
  } catch (error) {
    flash(error instanceof ApiError ? `Refused: ${error.detail}` : String(error), "error");
  }
});

$("lost-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const newCard = $("new-card").value.trim().toLowerCase();
  if (!confirm(`Block this phone for good and move its balance to ${newCard}?`)) return;
  try {
    const fresh = await me("POST", "/report-lost", { new_card_id: newCard });
    flash(`Your old phone is blocked. Your balance moves to ${fresh.card_id} at its next tap; this page now shows it.`, "ok");
    $("new-card").value = "";
    load();
  } catch (error) {
    flash(error instanceof ApiError ? `Refused: ${error.detail}` : String(error), "error");
  }
});

if (sessionStorage.getItem(TOKEN)) {
  load();
  timer = setInterval(load, 5000);
}
