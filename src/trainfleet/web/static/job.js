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
  document.getElementById("tput-chart").dataset.points = tputChart.pointCount();
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
// The attempts as bars on one time axis (width = run time), coloured by state, cause in the tooltip.
function fillTimeline(attempts, now) {
  const box = document.getElementById("timeline");
  const spans = attempts.filter(a => a.started_at).map(a => [a, a.started_at, a.ended_at || now]);
  if (!spans.length) { box.replaceChildren(); return; }
  const t0 = Math.min(...spans.map(s => s[1])), t1 = Math.max(...spans.map(s => s[2]));
  const total = Math.max(t1 - t0, 1e-3);
  box.replaceChildren(...spans.map(([a, start, end]) => {
    const bar = tfEl("div", "attempt " + a.attempt + ": " + a.state, "bar state-" + a.state);
    bar.style.left = (100 * (start - t0) / total) + "%";
    bar.style.width = Math.max(0.5, 100 * (end - start) / total) + "%";
    bar.title = "attempt " + a.attempt + " " + a.state + ", " + (end - start).toFixed(1) + " s" + (a.reason ? ": " + a.reason : "");
    bar.dataset.attempt = a.attempt;
    return bar;
  }));
}
function fillStory(lines) {
  document.getElementById("story").replaceChildren(...lines.map(l => tfEl("li", l)));
}
function fillStacks(dumps) {
  const box = document.getElementById("stacks"), text = document.getElementById("stack-text");
  if (!dumps.length) return;
  const cards = dumps.map(d => {
    const card = tfEl("div", "attempt " + d.attempt + ": " + d.message, "card stack-dump");
    card.dataset.attempt = d.attempt;
    card.appendChild(document.createElement("br"));
    for (const f of d.files) {
      const b = tfEl("button", "rank " + f.rank + (f.odd ? " (odd one out)" : ""), "stack-rank" + (f.odd ? " odd" : ""));
      b.dataset.url = f.url; b.dataset.rank = f.rank;
      card.appendChild(b);
    }
    return card;
  });
  box.replaceChildren(...cards, text);
}
async function showStack(button) {
  const text = document.getElementById("stack-text");
  text.hidden = false;
  try {
    const doc = await tfGet(button.dataset.url);
    text.className = "logs" + (doc.odd ? " odd" : "");
    text.textContent = "rank " + doc.rank + " attempt " + doc.attempt + (doc.odd ? " (odd rank out)" : "") + "\n" + doc.text
      + (doc.truncated ? "\n[cut]" : "");
  } catch (e) { text.textContent = String(e); }
}
function fillEvents(events) {
  document.getElementById("events-body").replaceChildren(...events.map(e => {
    const tr = document.createElement("tr");
    tr.dataset.kind = e.kind;
    for (const v of [new Date(e.ts * 1000).toLocaleTimeString(), e.kind, e.attempt, e.node, e.rank, e.message]) {
      tr.appendChild(tfEl("td", v === null || v === undefined ? "" : v));
    }
    return tr;
  }));
}
let lastStacks = -1;
async function refreshStatus() {
  const doc = await tfGet("/api/jobs/" + JOB_ID);
  const st = document.getElementById("job-state");
  st.textContent = doc.state; st.className = "state state-" + doc.state;
  document.getElementById("job-restarts").textContent = doc.restarts;
  document.getElementById("job-step").textContent = doc.step === null ? "-" : doc.step;
  const g = doc.goodput || {};
  document.getElementById("job-goodput").textContent = g.ratio === null || g.ratio === undefined ? "-" : (100 * g.ratio).toFixed(1) + " %";
  document.getElementById("job-lost").textContent = g.failures ? "lost: " + Object.entries(g.lost_s).map(([k, v]) => k + " " + v.toFixed(1) + " s").join(", ") : "";
  document.getElementById("job-tput").textContent = tfFmt(doc.throughput, 0);
  document.getElementById("job-reason").textContent = doc.reason || "";
  fillRanks(doc.ranks); fillAttempts(doc.attempts); fillTimeline(doc.attempts, Date.now() / 1000); fillStory(doc.story || []);
  fillEvents(doc.events || []);
  if ((doc.stack_dumps || []).length !== lastStacks) { lastStacks = doc.stack_dumps.length; fillStacks(doc.stack_dumps); }
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
document.getElementById("stacks").addEventListener("click", ev => {
  const b = ev.target.closest("button.stack-rank");
  if (b) showStack(b);
});
document.getElementById("cancel").addEventListener("click", async () => {
  const msg = document.getElementById("cancel-msg");
  msg.textContent = "cancelling...";
  const r = await tfPost("/api/jobs/" + JOB_ID + "/cancel");
  msg.textContent = r.status === 200 ? "cancelled: " + r.body.state
    : "refused (" + r.status + "): " + (r.body.detail || "");
  refreshStatus();
});
tick();
