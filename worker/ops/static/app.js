// The harvester dashboard: polls the API's JSON endpoints and draws them. No build step, no
// library: charts are inline SVG made here, and every value goes in as text (never as HTML).

const params = new URLSearchParams(window.location.search);
// Seconds between polls: 5 by default; ?interval=N (1 at least) for a closer look.
const INTERVAL_MS = Math.max(1, Number(params.get("interval")) || 5) * 1000;
const QUEUE_SAMPLES = 720; // an hour of queue samples at the default interval
const SVG = "http://www.w3.org/2000/svg";

const state = { csrf: null, auth: null, queue: [], lastGood: null, kinds: [], last: null };

// --- talking to the API --------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (response.status === 401) {
    // The session ended (logout elsewhere, expiry, an API restart): back to the login form.
    window.location.replace("/");
    throw new ApiError(401, "logged out");
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || `HTTP ${response.status}`);
  }
  return data;
}

// --- small DOM helpers ---------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(...cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.append(td);
  }
  return tr;
}

function fill(tableId, rows, empty) {
  const tbody = $(tableId).querySelector("tbody");
  tbody.replaceChildren(...rows);
  if (!rows.length) {
    const tr = row(empty);
    tr.firstChild.colSpan = $(tableId).querySelectorAll("thead th").length;
    tr.className = "empty";
    tbody.append(tr);
  }
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${Math.round(s / 86400)} d`;
}

function ago(iso) {
  if (!iso) return "never";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  return s >= 0 ? `${seconds(s)} ago` : `in ${seconds(-s)}`;
}

function clock(epochSeconds) {
  return new Date(epochSeconds * 1000).toTimeString().slice(0, 5);
}

// --- charts: stacked bars and lines as inline SVG ------------------------------------------

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= value);
}

function frame(container, max, labels) {
  // Drawn at the container's own width, so that text keeps its size on any screen.
  const W = Math.max(280, Math.round(container.clientWidth || 600));
  const H = container.classList.contains("small") ? 160 : 200;
  const pad = { l: 40, r: 8, t: 8, b: 20 };
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", class: "plot" });
  const plot = { x: pad.l, y: pad.t, w: W - pad.l - pad.r, h: H - pad.t - pad.b };
  for (const f of [0, 0.5, 1]) {
    const y = plot.y + plot.h * (1 - f);
    root.append(svg("line", { x1: plot.x, x2: plot.x + plot.w, y1: y, y2: y, class: "grid" }));
    const t = svg("text", { x: plot.x - 4, y: y + 4, class: "axis end" });
    t.textContent = String(Math.round(max * f * 10) / 10);
    root.append(t);
  }
  const step = Math.max(1, Math.ceil(labels.length / 6));
  labels.forEach((label, i) => {
    if (i % step) return;
    const t = svg("text", { x: plot.x + (plot.w * (i + 0.5)) / labels.length, y: H - 4, class: "axis mid" });
    t.textContent = label;
    root.append(t);
  });
  container.replaceChildren(root);
  return { root, plot };
}

// series: [{ name, values, className }], stacked bottom up.
function bars(container, labels, series, title) {
  const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const max = niceMax(Math.max(0, ...totals));
  const { root, plot } = frame(container, max, labels);
  const w = plot.w / Math.max(1, labels.length);
  labels.forEach((label, i) => {
    let base = 0;
    for (const s of series) {
      const v = s.values[i] || 0;
      if (!v) continue;
      const h = (plot.h * v) / max;
      const rect = svg("rect", {
        x: plot.x + i * w + 0.5,
        y: plot.y + plot.h - base - h,
        width: Math.max(1, w - 1),
        height: h,
        class: s.className,
      });
      const tip = svg("title", {});
      tip.textContent = `${label}: ${v} ${s.name}`;
      rect.append(tip);
      root.append(rect);
      base += h;
    }
  });
  root.setAttribute("aria-label", title);
}

function lines(container, labels, series, title) {
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values.filter((v) => v !== null))));
  const { root, plot } = frame(container, max, labels);
  const n = Math.max(1, labels.length);
  for (const s of series) {
    const points = s.values
      .map((v, i) => (v === null ? null : [plot.x + (plot.w * (i + 0.5)) / n, plot.y + plot.h * (1 - v / max)]))
      .filter(Boolean)
      .map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`);
    if (points.length) root.append(svg("polyline", { points: points.join(" "), class: `line ${s.className}` }));
  }
  root.setAttribute("aria-label", title);
}

