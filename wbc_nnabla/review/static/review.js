// wbc_nnabla review page: plain JavaScript (no framework, no build step, works offline).
// Views: #/ the smears; #/smear/ID one smear. Every change is posted to the server, which stores it
// in the review database in one transaction and answers with the smear's new counts.
"use strict";

const CONFIG = JSON.parse(document.getElementById("config").textContent);
const TOKEN = document.querySelector('meta[name="review-token"]').content;
const CLASSES = CONFIG.classes;                     // Table 1 order
const SHORT = {Basophil: "Baso", Eosinophil: "Eos", Lymph: "Lym", Mono: "Mono", Band: "Band",
               Segment: "Seg", Unusable: "out"};
const $ = (sel) => document.querySelector(sel);

const state = {
  smears: [], listCursor: 0,             // list view
  smear: null, cells: [], byId: new Map(), order: [], groupOf: new Map(),
  cursor: null, anchor: null, selected: new Set(), inflight: 0,
};

function reviewer() { return localStorage.getItem("wbc_review_reviewer") || CONFIG.reviewer; }

function status(text, kind) {
  const el = $("#status");
  el.textContent = text || "";
  el.className = kind || "";
}

async function api(method, url, body) {
  const opts = {method, headers: {"X-Review-Token": TOKEN}};
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(url, opts);
  if (method === "POST") {                // the server's own time (Server-Timing), for benchmarks
    const m = (resp.headers.get("Server-Timing") || "").match(/dur=([0-9.]+)/);
    if (m) (window.reviewServerMs = window.reviewServerMs || []).push(Number(m[1]));
  }
  const data = await resp.json().catch(() => ({error: `${resp.status} ${resp.statusText}`}));
  if (!resp.ok) { status(data.error || `error ${resp.status}`, "error"); return null; }
  return data;
}

// ------------------------------------------------------------------------------------------ list view

