// edgesim console: the admin API and its event streams, in the browser.
//
// Security rules this file keeps:
// - The admin token lives in sessionStorage and goes out only as an
//   "Authorization: Bearer" header. No cookie carries it, so no other site can make
//   the browser send an authenticated request (no CSRF).
// - Certificate login (the edge's [admin] client_ca): the browser presents the
//   admin client certificate in TLS and no token is sent. That credential is
//   ambient, so the edge refuses certificate-authenticated requests that browsers
//   mark as coming from another site (Sec-Fetch-Site, Origin).
// - Every value from the edge (certificate subjects, reasons, topics, payloads...)
//   is inserted with textContent through el(); nothing is ever set with innerHTML.
// - Streams (SSE) are read with fetch(), which can send the header; EventSource cannot.
"use strict";

const TOKEN_KEY = "edgesim.token";
const MAX_ROWS = 500;
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let handshakeStream = null;
let topicStream = null;
let pollTimer = null;
let liveStream = null;
let liveTimer = null;
let selectedSet = null;
const handshakes = [];

// -- helpers ------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function $(id) { return document.getElementById(id); }

function fill(tbody, rows) { tbody.replaceChildren(...rows); }

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

// With certificate login the token is empty and no header is sent.
function authHeaders() { return token ? { Authorization: `Bearer ${token}` } : {}; }

async function api(method, path, body, contentType) {
  const headers = authHeaders();
  let payload = body;
  if (body !== undefined && contentType === undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  } else if (contentType) {
    headers["Content-Type"] = contentType;
  }
  const response = await fetch(path, { method, headers, body: payload, cache: "no-store" });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (response.status === 401) { logout(token ? "the token was refused" : "the certificate was not accepted"); }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// Reads a text/event-stream response; calls onData(parsed JSON) for each event.
// Returns an AbortController that ends it.
function stream(path, onData, onState) {
  const controller = new AbortController();
  (async () => {
    try {
      const response = await fetch(path, {
        headers: { ...authHeaders(), Accept: "text/event-stream" },
        signal: controller.signal,
        cache: "no-store",
      });
      if (!response.ok) { onState(`stream refused (HTTP ${response.status})`); return; }
      onState("live");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) onData(JSON.parse(data));
        }
      }
      onState("stream ended");
    } catch (err) {
      if (err.name !== "AbortError") onState(`stream failed: ${err.message}`);
    }
  })();
  return controller;
}

function stateSpan(state) { return el("span", { class: state || "" }, state || "—"); }

function certCell(cert) {
  if (!cert) return el("td", { class: "cert" }, "none presented");
  return el("td", { class: "cert" },
    el("div", {}, `subject: ${cert.subject}`),
    el("div", {}, `issuer: ${cert.issuer}`),
    el("div", {}, `valid: ${cert.not_before} → ${cert.not_after}`),
    el("div", {}, `sha256: ${cert.sha256}`));
}

function findingsTable(findings) {
  return el("table", { class: "findings" },
    el("thead", {}, el("tr", {}, ...["severity", "position", "subject", "reason", "hint"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...findings.map((f) => el("tr", { "data-code": f.code || "" },
      el("td", { class: f.severity === "error" ? "bad" : "" }, f.severity || ""),
      el("td", {}, f.position === null || f.position === undefined ? "" : f.position),
      el("td", {}, f.subject || ""),
      el("td", {}, f.message || ""),
      el("td", {}, f.hint || "")))));
}

function problemBlock(err) {
  const box = el("div", { class: "problem" }, el("p", { class: "error" }, err.message));
  if (err.problem && Array.isArray(err.problem.findings) && err.problem.findings.length) {
    box.append(findingsTable(err.problem.findings));
  }
  return box;
}

// Drop zones: drag-and-drop or the hidden file input; calls onFile(File).
function dropZone(zone, input, onFile) {
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) onFile(e.dataTransfer.files[0]);
  });
  input.addEventListener("change", () => { if (input.files.length) onFile(input.files[0]); input.value = ""; });
}

// -- login and tabs -----------------------------------------------------------------