// --- pages ---------------------------------------------------------------------------------

function drawOverview(status, history) {
  $("t-queued").textContent = status.queued;
  $("t-ready").textContent = `${status.ready} ready, ${status.deferred} deferred`;
  $("t-oldest").textContent = seconds(status.oldest_ready_age_s);
  const alive = status.workers.filter((w) => w.alive).length;
  const dead = status.workers.length - alive;
  $("t-workers").textContent = alive;
  $("t-dead").textContent = dead ? `${dead} stopped reporting` : "all reporting";
  $("t-workers").parentElement.classList.toggle("bad", dead > 0 || alive === 0);
  $("t-rate").textContent = status.urls_per_second;
  $("t-window").textContent = `over ${status.rate_window_s} s`;
  const kinds = Object.entries(status.failures_last_hour);
  $("t-failures").textContent = kinds.reduce((sum, [, n]) => sum + n, 0);
  $("t-top-kind").textContent = kinds.length ? kinds.map(([k, n]) => `${k} ${n}`).join(", ") : "none";
  $("t-failures").parentElement.classList.toggle("bad", kinds.length > 0);
  const src = status.sources || {};
  $("t-sources").textContent = src.total ?? 0;
  $("t-sources-sub").textContent = `${src.due ?? 0} due, ${src.polling ?? 0} polling, ${src.failing ?? 0} failing`;
  $("t-sources").parentElement.classList.toggle("bad", (src.failing ?? 0) > 0);

  drawThroughput(history);
  drawQueue(status, history);
  drawWorkers(status);
}

function drawThroughput(history) {
  const failed = history.minutes.map((_, i) => Object.values(history.failures).reduce((sum, v) => sum + v[i], 0));
  bars($("chart-throughput"), history.minutes.map(clock), [
    { name: "documents", values: history.documents, className: "ok" },
    { name: "failures", values: failed, className: "failed" },
  ], "URLs landed per minute by outcome");
}

// The API samples the queue every 15 s since it started (history.queue); the page's own samples
// since it opened fill in between, so the chart moves at every poll.
function drawQueue(status, history) {
  if (status) {
    state.queue.push({ at: Date.now() / 1000, queued: status.queued, wait: status.oldest_ready_age_s });
    if (state.queue.length > QUEUE_SAMPLES) state.queue.shift();
  }
  if (history) state.served = history.queue;
  const served = state.served || { at: [], queued: [], oldest_ready_age_s: [] };
  const since = state.queue.length ? state.queue[0].at : Infinity;
  const samples = served.at
    .map((at, i) => ({ at, queued: served.queued[i], wait: served.oldest_ready_age_s[i] }))
    .filter((s) => s.at < since)
    .concat(state.queue);
  lines($("chart-queue"), samples.map((s) => new Date(s.at * 1000).toTimeString().slice(0, 8)), [
    { name: "queued", values: samples.map((s) => s.queued), className: "queued" },
    { name: "oldest wait", values: samples.map((s) => s.wait), className: "wait" },
  ], "queue depth and oldest wait");
}

function drawWorkers(status) {
  fill("workers", status.workers.map((w) => {
    const tr = row(w.id, w.host, w.pid, w.alive ? "alive" : "dead", w.last_beat_age_s === null ? "–" : `${seconds(w.last_beat_age_s)} ago`,
      `${w.jobs.complete ?? 0} ok, ${w.jobs.failed ?? 0} failed`, (w.held || []).join(", "));
    tr.className = w.alive ? "alive" : "dead";
    return tr;
  }), "no worker has reported");
}

function drawJobs(status, progress) {
  fill("running", progress.map((p) => {
    // A total is unknown once arq has dropped the job (it is finishing: the next poll lists it
    // done) or for a job that is not a batch: no bar then, rather than one of a made-up length.
    let bar = "";
    if (p.total !== null) {
      bar = el("progress");
      bar.max = p.total;
      bar.value = Math.min(p.landed, p.total);
      bar.setAttribute("aria-label", `progress of ${p.job_id}`);
    }
    const tr = row(p.job_id, bar, p.total === null ? `${p.landed}` : `${p.landed} / ${p.total}`);
    tr.dataset.job = p.job_id;
    return tr;
  }), "no job is running");
  fill("recent", status.recent_jobs.map((j) => {
    const tr = row(j.job_id, j.state, j.finished_at ? ago(j.finished_at) : "", summarise(j.summary));
    tr.dataset.job = j.job_id;
    tr.className = `state-${j.state}`;
    return tr;
  }), "no job in the last hour");
}