async function showList() {
  $("#smear-view").hidden = true;
  $("#list-view").hidden = false;
  $("#smear-title").textContent = "";
  for (const id of ["#undo", "#sign", "#reopen"]) $(id).hidden = true;
  state.smear = null;
  const data = await api("GET", "/api/smears");
  if (!data) return;
  state.smears = data.smears;
  $("#predictions").textContent = `Predictions: ${data.predictions}`;
  const body = $("#smears tbody");
  body.replaceChildren(...data.smears.map((s, i) => {
    const tr = document.createElement("tr");
    tr.dataset.id = s.id;
    const signed = s.signed_at ? `${s.signed_by}, ${s.signed_at.replace("T", " ").slice(0, 19)} UTC` : "no";
    for (const v of [s.name, s.cells, s.pending, s.reviewed, s.unusable, signed]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    tr.addEventListener("click", () => { location.hash = `#/smear/${s.id}`; });
    tr.classList.toggle("cursor", i === state.listCursor);
    return tr;
  }));
  document.body.dataset.ready = "list";
}

function moveListCursor(step) {
  const rows = [...document.querySelectorAll("#smears tbody tr")];
  if (!rows.length) return;
  state.listCursor = Math.max(0, Math.min(rows.length - 1, state.listCursor + step));
  rows.forEach((r, i) => r.classList.toggle("cursor", i === state.listCursor));
}

// ------------------------------------------------------------------------------------------ smear view

function groupsOf(cells, order) {
  if (order !== "ai") {
    const sorted = [...cells].sort((a, b) => a.rank - b.rank);
    return [{key: "order", title: `Label first (order: ${order})`, cells: sorted}];
  }
  const groups = [{key: "pending", title: "Pending", cells: []}];
  for (const c of CLASSES) groups.push({key: c, title: c, cells: []});
  const at = new Map(groups.map((g) => [g.key, g]));
  for (const c of cells) at.get(c.pending ? "pending" : c.ai).cells.push(c);
  return groups.filter((g) => g.cells.length);
}

function cellState(c) {
  if (c.decision === null) return "undecided";
  if (c.decision === CONFIG.unusable) return "unusable";
  return c.decision === c.ai ? "confirmed" : "reclassified";
}

function tile(c) {
  const el = document.createElement("div");
  el.className = "tile";
  el.dataset.id = c.id;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = c.name;
  img.src = `/api/cells/${c.id}/thumb`;
  const ai = document.createElement("span");
  ai.className = "ai";
  ai.textContent = `${SHORT[c.ai]} ${Math.max(...c.probs).toFixed(2)}`;
  const dec = document.createElement("span");
  dec.className = "dec";
  el.append(img, ai, dec);
  if (c.rank !== null && c.rank !== undefined) {
    const r = document.createElement("span");
    r.className = "rank";
    r.textContent = `#${c.rank + 1}`;
    el.appendChild(r);
  }
  el.addEventListener("click", (ev) => clickTile(c.id, ev));
  paintTile(el, c);
  return el;
}

function paintTile(el, c) {
  const s = cellState(c);
  el.dataset.state = s;
  el.dataset.decision = c.decision || "";
  el.querySelector(".dec").textContent = s === "confirmed" ? "\u2713" : s === "undecided" ? "" :
    s === "unusable" ? "\u2717" : SHORT[c.decision];
  el.title = `${c.name}: AI ${c.ai}` + (c.pending ? ` (pending: ${c.reason})` : "") +
    (c.decision ? `; review ${c.decision} (${c.decided_by})` : "");
}

async function showSmear(id, keep) {
  $("#list-view").hidden = true;
  $("#smear-view").hidden = false;
  delete document.body.dataset.ready;
  state.smear = null;                       // no action reaches the smear that was shown before
  const t0 = performance.now();
  const data = await api("GET", `/api/smears/${id}`);
  if (!data) return;
  const t1 = performance.now();
  state.smear = data;
  state.cells = data.cells;
  state.byId = new Map(data.cells.map((c) => [c.id, c]));
  const groups = groupsOf(data.cells, data.order);
  state.order = [];
  state.groupOf = new Map();
  const sections = groups.map((g) => {
    const sec = document.createElement("div");
    sec.className = `group ${g.key === "pending" ? "pending" : ""}`;
    sec.dataset.group = g.key;
    const h = document.createElement("h2");
    h.innerHTML = `<span></span><span class="count"></span><button class="confirm-group" title="g">confirm group</button>`;
    h.firstChild.textContent = g.title;
    h.querySelector(".confirm-group").addEventListener("click", () => confirmGroup(g.key));
    const tiles = document.createElement("div");
    tiles.className = "tiles";
    tiles.append(...g.cells.map(tile));
    for (const c of g.cells) { state.order.push(c.id); state.groupOf.set(c.id, g.key); }
    sec.append(h, tiles);
    return sec;
  });
  $("#groups").replaceChildren(...sections);
  state.selected = new Set();
  const first = state.order.find((cid) => state.byId.get(cid).decision === null) ?? state.order[0];
  setCursor(keep !== undefined && state.byId.has(keep) ? keep : first ?? null, false);
  updateSummary(data);
  // for benchmarks: ready_ms counts from the page's navigation start (performance's time origin)
  window.reviewTimings = {fetch_ms: t1 - t0, render_ms: performance.now() - t1, ready_ms: performance.now(),
                          cells: data.cells.length};
  document.body.dataset.ready = "smear";
}

function updateGroupCounts() {
  for (const sec of document.querySelectorAll(".group")) {
    const ids = state.order.filter((cid) => state.groupOf.get(cid) === sec.dataset.group);
    const open = ids.filter((cid) => state.byId.get(cid).decision === null).length;
    sec.querySelector(".count").textContent = `${ids.length} cells, ${open} undecided`;
  }
}

function updateSummary(s) {
  Object.assign(state.smear, {signed_by: s.signed_by, signed_at: s.signed_at, can_undo: s.can_undo,
                              pending: s.pending, differential: s.differential});
  const signed = Boolean(s.signed_at);
  $("#smear-title").textContent = `Smear ${s.name}`;
  $("#undo").hidden = signed; $("#undo").disabled = !s.can_undo;
  $("#sign").hidden = signed;
  $("#reopen").hidden = !signed;
  const banner = $("#banner");
  banner.hidden = !signed;
  banner.textContent = signed ? `Signed by ${s.signed_by} at ${s.signed_at.replace("T", " ").slice(0, 19)} UTC: ` +
    "read-only until reopened." : "";
  document.body.dataset.signed = signed ? "1" : "0";
  const d = s.differential;
  $("#differential tbody").replaceChildren(...d.rows.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.class = r.class;
    if (r.class === "Neutrophil") tr.className = "merged";
    for (const v of [r.class === "Neutrophil" ? "Neutrophil (Band+Segment)" : r.class, r.ai_n,
                     r.ai_pct === null ? "-" : r.ai_pct.toFixed(1), r.review_n,
                     r.review_pct === null ? "-" : r.review_pct.toFixed(1)]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    return tr;
  }));
  $("#counts").textContent = `${d.n_cells} cells: ${d.n_counted} reviewed into a class, ${d.n_unusable} out of ` +
    `the count, ${d.n_undecided} undecided (${s.pending} of them pending).`;
  $("#counts").dataset.undecided = d.n_undecided;
  updateGroupCounts();
}

