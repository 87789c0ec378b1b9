// Shared helpers: the token (from the URL fragment #token=..., kept in sessionStorage) and JSON calls.
"use strict";
(function () {
  const m = location.hash.match(/token=([A-Za-z0-9_\-]+)/);
  if (m) { sessionStorage.setItem("trainfleet-token", m[1]); history.replaceState(null, "", location.pathname + location.search); }
})();
function tfToken() { return sessionStorage.getItem("trainfleet-token") || ""; }
async function tfGet(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}
async function tfPost(url) {
  const headers = { Accept: "application/json" };
  const token = tfToken();
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(url, { method: "POST", headers });
  let body = {};
  try { body = await r.json(); } catch (e) { body = {}; }
  return { status: r.status, body };
}
function tfEl(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function tfFmt(v, digits) { return v === null || v === undefined ? "-" : Number(v).toFixed(digits); }
function tfAgo(ts) { if (!ts) return "-"; const s = Date.now() / 1000 - ts; return s < 120 ? Math.round(s) + " s ago" : s < 7200 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago"; }
// The header's token form: keep the token for this tab (state-changing buttons send it as a Bearer token).
function tfShowToken() {
  const e = document.getElementById("token-state");
  if (e) e.textContent = tfToken() ? "token set" : "no token";
}
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("token-form");
  if (!form) return;
  form.addEventListener("submit", ev => {
    ev.preventDefault();
    const input = document.getElementById("token-input");
    sessionStorage.setItem("trainfleet-token", input.value.trim());
    input.value = "";
    tfShowToken();
  });
  tfShowToken();
});
