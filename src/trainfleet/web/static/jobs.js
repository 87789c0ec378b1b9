// Jobs page: refresh the table from /api/jobs (the page's JSON twin) every 2 s.
"use strict";
const JOBS_POLL_MS = 2000;
function jobRow(j) {
  const tr = document.createElement("tr");
  const a = tfEl("a", j.id); a.href = "/jobs/" + j.id;
  const id = document.createElement("td"); id.appendChild(a); tr.appendChild(id);
  tr.appendChild(tfEl("td", j.name));
  const st = document.createElement("td"); st.appendChild(tfEl("span", j.state, "state state-" + j.state)); tr.appendChild(st);
  tr.appendChild(tfEl("td", j.restarts));
  const ratio = j.goodput ? j.goodput.ratio : null;
  tr.appendChild(tfEl("td", ratio === null || ratio === undefined ? "-" : (100 * ratio).toFixed(1) + " %"));
  tr.appendChild(tfEl("td", j.step === null ? "-" : j.step));
  tr.appendChild(tfEl("td", tfFmt(j.loss, 4)));
  tr.appendChild(tfEl("td", tfFmt(j.throughput, 0)));
  tr.appendChild(tfEl("td", j.nodes + " x " + j.procs_per_node));
  tr.appendChild(tfEl("td", tfAgo(j.created_at)));
  tr.appendChild(tfEl("td", j.reason || ""));
  return tr;
}
async function refreshJobs() {
  const state = document.body.dataset.state;
  try {
    const doc = await tfGet("/api/jobs" + (state ? "?state=" + encodeURIComponent(state) : ""));
    const body = document.getElementById("jobs-body");
    body.replaceChildren(...doc.jobs.map(jobRow));
    for (const [s, n] of Object.entries(doc.counts)) {
      const e = document.getElementById("count-" + s); if (e) e.textContent = n;
    }
  } catch (e) { /* keep the last table; the next poll retries */ }
}
refreshJobs();
setInterval(refreshJobs, JOBS_POLL_MS);