function showCell(c) {
  if (!c) return;
  $("#cell-image").src = `/api/cells/${c.id}/image`;
  $("#cell-cam").hidden = true;
  const facts = $("#cell-facts");
  facts.textContent = `${c.name}: AI ${c.ai}` + (c.pending ? ` \u2014 pending (${c.reason})` : "") +
    ` \u2014 review: ${c.decision || "not yet"}` + (c.decided_by ? ` (${c.decided_by})` : "");
  $("#probs").replaceChildren(...CLASSES.map((name, i) => {
    const tr = document.createElement("tr");
    if (name === c.ai) tr.className = "ai";
    tr.innerHTML = `<td></td><td class="bar"><div class="fill"></div></td><td></td>`;
    tr.cells[0].textContent = `${i + 1} ${name}`;
    tr.querySelector(".fill").style.width = `${(100 * c.probs[i]).toFixed(1)}%`;
    tr.cells[2].textContent = c.probs[i].toFixed(3);
    return tr;
  }));
}

function renderSelection() {
  for (const el of document.querySelectorAll(".tile")) {
    const cid = Number(el.dataset.id);
    el.classList.toggle("selected", state.selected.has(cid));
    el.classList.toggle("cursor", cid === state.cursor);
  }
}

function setCursor(cid, extend) {
  if (cid === null || cid === undefined) return;
  if (extend && state.anchor !== null) {
    const a = state.order.indexOf(state.anchor), b = state.order.indexOf(cid);
    state.selected = new Set(state.order.slice(Math.min(a, b), Math.max(a, b) + 1));
  } else {
    state.anchor = cid;
    state.selected = new Set([cid]);
  }
  state.cursor = cid;
  renderSelection();
  const el = document.querySelector(`.tile[data-id="${cid}"]`);
  if (el) el.scrollIntoView({block: "nearest"});
  showCell(state.byId.get(cid));
}

function clickTile(cid, ev) {
  if (ev.shiftKey) { setCursor(cid, true); return; }
  if (ev.ctrlKey || ev.metaKey) {
    if (state.selected.has(cid)) state.selected.delete(cid); else state.selected.add(cid);
    state.cursor = cid; state.anchor = cid;
    renderSelection();
    showCell(state.byId.get(cid));
    return;
  }
  setCursor(cid, false);
}

function step(delta, extend) {
  const i = state.order.indexOf(state.cursor);
  const j = Math.max(0, Math.min(state.order.length - 1, i + delta));
  setCursor(state.order[j], extend);
}

function stepRow(direction, extend) {
  // the nearest tile (by x) in the next row of tiles above or below
  const cur = document.querySelector(`.tile[data-id="${state.cursor}"]`);
  if (!cur) return;
  const r0 = cur.getBoundingClientRect();
  let best = null, bestKey = null;
  for (const el of document.querySelectorAll(".tile")) {
    const r = el.getBoundingClientRect();
    const dy = (r.top - r0.top) * direction;
    if (dy < 1) continue;
    const key = [dy, Math.abs(r.left - r0.left)];
    if (bestKey === null || key[0] < bestKey[0] - 1 || (Math.abs(key[0] - bestKey[0]) <= 1 && key[1] < bestKey[1])) {
      best = el; bestKey = key;
    }
  }
  if (best) setCursor(Number(best.dataset.id), extend);
}