async function login(candidate) {
  token = candidate;
  let who;
  try {
    who = await api("GET", "/v1/whoami");
  } catch (err) {
    token = "";
    $("login-error").textContent = err.status === 401 ? "That token is not the admin token." : err.message;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  enter(who.admin);
}

// Logs in with the client certificate the browser presented in TLS, if the edge
// accepts it as an admin's; quietly shows the token form otherwise.
async function certificateLogin(quiet) {
  token = "";
  let who;
  try {
    who = await api("GET", "/v1/whoami");
  } catch (err) {
    if (!quiet) $("login-error").textContent = err.status === 401 ? "This browser presented no admin client certificate." : err.message;
    return;
  }
  enter(who.admin);
}

function enter(who) {
  $("login").hidden = true;
  $("tabs").hidden = false;
  $("logout").hidden = false;
  $("edge-state").textContent = `logged in (${who})`;
  show(location.hash.slice(1) || "handshakes");
}

function logout(why) {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  stopStreams();
  for (const id of ["handshakes", "devices", "sets", "topics"]) $(id).hidden = true;
  $("tabs").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("edge-state").textContent = "";
  $("login-error").textContent = why || "";
}

function stopStreams() {
  if (handshakeStream) { handshakeStream.abort(); handshakeStream = null; }
  stopLive();
}

function stopLive() {
  if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  if (liveStream) { liveStream.abort(); liveStream = null; }
  if (liveTimer) { clearTimeout(liveTimer); liveTimer = null; }
}

// Keeps a view fresh from the event stream: each event of the given kinds
// schedules one refresh (many events in a burst make one), instead of polling.
// A slow timer catches what no event announces (message counters).
function live(kinds, refresh, stateId, slowMs) {
  stopLive();
  refresh();
  const kick = () => {
    if (liveTimer) return;
    liveTimer = setTimeout(() => { liveTimer = null; refresh(); }, 250);
  };
  liveStream = stream(`/v1/events/stream?since=now&kind=${encodeURIComponent(kinds)}`, kick,
    (state) => { $(stateId).textContent = state; });
  pollTimer = setInterval(refresh, slowMs);
}

// What changes the device list: a handshake, a protocol connecting or closing,
// a subscription stream, an administrator's disconnect.
const DEVICE_EVENTS = "tls.accepted,mqtt.,ws.connected,ws.closed,http.subscribed,http.stream_closed,connection.closed,admin.disconnected";

function show(tab) {
  if (!["handshakes", "devices", "sets", "topics"].includes(tab)) tab = "handshakes";
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.tab === tab);
  }
  for (const id of ["handshakes", "devices", "sets", "topics"]) $(id).hidden = id !== tab;
  stopLive();
  history.replaceState(null, "", `#${tab}`);
  if (tab === "handshakes" && !handshakeStream) startHandshakes();
  if (tab === "devices") live(DEVICE_EVENTS, refreshDevices, "dev-live", 5000);
  if (tab === "sets") { refreshSets(); live("trust.", refreshPropagation, "sets-live", 15000); }
}

// -- handshakes ---------------------------------------------------------------------

function startHandshakes() {
  handshakes.length = 0;
  handshakeStream = stream("/v1/events/stream?kind=tls.", (event) => {
    handshakes.push(event);
    if (handshakes.length > MAX_ROWS) handshakes.shift();
    renderHandshakes();
  }, (state) => { $("hs-live").textContent = state; });
}

function handshakeMatches(e) {
  const outcome = $("hs-outcome").value;
  const reason = $("hs-reason").value.trim().toLowerCase();
  const search = $("hs-search").value.trim().toLowerCase();
  if (outcome && e.outcome !== outcome) return false;
  if (reason && !`${e.alert || ""} ${e.reason || ""}`.toLowerCase().includes(reason)) return false;
  if (search) {
    const cert = e.certificate || {};
    const hay = [e.identity, e.peer, e.sni, e.reason, e.hint, e.alert, cert.subject, cert.issuer, cert.sha256].join(" ").toLowerCase();
    if (!hay.includes(search)) return false;
  }
  return true;
}

function renderHandshakes() {
  const shown = handshakes.filter(handshakeMatches).reverse();
  $("hs-count").textContent = `${shown.length} of ${handshakes.length}`;
  fill($("hs-table").tBodies[0], shown.map((e) => el("tr", { "data-outcome": e.outcome, "data-id": e.id },
    el("td", {}, e.time),
    el("td", {}, el("span", { class: e.outcome }, e.outcome)),
    el("td", {}, el("div", {}, e.identity || (e.certificate && e.certificate.subject) || "—"), el("div", { class: "muted" }, e.peer || "")),
    el("td", { class: "alert" }, e.alert || ""),
    el("td", {}, el("span", { class: "reason" }, e.reason || (e.outcome === "accepted" ? `${e.tls_version || ""} ${e.cipher || ""}` : "")), el("span", { class: "hint" }, e.hint || "")),
    certCell(e.certificate),
    el("td", {}, e.set ? `${e.set} v${e.version}` : "—"))));
}

// -- devices ------------------------------------------------------------------------

