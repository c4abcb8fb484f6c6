// The operator page: polls the admin API every few seconds and draws what the server does.
// Everything here is read-only except "Estimate" (runs /admin/ope) and the key field.
"use strict";

const POLL_MS = 5000;
const WINDOW = 200;  // decisions per kind for the "share of choices" columns
const KINDS = ["math", "mc", "qa", "general"];
const state = { before: null, cursors: [], detail: null };

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({
  "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const pct = (v) => (v == null ? "-" : (100 * v).toFixed(1) + "%");
const num = (v, d = 3) => (v == null || Number.isNaN(v) ? "-" : Number(v).toFixed(d));

function key() { return sessionStorage.getItem("laserKey") || ""; }

async function api(path) {
  const headers = key() ? { Authorization: "Bearer " + key() } : {};
  const r = await fetch(path, { headers });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const msg = (body.error && body.error.message) || r.statusText;
    const err = new Error(r.status === 401 ? "API key required (or wrong): " + msg : msg);
    err.status = r.status;
    throw err;
  }
  return body;
}

function showError(e) {
  $("error").hidden = !e;
  $("error").textContent = e ? String(e.message || e) : "";
  $("status").textContent = e ? (e.status === 401 ? "locked" : "error") : "live";
  $("status").className = "pill " + (e ? "bad" : "ok");
}

// -- reward models by kind -----------------------------------------------------------------
async function drawRMs() {
  const [summary, byKind, recent] = await Promise.all([
    api("/admin/bandit"), api("/admin/bandit/kinds"),
    api("/admin/decisions?limit=500"),
  ]);
  const arms = Object.keys(summary.arms);
  const shares = {};  // kind -> rm -> [last WINDOW share, WINDOW before]
  for (const k of KINDS) {
    const rows = recent.decisions.filter((d) => d.kind === k);
    const cur = rows.slice(0, WINDOW), prev = rows.slice(WINDOW, 2 * WINDOW);
    shares[k] = {};
    for (const a of arms) {
      shares[k][a] = [cur.length ? cur.filter((d) => d.reward_model === a).length / cur.length : null,
                      prev.length ? prev.filter((d) => d.reward_model === a).length / prev.length : null];
    }
  }
  const kinds = KINDS.filter((k) => byKind[k]);
  $("rms").tHead.innerHTML = "<tr><th>RM</th>" + kinds.map((k) =>
    `<th>${k}: E[r] ± width</th><th>${k}: chose</th>`).join("") +
    "<th>updates</th><th>feedback mean</th><th>errors</th><th>circuit</th></tr>";
  $("rms").tBodies[0].innerHTML = arms.map((a) => {
    const s = summary.arms[a];
    const cells = kinds.map((k) => {
      const p = byKind[k][a];
      const [now, before] = shares[k][a];
      const trend = now == null || before == null ? "" : now > before ? " ↑" : now < before ? " ↓" : "";
      return `<td class="num">${p ? num(p.expectation) + " ± " + num(p.width) : "-"}</td>` +
        `<td class="num">${pct(now)}${trend}</td>`;
    }).join("");
    const circuit = s.circuit && s.circuit !== "closed" ? `<span class="open">${s.circuit}</span>` : (s.circuit || "-");
    return `<tr data-rm="${esc(a)}"><td>${esc(a)}${s.enabled ? "" : " (disabled)"}</td>${cells}` +
      `<td class="num">${s.updates ?? "-"}</td><td class="num">${num(s.mean_feedback)}</td>` +
      `<td class="num">${s.errors ?? "-"}</td><td>${circuit}${s.last_error ? " " + esc(s.last_error) : ""}</td></tr>`;
  }).join("");
  const sel = $("f-rm");
  if (sel.options.length !== arms.length + 1) {
    sel.innerHTML = '<option value="">any</option>' + arms.map((a) => `<option>${esc(a)}</option>`).join("");
  }
}

// -- decisions -----------------------------------------------------------------------------
function decisionQuery() {
  const q = new URLSearchParams({ limit: "50" });
  if ($("f-rm").value) q.set("reward_model", $("f-rm").value);
  if ($("f-feedback").value || $("f-correct").value) q.set("feedback", "yes");
  if ($("f-feedback").value === "no") q.set("feedback", "no");
  if ($("f-selection").value) q.set("selection", $("f-selection").value);
  if (state.before) q.set("before", state.before);
  return q;
}

async function drawDecisions() {
  const page = await api("/admin/decisions?" + decisionQuery());
  let rows = page.decisions;
  const kind = $("f-kind").value, correct = $("f-correct").value;
  if (kind) rows = rows.filter((d) => d.kind === kind);
  if (correct) rows = rows.filter((d) => (d.feedback >= 0.5) === (correct === "yes"));
  $("decisions").tBodies[0].innerHTML = rows.map((d) =>
    `<tr class="clickable" data-id="${esc(d.id)}"><td>${new Date(d.created * 1000).toLocaleTimeString()}</td>` +
    `<td>${esc(d.kind)}</td><td>${esc(d.question.slice(0, 90))}${d.has_document ? " 📄" : ""}</td>` +
    `<td>${esc(d.reward_model)}</td><td>${esc(d.selection)}</td><td class="num">${num(d.score)}</td>` +
    `<td class="num">${num(d.feedback, 2)}</td></tr>`).join("");
  $("older").hidden = !page.next;
  $("older").dataset.next = page.next || "";
  $("newest").hidden = !state.before;
}

async function openDecision(id) {
  const d = await api("/admin/decisions/" + encodeURIComponent(id));
  state.detail = id;
  const rms = [...new Set(d.candidates.flatMap((c) => Object.keys(c.scores)))];
  $("detail").hidden = false;
  $("detail").innerHTML =
    `<h3>Decision <code>${esc(d.id)}</code></h3>` +
    `<p><b>${esc(d.kind)}</b> · chosen by <b>${esc(d.reward_model)}</b> (${esc(d.selection)}` +
    `${d.drawn && d.drawn !== d.reward_model ? ", drawn " + esc(d.drawn) : ""}) · propensity ${num(d.propensity)}` +
    ` · feedback ${d.feedback == null ? "none" : num(d.feedback, 2)} · model ${esc(d.model)}</p>` +
    `<p>${esc(d.question)}</p>` +
    (d.has_document ? '<details class="doc"><summary>document(s)</summary>The documents are not kept in the log.</details>' : "") +
    `<p class="muted">stages: ${esc(Object.entries(d.timings_ms).map(([k, v]) => k + " " + Number(v).toFixed(1) + " ms").join(", ") || "-")}</p>` +
    `<p class="muted">agreed with the answer: ${esc(d.agree.join(", ") || "-")}; abstained: ${esc(d.abstain.join(", ") || "-")}</p>` +
    `<table id="candidates"><thead><tr><th>#</th><th>candidate</th>${rms.map((r) => `<th>${esc(r)}</th>`).join("")}</tr></thead><tbody>` +
    d.candidates.map((c, j) => `<tr class="${c.chosen ? "chosen" : ""}"><td>${j}${c.chosen ? " ✓" : ""}</td>` +
      `<td>${esc(c.text ?? "(not logged)")}</td>${rms.map((r) => `<td class="num">${num(c.scores[r])}</td>`).join("")}</tr>`).join("") +
    `</tbody></table><p><a href="#" id="json-toggle">JSON</a> · <code>GET /admin/decisions/${esc(d.id)}</code></p>` +
    `<pre id="json" hidden>${esc(JSON.stringify(d, null, 1))}</pre>`;
  $("json-toggle").onclick = (e) => { e.preventDefault(); $("json").hidden = !$("json").hidden; };
}

// -- policy, jobs, OPE ---------------------------------------------------------------------
async function drawJobs() {
  const [policy, jobs] = await Promise.all([api("/v1/policy"), api("/v1/training/jobs")]);
  $("policy").textContent = "serving " + policy.model + (policy.adapter ? " + adapter " + policy.adapter.name : " (base model)");
  $("jobs").tBodies[0].innerHTML = jobs.data.map((j) =>
    `<tr><td><code>${esc(j.id)}</code></td><td>${esc(j.state)}</td><td>${esc(j.selector)}</td>` +
    `<td>iteration ${j.iteration}/${j.iterations}, step ${j.step}${j.steps ? "/" + j.steps : ""}</td>` +
    `<td class="num">${num(j.last_loss)}</td><td>${esc(Object.entries(j.rm_counts).map(([k, v]) => k + " " + v).join(", "))}</td></tr>`
  ).join("") || '<tr><td colspan="6" class="muted">no training jobs</td></tr>';
}

async function runOPE() {
  $("ope").textContent = "estimating...";
  try {
    const r = await api("/admin/ope?bootstrap=200");
    const iv = (x) => `${num(x.value)} [${num(x.low)}, ${num(x.high)}]`;
    $("ope").innerHTML = `<p class="muted">${r.n} logged decisions with feedback; observed mean reward ${iv(r.observed)}.</p>` +
      "<table><thead><tr><th>policy</th><th>SNIPS</th><th>DR</th><th>ESS</th><th>status</th></tr></thead><tbody>" +
      r.policies.map((p) => `<tr><td>${esc(p.policy)}</td><td class="num">${iv(p.snips)}</td><td class="num">${iv(p.dr)}</td>` +
        `<td class="num">${num(p.ess, 1)}</td><td>${esc(p.status)}</td></tr>`).join("") + "</tbody></table>";
  } catch (e) {
    $("ope").textContent = String(e.message || e);
  }
}

// -- wiring --------------------------------------------------------------------------------
async function refresh() {
  try {
    await Promise.all([drawRMs(), drawDecisions(), drawJobs()]);
    showError(null);
  } catch (e) {
    showError(e);
  }
}

$("keyform").onsubmit = (e) => {
  e.preventDefault();
  sessionStorage.setItem("laserKey", $("key").value);
  $("key").value = "";
  refresh();
};
for (const id of ["f-rm", "f-kind", "f-feedback", "f-selection", "f-correct"]) {
  $(id).onchange = () => { state.before = null; state.cursors = []; drawDecisions().catch(showError); };
}
$("older").onclick = () => { state.cursors.push(state.before); state.before = $("older").dataset.next; drawDecisions().catch(showError); };
$("newest").onclick = () => { state.before = null; state.cursors = []; drawDecisions().catch(showError); };
$("decisions").onclick = (e) => {
  const row = e.target.closest("tr[data-id]");
  if (row) openDecision(row.dataset.id).catch(showError);
};
$("ope-run").onclick = runOPE;
refresh();
setInterval(() => { if (!state.before) refresh(); }, POLL_MS);