function stepGroup(direction) {
  const g = state.groupOf.get(state.cursor);
  const keys = [...new Set(state.order.map((cid) => state.groupOf.get(cid)))];
  const k = keys[Math.max(0, Math.min(keys.length - 1, keys.indexOf(g) + direction))];
  setCursor(state.order.find((cid) => state.groupOf.get(cid) === k), false);
}

// ------------------------------------------------------------------------------------------ actions

function applyResult(result) {
  for (const ch of result.changed || []) {
    const c = state.byId.get(ch.id);
    c.decision = ch.decision;
    c.decided_by = ch.decision === null ? null : reviewer();
    const el = document.querySelector(`.tile[data-id="${ch.id}"]`);
    if (el) paintTile(el, c);
  }
  updateSummary(result.smear);
  showCell(state.byId.get(state.cursor));
}

// Actions run one after another in the order the keys were pressed (none is dropped while another is
// on its way); a decision is shown at once and confirmed by the server's answer. When the server
// refuses one, the page reloads the smear's state from the database.
let queue = Promise.resolve();
function inflight(delta) {
  state.inflight = (state.inflight || 0) + delta;
  document.body.dataset.inflight = state.inflight;
}

function post(action, body, done) {
  const smear = state.smear;
  inflight(1);
  queue = queue.then(async () => {
    const t0 = performance.now();
    const result = await api("POST", `/api/smears/${smear.id}/${action}`, Object.assign({reviewer: reviewer()}, body));
    (window.reviewActionMs = window.reviewActionMs || []).push(performance.now() - t0);
    if (state.smear !== smear) return;
    if (!result) { const msg = $("#status").textContent; await showSmear(smear.id, state.cursor); status(msg, "error"); return; }
    applyResult(result);
    if (done) done(result);
  }).catch((err) => status(`error: ${err}`, "error")).finally(() => inflight(-1));
  return queue;
}

function readOnly() {
  if (!state.smear.signed_at) return false;
  status(`Smear ${state.smear.name} is signed: reopen it to change a cell.`, "error");
  return true;
}

function decide(decision) {
  if (!state.smear || readOnly() || state.cursor === null) return;
  const ids = state.order.filter((cid) => state.selected.has(cid));
  if (!ids.length) return;
  for (const cid of ids) {                  // shown at once; the server's answer confirms it
    const c = state.byId.get(cid);
    c.decision = decision === "confirm" ? c.ai : decision;
    paintTile(document.querySelector(`.tile[data-id="${cid}"]`), c);
  }
  const what = decision === "confirm" ? "confirmed" : decision === CONFIG.unusable ? "out of the count" : decision;
  post("decide", {cells: ids, decision}, () => status(`${ids.length} cell(s): ${what}`, "ok"));
  const next = state.order[Math.min(state.order.length - 1, state.order.indexOf(ids[ids.length - 1]) + 1)];
  setCursor(next, false);
}

function confirmGroup(key) {
  if (!state.smear || readOnly()) return;
  key = key || state.groupOf.get(state.cursor);
  const ids = state.order.filter((cid) => state.groupOf.get(cid) === key && state.byId.get(cid).decision === null);
  if (!ids.length) { status("every cell of this group is decided", "ok"); return; }
  for (const cid of ids) {
    const c = state.byId.get(cid);
    c.decision = c.ai;
    paintTile(document.querySelector(`.tile[data-id="${cid}"]`), c);
  }
  post("decide", {cells: ids, decision: "confirm"}, () => status(`group ${key}: ${ids.length} cell(s) confirmed`, "ok"));
}

function undo() {
  if (!state.smear || readOnly()) return;
  post("undo", {}, (r) => status(`undone: action ${r.undone} (${r.changed.length} cell(s))`, "ok"));
}

function sign() {
  if (!state.smear || state.smear.signed_at) return;
  if (!window.confirm(`Sign the differential of smear ${state.smear.name} as ${reviewer()}?`)) return;
  post("sign", {}, (r) => status(`signed by ${r.signed_by}`, "ok"));
}