// A job's summary in a line: what it did, without its id or the counts that are zero.
function summarise(summary) {
  if (!summary) return "";
  const parts = [];
  for (const [key, value] of Object.entries(summary)) {
    if (key === "job_id" || value === null || value === 0 || value === "") continue;
    if (typeof value === "object") {
      const inner = Object.entries(value).map(([k, v]) => `${k} ${v}`).join(", ");
      if (inner) parts.push(`${key}: ${inner}`);
    } else {
      parts.push(`${key}: ${value}`);
    }
  }
  return parts.join(", ");
}

const KIND_CLASSES = 8;

function kindClass(kind) {
  const i = state.kinds.indexOf(kind);
  return `k${(i < 0 ? 0 : i) % KIND_CLASSES}`;
}

function drawFailureChart(history) {
  for (const kind of Object.keys(history.failures)) if (!state.kinds.includes(kind)) state.kinds.push(kind);
  const series = Object.entries(history.failures).map(([kind, values]) => ({ name: kind, values, className: kindClass(kind) }));
  bars($("chart-failures"), history.minutes.map(clock), series, "failures per minute by kind");
  $("legend-failures").replaceChildren(...series.flatMap((s) => [el("span", null, `swatch ${s.className}`), el("span", s.name, "kind")]));
  const select = $("f-kind");
  const have = new Set([...select.options].map((o) => o.value));
  for (const kind of state.kinds) if (!have.has(kind)) select.append(new Option(kind, kind));
}

async function loadFailures() {
  const q = new URLSearchParams({ limit: "200" });
  if ($("f-kind").value) q.append("kind", $("f-kind").value);
  if ($("f-job").value.trim()) q.set("job", $("f-job").value.trim());
  if ($("f-host").value.trim()) q.set("host", $("f-host").value.trim());
  const selected = new Set(selection());
  const rows = await api(`/failures?${q}`);
  fill("failure-list", rows.map((f) => {
    const box = el("input");
    box.type = "checkbox";
    box.value = f.id;
    box.disabled = f.replayed_by !== null;
    box.checked = selected.has(f.id) && !box.disabled;
    box.setAttribute("aria-label", `select failure ${f.id}`);
    const detail = el("details");
    detail.append(el("summary", f.status ? `HTTP ${f.status}` : "detail"), el("pre", f.detail || "(none)"));
    const tr = row(box, ago(f.failed_at), f.error, f.job_id, f.url, detail, f.replayed_by || "");
    tr.dataset.id = f.id;
    tr.dataset.url = f.url;
    return tr;
  }), "no failure matches");
  updateReplayButton();
}

function selection() {
  return [...document.querySelectorAll("#failure-list tbody input[type=checkbox]:checked")].map((b) => Number(b.value));
}

function updateReplayButton() {
  const n = selection().length;
  $("replay").disabled = n === 0;
  $("replay").textContent = n ? `Replay ${n} selected` : "Replay selected";
}

async function replaySelected() {
  const ids = selection();
  if (!ids.length) return;
  $("confirm-text").textContent = `Replay ${ids.length} failure(s) as new job(s)? Each URL is fetched again.`;
  const dialog = $("confirm-replay");
  dialog.returnValue = "";
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  if (dialog.returnValue !== "ok") return;
  try {
    const result = await api("/failures/replay", { method: "POST", body: { ids } });
    $("replay-result").textContent = result.jobs.length
      ? `replayed ${result.urls} URL(s) as ${result.jobs.join(", ")}`
      : "nothing to replay (already replayed, or not replayable)";
  } catch (e) {
    $("replay-result").textContent = `replay refused: ${e.message}`;
  }
  await loadFailures();
}

