"use strict";
// The status page: redrawn from the server-sent events of /api/events (no polling).
// Every value from the broker is put in the page as text, never as HTML.

const PAGE = 50;
const HISTORY = 60;
const state = {
  queueOffset: 0, queueFilter: "", failedOffset: 0,
  failedKey: null, history: new Map(), lastFinished: new Map(), lastT: null, snapshot: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

function ago(seconds) {
  seconds = Math.max(0, seconds);
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function when(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleString() : "";
}

function say(text) { $("message").textContent = text; }

async function post(path) {
  const response = await fetch(path, {
    method: "POST", headers: {"x-jobwire-csrf": "1"}, credentials: "same-origin",
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function getJSON(path) {
  const response = await fetch(path, {credentials: "same-origin"});
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function sparkline(points) {
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", `0 0 ${HISTORY} 24`);
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1, ...points);
  // The points seen so far fill the width (one a second, the last minute at most).
  const step = HISTORY / Math.max(1, points.length - 1);
  const coords = points.map((v, i) => `${(i * step).toFixed(1)},${(23 - (v / max) * 21).toFixed(1)}`);
  const area = document.createElementNS(svgNS, "polygon");
  area.setAttribute("points", coords.length > 1 ? `0,24 ${coords.join(" ")} ${HISTORY},24` : "");
  const line = document.createElementNS(svgNS, "polyline");
  line.setAttribute("points", coords.join(" "));
  svg.append(area, line);
  const title = document.createElementNS(svgNS, "title");
  title.textContent = `${points.length ? points[points.length - 1].toFixed(1) : 0} jobs/s now, peak ${max.toFixed(1)}`;
  svg.append(title);
  return svg;
}

function recordThroughput(snapshot) {
  const dt = state.lastT === null ? null : snapshot.t - state.lastT;
  state.lastT = snapshot.t;
  for (const queue of snapshot.queues) {
    const previous = state.lastFinished.get(queue.name);
    state.lastFinished.set(queue.name, queue.finished);
    if (dt === null || previous === undefined || dt <= 0) continue;
    const points = state.history.get(queue.name) || [];
    points.push(Math.max(0, queue.finished - previous) / dt);
    if (points.length > HISTORY) points.shift();
    state.history.set(queue.name, points);
  }
}

function drawTotals(summary) {
  const items = [
    ["queues", summary.queues], ["workers", summary.workers], ["clients", summary.clients],
    ["running", summary.running], ["unfinished", summary.unfinished],
    ["submitted", summary.submitted], ["succeeded", summary.succeeded],
    ["failed", summary.failed], ["retried", summary.retried], ["requeued", summary.requeued],
    ["uptime", ago(summary.uptime)],
  ];
  $("totals").replaceChildren(...items.map(([label, value]) =>
    el("div", {class: "total", "data-total": label}, el("b", {}, value), el("span", {}, label))));
  const ready = $("ready");
  ready.textContent = summary.not_ready ? `not ready: ${summary.not_ready}` : "ready";
  ready.className = summary.not_ready ? "pill bad" : "pill";
}

function drawQueues(snapshot) {
  const filter = state.queueFilter;
  const rows = snapshot.queues.filter((q) => !filter || q.name.includes(filter));
  if (state.queueOffset >= rows.length) state.queueOffset = Math.max(0, rows.length - PAGE);
  const page = rows.slice(state.queueOffset, state.queueOffset + PAGE);
  $("queues-total").textContent = `${rows.length}`;
  $("queues").tBodies[0].replaceChildren(...page.map((q) => el("tr", {"data-queue": q.name},
    el("td", {}, q.name),
    el("td", {class: "num", "data-field": "waiting"}, q.waiting),
    el("td", {class: "num", "data-field": "queued"}, q.queued),
    el("td", {class: "num", "data-field": "delayed"}, q.delayed),
    el("td", {class: "num", "data-field": "running"}, q.running),
    el("td", {class: "num", "data-field": "succeeded"}, q.succeeded),
    el("td", {class: "num", "data-field": "failed"}, q.failed),
    el("td", {}, sparkline(state.history.get(q.name) || [])))));
  pager($("queues-pager"), state.queueOffset, rows.length, (offset) => {
    state.queueOffset = offset; drawQueues(state.snapshot);
  });
}

function drawWorkers(snapshot) {
  const now = snapshot.t;
  $("workers-total").textContent = `${snapshot.workers.total}`;
  $("workers").tBodies[0].replaceChildren(...snapshot.workers.workers.map((w) => el("tr", {},
    el("td", {}, w.name || "?"), el("td", {}, w.address), el("td", {}, w.queues.join(", ")),
    el("td", {class: "num"}, w.busy), el("td", {class: "num"}, w.credit),
    el("td", {title: when(w.connected_at)}, ago(now - w.connected_at)),
    el("td", {class: "num"}, w.done))));
}

function drawRunning(snapshot) {
  $("running-total").textContent = `${snapshot.running.total}`;
  $("running").tBodies[0].replaceChildren(...snapshot.running.jobs.map((job) => el("tr", {},
    el("td", {}, jobLink(job.id)), el("td", {}, job.task), el("td", {}, job.queue),
    el("td", {class: "num"}, job.attempt), el("td", {class: "num"}, ago(job.age)))));
}

function jobLink(id) {
  return el("button", {class: "link", onclick: () => lookup(id)}, id);
}

function pager(node, offset, total, go) {
  const previous = el("button", {class: "small", onclick: () => go(Math.max(0, offset - PAGE))}, "‹ newer");
  const next = el("button", {class: "small", onclick: () => go(offset + PAGE)}, "older ›");
  previous.disabled = offset <= 0;
  next.disabled = offset + PAGE >= total;
  node.replaceChildren(previous, el("span", {}, total ? `${offset + 1}–${Math.min(total, offset + PAGE)} of ${total}` : "none"), next);
}

async function loadFailed() {
  let page;
  try {
    page = await getJSON(`/api/failed?offset=${state.failedOffset}&limit=${PAGE}`);
  } catch (error) { say(`failed list: ${error.message}`); return; }
  if (state.failedOffset > 0 && state.failedOffset >= page.total) {
    state.failedOffset = Math.max(0, page.total - PAGE);
    return loadFailed();
  }
  $("failed-total").textContent = `${page.total}`;
  $("failed").tBodies[0].replaceChildren(...page.jobs.map((job) => {
    const error = job.errors[job.errors.length - 1] || {};
    const detail = el("details", {}, el("summary", {class: "err"}, `${error.type || ""}: ${error.message || ""}`),
      el("pre", {}, error.traceback || "(no traceback)"));
    const retry = el("button", {class: "small", "data-retry": job.id, onclick: async () => {
      retry.disabled = true;
      try { await post(`/api/jobs/${encodeURIComponent(job.id)}/retry`); say(`retried ${job.id}`); }
      catch (e) { say(`retry: ${e.message}`); }
      loadFailed();
    }}, "Retry");
    return el("tr", {"data-job": job.id}, el("td", {}, jobLink(job.id)), el("td", {}, job.task),
      el("td", {}, job.queue), el("td", {class: "num"}, `${job.attempts}/${job.max_attempts}`),
      el("td", {}, detail), el("td", {}, retry));
  }));
  pager($("failed-pager"), state.failedOffset, page.total, (offset) => { state.failedOffset = offset; loadFailed(); });
}

async function lookup(id) {
  id = id.trim();
  if (!id) return;
  $("job").hidden = false;
  $("job-id").textContent = id;
  const body = $("job-body");
  let job;
  try { job = await getJSON(`/api/jobs/${encodeURIComponent(id)}`); }
  catch (error) { body.replaceChildren(el("p", {class: "err"}, error.message)); return; }
  const rows = [
    ["state", el("span", {class: `state-${job.state}`, id: "job-state"}, job.state)],
    ["task", job.task], ["queue", job.queue], ["attempts", `${job.attempts} of ${job.max_attempts}`],
    ["priority", job.priority], ["created", when(job.created_at)], ["started", when(job.started_at)],
    ["finished", when(job.finished_at)],
  ];
  if ("result" in job) rows.push(["result", el("code", {id: "job-result"}, JSON.stringify(job.result))]);
  else if (job.result_bytes !== undefined) rows.push(["result", `${job.result_bytes} bytes`]);
  const table = el("table", {}, el("tbody", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v)))));
  const errors = job.errors.map((e) => el("details", {},
    el("summary", {class: "err"}, `attempt ${e.attempt}: ${e.type}: ${e.message}`), el("pre", {}, e.traceback || "")));
  const actions = [];
  if (["queued", "delayed", "running"].includes(job.state)) {
    actions.push(el("button", {class: "small danger", onclick: async () => {
      try { await post(`/api/jobs/${encodeURIComponent(id)}/cancel`); } catch (e) { say(`cancel: ${e.message}`); }
      lookup(id);
    }}, "Cancel"));
  }
  if (job.state === "failed") {
    actions.push(el("button", {class: "small", onclick: async () => {
      try { await post(`/api/jobs/${encodeURIComponent(id)}/retry`); } catch (e) { say(`retry: ${e.message}`); }
      lookup(id); loadFailed();
    }}, "Retry"));
  }
  actions.push(el("button", {class: "small", onclick: () => lookup(id)}, "Refresh"));
  body.replaceChildren(table, ...errors, el("p", {}, ...actions));
}

function connect() {
  const source = new EventSource("/api/events");
  const live = $("live");
  source.addEventListener("open", () => { live.textContent = "live"; live.className = "pill"; });
  source.addEventListener("error", () => { live.textContent = "reconnecting…"; live.className = "pill off"; });
  source.addEventListener("snapshot", (event) => {
    const snapshot = JSON.parse(event.data);
    state.snapshot = snapshot;
    recordThroughput(snapshot);
    drawTotals(snapshot.summary);
    drawQueues(snapshot);
    drawWorkers(snapshot);
    drawRunning(snapshot);
    const s = snapshot.summary;
    const failedKey = `${s.failed_list}/${s.failed}/${s.retried}`;
    if (failedKey !== state.failedKey) { state.failedKey = failedKey; loadFailed(); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("lookup").addEventListener("submit", (event) => { event.preventDefault(); lookup($("lookup-id").value); });
  $("job-close").addEventListener("click", () => { $("job").hidden = true; });
  $("queue-filter").addEventListener("input", (event) => {
    state.queueFilter = event.target.value; state.queueOffset = 0;
    if (state.snapshot) drawQueues(state.snapshot);
  });
  $("retry-all").addEventListener("click", async () => {
    try { const r = await post("/api/failed/retry"); say(`retried ${r.retried} job(s)`); } catch (e) { say(`retry all: ${e.message}`); }
    loadFailed();
  });
  $("purge").addEventListener("click", async () => {
    if (!confirm("Delete every job on the failed list?")) return;
    try { const r = await post("/api/failed/purge"); say(`purged ${r.purged} job(s)`); } catch (e) { say(`purge: ${e.message}`); }
    loadFailed();
  });
  connect();
});