function reopen() {
  if (!state.smear || !state.smear.signed_at) return;
  const note = window.prompt(`Reopen smear ${state.smear.name}: why?`, "");
  if (note === null) return;
  post("reopen", {note}, (r) => status(`reopened by ${r.reopened_by}`, "ok"));
}

async function showCam() {
  const c = state.byId.get(state.cursor);
  if (!c) return;
  if (!CONFIG.has_cam) { status("no Grad-CAM: start the review with --model MODEL.nnp", "error"); return; }
  status("Grad-CAM ...");
  const resp = await fetch(`/api/cells/${c.id}/gradcam`, {headers: {"X-Review-Token": TOKEN}});
  if (!resp.ok) { status(`Grad-CAM failed (${resp.status})`, "error"); return; }
  const img = $("#cell-cam");
  img.src = URL.createObjectURL(await resp.blob());
  img.hidden = false;
  status(`Grad-CAM of ${c.name} for the AI's class ${c.ai}`, "ok");
}

// ------------------------------------------------------------------------------------------ keys

function onKey(ev) {
  if (ev.target.closest && ev.target.closest("dialog, input, textarea")) return;
  if (ev.key === "?") { $("#help").showModal(); ev.preventDefault(); return; }
  if (!state.smear) {
    if (ev.key === "ArrowDown") moveListCursor(1);
    else if (ev.key === "ArrowUp") moveListCursor(-1);
    else if (ev.key === "Enter" && state.smears.length) location.hash = `#/smear/${state.smears[state.listCursor].id}`;
    else return;
    ev.preventDefault();
    return;
  }
  const k = ev.key;
  if ((ev.ctrlKey || ev.metaKey) && k.toLowerCase() === "z") { undo(); ev.preventDefault(); return; }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (k === "ArrowRight") step(1, ev.shiftKey);
  else if (k === "ArrowLeft") step(-1, ev.shiftKey);
  else if (k === "ArrowDown") stepRow(1, ev.shiftKey);
  else if (k === "ArrowUp") stepRow(-1, ev.shiftKey);
  else if (k === "PageDown") stepGroup(1);
  else if (k === "PageUp") stepGroup(-1);
  else if (CONFIG.keys.classes[k]) decide(CONFIG.keys.classes[k]);
  else if (k === CONFIG.keys.confirm) decide("confirm");
  else if (k === CONFIG.keys.unusable) decide(CONFIG.unusable);
  else if (k === CONFIG.keys.group) confirmGroup();
  else if (k === CONFIG.keys.undo) undo();
  else if (k === CONFIG.keys.cam) showCam();
  else if (k === "Escape") location.hash = "#/";
  else return;
  ev.preventDefault();
}

function route() {
  status("");
  const m = location.hash.match(/^#\/smear\/(\d+)$/);
  if (m) showSmear(Number(m[1])); else showList();
}

function setup() {
  $("#reviewer").textContent = reviewer();
  $("#reviewer").addEventListener("click", () => {
    const name = window.prompt("Reviewer name (recorded with every decision):", reviewer());
    if (name && name.trim()) { localStorage.setItem("wbc_review_reviewer", name.trim()); $("#reviewer").textContent = name.trim(); }
  });
  $("#undo").addEventListener("click", undo);
  $("#sign").addEventListener("click", sign);
  $("#reopen").addEventListener("click", reopen);
  $("#help-button").addEventListener("click", () => $("#help").showModal());
  const buttons = Object.entries(CONFIG.keys.classes).map(([key, name]) => [`${key} ${name}`, () => decide(name)]);
  buttons.push(["Enter confirm", () => decide("confirm")], ["0 unusable", () => decide(CONFIG.unusable)],
               ["c Grad-CAM", showCam]);
  $("#class-buttons").replaceChildren(...buttons.map(([text, fn]) => {
    const b = document.createElement("button");
    b.textContent = text;
    b.addEventListener("click", fn);
    return b;
  }));
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", route);
  route();
}

window.reviewState = state;                // read by the browser tests and benchmarks/bench_review.py
setup();
