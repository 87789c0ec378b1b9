// Job page: live state, ranks, attempts, loss/throughput curves, log tail, cancel.
"use strict";
const JOB_ID = document.body.dataset.job;
const POLL_MS = 1500;
let since = 0;
const points = { loss: {}, tput: {} };  // attempt -> [[step, value]]
const lossChart = new LineChart(document.getElementById("loss-chart"), { title: "loss (rank 0)" });
const tputChart = new LineChart(document.getElementById("tput-chart"), { title: "throughput (rank 0)" });

function series(byAttempt) {
  return Object.keys(byAttempt).sort((a, b) => a - b).map(a => ({ label: "attempt " + a, points: byAttempt[a] }));
}
async function refreshMetrics() {
  const doc = await tfGet("/api/jobs/" + JOB_ID + "/metrics?since=" + since);
  for (const p of doc.points) {
    if (typeof p.loss === "number") (points.loss[p.attempt] = points.loss[p.attempt] || []).push([p.step, p.loss]);
    if (typeof p.throughput === "number") (points.tput[p.attempt] = points.tput[p.attempt] || []).push([p.step, p.throughput]);
  }
  since = doc.next;
  lossChart.setSeries(series(points.loss));
  tputChart.setSeries(series(points.tput));
  document.getElementById("loss-chart").dataset.points = lossChart.pointCount();
}
function fillRanks(ranks) {
  const body = document.getElementById("ranks-body");
  body.replaceChildren(...ranks.map(r => {
    const tr = document.createElement("tr");
    for (const v of [r.rank, r.node_rank, r.host, r.pid]) tr.appendChild(tfEl("td", v === null ? "-" : v));
    const st = document.createElement("td"); st.appendChild(tfEl("span", r.state, "state state-" + r.state)); tr.appendChild(st);
    tr.appendChild(tfEl("td", r.exit_code === null ? (r.signal ? "signal " + r.signal : "-") : r.exit_code));
    return tr;
  }));
}
function fillAttempts(attempts) {
  const body = document.getElementById("attempts-body");
  body.replaceChildren(...attempts.map(a => {
    const tr = document.createElement("tr");
    tr.appendChild(tfEl("td", a.attempt));
    const st = document.createElement("td"); st.appendChild(tfEl("span", a.state, "state state-" + a.state)); tr.appendChild(st);
    tr.appendChild(tfEl("td", a.started_at ? new Date(a.started_at * 1000).toLocaleTimeString() : "-"));
    tr.appendChild(tfEl("td", a.ended_at && a.started_at ? (a.ended_at - a.started_at).toFixed(1) + " s" : "-"));
    tr.appendChild(tfEl("td", a.reason || ""));
    return tr;
  }));
}
async function refreshStatus() {
  const doc = await tfGet("/api/jobs/" + JOB_ID);
  const st = document.getElementById("job-state");
  st.textContent = doc.state; st.className = "state state-" + doc.state;
  document.getElementById("job-restarts").textContent = doc.restarts;
  document.getElementById("job-step").textContent = doc.step === null ? "-" : doc.step;
  document.getElementById("job-goodput").textContent = doc.goodput === null ? "-" : (100 * doc.goodput).toFixed(1) + " %";
  document.getElementById("job-reason").textContent = doc.reason || "";
  fillRanks(doc.ranks); fillAttempts(doc.attempts);
  return doc;
}
async function refreshLogs() {
  const rank = document.getElementById("log-rank").value;
  const doc = await tfGet("/api/jobs/" + JOB_ID + "/logs?tail=200" + (rank === "" ? "" : "&rank=" + rank));
  const sel = document.getElementById("log-rank");
  for (const r of doc.ranks) {
    if (![...sel.options].some(o => o.value === String(r))) sel.appendChild(new Option("rank " + r, String(r)));
  }
  const pre = document.getElementById("logs");
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent = doc.lines.map(l => "[" + l.node + ":" + l.rank + (l.stream === "err" ? " err" : "") + "] " + l.text).join("\n");
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}
async function tick() {
  let doc = null;
  try { doc = await refreshStatus(); await refreshMetrics(); await refreshLogs(); } catch (e) { /* retry next tick */ }
  if (!doc || !["succeeded", "failed", "cancelled"].includes(doc.state)) setTimeout(tick, POLL_MS);
}
document.getElementById("log-rank").addEventListener("change", () => refreshLogs());
document.getElementById("cancel").addEventListener("click", async () => {
  const msg = document.getElementById("cancel-msg");
  msg.textContent = "cancelling...";
  const r = await tfPost("/api/jobs/" + JOB_ID + "/cancel");
  msg.textContent = r.status === 200 ? "cancelled: " + r.body.state
    : "refused (" + r.status + "): " + (r.body.detail || "");
  refreshStatus();
});
document.getElementById("token-form").addEventListener("submit", ev => {
  ev.preventDefault();
  sessionStorage.setItem("trainfleet-token", document.getElementById("token-input").value.trim());
  document.getElementById("token-input").value = "";
});
tick();
