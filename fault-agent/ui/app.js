// The dashboard: asks for the token, then every second lists the faults (with their counters
// charted) and the pods (for the pair matrix); forms to inject, recover, verify and clean up.
import * as api from "./api.js";
import { Charts, COUNTERS } from "./charts.js";
import { renderPairs } from "./pairs.js";
import { kind, specFromForm } from "./spec.js";

const REFRESH_MS = 1000;
const charts = new Charts();
const $ = (sel) => document.querySelector(sel);
let timer = null;

function setStatus(text, ok) {
  const s = $("#status");
  s.textContent = text;
  s.className = `status ${ok ? "ok" : "bad"}`;
}

const podNames = (refs) => refs.map((p) => p.name).join(", ") || "-";

function peersText(fault) {
  const cidrs = fault.peer_cidrs.join(", ");
  return fault.peers.length ? `${podNames(fault.peers)}${cidrs ? `; ${cidrs}` : ""}` : cidrs || "-";
}

function timeLeft(fault, now) {
  if (fault.state !== "active" && fault.state !== "pending") return "-";
  const s = Math.max(0, Math.round((Date.parse(fault.expires_at) - now) / 1000));
  if (s >= 86400) return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  if (s >= 3600) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return s >= 60 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${s}s`;
}

/// The row of fault `id`, made once (its canvas keeps its chart across refreshes).
function row(tbody, id) {
  let tr = tbody.querySelector(`tr[data-fault-id="${CSS.escape(id)}"]`);
  if (tr) return tr;
  tr = document.createElement("tr");
  tr.dataset.faultId = id;
  const cells = ["id", "kind", "phase", "targets", "peers", "left", ...COUNTERS];
  for (const c of cells) tr.insertCell().className = c;
  const canvas = document.createElement("canvas");
  canvas.width = 220;
  canvas.height = 56;
  tr.insertCell().appendChild(canvas);
  const actions = tr.insertCell();
  actions.className = "actions";
  for (const [label, cls] of [["Recover", "recover"], ["Verify", "verify"]]) {
    const b = document.createElement("button");
    b.textContent = label;
    b.className = cls;
    b.dataset.id = id;
    actions.appendChild(b);
  }
  tbody.appendChild(tr);
  return tr;
}

function renderFaults(faults, now) {
  const tbody = $("#faults tbody");
  const live = (f) => (f.state === "active" || f.state === "pending" ? 0 : 1);
  const sorted = [...faults].sort((a, b) => live(a) - live(b) || b.created_at.localeCompare(a.created_at));
  const ids = new Set(sorted.map((f) => f.id));
  for (const tr of [...tbody.rows]) if (!ids.has(tr.dataset.faultId)) tr.remove();
  for (const f of sorted) {
    const tr = row(tbody, f.id);
    tbody.appendChild(tr); // keeps the sorted order
    const set = (cls, text) => (tr.querySelector(`td.${cls}`).textContent = text);
    set("id", f.id);
    set("kind", kind(f.spec));
    set("phase", f.state);
    set("targets", podNames(f.targets));
    set("peers", peersText(f));
    set("left", timeLeft(f, now));
    for (const c of COUNTERS) set(c, String(f.counters[c]));
    tr.className = f.state;
    tr.title = [f.message, ...(f.warnings ?? [])].filter(Boolean).join("\n");
    tr.querySelector("button.recover").disabled = live(f) !== 0;
    charts.record(f.id, now, f.counters);
    charts.draw(f.id, tr.querySelector("canvas"), now);
  }
  charts.keepOnly(ids);
  $("#faults-empty").hidden = sorted.length > 0;
}

async function refresh() {
  try {
    const [{ faults }, { pods }] = await Promise.all([api.listFaults(), api.listPods()]);
    const now = Date.now();
    renderFaults(faults, now);
    renderPairs($("#pairs"), faults, pods);
    setStatus(`connected, ${new Date(now).toLocaleTimeString()}`, true);
  } catch (e) {
    setStatus(e.status ? `error (HTTP ${e.status}): ${e.message}` : `error: ${e.message}`, false);
  }
}

function start() {
  clearInterval(timer);
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

async function inject(ev) {
  ev.preventDefault();
  const out = $("#inject-error");
  out.textContent = "";
  try {
    const fault = await api.createFault(specFromForm(ev.target));
    out.className = "ok";
    out.textContent = `created ${fault.id}${fault.warnings?.length ? `: ${fault.warnings.join("; ")}` : ""}`;
    refresh();
  } catch (e) {
    out.className = "error";
    out.textContent = e.message;
  }
}

async function onFaultButton(ev) {
  const b = ev.target.closest("button");
  if (!b?.dataset.id) return;
  const out = $("#verify-result");
  out.hidden = false;
  try {
    if (b.classList.contains("recover")) {
      const f = await api.recoverFault(b.dataset.id);
      out.textContent = `${f.id}: ${f.state}`;
    } else {
      out.textContent = `${b.dataset.id}: verifying...`;
      const report = await api.verifyFault(b.dataset.id);
      out.textContent = `${b.dataset.id} verify:\n${JSON.stringify(report, null, 2)}`;
    }
  } catch (e) {
    out.textContent = `${b.dataset.id}: error (HTTP ${e.status ?? "-"}): ${e.message}`;
  }
  refresh();
}

async function onCleanup(ev) {
  ev.preventDefault();
  const form = ev.target;
  const out = $("#cleanup-result");
  const request = form.elements.all.checked
    ? { all: true }
    : { namespace: form.elements.namespace.value.trim() };
  try {
    const res = await api.cleanup(request);
    out.textContent = `recovered: ${res.recovered.join(", ") || "none"}`;
  } catch (e) {
    out.textContent = `error (HTTP ${e.status ?? "-"}): ${e.message}`;
  }
  refresh();
}

$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  api.setToken($("#token").value.trim());
  start();
});
$("#inject").addEventListener("submit", inject);
$("#faults").addEventListener("click", onFaultButton);
$("#cleanup").addEventListener("submit", onCleanup);
if (api.token()) start();
