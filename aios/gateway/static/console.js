// The operator console's page: reads /console/api/overview every few seconds and renders it. Every value is put
// in the page with textContent (never innerHTML): ids, summaries, paths and payloads come from agents.
"use strict";

const REFRESH_MS = 3000;
let token = null;
let timer = null;
let latest = 0;  // the newest refresh started: an older one that answers late must not draw over it

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
  }
  return node;
}

function table(columns, rows, empty) {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  const head = el("tr", {}, ...columns.map((c) => el("th", {}, c)));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows));
}

function td(value, cls) { return el("td", cls ? { class: cls } : {}, value); }
function ms(seconds) { return `${Math.round((seconds || 0) * 1000)} ms`; }
function when(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString() : ""; }

function show(id, node) { document.getElementById(id).replaceChildren(node); }
function say(text, cls) { const m = document.getElementById("message"); m.textContent = text; m.className = cls || ""; }

async function api(path, options) {
  const response = await fetch(path, {
    ...(options || {}),
    headers: { "Authorization": `Bearer ${token}`, "Content-Type": "application/json" },
    cache: "no-store",
  });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401) { signOut("the console token was refused"); throw new Error("refused"); }
  if (!response.ok) throw new Error((body && body.error && body.error.message) || `HTTP ${response.status}`);
  return body;
}

function renderApprovals(list, now) {
  const rows = list.map((r) => {
    const approve = el("button", { class: "approve", type: "button" }, "Approve");
    const deny = el("button", { class: "deny", type: "button" }, "Deny");
    approve.addEventListener("click", () => decide(r, "approve"));
    deny.addEventListener("click", () => decide(r, "deny"));
    const left = r.deadline - now;
    const what = el("td", {},
      el("div", { class: "summary" }, r.summary),
      el("details", {}, el("summary", {}, "the signed payload that runs"),
        el("pre", { class: "payload" }, JSON.stringify(r.payload, null, 2))));
    return el("tr", { "data-approval": r.id },
      td(r.id), td(r.agent_id), what, el("td", { class: "digest" }, r.digest), td(r.reason),
      td(left > 0 ? `${Math.round(left)} s` : "expired"), el("td", {}, approve, " ", deny));
  });
  show("approvals", table(["syscall", "agent", "what will run", "digest (SHA-256)", "why", "left", ""], rows,
    "no syscall waits for approval"));
}

function renderAgents(data) {
  const stats = {};
  for (const a of data.status.agents) {
    (stats[a.agent] = stats[a.agent] || []).push(`${a.resource}: ${a.syscalls} (${ms(a.mean_wait_s)} wait)`);
  }
  const latest = {};
  for (const s of data.recent) if (!(s.agent in latest)) latest[s.agent] = s;
  const ids = new Set([...data.credentials.map((c) => c.agent_id), ...Object.keys(stats)]);
  const creds = Object.fromEntries(data.credentials.map((c) => [c.agent_id, c]));
  const rows = [...ids].sort().map((id) => {
    const c = creds[id] || {};
    const last = latest[id];
    return el("tr", { "data-agent": id },
      td(id), td((c.groups || []).join(", ")), td(c.max_priority ?? ""),
      td(c.revoked ? "revoked" : (c.agent_id ? "active" : "no credential"), c.revoked ? "error" : ""),
      td((stats[id] || []).join("; ")), td(data.status.tokens_used[id] ?? "", "num"),
      td(last ? `${last.kind} ${last.what} ${last.status} ${when(last.at)}` : ""));
  });
  show("agents", table(["agent", "groups", "max priority", "credential", "syscalls", "LLM tokens", "last syscall"],
    rows, "no agents"));
}

function renderRecent(list) {
  const rows = list.map((s) => el("tr", { "data-syscall": s.id },
    td(when(s.at)), td(s.agent), td(s.kind), td(s.what), td(s.status + (s.code ? ` (${s.code})` : ""),
      s.status === "ok" ? "ok" : "error"), td(ms(s.wait_s), "num"), td(ms(s.service_s), "num"), td(s.id)));
  show("recent", table(["finished", "agent", "kind", "call", "status", "wait", "service", "syscall"], rows,
    "no syscall answered yet"));
}

function renderFleet(status) {
  show("queues", table(["queue", "waiting"], Object.entries(status.queues).map(([q, n]) =>
    el("tr", { "data-queue": q }, td(q), td(n == null ? "-" : n, "num"))), "no queues"));
  show("workers", table(["worker", "active", "reserved"], status.workers.map((w) =>
    el("tr", {}, td(w.name), td(w.active, "num"), td(w.reserved, "num"))), "no worker answered"));
  show("quotas", table([`scope`, `requests / ${status.quota_window_s} s`, `tokens / ${status.quota_window_s} s`,
    "running", "limits"], status.quotas.map((q) => el("tr", {}, td(q.scope), td(q.requests, "num"),
    td(q.tokens, "num"), td(q.running, "num"),
    td(Object.entries(q.limits).map(([k, v]) => `${k}=${v}`).join(", ")))), "no quota used"));
}

function renderAudit(list) {
  const rows = list.map((e) => el("tr", {}, td(when(e.ts)), td(e.decision, e.decision), td(e.actor), td(e.op),
    td(e.owner), td(e.resource), td(e.target), td(e.reason)));
  show("audit", table(["time", "decision", "actor", "op", "owner", "resource", "target", "reason"], rows,
    "no audit entries"));
}

async function refresh() {
  const mine = ++latest;
  try {
    const data = await api("/console/api/overview");
    if (mine !== latest) return;
    renderApprovals(data.approvals, data.now);
    renderAgents(data);
    renderRecent(data.recent);
    renderFleet(data.status);
    renderAudit(data.audit);
    document.getElementById("state").textContent = `broker ${data.status.broker || "?"}; updated ${when(data.now)}`;
    document.body.dataset.loaded = String(data.now);
  } catch (e) {
    if (token) say(`could not read the kernel's state: ${e.message}`, "error");
  }
}

async function decide(request, action) {
  const body = action === "approve" ? { digest: request.digest } : { reason: "denied in the operator console" };
  try {
    await api(`/console/api/approvals/${encodeURIComponent(request.id)}/${action}`,
      { method: "POST", body: JSON.stringify(body) });
    say(`${action === "approve" ? "approved" : "denied"} ${request.id}: ${request.summary}`, "ok");
  } catch (e) {
    say(`${action} ${request.id} failed: ${e.message}`, "error");
  }
  await refresh();
}

function signIn(value) {
  token = value;
  sessionStorage.setItem("aios-console-token", value);
  document.getElementById("login").hidden = true;
  document.getElementById("main").hidden = false;
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

function signOut(why) {
  token = null;
  sessionStorage.removeItem("aios-console-token");
  clearInterval(timer);
  document.getElementById("main").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("state").textContent = why || "not signed in";
}

document.addEventListener("DOMContentLoaded", () => {
  const fragment = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fragment) history.replaceState(null, "", location.pathname);  // not left in the address bar or history
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn(document.getElementById("token").value.trim());
  });
  const held = fragment || sessionStorage.getItem("aios-console-token");
  if (held) signIn(held); else signOut();
});