async function refreshDevices() {
  let data;
  try { data = await api("GET", "/v1/devices"); } catch (err) { $("dev-message").textContent = err.message; return; }
  $("dev-count").textContent = `${data.devices.length} connected`;
  fill($("dev-table").tBodies[0], data.devices.map((d) => el("tr", { "data-identity": d.identity },
    el("td", {}, d.identity, d.client_id ? el("div", { class: "muted" }, `client id ${d.client_id}`) : null),
    el("td", {}, `${d.set} v${d.version}`),
    el("td", {}, d.mqtt_protocol_level ? `${d.protocol} ${d.mqtt_protocol_level === 5 ? "5" : "3.1.1"}` : d.protocol),
    el("td", {}, d.peer),
    el("td", {}, d.connected_since),
    el("td", {}, Object.keys(d.subscriptions).join(", ") || "—"),
    el("td", { class: "messages-in" }, d.messages_in),
    el("td", { class: "messages-out" }, d.messages_out),
    el("td", {}, el("button", { class: "disconnect", on: { click: () => disconnect(d) } }, "Disconnect")))));
}

async function disconnect(device) {
  try {
    await api("POST", `/v1/devices/${encodeURIComponent(device.connection_id)}/disconnect`, {});
    $("dev-message").textContent = `${device.identity} disconnected`;
  } catch (err) {
    $("dev-message").textContent = err.message;
  }
  refreshDevices();
}

// -- certificate sets ---------------------------------------------------------------

async function refreshSets() {
  try {
    const [sets, status, bindings] = await Promise.all([api("GET", "/v1/sets"), api("GET", "/v1/status"), api("GET", "/v1/bindings")]);
    renderPropagation(status);
    const states = Object.fromEntries(status.sets.map((s) => [s.name, s.state]));
    fill($("sets-table").tBodies[0], sets.sets.map((s) => el("tr", { "data-set": s.name },
      el("td", {}, s.name),
      el("td", {}, s.active_version === null ? "none" : `v${s.active_version}`),
      el("td", {}, `v${s.latest_version}`),
      el("td", {}, s.hosts.join(", ") || "—"),
      el("td", {}, stateSpan(states[s.name])),
      el("td", {}, el("button", { on: { click: () => openSet(s.name) } }, "Open")))));
    renderBindings(bindings.bindings);
    if (selectedSet) await openSet(selectedSet);
  } catch (err) {
    $("upload-result").replaceChildren(problemBlock(err));
  }
}

async function refreshPropagation() {
  try {
    const [status, bindings] = await Promise.all([api("GET", "/v1/status"), api("GET", "/v1/bindings")]);
    renderPropagation(status);
    renderBindings(bindings.bindings);
    const states = Object.fromEntries(status.sets.map((s) => [s.name, s.state]));
    for (const row of $("sets-table").tBodies[0].rows) {
      row.cells[4].replaceChildren(stateSpan(states[row.dataset.set]));
    }
  } catch (_) { /* the next tick retries */ }
}

function renderPropagation(status) {
  $("prop-state").replaceChildren(stateSpan(status.state));
  $("prop-generation").textContent = `generation ${status.active_generation} of ${status.generation}`;
  fill($("prop-workers").tBodies[0], status.workers.map((w) => el("tr", {},
    el("td", {}, w.name), el("td", {}, w.applied_generation), el("td", {}, w.error || ""))));
}

function renderBindings(bindings) {
  fill($("bindings-table").tBodies[0], bindings.map((b) => el("tr", { "data-host": b.host },
    el("td", {}, b.host), el("td", {}, b.set), el("td", { class: "state" }, stateSpan(b.state)),
    el("td", {}, el("button", { on: { click: () => unbind(b.host) } }, "Unbind")))));
}

async function upload(file) {
  const name = $("upload-set").value.trim();
  const out = $("upload-result");
  if (!name) { out.replaceChildren(el("p", { class: "error" }, "Name the set first.")); return; }
  out.replaceChildren(el("p", { class: "muted" }, `uploading ${file.name}…`));
  try {
    const body = await file.arrayBuffer();
    const info = await api("POST", `/v1/sets?name=${encodeURIComponent(name)}&filename=${encodeURIComponent(file.name)}`, body, "application/x-pem-file");
    out.replaceChildren(el("p", { class: "ok" }, `${name} v${info.version}: ${info.certificate_count} certificate(s) accepted, ${info.state || "stored"}`));
    if (info.warnings && info.warnings.length) out.append(findingsTable(info.warnings));
  } catch (err) {
    out.replaceChildren(el("p", { class: "refused" }, `${file.name} refused`), problemBlock(err));
  }
  refreshSets();
}

async function openSet(name) {
  selectedSet = name;
  const detail = await api("GET", `/v1/sets/${encodeURIComponent(name)}`);
  const crls = await api("GET", `/v1/sets/${encodeURIComponent(name)}/crls`);
  $("set-detail").hidden = false;
  $("detail-name").textContent = name;
  fill($("versions-table").tBodies[0], detail.versions.map((v) => el("tr", {},
    el("td", {}, `v${v.version}`),
    el("td", {}, v.created_at),
    el("td", {}, v.subjects.join("; ")),
    el("td", {}, v.active ? stateSpan("active") : stateSpan(v.state)),
    el("td", {}, v.active ? "" : el("button", { on: { click: () => activate(name, v.version) } }, "Activate")))));
  fill($("crls-table").tBodies[0], crls.crls.map((c) => el("tr", {},
    el("td", {}, c.issuer), el("td", {}, c.this_update), el("td", {}, c.next_update || ""), el("td", {}, c.revoked_count))));
}

