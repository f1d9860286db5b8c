// Weir's web console. No framework and no inline script (the CSP forbids both): the DOM is
// built with textContent only, so nothing from the trail or a client is ever parsed as HTML.
"use strict";

const state = { me: null, page: null, timer: null };

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (state.me) headers["X-Weir-CSRF"] = state.me.csrf;
  }
  const resp = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401 && path !== "/console/login") {
    signedOut();
    throw new Error("signed out");
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!resp.ok) throw new Error((data && data.error) || resp.statusText);
  return data;
}

function flash(msg, isError) {
  const f = $("flash");
  f.textContent = msg;
  f.className = isError ? "error" : "ok";
}

function age(ms) { return span(Date.now() - ms); }

function span(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}

function when(ms) { return new Date(ms).toISOString().replace(".000Z", "Z"); }

function signedOut() {
  state.me = null;
  clearInterval(state.timer);
  $("nav").hidden = true;
  $("signout").hidden = true;
  $("whoami").textContent = "";
  show("signin");
}

function signedIn(me) {
  state.me = me;
  $("whoami").textContent = me.identity + " (" + me.kind + ")";
  $("signout").hidden = false;
  $("nav").hidden = false;
  for (const a of document.querySelectorAll("#nav a")) {
    a.hidden = !me.may[a.dataset.may];
  }
  const sel = $("simulate-target");
  sel.replaceChildren(...me.targets.map((t) => el("option", { value: t.name }, t.name + " (" + t.engine + ", " + t.environment + ")")));
  route();
}

function show(page) {
  for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== "page-" + page;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  state.page = page;
}

const pages = {
  approvals: { load: loadApprovals, every: 1500 },
  sessions: { load: loadSessions, every: 2000 },
  audit: { load: async () => { await searchAudit(); } },
  simulate: { load: async () => {} },
  grants: { load: loadGrants, every: 5000 },
};

