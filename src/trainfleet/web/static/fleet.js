// Fleet page: click a heat map cell to see that node's findings and evidence; release a node (token needed).
"use strict";
async function showNode(node, check) {
  const doc = await tfGet("/api/fleet/nodes/" + encodeURIComponent(node));
  const panel = document.getElementById("evidence");
  const state = doc.history ? " (" + doc.history.state + ", blamed " + doc.history.blames + "x)" : "";
  panel.replaceChildren(tfEl("h2", node + state));
  for (const f of doc.findings) {
    if (check && f.check !== check) continue;
    const d = tfEl("div", null, "card");
    d.appendChild(tfEl("div", f.severity + " · " + f.check + " · " + (f.device || "-"), "sev-" + f.severity));
    d.appendChild(tfEl("div", f.message));
    d.appendChild(tfEl("div", f.evidence, "evidence"));
    if (f.hint) d.appendChild(tfEl("div", "fix: " + f.hint, "muted"));
    panel.appendChild(d);
  }
  panel.scrollIntoView({ behavior: "instant", block: "nearest" });
}
document.querySelectorAll("td.cell[data-node]").forEach(td =>
  td.addEventListener("click", () => showNode(td.dataset.node, td.dataset.check)));
document.querySelectorAll("button.release").forEach(b => b.addEventListener("click", async () => {
  const r = await tfPost("/api/fleet/nodes/" + encodeURIComponent(b.dataset.node) + "/release");
  b.nextElementSibling.textContent = r.status === 200 ? "released (" + r.body.was + " -> " + r.body.state + ")"
    : "refused (" + r.status + "): " + (r.body.detail || "");
  if (r.status === 200) {
    const row = b.closest("tr");
    row.className = "node-" + r.body.state;
    row.querySelector(".node-state").textContent = r.body.state;
    b.disabled = true;
  }
}));