async function activate(name, version) {
  try { await api("POST", `/v1/sets/${encodeURIComponent(name)}/versions/${version}/activate`, {}); } catch (err) { $("upload-result").replaceChildren(problemBlock(err)); }
  refreshSets();
}

async function unbind(host) {
  try { await api("DELETE", `/v1/bindings/${encodeURIComponent(host)}`); } catch (err) { $("bind-error").textContent = err.message; }
  refreshSets();
}

// -- topics -------------------------------------------------------------------------

function addMessage(m) {
  const tbody = $("messages-table").tBodies[0];
  tbody.prepend(el("tr", {}, el("td", {}, m.time), el("td", {}, m.topic), el("td", { class: "payload" }, m.payload),
    el("td", {}, m.qos), el("td", {}, `${m.origin || "?"} (${m.protocol || "?"})`)));
  while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
}

// -- wiring -------------------------------------------------------------------------

function wire() {
  $("login-form").addEventListener("submit", (e) => { e.preventDefault(); login($("token").value.trim()); });
  $("logout").addEventListener("click", () => logout(""));
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => show(button.dataset.tab));
  }
  for (const id of ["hs-search", "hs-outcome", "hs-reason"]) $(id).addEventListener("input", renderHandshakes);
  $("hs-filters").addEventListener("submit", (e) => e.preventDefault());
  $("dev-refresh").addEventListener("click", refreshDevices);
  dropZone($("upload-drop"), $("upload-file"), upload);
  dropZone($("crl-drop"), $("crl-file"), async (file) => {
    try {
      await api("POST", `/v1/sets/${encodeURIComponent(selectedSet)}/crls`, await file.arrayBuffer(), "application/octet-stream");
      $("crl-result").replaceChildren(el("p", { class: "ok" }, `${file.name} added`));
    } catch (err) { $("crl-result").replaceChildren(problemBlock(err)); }
    refreshSets();
  });
  dropZone($("check-drop"), $("check-file"), async (file) => {
    const out = $("check-result");
    try {
      const r = await api("POST", `/v1/sets/${encodeURIComponent(selectedSet)}/check`, { certificate: await file.text() });
      out.replaceChildren(
        el("p", { class: r.ok ? "accepted" : "refused", id: "check-verdict" }, r.ok ? `accepted by ${r.set} v${r.version}` : `refused: ${r.code || ""}`),
        el("p", {}, r.reason || ""), el("p", { class: "hint" }, r.hint || ""));
    } catch (err) { out.replaceChildren(problemBlock(err)); }
  });
  $("rollback").addEventListener("click", async () => {
    try { await api("POST", `/v1/sets/${encodeURIComponent(selectedSet)}/rollback`, {}); } catch (err) { $("upload-result").replaceChildren(problemBlock(err)); }
    refreshSets();
  });
  $("bind-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("bind-error").textContent = "";
    try {
      await api("PUT", `/v1/bindings/${encodeURIComponent($("bind-host").value.trim())}`, { set: $("bind-set").value.trim() });
    } catch (err) { $("bind-error").textContent = err.message; }
    refreshSets();
  });
  $("publish-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const r = await api("POST", "/v1/publish", {
        topic: $("pub-topic").value.trim(), payload: $("pub-payload").value,
        qos: Number($("pub-qos").value), retain: $("pub-retain").checked,
      });
      $("pub-result").textContent = r.ok ? `published, delivered to ${r.delivered} subscriber(s)` : `refused: ${r.reason}`;
    } catch (err) { $("pub-result").textContent = err.message; }
  });
  $("subscribe-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (topicStream) topicStream.abort();
    const filter = $("sub-filter").value.trim();
    topicStream = stream(`/v1/topics/stream?filter=${encodeURIComponent(filter)}`, addMessage,
      (state) => { $("sub-state").textContent = state === "live" ? `subscribed to ${filter}` : state; });
  });
  $("sub-stop").addEventListener("click", () => {
    if (topicStream) { topicStream.abort(); topicStream = null; }
    $("sub-state").textContent = "not subscribed";
  });
  $("cert-login").addEventListener("click", () => certificateLogin(false));
  // Client certificates travel only over HTTPS: offer (and try) certificate login there.
  const https = location.protocol === "https:";
  $("cert-login-row").hidden = !https;
  if (token) login(token);
  else if (https) certificateLogin(true);
}

wire();