function route() {
  if (!state.me) return signedOut();
  let page = location.hash.replace(/^#/, "");
  const first = Object.keys(pages).find((p) => state.me.may[navMay(p)]);
  if (!pages[page] || !state.me.may[navMay(page)]) page = first || "simulate";
  show(page);
  $("flash").textContent = "";
  clearInterval(state.timer);
  const p = pages[page];
  p.load().catch((e) => flash(e.message, true));
  if (p.every) state.timer = setInterval(() => p.load().catch(() => {}), p.every);
}

function navMay(page) {
  const a = document.querySelector('#nav a[data-page="' + page + '"]');
  return a ? a.dataset.may : "";
}

// Approvals ----------------------------------------------------------------------------

async function loadApprovals() {
  const list = await api("GET", "/v1/approvals");
  $("pending-count").textContent = list.length ? String(list.length) : "";
  $("approvals-empty").hidden = list.length > 0;
  const box = $("approvals-list");
  const seen = new Set();
  for (const a of list) {
    seen.add(a.id);
    let card = box.querySelector('[data-id="' + CSS.escape(a.id) + '"]');
    if (!card) {
      card = approvalCard(a);
      box.append(card);
    }
    card.querySelector(".age").textContent = "waiting " + age(a.created_ms) + ", " + span(a.deadline_ms - Date.now()) + " left";
  }
  for (const card of [...box.children]) if (!seen.has(card.dataset.id)) card.remove();
}

function factsLine(f) {
  if (!f || typeof f !== "object") return "";
  const parts = [];
  if (f.kind) parts.push("kind " + f.kind);
  if (f.tables_written && f.tables_written.length) parts.push("writes " + f.tables_written.join(", "));
  if (f.tables_read && f.tables_read.length) parts.push("reads " + f.tables_read.join(", "));
  if (f.hazards && f.hazards.length) parts.push("hazards " + f.hazards.join(", "));
  return parts.join(" · ");
}

function approvalCard(a) {
  const reason = el("input", { type: "text", placeholder: "reason (required to deny)", class: "reason" });
  const decide = (verb) => async () => {
    try {
      const r = await api("POST", "/v1/approvals/" + encodeURIComponent(a.id) + "/" + verb, { reason: reason.value || undefined });
      flash("request " + r.id + " " + r.status + " by " + r.decided_by);
      await loadApprovals();
    } catch (e) { flash(e.message, true); }
  };
  const facts = Array.isArray(a.facts) ? a.facts.map(factsLine).join(" | ") : factsLine(a.facts);
  return el("article", { class: "card", "data-id": a.id },
    el("h2", {}, a.kind === "access" ? "Access request " : "Statement ", el("code", {}, a.id)),
    el("p", {}, el("strong", {}, a.identity), " (" + a.identity_kind + ") on ", el("strong", {}, a.target)),
    el("pre", { class: "sql" }, a.statement),
    el("p", { class: "facts" }, facts, a.rows !== null && a.rows !== undefined ? " · " + a.rows + " rows" : ""),
    el("p", {}, "rule ", el("code", {}, a.rule), ": " + a.reason),
    el("p", { class: "age" }),
    el("div", { class: "actions" }, reason,
      el("button", { type: "button", class: "approve", onclick: decide("approve") }, "Approve"),
      el("button", { type: "button", class: "deny", onclick: decide("deny") }, "Deny")));
}

// Sessions -----------------------------------------------------------------------------

async function loadSessions() {
  const list = await api("GET", "/v1/sessions");
  $("sessions-empty").hidden = list.length > 0;
  const rows = list.map((s) => {
    const end = el("button", { type: "button", class: "end", onclick: async () => {
      try {
        await api("POST", "/v1/sessions/" + s.session + "/end", { reason: "ended from the console" });
        flash("session " + s.session + " ended");
        await loadSessions();
      } catch (e) { flash(e.message, true); }
    } }, "End");
    end.hidden = !state.me.may.end_session;
    return el("tr", { "data-session": String(s.session) },
      el("td", {}, String(s.session)), el("td", {}, s.identity), el("td", {}, s.identity_kind),
      el("td", {}, s.target), el("td", {}, s.channel), el("td", {}, s.client_addr),
      el("td", {}, age(s.since_ms)), el("td", {}, String(s.statements)),
      el("td", {}, el("code", {}, s.last_statement)), el("td", {}, end));
  });
  document.querySelector("#sessions-table tbody").replaceChildren(...rows);
}

// Audit --------------------------------------------------------------------------------

function auditQuery() {
  const q = new URLSearchParams();
  for (const [k, v] of new FormData($("audit-form"))) if (v) q.set(k, v);
  return q;
}

function detail(e) {
  switch (e.event) {
    case "statement": return (e.via ? e.via + " " : "") + (e.sql || "") + (e.rule ? "  [" + e.rule + "]" : "");
    case "completed": return "rows=" + (e.rows ?? "") + " " + (e.duration_us ?? "") + "us" + (e.sqlstate ? " sqlstate=" + e.sqlstate : "") + (e.masked && e.masked.length ? " masked=" + e.masked.join(",") : "");
    case "connection_opened": return (e.identity_kind || "") + " from " + (e.client_addr || "") + " tls=" + e.tls;
    case "connection_closed": return "requests=" + (e.requests ?? "") + " " + (e.reason || "");
    case "auth_failed": return (e.claimed || "") + ": " + (e.reason || "");
    case "admin": return e.action + " " + e.subject;
    default: {
      const copy = Object.assign({}, e);
      for (const k of ["seq", "ts_us", "event", "session", "identity", "target", "decision"]) delete copy[k];
      return JSON.stringify(copy);
    }
  }
}

async function searchAudit(extra) {
  const q = auditQuery();
  if (extra) for (const [k, v] of Object.entries(extra)) q.set(k, v);
  const data = await api("GET", "/v1/audit/events?" + q.toString());
  const rows = data.events.map((e) => {
    const replay = e.session !== undefined
      ? el("a", { href: "#audit", onclick: (ev) => { ev.preventDefault(); replaySession(e.session); } }, "s" + e.session)
      : "";
    const undo = e.event === "statement" && e.change
      ? el("a", { href: "#audit", className: "undo-link", onclick: (ev) => { ev.preventDefault(); previewUndo(e.seq).catch((x) => flash(x.message, true)); } }, "undo")
      : "";
    return el("tr", {},
      el("td", {}, String(e.seq), " ", undo), el("td", {}, when(e.ts_us / 1000)), el("td", {}, e.event),
      el("td", {}, replay), el("td", {}, e.identity || e.actor || ""), el("td", {}, e.target || ""),
      el("td", {}, e.decision || ""), el("td", {}, el("code", {}, detail(e))));
  });
  document.querySelector("#audit-table tbody").replaceChildren(...rows);
  return data.events.length;
}

// Undo: a statement's before-image as SQL (masked for the operator), applied through the
// gateway as the operator (policy and approval apply).
let undoSeq = null;

async function previewUndo(seq) {
  const p = await api("GET", "/v1/audit/events/" + seq + "/undo");
  undoSeq = seq;
  $("undo-title").textContent = "Undo of event " + seq + ": " + p.kind.toUpperCase() + " of " + p.rows + " row(s) of " + p.table + " on " + p.target;
  $("undo-sql").textContent = p.sql;
  $("undo-result").textContent = "";
  $("undo-apply").hidden = !p.may_apply;
  $("undo-panel").hidden = false;
}

async function applyUndo() {
  if (undoSeq === null) return;
  const r = await api("POST", "/v1/audit/events/" + undoSeq + "/undo");
  $("undo-result").textContent = r.status === "waiting"
    ? "waiting for approval of request " + (r.approval || "?") + "; it runs once an approver decides"
    : r.status + ": restored " + r.restored + " row(s), refused " + r.refused;
}

async function replaySession(session) {
  const form = $("audit-form");
  form.reset();
  form.elements.session.value = String(session);
  const n = await searchAudit({ from: "1", limit: "1000" });
  flash("session " + session + ": " + n + " events, in order");
}

// Simulator ----------------------------------------------------------------------------

async function simulate(ev) {
  ev.preventDefault();
  $("simulate-error").textContent = "";
  const f = new FormData($("simulate-form"));
  try {
    const r = await api("POST", "/v1/policy/check", { identity: f.get("identity"), target: f.get("target"), sql: f.get("sql") });
    const rows = r.statements.map((s, i) => el("tr", { class: "decision-" + s.decision },
      el("td", {}, String(i + 1)), el("td", {}, s.kind), el("td", {}, s.decision),
      el("td", {}, s.rule || ""), el("td", {}, s.reason || "")));
    document.querySelector("#simulate-table tbody").replaceChildren(...rows);
  } catch (e) { $("simulate-error").textContent = e.message; }
}

// Grants -------------------------------------------------------------------------------

async function loadGrants() {
  const list = await api("GET", "/v1/grants");
  $("grants-empty").hidden = list.length > 0;
  const rows = list.map((g) => {
    const revoke = el("button", { type: "button", class: "revoke", onclick: async () => {
      try {
        await api("POST", "/v1/grants/" + encodeURIComponent(g.id) + "/revoke");
        flash("grant " + g.id + " revoked");
        await loadGrants();
      } catch (e) { flash(e.message, true); }
    } }, "Revoke");
    revoke.hidden = !state.me.may.revoke_grant;
    return el("tr", {}, el("td", {}, el("code", {}, g.id)), el("td", {}, g.identity), el("td", {}, g.target),
      el("td", {}, when(g.expires_ms)), el("td", {}, g.approved_by), el("td", {}, g.reason), el("td", {}, revoke));
  });
  document.querySelector("#grants-table tbody").replaceChildren(...rows);
}

// Wiring -------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("signin-error").textContent = "";
    try {
      const me = await api("POST", "/console/login", { token: $("signin-token").value });
      $("signin-token").value = "";
      signedIn(me);
    } catch (e) { $("signin-error").textContent = e.message; }
  });
  $("signout").addEventListener("click", async () => {
    try { await api("POST", "/console/logout"); } catch (_) { /* signed out anyway */ }
    signedOut();
  });
  $("undo-apply").addEventListener("click", () => { applyUndo().catch((e) => { $("undo-result").textContent = e.message; }); });
  $("undo-close").addEventListener("click", () => { $("undo-panel").hidden = true; undoSeq = null; });
  $("audit-form").addEventListener("submit", (ev) => { ev.preventDefault(); searchAudit().catch((e) => flash(e.message, true)); });
  $("audit-verify").addEventListener("click", async () => {
    const v = $("audit-verify-result") || $("audit-verdict");
    v.textContent = "verifying…";
    try {
      const r = await api("POST", "/v1/audit/verify");
      v.textContent = r.ok ? "ok " + r.events + " events, " + r.checkpoints + " signed checkpoints verified" : "FAILED " + r.error;
      v.className = r.ok ? "ok" : "error";
    } catch (e) { v.textContent = e.message; v.className = "error"; }
  });
  $("audit-export").addEventListener("click", () => {
    // A same-origin navigation: the cookie goes along, the filters are in the query (no
    // secret is: the session is the cookie's).
    location.href = "/v1/audit/export?" + auditQuery().toString();
  });
  $("simulate-form").addEventListener("submit", simulate);
  api("GET", "/console/config").then((c) => { $("signin-oidc").hidden = !c.issuer; }).catch(() => {});
  window.addEventListener("hashchange", route);
  try { signedIn(await api("GET", "/console/me")); } catch (_) { signedOut(); }
});