function drawSources(rows) {
  fill("source-list", rows.map((s) => {
    const toggle = el("button", s.enabled ? "Disable" : "Enable");
    toggle.type = "button";
    toggle.addEventListener("click", async () => {
      toggle.disabled = true;
      try {
        await api("/sources/enabled", { method: "POST", body: { ids: [s.id], enabled: !s.enabled } });
      } catch (e) {
        toggle.textContent = e.message;
      }
      await refresh();
    });
    let outcome = s.last_outcome || "–";
    if (s.consecutive_failures > 1) outcome += ` ×${s.consecutive_failures}`;
    const tr = row(s.id, s.name || "", s.url, seconds(s.interval_s), outcome, ago(s.last_polled_at), s.enabled ? ago(s.next_due_at) : "off", toggle);
    tr.className = s.enabled ? (s.consecutive_failures ? "failing" : "") : "off";
    return tr;
  }), "no source is registered (harvester sources add)");
}

function drawHosts(hosts) {
  $("default-rps").textContent = `default: ${hosts.default_rps ? `${hosts.default_rps} requests/s per host` : "not paced"} (HARVESTER_HOST_RPS of this API)`;
  const names = [...new Set([...Object.keys(hosts.policies || {}), ...Object.keys(hosts.paused || {})])].sort();
  fill("host-list", names.map((h) => {
    const p = (hosts.policies || {})[h] || {};
    const paused = (hosts.paused || {})[h];
    const rps = p.rps === null || p.rps === undefined ? "default" : p.rps === 0 ? "not paced" : p.rps;
    return row(h, rps, p.concurrency ?? "–", paused ? `${seconds(paused)} left` : "");
  }), "no host policy (harvester hosts set HOST --rps N)");
}

// --- the loop ------------------------------------------------------------------------------

function page() {
  const name = window.location.hash.slice(1) || "overview";
  return document.querySelector(`section[data-page="${CSS.escape(name)}"]`) ? name : "overview";
}

function showPage() {
  const current = page();
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.dataset.page !== current;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("current", link.dataset.page === current);
  if (current === "failures") loadFailures().catch(stale);
}

function stale(error) {
  if (error instanceof ApiError && error.status === 401) return;
  document.body.classList.add("stale");
  const since = state.lastGood ? ` — showing data from ${state.lastGood.toLocaleTimeString()}` : "";
  $("stale").textContent = `Stale: ${error.message}${since}`;
  $("stale").hidden = false;
  $("live").textContent = "stale";
}

function fresh() {
  state.lastGood = new Date();
  document.body.classList.remove("stale");
  $("stale").hidden = true;
  $("live").textContent = "live";
  $("updated").textContent = `updated ${state.lastGood.toLocaleTimeString()}`;
}

async function refresh() {
  try {
    const [status, history, sources] = await Promise.all([api("/status"), api("/status/history"), api("/sources")]);
    const q = new URLSearchParams();
    for (const id of status.in_progress.slice(0, 100)) q.append("job", id);
    const progress = await api(`/status/progress?${q}`);
    state.last = { status, history };
    drawOverview(status, history);
    drawJobs(status, progress);
    drawFailureChart(history);
    drawSources(sources);
    drawHosts(status.hosts);
    // The list follows along, unless someone is reading a failure's detail.
    if (page() === "failures" && !document.querySelector("#failure-list details[open]")) await loadFailures();
    fresh();
  } catch (e) {
    stale(e);
  }
}

async function start() {
  const session = await api("/session");
  state.csrf = session.csrf;
  state.auth = session.auth;
  $("logout").hidden = session.auth !== "session";
  $("logout").addEventListener("click", async () => {
    await api("/logout", { method: "POST" }).catch(() => null);
    window.location.replace("/");
  });
  $("failure-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    loadFailures().catch(stale);
  });
  $("failure-list").addEventListener("change", updateReplayButton);
  $("select-all").addEventListener("change", (event) => {
    for (const box of document.querySelectorAll("#failure-list tbody input[type=checkbox]:not(:disabled)")) box.checked = event.target.checked;
    updateReplayButton();
  });
  $("replay").addEventListener("click", () => replaySelected().catch(stale));
  window.addEventListener("hashchange", showPage);
  // Charts are drawn at their container's width: draw them again when it changes.
  window.addEventListener("resize", () => {
    if (!state.last) return;
    drawThroughput(state.last.history);
    drawQueue(null, null);
    drawFailureChart(state.last.history);
  });
  showPage();
  await poll();
}

// The next poll is set when this one has ended, so slow answers never pile up.
async function poll() {
  await refresh(); // never throws: trouble shows as the stale banner
  setTimeout(poll, INTERVAL_MS);
}

start().catch(stale);
