// neuronpedia-graph viewer: generate, open, draw and steer attribution graphs.
//
// Plain browser JavaScript with no dependencies, so the page works offline. Nodes are SVG (one
// element each, so hover and click hit them); edges are drawn on a canvas, because even batched
// SVG paths make a 200,000-link graph stall on every zoom. The view is fitted to the graph area,
// zoomed with the wheel or buttons and panned by dragging; the axes stay pinned to its edges.
// Timings go to the Performance API as user-timing measures named "npg:*" (bench/viewer_render.py
// reads them); nothing is exposed on `window`.
"use strict";

(() => {
  const SECRET_KEY = "npg-secret-key";
  // The slider starts by hiding all but this many of the strongest edges.
  const DEFAULT_VISIBLE_EDGES = 3000;
  // Never draw more than this many edges at once: beyond it every pan frame gets slow.
  const MAX_DRAWN_EDGES = 30000;
  // While the view moves (wheel, drag, zoom buttons) only the strongest edges are drawn, so each
  // frame stays quick; the rest return once it has been still for SETTLE_MS.
  const MOVING_EDGES = 4000;
  const SETTLE_MS = 160;
  const WIDTH_BUCKETS = [0.6, 1.2, 2.2, 3.6];
  const NEIGHBOURS_SHOWN = 12;
  const NO_SECRET = "A secret key is needed: click “Secret key…” and enter it.";
  // World units (one unit is one CSS pixel at zoom 1).
  const R_MAX = 6;
  const R_MIN = 2.2;
  const SLOT = 2 * R_MAX + 3; // one node's room in a cell
  const COL_GAP = SLOT; // space between columns that hold features
  const EMPTY_COL_GAP = 3; // a token column with no features is one node wide
  const BAND_PAD = 10;
  const BAND_STRETCH = 120;
  // Screen pixels kept around the fitted graph: the layer axis, the token axis, logit labels.
  const AXIS = { left: 46, right: 14, top: 64, bottom: 74 };
  const TOKEN_LABEL_SPACING = 12;
  const ROW_LABEL_SPACING = 12;
  const LOGIT_LABEL_SPACING = 11;
  const MAX_FIT_ZOOM = 3; // a tiny graph is not blown up beyond this
  const MIN_ZOOM_OF_FIT = 0.25; // zooming out stops at a quarter of the fitted size
  const MAX_ZOOM = 40;
  const SEARCH_ZOOM = 1.5; // a search result is shown at least this large
  // A graph file's coordinates must be plausible (a prompt position, a layer number).
  const MAX_POSITIONS = 65536;
  const MAX_LAYER = 1024;
  // Feature pages live at <site>/<model>/<layer>-<source set>/<index>, as the web app links them.
  const NEURONPEDIA_URL = "https://www.neuronpedia.org";
  const POSITIVE = "#2f6fd0";
  const NEGATIVE = "#d0452f";
  const BAND = "#ffffff";
  const BAND_ALT = "#f1f2f4";
  const COLUMN_LINE = "#e3e5e8";
  // The demo tokenizer's pre-tokenizer (neuronpedia_graph/demo/tokenizer.py: WORD_PATTERN): a
  // prompt's pieces, checked against the vocabulary /health sends for small models.
  const WORD_PIECES = /\n| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]|\s/g;

  const $ = (id) => document.getElementById(id);
  const state = {
    health: null,
    graph: null, // parsed graph, see parseGraph
    rawText: null, // the document as received or opened, for Download JSON
    fileName: "graph.json",
    selected: -1,
    steerNode: -1,
    visible: 0, // how many of the strongest edges the slider lets through
    shown: new Uint8Array(0), // per node: 1 unless a filter hides it
    layout: null,
    fit: { k: 1, tx: 0, ty: 0 }, // the fitted view
    view: { k: 1, tx: 0, ty: 0 }, // the current view: screen = (tx, ty) + k * world
    highlighted: 0, // the selected node's links drawn / its links in the chosen direction
    incident: 0,
    search: null,
    moving: false, // the view is being zoomed or panned (see MOVING_EDGES)
    counted: { drawn: 0, visible: 0 }, // what the last edge drawing let through
    known: null,
    labels: new Map(), // web-app feature id -> label typed here or read from qParams.clerps
    labelsEdited: false,
    pins: [], // pinned node ids, in pinning order
    supernodes: [], // [name, node id, ...]
    stateEdited: false, // the small vocabulary as a Set
    jobs: null, // the server has graph jobs: null until POST /graphs answers, false after a 404/405
    job: null, // the job the progress bar follows: { id, phases }
    jobId: null, // the stored job whose document is drawn (the re-prune sliders ask for it)
    repruneSeq: 0, // the latest re-prune request; an older answer is dropped
  };

  // ------------------------------------------------------------------ small helpers
  function esc(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function fmt(value, digits = 3) {
    if (value === null || value === undefined || !Number.isFinite(value)) return "—";
    const abs = Math.abs(value);
    if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(2);
    return value.toFixed(digits);
  }

  function showToken(token) {
    if (token === undefined || token === null) return "";
    const text = String(token).replace(/\n/g, "↵").replace(/\t/g, "⇥");
    return text.trim() === "" ? text.replace(/ /g, "␣") || "∅" : text;
  }

  function setStatus(el, kind, text) {
    el.className = `status ${kind}`;
    el.textContent = text;
  }

  function numberOrNull(value) {
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  }

  // ------------------------------------------------------------------ secret key
  function storedSecret() {
    try {
      return sessionStorage.getItem(SECRET_KEY) || "";
    } catch {
      return "";
    }
  }

  function askSecret() {
    const dialog = $("secret-dialog");
    const input = $("secret-input");
    input.value = storedSecret();
    return new Promise((resolve) => {
      dialog.addEventListener(
        "close",
        () => {
          const value = input.value.trim();
          if (dialog.returnValue === "save" && value) {
            sessionStorage.setItem(SECRET_KEY, value);
            resolve(value);
          } else {
            resolve("");
          }
        },
        { once: true },
      );
      dialog.returnValue = ""; // Escape keeps the previous value otherwise
      dialog.showModal();
      input.focus();
    });
  }

  async function ensureSecret() {
    return storedSecret() || (await askSecret());
  }

  // ------------------------------------------------------------------ HTTP
  // Every failure becomes one readable sentence; nothing here throws to the caller.
  function describeFailure(status, body, headers) {
    const detail = body && typeof body.error === "string" ? body.error : "";
    const rid = (headers && headers.get("X-Request-Id")) || (body && typeof body.request_id === "string" ? body.request_id : "");
    const suffix = rid ? ` (request id ${rid})` : "";
    switch (status) {
      case 400:
      case 422:
        return `The server rejected the request (${status}): ${detail || "invalid input"}${suffix}`;
      case 401:
        return `The server needs the secret key (401): ${detail}. Enter it again and retry.`;
      case 403:
        return `The secret key was rejected (403): ${detail}. Enter the right one and retry.`;
      case 404:
        return `Not found (404): ${detail || "this server does not offer that endpoint"}${suffix}`;
      case 413:
        return `The request is too large (413): ${detail}${suffix}`;
      case 502:
        return `Upload failed (502): ${detail}${suffix}`;
      case 503: {
        const wait = headers && headers.get("Retry-After");
        const when = wait ? `Try again in ${wait} s.` : "Try again shortly.";
        return `The server is busy with another request (503): ${detail || "busy"} ${when}`;
      }
      default:
        if (status >= 500) return `Server error (${status}): ${detail || "no details"}${suffix}`;
        return `Request failed (${status}): ${detail || "no details"}${suffix}`;
    }
  }

  async function postJSON(path, payload) {
    return await callJSON("POST", path, payload);
  }

  // One request with the secret header (never in the URL); the reply's JSON, or a sentence.
  async function callJSON(method, path, payload) {
    const secret = await ensureSecret();
    if (!secret) return { ok: false, message: NO_SECRET };
    let response;
    try {
      const headers = { "x-secret-key": secret };
      const init = { method, headers };
      if (payload !== undefined) {
        headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(payload);
      }
      response = await fetch(path, init);
    } catch (err) {
      return { ok: false, message: `Could not reach the server: ${err.message}` };
    }
    const text = await response.text().catch(() => "");
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!response.ok) {
      if (response.status === 401 || response.status === 403) sessionStorage.removeItem(SECRET_KEY);
      const fallback = body ? body : { error: text.slice(0, 200) };
      return { ok: false, status: response.status, message: describeFailure(response.status, fallback, response.headers) };
    }
    if (body === null) return { ok: false, message: "The server's reply is not valid JSON." };
    return { ok: true, status: response.status, body, text, headers: response.headers };
  }

  // ------------------------------------------------------------------ server defaults
  async function loadHealth() {
    const info = $("server-info");
    try {
      const response = await fetch("/health");
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const health = await response.json();
      state.health = health;
      info.textContent = `model ${health.model_id} · ${health.backend} on ${health.device}/${health.dtype} · circuit-tracer ${health.circuit_tracer_version} · token limit ${health.token_limit}`;
      const defaults = health.defaults || {};
      for (const name of ["node_threshold", "edge_threshold", "desired_logit_prob", "max_n_logits", "batch_size", "max_feature_nodes"]) {
        if (typeof defaults[name] === "number") $(name).value = defaults[name];
      }
      updateVocabNotice();
      const cap = health.max_feature_nodes;
      if (typeof cap === "number") {
        $("max_feature_nodes").max = cap;
        const current = Number($("max_feature_nodes").value) || cap;
        $("max_feature_nodes").value = Math.min(current, cap);
      }
    } catch (err) {
      info.textContent = `server health unavailable (${err.message}); opening JSON files still works`;
    }
  }

  // ------------------------------------------------------------------ the form
  function addChatTurn(role = "user", content = "") {
    const row = document.createElement("div");
    row.className = "chat-turn";
    row.innerHTML =
      '<select aria-label="role"><option>system</option><option>user</option><option>assistant</option></select>' +
      '<button type="button" class="small" aria-label="remove turn">✕</button>' +
      '<textarea rows="2" aria-label="content"></textarea>';
    row.querySelector("select").value = role;
    row.querySelector("textarea").value = content;
    row.querySelector("button").addEventListener("click", () => row.remove());
    $("chat-turns").appendChild(row);
  }

  function currentMode() {
    return document.querySelector('input[name="mode"]:checked').value;
  }

  function slugFor(text) {
    const words = text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40);
    return `viewer-${words || "graph"}-${Date.now().toString(36)}`.replace(/-+/g, "-");
  }

  function graphRequest() {
    const request = { model_id: state.health ? state.health.model_id : "demo" };
    let text;
    if (currentMode() === "chat") {
      const messages = [...document.querySelectorAll(".chat-turn")].map((row) => ({
        role: row.querySelector("select").value,
        content: row.querySelector("textarea").value,
      }));
      if (!messages.length) throw new Error("Add at least one chat turn.");
      request.messages = messages;
      text = messages.map((m) => m.content).join(" ");
    } else {
      text = $("prompt").value;
      if (!text.trim()) throw new Error("Type a prompt first.");
      request.prompt = text;
    }
    for (const name of ["max_feature_nodes", "node_threshold", "edge_threshold", "desired_logit_prob", "max_n_logits", "batch_size"]) {
      const value = $(name).valueAsNumber;
      if (!Number.isFinite(value)) throw new Error(`${name} must be a number.`);
      request[name] = value;
    }
    request.slug_identifier = slugFor(text);
    return request;
  }

  function parseServerTiming(header) {
    if (!header) return [];
    return header
      .split(",")
      .map((part) => {
        const [name, ...params] = part.trim().split(";");
        const dur = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
        return { name: name.trim(), ms: dur ? Number(dur.slice(4)) : NaN };
      })
      .filter((p) => p.name);
  }

  // The form submissions share this: build the request (a bad field is a message), make sure a
  // secret is known, then POST with the button disabled and a ticking "<label>… N s" status.
  // Returns null when nothing was sent (the status says why), else { request, result, started }.
  async function submit(status, buttonId, label, path, buildRequest) {
    let request;
    try {
      request = buildRequest();
    } catch (err) {
      setStatus(status, "error", err.message);
      return null;
    }
    if (!(await ensureSecret())) {
      setStatus(status, "error", NO_SECRET);
      return null;
    }
    const button = $(buttonId);
    button.disabled = true;
    const started = performance.now();
    const tick = () => setStatus(status, "progress", `${label}… ${((performance.now() - started) / 1000).toFixed(1)} s`);
    tick();
    const timer = setInterval(tick, 100);
    try {
      return { request, result: await postJSON(path, request), started };
    } finally {
      clearInterval(timer);
      button.disabled = false;
    }
  }

  // Generate: through the jobs API (queued, with progress and Cancel) when the server has it;
  // a server without it answers POST /graphs with 404 or 405, and the page then uses the
  // synchronous /generate-graph from then on.
  async function generate(event) {
    event.preventDefault();
    if (state.job) return; // one job at a time from this page (Generate is disabled meanwhile)
    if (state.jobs === false) return generateSync();
    const status = $("status");
    let request;
    try {
      request = graphRequest();
    } catch (err) {
      setStatus(status, "error", err.message);
      return;
    }
    if (!(await ensureSecret())) {
      setStatus(status, "error", NO_SECRET);
      return;
    }
    $("timings").replaceChildren();
    const button = $("generate");
    button.disabled = true;
    try {
      // POST /graphs answers at once (202, or 404/405 from a server without jobs).
      const created = await callJSON("POST", "/graphs", request);
      if (!created.ok && (created.status === 404 || created.status === 405)) {
        state.jobs = false;
        button.disabled = false;
        await generateSync();
        return;
      }
      if (!created.ok) {
        setStatus(status, "error", created.message);
        return;
      }
      state.jobs = true;
      await followJob(created.body, request.slug_identifier);
    } finally {
      button.disabled = false;
    }
  }

  async function generateSync() {
    const status = $("status");
    const timings = $("timings");
    timings.replaceChildren();
    const sent = await submit(status, "generate", "Generating", "/generate-graph", graphRequest);
    if (!sent) return;
    const { request, result, started } = sent;
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    if (!result.ok) {
      setStatus(status, "error", result.message);
      return;
    }
    try {
      showGraph(result.body, result.text, `${request.slug_identifier}.json`);
    } catch (err) {
      setStatus(status, "error", `The server's graph could not be drawn: ${err.message}`);
      return;
    }
    const phases = parseServerTiming(result.headers.get("Server-Timing"));
    setStatus(status, "ok", `Graph ready in ${seconds} s: ${state.graph.nodes.length} nodes, ${state.graph.nLinks} links.`);
    for (const phase of phases) {
      const li = document.createElement("li");
      li.dataset.phase = phase.name;
      li.innerHTML = `<span>${esc(phase.name)}</span><span>${esc(fmt(phase.ms, 1))} ms</span>`;
      timings.appendChild(li);
    }
  }

  // ------------------------------------------------------------------ graph jobs
  const FINISHED = new Set(["done", "failed", "cancelled"]);
  const PHASE_TEXT = {
    activations: "activations",
    forward_pass: "forward pass",
    logit_batches: "logit batches",
    feature_batches: "feature batches",
    prune: "pruning",
    build_json: "building the JSON",
    compress: "compressing",
    upload: "uploading",
  };

  // The progress bar shows one job's latest state (queue position, phase, fraction).
  function showJob(view) {
    const bar = $("job-progress");
    const label = $("job-label");
    bar.value = typeof view.progress === "number" ? view.progress : 0;
    bar.dataset.status = view.status;
    bar.dataset.phase = view.phase || "";
    if (state.job && view.phase && !state.job.phases.includes(view.phase)) {
      state.job.phases.push(view.phase);
      bar.dataset.phases = state.job.phases.join(" ");
    }
    label.dataset.queue = view.queue_position === null || view.queue_position === undefined ? "" : String(view.queue_position);
    const percent = `${Math.floor(bar.value * 100)} %`;
    if (view.status === "queued") {
      label.textContent = view.queue_position === 1 ? "Queued: next to run" : `Queued: position ${view.queue_position} in the queue`;
    } else if (view.status === "running") {
      const phase = view.phase ? PHASE_TEXT[view.phase] || view.phase : "starting";
      label.textContent = `Running: ${phase} · ${percent}${view.cancel_requested ? " · cancelling…" : ""}`;
    } else {
      label.textContent = { done: "Done · 100 %", failed: "Failed", cancelled: "Cancelled" }[view.status] || view.status;
    }
    $("job-cancel").hidden = FINISHED.has(view.status);
  }

  // A job's event stream, read with fetch() so the secret travels in a header (EventSource
  // cannot send one). Calls onState with every state event; returns the last one.
  async function readEvents(id, onState) {
    const response = await fetch(`/graphs/${encodeURIComponent(id)}/events`, {
      headers: { "x-secret-key": storedSecret(), Accept: "text/event-stream" },
    });
    if (!response.ok || !response.body) return null;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let last = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      buffer = buffer.replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (event === "state" && data.length) {
          last = JSON.parse(data.join("\n"));
          onState(last);
        }
      }
    }
    return last;
  }

  // Until the job has finished: its stream, read again (after its state is asked for) when
  // it breaks off or is refused (503: too many streams open).
  async function watchJob(id, onState) {
    for (let attempt = 1; ; attempt++) {
      let last = null;
      try {
        last = await readEvents(id, onState);
      } catch {
        last = null; // a dropped connection: ask for the state below
      }
      if (last && FINISHED.has(last.status)) return last;
      const now = await callJSON("GET", `/graphs/${encodeURIComponent(id)}`);
      if (!now.ok) throw new Error(now.message);
      onState(now.body);
      if (FINISHED.has(now.body.status)) return now.body;
      await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 500 * attempt)));
    }
  }

  async function followJob(job, slug) {
    const status = $("status");
    const started = performance.now();
    state.job = { id: job.id, phases: [] };
    $("job-progress").dataset.phases = "";
    $("job-progress").dataset.id = job.id;
    $("job-cancel").disabled = false;
    $("job").hidden = false;
    showJob(job);
    setStatus(status, "progress", `Graph job ${job.id} submitted.`);
    let last;
    try {
      last = await watchJob(job.id, showJob);
    } catch (err) {
      setStatus(status, "error", `Lost track of graph job ${job.id}: ${err.message}`);
      state.job = null;
      return;
    }
    state.job = null;
    if (last.status === "cancelled") {
      setStatus(status, "cancelled", `Graph job ${job.id} was cancelled; the server is free for the next one.`);
    } else if (last.status === "failed") {
      const error = last.error || { status: 500, body: {} };
      setStatus(status, "error", describeFailure(error.status, error.body, null));
    } else {
      const result = await callJSON("GET", `/graphs/${encodeURIComponent(job.id)}/document`);
      if (!result.ok) {
        setStatus(status, "error", result.message);
      } else if (drawStored(result, job.id, `${slug}.json`)) {
        const seconds = ((performance.now() - started) / 1000).toFixed(2);
        setStatus(status, "ok", `Graph ready in ${seconds} s: ${state.graph.nodes.length} nodes, ${state.graph.nLinks} links (job ${job.id}).`);
        showTimings(Object.entries(last.timings || {}).map(([name, ms]) => ({ name, ms })));
      }
    }
    if ($("recent-list").dataset.loaded) refreshRecent();
  }

  // Draws a document the server stores (a job's), which the re-prune sliders can then ask for
  // at other thresholds. False (with the reason in the status) when it cannot be drawn.
  function drawStored(result, id, fileName) {
    try {
      showGraph(result.body, result.text, fileName);
    } catch (err) {
      setStatus($("status"), "error", `The server's graph could not be drawn: ${err.message}`);
      return false;
    }
    const settings = state.graph.metadata.pruning_settings || {};
    for (const [name, input] of [["node_threshold", "reprune-node"], ["edge_threshold", "reprune-edge"]]) {
      const value = typeof settings[name] === "number" ? settings[name] : $(name).valueAsNumber;
      if (Number.isFinite(value)) $(input).value = String(value);
    }
    enableReprune(id);
    return true;
  }

  function showTimings(phases) {
    const timings = $("timings");
    timings.replaceChildren();
    for (const phase of phases) {
      const li = document.createElement("li");
      li.dataset.phase = phase.name;
      li.innerHTML = `<span>${esc(phase.name)}</span><span>${esc(fmt(phase.ms, 1))} ms</span>`;
      timings.appendChild(li);
    }
  }

  async function cancelJob() {
    if (!state.job) return;
    const button = $("job-cancel");
    button.disabled = true;
    const result = await callJSON("DELETE", `/graphs/${encodeURIComponent(state.job.id)}`);
    // 409: it finished meanwhile; its stream says how.
    if (!result.ok && result.status !== 409) {
      setStatus($("status"), "error", `Could not cancel: ${result.message}`);
      button.disabled = false;
      return;
    }
    if (result.ok) showJob(result.body);
  }

  // ------------------------------------------------------------------ recent graphs
  function jobWhen(view) {
    const seconds = view.finished_at || view.created_at;
    return typeof seconds === "number" ? new Date(seconds * 1000).toLocaleString() : "";
  }

  async function refreshRecent() {
    const note = $("recent-status");
    const list = $("recent-list");
    note.textContent = "Asking the server…";
    const result = await callJSON("GET", "/graphs?limit=20");
    if (!result.ok) {
      note.textContent = result.status === 404 || result.status === 405 ? "This server keeps no graph jobs." : result.message;
      return;
    }
    list.replaceChildren();
    list.dataset.loaded = "1";
    $("recent-refresh").textContent = "Refresh";
    const jobs = Array.isArray(result.body.jobs) ? result.body.jobs : [];
    note.textContent = jobs.length ? `${jobs.length} of ${result.body.total}, newest first` : "No graphs on this server yet.";
    for (const view of jobs) {
      const li = document.createElement("li");
      li.dataset.id = view.id;
      li.dataset.status = view.status;
      const open = document.createElement("button");
      open.type = "button";
      open.className = "link";
      open.textContent = view.slug_identifier || view.id;
      open.title = `${view.id} · ${jobWhen(view)}`;
      open.disabled = view.status !== "done";
      open.addEventListener("click", () => openStored(view));
      const info = document.createElement("span");
      info.className = "job-status";
      info.textContent = view.status === "done" && view.result ? `${view.result.nodes} nodes` : view.status;
      li.append(open, info);
      list.appendChild(li);
    }
  }

  async function openStored(view) {
    const status = $("status");
    const name = view.slug_identifier || view.id;
    setStatus(status, "progress", `Opening ${name}…`);
    const result = await callJSON("GET", `/graphs/${encodeURIComponent(view.id)}/document`);
    if (!result.ok) {
      setStatus(status, "error", result.message);
      return;
    }
    if (drawStored(result, view.id, `${name}.json`)) {
      $("timings").replaceChildren();
      setStatus(status, "ok", `Opened ${name} from the server: ${state.graph.nodes.length} nodes, ${state.graph.nLinks} links.`);
    }
  }

  // ------------------------------------------------------------------ re-prune on the server
  // The stored graph is pruned again by the server at the sliders' thresholds: a different set
  // of nodes and links, the same as a fresh graph at those thresholds. Pins, groups, labels and
  // the selection carry over where their nodes survive.
  function enableReprune(id) {
    state.jobId = id;
    $("reprune").disabled = false;
    $("reprune-node-value").textContent = $("reprune-node").value;
    $("reprune-edge-value").textContent = $("reprune-edge").value;
  }

  async function reprune() {
    if (!state.jobId || !state.graph) return;
    const id = state.jobId;
    const node = Number($("reprune-node").value);
    const edge = Number($("reprune-edge").value);
    const note = $("reprune-status");
    const keep = {
      pinnedIds: state.pins.slice(),
      supernodes: state.supernodes.map((group) => group.slice()),
      clerps: [...state.labels.entries()],
      clickedId: state.selected >= 0 ? state.graph.nodes[state.selected].id : "",
    };
    const edited = { labels: state.labelsEdited, state: state.stateEdited };
    const seq = ++state.repruneSeq;
    note.className = "reprune-status progress";
    note.textContent = "asking the server…";
    const started = performance.now();
    const query = new URLSearchParams({ node_threshold: String(node), edge_threshold: String(edge) });
    const result = await callJSON("GET", `/graphs/${encodeURIComponent(id)}/document?${query}`);
    if (seq !== state.repruneSeq) return; // a later slider move asked again
    if (!result.ok) {
      note.className = "reprune-status error";
      note.textContent = result.message;
      return;
    }
    const doc = result.body;
    const qParams = doc.qParams && typeof doc.qParams === "object" ? doc.qParams : {};
    doc.qParams = { ...qParams, ...keep };
    try {
      showGraph(doc, result.text, state.fileName);
    } catch (err) {
      note.className = "reprune-status error";
      note.textContent = `The server's graph could not be drawn: ${err.message}`;
      return;
    }
    state.labelsEdited = edited.labels;
    state.stateEdited = edited.state;
    enableReprune(id);
    writeFragment(); // the link drops the pins whose nodes this pruning left out
    performance.measure("npg:reprune", { start: started, end: performance.now() });
    const applied = doc.metadata && doc.metadata.pruning_settings;
    const matches = applied && applied.node_threshold === node && applied.edge_threshold === edge;
    note.className = matches ? "reprune-status ok" : "reprune-status error";
    note.dataset.nodes = String(state.graph.nodes.length);
    note.textContent = matches
      ? `${state.graph.nodes.length} nodes, ${state.graph.nLinks} links`
      : "The server sent the graph as stored: it does not re-prune stored graphs.";
  }

  // ------------------------------------------------------------------ files
  async function readGraphFile(file) {
    const head = new Uint8Array(await file.slice(0, 2).arrayBuffer());
    if (head[0] === 0x1f && head[1] === 0x8b) {
      const stream = file.stream().pipeThrough(new DecompressionStream("gzip"));
      return await new Response(stream).text();
    }
    return await file.text();
  }

  async function openFile() {
    const input = $("file-input");
    const file = input.files && input.files[0];
    input.value = "";
    if (!file) return;
    const status = $("status");
    $("timings").replaceChildren();
    setStatus(status, "progress", `Opening ${file.name}…`);
    try {
      const text = await readGraphFile(file);
      let doc;
      try {
        doc = JSON.parse(text);
      } catch (err) {
        throw new Error(`not valid JSON (${err.message})`);
      }
      showGraph(doc, text, file.name.replace(/\.gz$/, ""));
      setStatus(status, "ok", `Opened ${file.name}: ${state.graph.nodes.length} nodes, ${state.graph.nLinks} links.`);
    } catch (err) {
      setStatus(status, "error", `Could not open ${file.name}: ${err.message}`);
    }
  }

  // The document to save: as received, unless labels, pins or supernodes were edited; then the
  // same document with those qParams replaced (the web app's format, so Neuronpedia reads them).
  function documentText() {
    if (!state.labelsEdited && !state.stateEdited) return state.rawText;
    const doc = JSON.parse(state.rawText);
    const qParams = doc.qParams && typeof doc.qParams === "object" ? doc.qParams : {};
    doc.qParams = {
      ...qParams,
      pinnedIds: state.pins.slice(),
      supernodes: state.supernodes.map((group) => group.slice()),
      clickedId: state.selected >= 0 ? state.graph.nodes[state.selected].id : "",
      clerps: [...state.labels.entries()],
    };
    return JSON.stringify(doc);
  }

  function downloadGraph() {
    if (!state.rawText) return;
    const url = URL.createObjectURL(new Blob([documentText()], { type: "application/json" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = state.fileName;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ------------------------------------------------------------------ graph model
  function kindOf(raw) {
    const type = String(raw.feature_type || "");
    if (type === "embedding" || raw.layer === "E") return "embedding";
    if (type === "logit") return "logit";
    if (type === "mlp reconstruction error") return "error";
    return "feature";
  }

  // Transcoder feature ids are "<layer>_<feature index>_<position>"; the `feature` field holds
  // a Cantor pairing of layer and index, not the index.
  function featureIndexOf(raw, kind) {
    if (kind === "feature") {
      const match = /^(\d+)_(\d+)_(\d+)$/.exec(raw.node_id);
      if (match) return Number(match[2]);
    }
    return typeof raw.feature === "number" ? raw.feature : null;
  }

  // The `feature` field is a Cantor pairing of (layer, index); this is the index.
  function cantorIndex(value) {
    const w = Math.floor((Math.sqrt(8 * value + 1) - 1) / 2);
    return value - (w * w + w) / 2;
  }

  /**
   * The feature's Neuronpedia page, built as the web app builds it: model from metadata.scan,
   * source "<layer>-<neuronpedia_source_set>", index from the Cantor-paired `feature`. Null
   * when the graph names no source set (the demo's does not) or the node is not a feature.
   */
  function featurePageUrl(node) {
    const meta = state.graph.metadata;
    const details = meta.feature_details && typeof meta.feature_details === "object" ? meta.feature_details : {};
    const sourceSet = details.neuronpedia_source_set;
    if (node.kind !== "feature" || typeof sourceSet !== "string" || !sourceSet || typeof meta.scan !== "string" || !meta.scan) return null;
    if (node.layerNum === null || !Number.isInteger(node.rawFeature) || node.rawFeature < 0) return null;
    const parts = [meta.scan, `${node.layerNum}-${sourceSet}`, String(cantorIndex(node.rawFeature))];
    return `${NEURONPEDIA_URL}/${parts.map(encodeURIComponent).join("/")}`;
  }

  function logitToken(clerp) {
    const match = /^Output "([\s\S]*)" \(p=[^)]*\)$/.exec(clerp);
    return match ? match[1] : clerp;
  }

  // A node's position must be a prompt position and its layer a small whole number: a file
  // with `ctx_idx: 50000000` would otherwise lay out fifty million columns and hang the tab.
  function positionOf(raw, nTokens) {
    if (raw.ctx_idx === undefined || raw.ctx_idx === null) return 0;
    const limit = nTokens || MAX_POSITIONS;
    if (!Number.isInteger(raw.ctx_idx) || raw.ctx_idx < 0 || raw.ctx_idx >= limit) {
      const where = nTokens ? `the prompt has ${nTokens} tokens (positions 0 to ${nTokens - 1})` : `positions run from 0 to ${MAX_POSITIONS - 1}`;
      throw new Error(`node ${JSON.stringify(raw.node_id)} has ctx_idx ${JSON.stringify(raw.ctx_idx)}, but ${where}`);
    }
    return raw.ctx_idx;
  }

  function layerOf(raw, kind) {
    if (kind === "embedding") return null;
    const text = String(raw.layer ?? "");
    const value = /^\d+$/.test(text) ? Number(text) : NaN;
    if (!(value <= MAX_LAYER)) {
      throw new Error(`node ${JSON.stringify(raw.node_id)} has layer ${JSON.stringify(raw.layer)}, not a layer number from 0 to ${MAX_LAYER}`);
    }
    return value;
  }

  // A logit-difference target (metadata.attribution_targets: {contrast: [a, b], node_id}) is
  // one logit node whose "token" is the label "a−b": name it for what it is.
  function contrastLabels(metadata) {
    const t = metadata.attribution_targets;
    if (!t || !Array.isArray(t.contrast) || t.contrast.length !== 2 || typeof t.node_id !== "string") return new Map();
    const [a, b] = t.contrast.map((x) => JSON.stringify(String(x)));
    return new Map([[t.node_id, `logit(${a}) − logit(${b})`]]);
  }

  /**
   * Turn a graph document (this server's or circuit-tracer's) into arrays the drawing uses.
   * Unknown extra fields are ignored; links to missing nodes are counted and skipped; a node
   * at an impossible position or layer is an error (the message names it).
   */
  function parseGraph(doc) {
    if (!doc || typeof doc !== "object" || !Array.isArray(doc.nodes) || !Array.isArray(doc.links)) {
      throw new Error("not a graph document (it needs 'nodes' and 'links' arrays)");
    }
    const metadata = doc.metadata && typeof doc.metadata === "object" ? doc.metadata : {};
    const tokens = Array.isArray(metadata.prompt_tokens) ? metadata.prompt_tokens.map(String) : [];
    const contrasts = contrastLabels(metadata);
    const nodes = [];
    const index = new Map();
    let maxLayer = -1;
    let logitLayer = -1;
    let maxPos = 0;
    for (const raw of doc.nodes) {
      if (!raw || typeof raw.node_id !== "string" || index.has(raw.node_id)) continue;
      const kind = kindOf(raw);
      const layerNum = layerOf(raw, kind);
      const pos = positionOf(raw, tokens.length);
      const clerp = typeof raw.clerp === "string" ? raw.clerp : "";
      const node = {
        id: raw.node_id,
        kind,
        type: String(raw.feature_type || kind),
        layer: raw.layer === undefined ? "" : String(raw.layer),
        layerNum,
        pos,
        feature: featureIndexOf(raw, kind),
        rawFeature: typeof raw.feature === "number" ? raw.feature : null,
        // The web app's feature id, the key of its label overrides (qParams.clerps).
        webId: `${raw.layer}_${raw.feature}_${raw.ctx_idx}`,
        influence: numberOrNull(raw.influence),
        activation: numberOrNull(raw.activation),
        prob: numberOrNull(raw.token_prob),
        isTarget: raw.is_target_logit === true,
        clerp,
        token: kind === "logit" ? logitToken(clerp) : null,
        contrast: kind === "logit" ? contrasts.get(raw.node_id) ?? null : null,
      };
      if (kind === "logit" && node.layerNum !== null) logitLayer = Math.max(logitLayer, node.layerNum);
      if ((kind === "feature" || kind === "error") && node.layerNum !== null) maxLayer = Math.max(maxLayer, node.layerNum);
      maxPos = Math.max(maxPos, pos);
      index.set(node.id, nodes.length);
      nodes.push(node);
    }
    if (!nodes.length) throw new Error("the graph has no nodes");

    const count = doc.links.length;
    const src = new Int32Array(count);
    const dst = new Int32Array(count);
    const weight = new Float32Array(count);
    let n = 0;
    let skipped = 0;
    for (const link of doc.links) {
      const s = link ? index.get(link.source) : undefined;
      const t = link ? index.get(link.target) : undefined;
      const w = link ? Number(link.weight) : NaN;
      if (s === undefined || t === undefined || !Number.isFinite(w)) {
        skipped++;
        continue;
      }
      src[n] = s;
      dst[n] = t;
      weight[n] = w;
      n++;
    }
    // Strongest first: the edge slider keeps a prefix of this order; rank is its inverse.
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    const absW = new Float32Array(n);
    for (let i = 0; i < n; i++) absW[i] = Math.abs(weight[i]);
    order.sort((a, b) => absW[b] - absW[a]);
    const rank = new Uint32Array(n);
    for (let k = 0; k < n; k++) rank[order[k]] = k;
    // Each node's links, for selection: offsets into one array (CSR), built in two passes.
    const inStart = new Uint32Array(nodes.length + 1);
    const outStart = new Uint32Array(nodes.length + 1);
    for (let e = 0; e < n; e++) {
      inStart[dst[e] + 1]++;
      outStart[src[e] + 1]++;
    }
    for (let i = 0; i < nodes.length; i++) {
      inStart[i + 1] += inStart[i];
      outStart[i + 1] += outStart[i];
    }
    const inEdges = new Uint32Array(n);
    const outEdges = new Uint32Array(n);
    const inFill = inStart.slice(0, nodes.length);
    const outFill = outStart.slice(0, nodes.length);
    for (let e = 0; e < n; e++) {
      inEdges[inFill[dst[e]]++] = e;
      outEdges[outFill[src[e]]++] = e;
    }

    const nPos = Math.max(tokens.length, maxPos + 1);
    const nLayers = Math.max(maxLayer + 1, logitLayer > 0 ? logitLayer - 1 : 0);
    let maxInfluence = -Infinity;
    let minInfluence = Infinity;
    for (const node of nodes) {
      if (node.kind === "embedding") node.row = 0;
      else if (node.kind === "logit") node.row = nLayers + 1;
      else node.row = (node.layerNum ?? 0) + 1;
      if (filterable(node) && node.influence !== null) {
        maxInfluence = Math.max(maxInfluence, node.influence);
        minInfluence = Math.min(minInfluence, node.influence);
      }
    }
    let top = -1;
    for (let i = 0; i < nodes.length; i++) {
      const node = nodes[i];
      if (node.kind !== "logit") continue;
      if (top < 0 || (node.prob ?? -1) > (nodes[top].prob ?? -1) || ((node.prob ?? -1) === (nodes[top].prob ?? -1) && node.isTarget)) top = i;
    }
    return {
      metadata, nodes, index, src: src.subarray(0, n), dst: dst.subarray(0, n),
      weight: weight.subarray(0, n), absW, order, rank, inStart, inEdges, outStart, outEdges,
      nLinks: n, skipped, tokens, nPos, nLayers, topLogit: top,
      minInfluence: Number.isFinite(minInfluence) ? minInfluence : 0,
      maxInfluence: Number.isFinite(maxInfluence) ? maxInfluence : 0,
    };
  }

  // Only features and error nodes are filtered by influence: embeddings and logits anchor the axes.
  function filterable(node) {
    return node.kind === "feature" || node.kind === "error";
  }

  function isUnknownToken(token) {
    const unk = state.health && state.health.vocabulary ? state.health.vocabulary.unk_token : null;
    return token === (unk || "<unk>");
  }

  // ------------------------------------------------------------------ labels
  /** The short text that names a node in the graph, the neighbour lists and search results. */
  function nodeLabel(node) {
    const edited = state.labels.get(node.webId);
    if (edited) return edited;
    if (node.contrast) return node.contrast;
    if (node.kind === "logit") return showToken(node.token);
    if (node.kind === "embedding") return showToken(state.graph.tokens[node.pos] ?? `#${node.pos}`);
    return node.clerp || node.id;
  }

  // ------------------------------------------------------------------ layout
  function importance(node) {
    // `influence` is circuit-tracer's cumulative influence: the most influential node has the
    // smallest value, so size follows 1 - influence.
    if (node.influence === null) return node.kind === "logit" ? 1 : 0.5;
    return Math.min(1, Math.max(0, 1 - node.influence));
  }

  /**
   * World coordinates (one unit = one CSS pixel at zoom 1): a column per token as wide as its
   * fullest cell, a band per layer as tall as its fullest cell. How many nodes share a line in
   * a column is chosen so that the whole graph fits the view at the largest scale.
   */
  function layout(graph, viewW, viewH) {
    const { nodes, nPos, nLayers } = graph;
    const nRows = nLayers + 2;
    const count = new Int32Array(nRows * nPos);
    for (const node of nodes) {
      node.r = R_MIN + (R_MAX - R_MIN) * Math.sqrt(importance(node));
      count[node.row * nPos + node.pos]++;
    }
    // Logits stand in one line (their labels need the room above them); the other rows'
    // fullest cell sets how wide a column must be.
    const colMax = new Int32Array(nPos);
    const logitsAt = new Int32Array(nPos);
    const colFull = new Uint8Array(nPos); // has a feature or error node
    for (let row = 0; row < nRows; row++) {
      for (let pos = 0; pos < nPos; pos++) {
        const c = count[row * nPos + pos];
        if (row === nRows - 1) logitsAt[pos] = c;
        else colMax[pos] = Math.max(colMax[pos], c);
        if (c && row > 0 && row < nRows - 1) colFull[pos] = 1;
      }
    }
    const availW = Math.max(50, viewW - AXIS.left - AXIS.right);
    const availH = Math.max(50, viewH - AXIS.top - AXIS.bottom);
    const geometry = (maxLines) => {
      const perLine = new Int32Array(nPos);
      const colW = new Float64Array(nPos);
      let W = 0;
      for (let pos = 0; pos < nPos; pos++) {
        perLine[pos] = Math.max(1, logitsAt[pos], Math.ceil(colMax[pos] / maxLines));
        colW[pos] = perLine[pos] * SLOT + (colFull[pos] ? COL_GAP : EMPTY_COL_GAP);
        W += colW[pos];
      }
      const bandH = new Float64Array(nRows);
      let H = 0;
      for (let row = 0; row < nRows; row++) {
        let lines = 1;
        for (let pos = 0; pos < nPos; pos++) lines = Math.max(lines, Math.ceil(count[row * nPos + pos] / perLine[pos]));
        bandH[row] = lines * SLOT + BAND_PAD;
        H += bandH[row];
      }
      return { perLine, colW, W, bandH, H, scale: Math.min(availW / W, availH / H) };
    };
    let maxCell = 1;
    for (let pos = 0; pos < nPos; pos++) maxCell = Math.max(maxCell, colMax[pos]);
    const tries = new Set();
    for (let lines = 1; lines <= maxCell; lines = lines < 48 ? lines + 1 : Math.ceil(lines * 1.15)) tries.add(lines);
    tries.add(maxCell);
    let best = null;
    for (const lines of tries) {
      const g = geometry(lines);
      if (!best || g.scale > best.scale * 1.0001) best = g;
    }
    const { perLine, colW, W, bandH } = best;
    // Height left over once the width sets the scale goes to the bands (up to BAND_STRETCH
    // each), so a wide, flat graph uses the view's height instead of a thin strip of it.
    const spare = availH / best.scale - best.H;
    if (spare > 0) for (let row = 0; row < nRows; row++) bandH[row] += Math.min(BAND_STRETCH, spare / nRows);
    let H = 0;
    for (let row = 0; row < nRows; row++) H += bandH[row];
    const colX = new Float64Array(nPos + 1);
    for (let pos = 0; pos < nPos; pos++) colX[pos + 1] = colX[pos] + colW[pos];
    const bandTop = new Float64Array(nRows);
    let y = 0;
    for (let row = nRows - 1; row >= 0; row--) {
      bandTop[row] = y;
      y += bandH[row];
    }
    const cells = new Map();
    nodes.forEach((node, i) => {
      const key = node.row * nPos + node.pos;
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(i);
    });
    const x = new Float32Array(nodes.length);
    const yy = new Float32Array(nodes.length);
    for (const [key, members] of cells) {
      const row = Math.floor(key / nPos);
      const pos = key % nPos;
      if (row === nRows - 1) members.sort((a, b) => (nodes[b].prob ?? 0) - (nodes[a].prob ?? 0));
      else members.sort((a, b) => importance(nodes[b]) - importance(nodes[a]));
      const per = perLine[pos];
      const cx = colX[pos] + colW[pos] / 2;
      const lineCount = Math.ceil(members.length / per);
      members.forEach((i, j) => {
        const line = Math.floor(j / per);
        const inLine = Math.min(per, members.length - line * per);
        x[i] = cx + ((j % per) - (inLine - 1) / 2) * SLOT;
        // The most important nodes sit on the middle line of the band.
        yy[i] = bandTop[row] + bandH[row] / 2 + (line - (lineCount - 1) / 2) * SLOT;
      });
    }
    return { W, H, colX, colW, colFull, bandTop, bandH, x, y: yy, nRows, nPos };
  }

  // ------------------------------------------------------------------ view (zoom and pan)
  // screen = translate + k * world. The fitted view shows the whole graph inside the axes.
  function fitView(lay, viewW, viewH) {
    const availW = Math.max(50, viewW - AXIS.left - AXIS.right);
    const availH = Math.max(50, viewH - AXIS.top - AXIS.bottom);
    const k = Math.min(MAX_FIT_ZOOM, availW / lay.W, availH / lay.H);
    return { k, tx: AXIS.left + (availW - lay.W * k) / 2, ty: AXIS.top + (availH - lay.H * k) / 2 };
  }

  let settleTimer = 0;
  function setView(view, moving = false) {
    state.view = view;
    const el = $("graph-view");
    if (moving) {
      state.moving = true;
      el.dataset.moving = "true";
      clearTimeout(settleTimer);
      settleTimer = setTimeout(() => {
        state.moving = false;
        el.dataset.moving = "false";
        requestDraw();
      }, SETTLE_MS);
    }
    const transform = `translate(${view.tx.toFixed(2)} ${view.ty.toFixed(2)}) scale(${view.k.toFixed(5)})`;
    $("world").setAttribute("transform", transform);
    $("overlay-world").setAttribute("transform", transform);
    el.dataset.zoom = (view.k / state.fit.k).toFixed(4);
    requestDraw();
  }

  function zoomAt(sx, sy, factor) {
    if (!state.graph) return;
    const { k, tx, ty } = state.view;
    const lowest = state.fit.k * MIN_ZOOM_OF_FIT;
    const k2 = Math.min(Math.max(MAX_ZOOM, state.fit.k), Math.max(lowest, k * factor));
    const wx = (sx - tx) / k;
    const wy = (sy - ty) / k;
    setView({ k: k2, tx: sx - wx * k2, ty: sy - wy * k2 }, true);
  }

  function zoomCentre(factor) {
    const el = $("graph-view");
    zoomAt(el.clientWidth / 2, el.clientHeight / 2, factor);
  }

  function centreOn(i) {
    const el = $("graph-view");
    const lay = state.layout;
    const k = Math.max(state.view.k, Math.min(SEARCH_ZOOM, MAX_ZOOM));
    setView({ k, tx: el.clientWidth / 2 - k * lay.x[i], ty: el.clientHeight / 2 - k * lay.y[i] });
  }

  // ------------------------------------------------------------------ drawing
  let drawPending = false;
  function requestDraw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => {
      drawPending = false;
      if (state.graph) drawFrame();
    });
  }

  // Everything that follows the view: the canvas (bands, column lines, edges), the axes and
  // the logit labels. Runs at most once per animation frame.
  function drawFrame() {
    drawCanvas();
    drawAxes();
    drawLogitLabels();
  }

  function rowLabel(row, nRows) {
    if (row === 0) return "Emb";
    if (row === nRows - 1) return "Logits";
    return `L${row - 1}`;
  }

  function sizedContext(canvas, w, h) {
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return ctx;
  }

  function drawCanvas() {
    const graph = state.graph;
    const lay = state.layout;
    const { k, tx, ty } = state.view;
    const view = $("graph-view");
    const w = view.clientWidth;
    const h = view.clientHeight;
    // Layer bands and token columns.
    const bands = sizedContext($("band-canvas"), w, h);
    for (let row = 0; row < lay.nRows; row++) {
      bands.fillStyle = row % 2 ? BAND_ALT : BAND;
      bands.fillRect(tx, ty + k * lay.bandTop[row], k * lay.W, k * lay.bandH[row]);
    }
    bands.beginPath();
    for (let pos = 0; pos <= lay.nPos; pos++) {
      const x = Math.round(tx + k * lay.colX[pos]) + 0.5;
      bands.moveTo(x, ty);
      bands.lineTo(x, ty + k * lay.H);
    }
    bands.strokeStyle = COLUMN_LINE;
    bands.lineWidth = 1;
    bands.stroke();
    const canvas = $("edge-canvas");
    const ctx = sizedContext(canvas, w, h);
    // Edges: the strongest `visible` links whose ends are both shown, at most MAX_DRAWN_EDGES
    // (MOVING_EDGES while the view moves), one path per (sign, width bucket); curves entirely
    // off screen are skipped. `drawn` counts what the filters let through, whatever the view.
    const visible = Math.min(state.visible, graph.nLinks);
    const maxAbs = graph.nLinks ? graph.absW[graph.order[0]] : 0;
    const paths = [];
    for (let b = 0; b < 2 * WIDTH_BUCKETS.length; b++) paths.push(new Path2D());
    const shown = state.shown;
    let drawn = 0;
    let curves = 0;
    const budget = state.moving ? MOVING_EDGES : MAX_DRAWN_EDGES;
    for (let r = 0; r < visible && drawn < MAX_DRAWN_EDGES; r++) {
      const e = graph.order[r];
      const s = graph.src[e];
      const t = graph.dst[e];
      if (!shown[s] || !shown[t]) continue;
      drawn++;
      if (drawn > budget) continue;
      const x1 = tx + k * lay.x[s];
      const y1 = ty + k * lay.y[s];
      const x2 = tx + k * lay.x[t];
      const y2 = ty + k * lay.y[t];
      if ((x1 < 0 && x2 < 0) || (x1 > w && x2 > w) || (y1 < 0 && y2 < 0) || (y1 > h && y2 > h)) continue;
      const path = paths[bucketOf(graph.absW[e], maxAbs) + (graph.weight[e] < 0 ? WIDTH_BUCKETS.length : 0)];
      const ym = (y1 + y2) / 2;
      path.moveTo(x1, y1);
      path.bezierCurveTo(x1, ym, x2, ym, x2, y2);
      curves++;
    }
    ctx.lineCap = "round";
    paths.forEach((path, b) => {
      const bucket = b % WIDTH_BUCKETS.length;
      ctx.strokeStyle = b < WIDTH_BUCKETS.length ? POSITIVE : NEGATIVE;
      ctx.lineWidth = WIDTH_BUCKETS[bucket];
      ctx.globalAlpha = 0.25 + 0.15 * bucket;
      ctx.stroke(path);
    });
    ctx.globalAlpha = 1;
    canvas.dataset.curves = String(curves);
    state.counted = { drawn, visible };
    updateEdgeCount();
  }

  function updateEdgeCount() {
    const graph = state.graph;
    const { drawn, visible } = state.counted;
    const hidden = graph.nLinks - drawn;
    const threshold = visible ? graph.absW[graph.order[visible - 1]] : null;
    let text = `${drawn.toLocaleString("en-US")} of ${graph.nLinks.toLocaleString("en-US")} edges · ${hidden.toLocaleString("en-US")} hidden`;
    if (threshold !== null && visible < graph.nLinks) text += ` (|weight| < ${fmt(threshold)})`;
    if (drawn >= MAX_DRAWN_EDGES) text += ` · capped at the ${MAX_DRAWN_EDGES.toLocaleString("en-US")} strongest for speed`;
    if (graph.skipped) text += ` · ${graph.skipped} links to unknown nodes skipped`;
    if (state.selected >= 0) text += ` · selected: ${state.highlighted} of its ${state.incident} links`;
    const counter = $("edge-count");
    if (counter.textContent !== text) counter.textContent = text;
    counter.dataset.drawn = String(drawn);
    counter.dataset.hidden = String(hidden);
  }

  function drawAxes() {
    const graph = state.graph;
    const lay = state.layout;
    const { k, tx, ty } = state.view;
    const view = $("graph-view");
    const w = view.clientWidth;
    const h = view.clientHeight;
    // Token labels along the bottom, under their column wherever the graph is panned.
    const bottom = $("axis-bottom");
    // The strip spans the whole width: a label leans left, under the layer axis.
    const bw = w;
    bottom.setAttribute("width", bw);
    bottom.setAttribute("height", AXIS.bottom);
    bottom.style.left = "0px";
    bottom.style.width = `${bw}px`;
    bottom.style.height = `${AXIS.bottom}px`;
    const parts = [];
    let last = -Infinity;
    for (let pos = 0; pos < lay.nPos; pos++) {
      const cx = tx + k * (lay.colX[pos] + lay.colW[pos] / 2);
      if (cx < AXIS.left - 2 || cx > bw + 40 || cx - last < TOKEN_LABEL_SPACING) continue;
      last = cx;
      const token = graph.tokens[pos];
      const label = token === undefined ? `#${pos}` : showToken(token);
      const short = label.length > 14 ? `${label.slice(0, 13)}…` : label;
      const unk = token !== undefined && isUnknownToken(token) ? " unk" : "";
      parts.push(`<text class="token-label${unk}" data-pos="${pos}" data-width="${(k * lay.colW[pos]).toFixed(1)}" x="${cx.toFixed(1)}" y="14" text-anchor="end" transform="rotate(-40 ${cx.toFixed(1)} 14)">${esc(short)}</text>`);
    }
    bottom.innerHTML = parts.join("");
    // Layer labels along the left, beside their band.
    const left = $("axis-left");
    const lh = Math.max(0, h - AXIS.bottom);
    left.setAttribute("width", AXIS.left);
    left.setAttribute("height", lh);
    left.style.width = `${AXIS.left}px`;
    left.style.height = `${lh}px`;
    const rows = [];
    let lastY = Infinity;
    for (let row = 0; row < lay.nRows; row++) {
      const cy = ty + k * (lay.bandTop[row] + lay.bandH[row] / 2);
      if (cy < 6 || cy > lh - 2 || lastY - cy < ROW_LABEL_SPACING) continue;
      lastY = cy;
      rows.push(`<text class="axis-label" data-row="${row}" x="6" y="${(cy + 4).toFixed(1)}">${rowLabel(row, lay.nRows)}</text>`);
    }
    left.innerHTML = rows.join("");
  }

  function drawLogitLabels() {
    const graph = state.graph;
    const lay = state.layout;
    const { k, tx, ty } = state.view;
    const labels = [];
    // Labels too close to the previous one are left out (hover still names the node); the top
    // logit is always labelled.
    const logits = [];
    graph.nodes.forEach((node, i) => node.kind === "logit" && state.shown[i] && logits.push(i));
    logits.sort((a, b) => lay.x[a] - lay.x[b]);
    let last = -Infinity;
    for (const i of logits) {
      const node = graph.nodes[i];
      const x = tx + k * lay.x[i];
      if (x - last < LOGIT_LABEL_SPACING && i !== graph.topLogit) continue;
      last = x;
      // Logits sit in the last column, at the right edge: their labels rise steeply to the left.
      const y = ty + k * (lay.y[i] - node.r) - 2;
      const text = nodeLabel(node);
      const short = text.length > 10 && !node.contrast ? `${text.slice(0, 9)}…` : text;
      labels.push(`<text class="logit-label${i === graph.topLogit ? " top" : ""}" data-i="${i}" x="${x.toFixed(1)}" y="${y.toFixed(1)}" text-anchor="end" transform="rotate(60 ${x.toFixed(1)} ${y.toFixed(1)})">${esc(short)}</text>`);
    }
    $("label-layer").innerHTML = labels.join("");
  }

  function nodeMarkup(node, i, x, y) {
    const cls = `node ${node.kind}${i === state.graph.topLogit ? " top-logit" : ""}${node.isTarget ? " target" : ""}${state.shown[i] ? "" : " off"}`;
    const common = `class="${cls}" data-i="${i}" data-id="${esc(node.id)}"`;
    const r = node.r;
    if (node.kind === "feature") return `<circle ${common} cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="${r.toFixed(2)}"/>`;
    return `<rect ${common} x="${(x - r).toFixed(1)}" y="${(y - r).toFixed(1)}" width="${(2 * r).toFixed(1)}" height="${(2 * r).toFixed(1)}"/>`;
  }

  function drawNodes(graph, lay) {
    const parts = new Array(graph.nodes.length);
    graph.nodes.forEach((node, i) => {
      parts[i] = nodeMarkup(node, i, lay.x[i], lay.y[i]);
    });
    $("node-layer").innerHTML = parts.join("");
  }

  function edgePath(x1, y1, x2, y2) {
    const ym = (y1 + y2) / 2;
    return `M${x1.toFixed(1)} ${y1.toFixed(1)}C${x1.toFixed(1)} ${ym.toFixed(1)} ${x2.toFixed(1)} ${ym.toFixed(1)} ${x2.toFixed(1)} ${y2.toFixed(1)}`;
  }

  function bucketOf(absW, maxAbs) {
    if (maxAbs <= 0) return 0;
    return Math.min(WIDTH_BUCKETS.length - 1, Math.floor(WIDTH_BUCKETS.length * Math.sqrt(absW / maxAbs)));
  }

  // The edge slider hides the weakest edges: its value is the hidden fraction in thousandths.
  function sliderToVisible(value, nLinks) {
    return nLinks - Math.floor((Number(value) / 1000) * nLinks);
  }

  // ------------------------------------------------------------------ filters
  // The node slider hides features and error nodes whose cumulative influence is above a
  // cutoff (higher = less influential), moving across the graph's own range: 0 keeps all,
  // 1000 keeps only the most influential.
  function nodeCutoff() {
    const v = Number($("node-slider").value) / 1000;
    const { minInfluence, maxInfluence } = state.graph;
    return minInfluence + (maxInfluence - minInfluence) * (1 - v);
  }

  function applyNodeFilter() {
    const graph = state.graph;
    const cutoff = nodeCutoff();
    const hideErrors = $("hide-errors").checked;
    const els = $("node-layer").children;
    let shownCount = 0;
    for (let i = 0; i < graph.nodes.length; i++) {
      const node = graph.nodes[i];
      const off = (hideErrors && node.kind === "error") || (filterable(node) && node.influence !== null && node.influence > cutoff);
      const value = off ? 0 : 1;
      if (state.shown[i] !== value) {
        state.shown[i] = value;
        if (els[i]) els[i].classList.toggle("off", off);
      }
      shownCount += value;
    }
    const counter = $("node-count");
    const hidden = graph.nodes.length - shownCount;
    let text = `${shownCount.toLocaleString("en-US")} of ${graph.nodes.length.toLocaleString("en-US")} nodes`;
    if (hidden) text += ` · ${hidden.toLocaleString("en-US")} hidden`;
    if (Number($("node-slider").value) > 0) text += ` (influence > ${fmt(cutoff)})`;
    counter.textContent = text;
    counter.dataset.shown = String(shownCount);
    if (state.selected >= 0 && !state.shown[state.selected]) clearSelection();
    else if (state.selected >= 0) highlight();
    requestDraw();
  }

  // ------------------------------------------------------------------ render
  function render() {
    const graph = state.graph;
    const view = $("graph-view");
    const lay = layout(graph, view.clientWidth, view.clientHeight);
    state.layout = lay;
    state.fit = fitView(lay, view.clientWidth, view.clientHeight);
    state.viewSize = `${view.clientWidth}x${view.clientHeight}`;
    drawNodes(graph, lay);
    setView({ ...state.fit });
    if (state.selected >= 0) selectNode(state.selected);
  }

  // Time from `start` (a performance.now() value) until this frame's drawing is done, as a
  // user-timing measure the render benchmark reads.
  function measureToFrame(name, start) {
    requestAnimationFrame(() => performance.measure(name, { start, end: performance.now() }));
  }

  function showGraph(doc, text, fileName) {
    const started = performance.now();
    const graph = parseGraph(doc);
    performance.measure("npg:parse", { start: started, end: performance.now() });
    state.graph = graph;
    state.jobId = null;
    state.repruneSeq++; // an answer still on its way is for the graph this one replaces
    $("reprune").disabled = true;
    $("reprune-status").textContent = "";
    state.rawText = text;
    state.labels = labelsFrom(doc);
    state.labelsEdited = false;
    state.fileName = fileName;
    state.selected = -1;
    state.steerNode = -1;
    state.shown = new Uint8Array(graph.nodes.length).fill(1);
    state.search = null;
    $("steer-prompt").value = "";
    $("pin-steer-prompt").value = "";
    $("pin-steer-rows").replaceChildren();
    $("pin-steer-result").hidden = true;
    setStatus($("pin-steer-status"), "", "");
    clearSelection();
    const slider = $("edge-slider");
    slider.disabled = false;
    state.visible = Math.min(graph.nLinks, DEFAULT_VISIBLE_EDGES);
    slider.value = String(graph.nLinks ? Math.round((1 - state.visible / graph.nLinks) * 1000) : 0);
    $("node-slider").disabled = false;
    $("node-slider").value = "0";
    $("search").disabled = false;
    $("search-status").textContent = "";
    const meta = graph.metadata;
    const title = $("graph-title");
    const prompt = typeof meta.prompt === "string" ? meta.prompt : graph.tokens.join("");
    title.innerHTML = `<span class="prompt">${esc(prompt)}</span> <span class="muted">· ${esc(meta.slug || fileName)} · ${esc(meta.scan || "")} · ${graph.nodes.length} nodes · ${graph.nLinks} links</span>`;
    const unknown = graph.tokens.filter(isUnknownToken).length;
    const note = $("unk-note");
    note.hidden = unknown === 0;
    note.textContent = unknown
      ? `${unknown} of the ${graph.tokens.length} prompt tokens are unknown to the model (${graph.tokens.find(isUnknownToken)}): ` +
        "it reads those words as one meaningless token. The prompt box lists the words it knows."
      : "";
    const top = graph.topLogit >= 0 ? graph.nodes[graph.topLogit] : null;
    if (top) title.innerHTML += ` <span id="top-logit" class="muted">· top logit <b>${esc(JSON.stringify(top.token))}</b> p=${esc(fmt(top.prob))}</span>`;
    title.title = title.textContent;
    $("download-json").disabled = false;
    storeGraph(text, fileName);
    const clicked = stateFrom(doc);
    state.stateEdited = false;
    $("subgraph").hidden = state.pins.length === 0;
    render();
    applyNodeFilter();
    drawSubgraph();
    if (clicked >= 0) selectNode(clicked);
    measureToFrame("npg:render", started);
    const svg = $("graph");
    svg.dataset.rendered = String(Number(svg.dataset.rendered || 0) + 1);
  }

  // qParams.clerps: [[featureId, label], ...]; malformed entries are ignored.
  function labelsFrom(doc) {
    const clerps = doc && doc.qParams && Array.isArray(doc.qParams.clerps) ? doc.qParams.clerps : [];
    const labels = new Map();
    for (const entry of clerps) {
      if (Array.isArray(entry) && typeof entry[0] === "string" && typeof entry[1] === "string") labels.set(entry[0], entry[1]);
    }
    return labels;
  }

  function saveLabel(event) {
    event.preventDefault();
    if (state.selected < 0) return;
    const node = state.graph.nodes[state.selected];
    const text = $("sel-label").value.trim();
    if (text) state.labels.set(node.webId, text);
    else state.labels.delete(node.webId);
    state.labelsEdited = true;
    selectNode(state.selected); // the facts and lists show the new label
    requestDraw(); // logit labels
    if (state.pins.length) drawSubgraph();
    writeFragment();
  }

  // ------------------------------------------------------------------ hover
  function describeNode(node) {
    const where = node.pos < state.graph.tokens.length ? ` ${JSON.stringify(state.graph.tokens[node.pos])}` : "";
    const facts = [
      ["type", node.type],
      ["layer", node.kind === "embedding" ? "embedding" : node.kind === "logit" ? "logits" : node.layer],
      ["feature index", node.kind === "feature" ? node.feature : node.kind === "logit" ? `vocab ${node.feature}` : "—"],
      ["position", `${node.pos}${where}`],
      ["activation", fmt(node.activation)],
      ["influence", node.influence === null ? "—" : `${fmt(node.influence)} (cumulative; lower = more influential)`],
    ];
    if (node.contrast) facts.push(["target", `${node.contrast} (weight ${fmt(node.prob)})`]);
    else if (node.kind === "logit") facts.push(["probability", fmt(node.prob)]);
    facts.push(["label", state.labels.get(node.webId) || node.clerp || "—"]);
    return facts;
  }

  function showTooltip(event) {
    const started = performance.now();
    const target = event.target.closest(".node");
    const tip = $("tooltip");
    if (!target || !state.graph) {
      tip.hidden = true;
      return;
    }
    const node = state.graph.nodes[Number(target.dataset.i)];
    tip.innerHTML =
      `<div class="t-title">${esc(node.id)}</div>` +
      describeNode(node)
        .map(([k, v]) => `<div${k === "label" ? ' class="t-label"' : ""}>${esc(k)}: ${esc(v)}</div>`)
        .join("");
    tip.hidden = false;
    // The card stays inside the graph area, so it never covers the panels beside it.
    const area = $("graph-view").getBoundingClientRect();
    const pad = 14;
    let left = event.clientX + pad;
    if (left + tip.offsetWidth > area.right - 4) left = event.clientX - pad - tip.offsetWidth;
    let top = event.clientY + pad;
    if (top + tip.offsetHeight > area.bottom - 4) top = event.clientY - pad - tip.offsetHeight;
    tip.style.left = `${Math.max(area.left + 4, left)}px`;
    tip.style.top = `${Math.max(area.top + 4, top)}px`;
    measureToFrame("npg:hover", started);
  }

  // ------------------------------------------------------------------ selection
  function clearSelection() {
    const wasSelected = state.selected >= 0;
    state.selected = -1;
    $("highlight-layer").replaceChildren();
    $("front-layer").replaceChildren();
    $("veil").classList.remove("on");
    $("edge-canvas").classList.remove("dimmed");
    $("node-layer").classList.remove("dimmed");
    for (const el of document.querySelectorAll("#node-layer .selected, #node-layer .neighbor")) el.classList.remove("selected", "neighbor");
    $("selection").hidden = true;
    $("selection-empty").hidden = false;
    $("steer-panel").hidden = true;
    if (wasSelected && state.graph) {
      updateEdgeCount();
      writeFragment();
    }
  }

  function neighbourItem(other, w) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.id = other.id;
    const label = other.kind === "logit" || other.kind === "embedding" ? ` ${JSON.stringify(nodeLabel(other))}` : "";
    button.textContent = `${other.id}${label}`;
    button.addEventListener("click", () => selectNode(state.graph.index.get(other.id)));
    const weight = document.createElement("span");
    weight.className = w < 0 ? "w-neg" : "w-pos";
    weight.textContent = ` ${w >= 0 ? "+" : ""}${fmt(w)}`;
    li.append(button, weight);
    return li;
  }

  function linkDirection() {
    return document.querySelector('input[name="link-dir"]:checked').value;
  }

  /**
   * Draw the selected node's links that pass every filter: the direction chosen, the edge
   * slider (a link weaker than the slider's threshold is hidden here too) and shown ends.
   */
  function highlight() {
    const graph = state.graph;
    const i = state.selected;
    const lay = state.layout;
    const dir = linkDirection();
    const visible = Math.min(state.visible, graph.nLinks);
    const maxAbs = graph.nLinks ? graph.absW[graph.order[0]] : 0;
    const nodeEls = $("node-layer").children;
    for (const el of document.querySelectorAll("#node-layer .neighbor")) el.classList.remove("neighbor");
    const markup = [];
    let incident = 0;
    const sides = [];
    if (dir !== "out") sides.push(["in", graph.inStart, graph.inEdges, graph.src]);
    if (dir !== "in") sides.push(["out", graph.outStart, graph.outEdges, graph.dst]);
    for (const [side, start, edges, other] of sides) {
      for (let j = start[i]; j < start[i + 1]; j++) {
        const e = edges[j];
        incident++;
        const o = other[e];
        if (graph.rank[e] >= visible || !state.shown[o]) continue;
        const s = graph.src[e];
        const t = graph.dst[e];
        const w = graph.weight[e];
        const width = 1 + 2 * WIDTH_BUCKETS[bucketOf(graph.absW[e], maxAbs)];
        markup.push(`<path class="hl-edge hl-${side} ${w < 0 ? "neg" : "pos"}" data-source="${esc(graph.nodes[s].id)}" data-target="${esc(graph.nodes[t].id)}" stroke-width="${width.toFixed(1)}" d="${edgePath(lay.x[s], lay.y[s], lay.x[t], lay.y[t])}"/>`);
        nodeEls[o].classList.add("neighbor");
      }
    }
    $("highlight-layer").innerHTML = markup.join("");
    // The selected node and its neighbours again, above the veil (copies: the originals below
    // keep taking the mouse, since nothing above them does).
    const front = [];
    for (const el of document.querySelectorAll("#node-layer .neighbor, #node-layer .selected")) {
      const copy = el.cloneNode(false);
      copy.removeAttribute("data-id");
      copy.removeAttribute("data-i");
      copy.classList.add("front");
      front.push(copy);
    }
    $("front-layer").replaceChildren(...front);
    const veil = $("veil");
    veil.setAttribute("x", -lay.W);
    veil.setAttribute("y", -lay.H);
    veil.setAttribute("width", 3 * lay.W);
    veil.setAttribute("height", 3 * lay.H);
    veil.classList.add("on");
    $("edge-canvas").classList.add("dimmed");
    state.highlighted = markup.length;
    state.incident = incident;
    updateEdgeCount();
  }

  function selectNode(i) {
    const graph = state.graph;
    if (!graph || i === undefined || i < 0 || i >= graph.nodes.length) return;
    const started = performance.now();
    clearSelection();
    state.selected = i;
    const node = graph.nodes[i];
    $("node-layer").classList.add("dimmed");
    $("node-layer").children[i].classList.add("selected");
    highlight();

    $("selection-empty").hidden = true;
    $("selection").hidden = false;
    $("sel-title").textContent = node.id;
    $("sel-label").value = state.labels.get(node.webId) || node.clerp || "";
    const facts = $("sel-facts");
    facts.replaceChildren();
    for (const [k, v] of describeNode(node)) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = String(v);
      facts.append(dt, dd);
    }
    const link = $("sel-np-link");
    const url = featurePageUrl(node);
    link.hidden = url === null;
    if (url) {
      link.href = url;
      link.textContent = `Open layer ${node.layerNum} feature ${cantorIndex(node.rawFeature)} on Neuronpedia ↗`;
    } else {
      link.removeAttribute("href");
    }
    const strongest = (start, edges, other, list) => {
      list.replaceChildren();
      const mine = Array.from(edges.subarray(start[i], start[i + 1]));
      mine
        .sort((a, b) => graph.absW[b] - graph.absW[a])
        .slice(0, NEIGHBOURS_SHOWN)
        .forEach((e) => list.appendChild(neighbourItem(graph.nodes[other[e]], graph.weight[e])));
      if (!mine.length) list.innerHTML = '<li class="muted">none</li>';
    };
    strongest(graph.inStart, graph.inEdges, graph.src, $("sel-inputs"));
    strongest(graph.outStart, graph.outEdges, graph.dst, $("sel-outputs"));
    showSteerPanel(i);
    updatePinButton();
    writeFragment();
    measureToFrame("npg:select", started);
  }

  // ------------------------------------------------------------------ pinned subgraph
  // Pins and supernodes are kept as the web app keeps them in qParams: pinnedIds (node ids)
  // and supernodes ([name, node id, ...] lists). The pane draws each supernode as one node and
  // every other pinned node as itself, with only the links among them (a supernode's summed).
  function stateFrom(doc) {
    const q = doc && doc.qParams && typeof doc.qParams === "object" ? doc.qParams : {};
    const index = state.graph.index;
    const pins = [];
    for (const id of Array.isArray(q.pinnedIds) ? q.pinnedIds : []) {
      if (typeof id === "string" && index.has(id) && !pins.includes(id)) pins.push(id);
    }
    const supernodes = [];
    for (const group of Array.isArray(q.supernodes) ? q.supernodes : []) {
      if (!Array.isArray(group) || typeof group[0] !== "string") continue;
      const members = group.slice(1).filter((id) => typeof id === "string" && index.has(id));
      if (!members.length) continue;
      for (const id of members) if (!pins.includes(id)) pins.push(id);
      supernodes.push([group[0], ...members]);
    }
    state.pins = pins;
    state.supernodes = supernodes;
    // The web app's linkType: "input", "output", "either", or "both" (its links among pinned
    // nodes, which the pane shows here); the radio follows it, the file's value is kept.
    const direction = { input: "in", output: "out", either: "both", both: "both" }[q.linkType];
    if (direction) document.querySelector(`input[name="link-dir"][value="${direction}"]`).checked = true;
    return typeof q.clickedId === "string" && index.has(q.clickedId) ? index.get(q.clickedId) : -1;
  }

  function stateEdited() {
    state.stateEdited = true;
  }

  function togglePin() {
    if (state.selected < 0) return;
    const id = state.graph.nodes[state.selected].id;
    if (state.pins.includes(id)) {
      state.pins = state.pins.filter((p) => p !== id);
      state.supernodes = state.supernodes
        .map((group) => group.filter((member, j) => j === 0 || member !== id))
        .filter((group) => group.length > 1);
    } else {
      state.pins.push(id);
    }
    stateEdited();
    updatePinButton();
    drawSubgraph();
  }

  function updatePinButton() {
    const button = $("pin-toggle");
    const pinned = state.selected >= 0 && state.pins.includes(state.graph.nodes[state.selected].id);
    button.textContent = pinned ? "Unpin" : "Pin";
    button.dataset.pinned = String(pinned);
  }

  function groupChecked() {
    const checked = [...document.querySelectorAll("#sg-list input:checked")].map((box) => box.value);
    const name = $("sg-name").value.trim() || `group ${state.supernodes.length + 1}`;
    if (checked.length < 2) return;
    // A node belongs to one supernode: grouping moves it out of any other.
    state.supernodes = state.supernodes
      .map((group) => group.filter((member, j) => j === 0 || !checked.includes(member)))
      .filter((group) => group.length > 1);
    state.supernodes.push([name, ...checked]);
    $("sg-name").value = "";
    stateEdited();
    drawSubgraph();
  }

  function ungroup(name) {
    state.supernodes = state.supernodes.filter((group) => group[0] !== name);
    stateEdited();
    drawSubgraph();
  }

  function subgraphItems() {
    const graph = state.graph;
    const items = [];
    const itemOf = new Map();
    for (const group of state.supernodes) {
      const members = group.slice(1).map((id) => graph.index.get(id));
      itemOf.set(group[0], items.length);
      for (const i of members) itemOf.set(graph.nodes[i].id, items.length);
      items.push({ id: group[0], name: group[0], members, supernode: true });
    }
    for (const id of state.pins) {
      if (itemOf.has(id)) continue;
      const i = graph.index.get(id);
      itemOf.set(id, items.length);
      items.push({ id, name: nodeLabel(graph.nodes[i]), members: [i], supernode: false });
    }
    for (const item of items) {
      item.row = item.members.reduce((a, i) => a + graph.nodes[i].row, 0) / item.members.length;
      item.pos = item.members.reduce((a, i) => a + graph.nodes[i].pos, 0) / item.members.length;
    }
    return { items, itemOf };
  }

  function drawSubgraph() {
    const pane = $("subgraph");
    const graph = state.graph;
    const wasHidden = pane.hidden;
    pane.hidden = !graph || state.pins.length === 0;
    if (wasHidden !== pane.hidden && graph) render(); // the main view changed size
    drawPinSteer();
    writeFragment();
    if (pane.hidden) return;
    const { items, itemOf } = subgraphItems();
    // The list: each pinned node (checkbox to group it) and each supernode (to ungroup it).
    const list = $("sg-list");
    list.replaceChildren();
    for (const group of state.supernodes) {
      const li = document.createElement("li");
      li.className = "super";
      const button = document.createElement("button");
      button.type = "button";
      button.className = "small";
      button.textContent = "ungroup";
      button.addEventListener("click", () => ungroup(group[0]));
      li.append(`${group[0]} (${group.length - 1}) `, button);
      list.appendChild(li);
    }
    for (const id of state.pins) {
      const li = document.createElement("li");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = id;
      box.setAttribute("aria-label", `check ${id}`);
      li.append(box, ` ${id} ${JSON.stringify(nodeLabel(graph.nodes[graph.index.get(id)]))}`);
      list.appendChild(li);
    }
    $("sg-count").textContent = `${state.pins.length} pinned · ${state.supernodes.length} supernodes`;
    // Links among the items: a supernode's are the sums over its members.
    const sums = new Map();
    for (const id of state.pins) {
      const i = graph.index.get(id);
      for (let j = graph.outStart[i]; j < graph.outStart[i + 1]; j++) {
        const e = graph.outEdges[j];
        const target = graph.nodes[graph.dst[e]].id;
        if (!itemOf.has(target)) continue;
        const a = itemOf.get(id);
        const b = itemOf.get(target);
        if (a === b) continue;
        const key = `${a} ${b}`;
        sums.set(key, (sums.get(key) || 0) + graph.weight[e]);
      }
    }
    // Layout: columns by position, rows by layer (logits on top), among the items only.
    const svg = $("sg-svg");
    const w = Math.max(200, svg.clientWidth);
    const h = Math.max(120, svg.clientHeight);
    const xs = [...new Set(items.map((it) => it.pos))].sort((a, b) => a - b);
    const ys = [...new Set(items.map((it) => it.row))].sort((a, b) => b - a);
    const taken = new Map();
    const pad = 36;
    for (const item of items) {
      const cell = `${item.pos} ${item.row}`;
      const k = taken.get(cell) || 0;
      taken.set(cell, k + 1);
      item.x = pad + ((xs.indexOf(item.pos) + 0.5) / xs.length) * (w - 2 * pad) + k * 26;
      item.y = 18 + ((ys.indexOf(item.row) + 0.5) / ys.length) * (h - 30);
    }
    const maxAbs = Math.max(1e-9, ...[...sums.values()].map(Math.abs));
    const parts = [];
    for (const [key, weight] of sums) {
      const [a, b] = key.split(" ").map(Number);
      const s = items[a];
      const t = items[b];
      const width = 0.8 + 5 * Math.sqrt(Math.abs(weight) / maxAbs);
      parts.push(`<path class="sg-edge ${weight < 0 ? "neg" : "pos"}" data-source="${esc(s.id)}" data-target="${esc(t.id)}" data-weight="${weight}" stroke-width="${width.toFixed(1)}" d="${edgePath(s.x, s.y, t.x, t.y)}"/>`);
    }
    for (const item of items) {
      const kind = item.supernode ? "supernode" : graph.nodes[item.members[0]].kind;
      const r = item.supernode ? 11 : 7;
      const name = item.name.length > 22 ? `${item.name.slice(0, 21)}…` : item.name;
      parts.push(`<g class="sg-node ${kind}" data-id="${esc(item.id)}" data-members="${item.members.length}"><circle cx="${item.x.toFixed(1)}" cy="${item.y.toFixed(1)}" r="${r}"/><text x="${(item.x + r + 3).toFixed(1)}" y="${(item.y + 4).toFixed(1)}">${esc(name)}</text></g>`);
    }
    svg.innerHTML = parts.join("");
  }

  // ------------------------------------------------------------------ search
  // "L_F_P" (a node id), "layer/index" (a feature at any position, most influential first) or
  // token text (that token's embedding; exact match first, then containing). Searching the
  // same text again moves to the next match.
  function searchMatches(query) {
    const graph = state.graph;
    const q = query.trim();
    if (!q) return [];
    if (graph.index.has(q)) return [graph.index.get(q)];
    const pair = /^(\d+)\s*\/\s*(\d+)$/.exec(q);
    if (pair) {
      const layer = Number(pair[1]);
      const feature = Number(pair[2]);
      const found = [];
      graph.nodes.forEach((node, i) => {
        if (node.kind === "feature" && node.layerNum === layer && node.feature === feature) found.push(i);
      });
      return found.sort((a, b) => importance(graph.nodes[b]) - importance(graph.nodes[a]));
    }
    const needle = q.toLowerCase();
    const embedAt = new Map();
    graph.nodes.forEach((node, i) => {
      if (node.kind === "embedding" && !embedAt.has(node.pos)) embedAt.set(node.pos, i);
    });
    const exact = [];
    const partial = [];
    graph.tokens.forEach((token, pos) => {
      if (!embedAt.has(pos)) return;
      const text = String(token).trim().toLowerCase();
      if (text === needle) exact.push(embedAt.get(pos));
      else if (text.includes(needle)) partial.push(embedAt.get(pos));
    });
    return exact.concat(partial);
  }

  function runSearch(event) {
    event.preventDefault();
    if (!state.graph) return;
    const query = $("search").value;
    const status = $("search-status");
    let search = state.search;
    if (!search || search.query !== query) {
      search = { query, matches: searchMatches(query), at: -1 };
      state.search = search;
    }
    if (!search.matches.length) {
      status.className = "search-status error";
      status.textContent = query.trim() ? `no node or token matches “${query.trim()}”` : "";
      return;
    }
    search.at = (search.at + 1) % search.matches.length;
    const i = search.matches[search.at];
    if (!state.shown[i]) {
      // A filtered-out match is shown rather than silently skipped: reset the filters.
      $("node-slider").value = "0";
      $("hide-errors").checked = false;
      applyNodeFilter();
    }
    selectNode(i);
    centreOn(i);
    const node = state.graph.nodes[i];
    const count = search.matches.length > 1 ? ` (${search.at + 1} of ${search.matches.length}; Enter for the next)` : "";
    status.className = "search-status";
    status.textContent = `${node.id} ${JSON.stringify(nodeLabel(node))}${count}`;
  }

  // ------------------------------------------------------------------ steering
  function showSteerPanel(i) {
    const node = state.graph.nodes[i];
    const panel = $("steer-panel");
    if (node.type !== "cross layer transcoder" || node.layerNum === null || node.feature === null) {
      panel.hidden = true;
      return;
    }
    panel.hidden = false;
    if (state.steerNode !== i) {
      state.steerNode = i;
      const meta = state.graph.metadata;
      if (!$("steer-prompt").value && typeof meta.prompt === "string") {
        // metadata.prompt is circuit-tracer's decode, BOS text first; people edit it without.
        const bos = (meta.prompt_tokens || [])[0];
        const shown = bos && meta.prompt.startsWith(bos) ? meta.prompt.slice(bos.length) : meta.prompt;
        $("steer-prompt").value = shown;
      }
      $("steer-position").value = node.pos;
      $("steer-active-position").value = node.pos;
      $("steer-result").hidden = true;
      setStatus($("steer-status"), "", "");
    }
    panel.querySelector("h2").textContent = `Steer layer ${node.layerNum} feature ${node.feature} (position ${node.pos})`;
  }

  function steerRequest() {
    const node = state.graph.nodes[state.selected];
    const prompt = $("steer-prompt").value;
    if (!prompt.trim()) throw new Error("Type a prompt to steer.");
    const feature = {
      layer: node.layerNum,
      index: node.feature,
      token_active_position: $("steer-active-position").valueAsNumber,
    };
    if (!Number.isInteger(feature.token_active_position)) throw new Error("The activation position must be a whole number.");
    if (document.querySelector('input[name="steer-kind"]:checked').value === "ablate") {
      feature.ablate = true;
    } else {
      feature.delta = $("steer-delta").valueAsNumber;
      if (!Number.isFinite(feature.delta)) throw new Error("delta must be a number.");
    }
    if (document.querySelector('input[name="steer-where"]:checked').value === "generated") {
      feature.steer_generated_tokens = true;
    } else {
      feature.steer_position = $("steer-position").valueAsNumber;
      if (!Number.isInteger(feature.steer_position)) throw new Error("The steer position must be a whole number.");
    }
    const nTokens = $("steer-tokens").valueAsNumber;
    if (!Number.isInteger(nTokens)) throw new Error("Tokens to generate must be a whole number.");
    return {
      model_id: state.health ? state.health.model_id : state.graph.metadata.scan || "demo",
      prompt,
      features: [feature],
      n_tokens: nTokens,
      top_k: 5,
    };
  }

  function fillSteerColumn(column, generation, prompt, entries) {
    const p = column.querySelector(".generation");
    const continuation = generation.startsWith(prompt) ? generation.slice(prompt.length) : generation;
    p.innerHTML = `<span class="prompt-part">${esc(generation.startsWith(prompt) ? prompt : "")}</span><span class="continuation">${esc(continuation)}</span>`;
    p.dataset.continuation = continuation;
    const table = column.querySelector(".probs");
    const rows = [];
    entries.forEach((entry, position) => {
      if (!entry.top_logits || !entry.top_logits.length) return;
      rows.push(`<tr><th colspan="2">after ${esc(JSON.stringify(entry.token))} (position ${position})</th></tr>`);
      for (const top of entry.top_logits) rows.push(`<tr><td>${esc(JSON.stringify(top.token))}</td><td class="p">${esc(fmt(top.prob))}</td></tr>`);
    });
    table.innerHTML = rows.join("");
  }

  // One steer form's round trip (the single feature, or the pinned set): ask, then show the
  // default and steered continuations side by side. Each form's elements share its prefix.
  async function runSteer(prefix, buildRequest, note) {
    const status = $(`${prefix}-status`);
    // The previous result goes as soon as a new one is asked for: an error must not sit
    // beside an old continuation.
    $(`${prefix}-result`).hidden = true;
    const sent = await submit(status, `${prefix}-run`, "Steering", "/steer", buildRequest);
    if (!sent) return;
    const { request, result, started } = sent;
    if (!result.ok) {
      setStatus(status, "error", result.message);
      return;
    }
    const body = result.body;
    fillSteerColumn($(`${prefix}-default`), body.DEFAULT_GENERATION, request.prompt, body.DEFAULT_LOGITS_BY_TOKEN || []);
    fillSteerColumn($(`${prefix}-steered`), body.STEERED_GENERATION, request.prompt, body.STEERED_LOGITS_BY_TOKEN || []);
    $(`${prefix}-result`).hidden = false;
    setStatus(status, "ok", `Done in ${((performance.now() - started) / 1000).toFixed(2)} s${note(request)}.`);
  }

  function steer(event) {
    event.preventDefault();
    return runSteer("steer", steerRequest, () => "");
  }

  // ------------------------------------------------------------------ steering the pinned set
  // Every pinned transcoder feature at once, each with its own delta or ablation and its own
  // position, picked from the graph's prompt tokens (or every generated token).
  function pinnedFeatures() {
    const graph = state.graph;
    return state.pins
      .map((id) => graph.index.get(id))
      .filter((i) => {
        const node = graph.nodes[i];
        return node.type === "cross layer transcoder" && node.layerNum !== null && node.feature !== null;
      });
  }

  function drawPinSteer() {
    const section = $("pin-steer");
    const features = state.graph ? pinnedFeatures() : [];
    section.hidden = features.length === 0;
    if (section.hidden) return;
    const graph = state.graph;
    const prompt = $("pin-steer-prompt");
    if (!prompt.value && typeof graph.metadata.prompt === "string") {
      const bos = (graph.metadata.prompt_tokens || [])[0];
      const text = graph.metadata.prompt;
      prompt.value = bos && text.startsWith(bos) ? text.slice(bos.length) : text;
    }
    const table = $("pin-steer-rows");
    const previous = new Map([...table.querySelectorAll("tr")].map((row) => [row.dataset.id, row]));
    const rows = features.map((i) => {
      const node = graph.nodes[i];
      if (previous.has(node.id)) return previous.get(node.id); // keeps what was chosen
      const row = document.createElement("tr");
      row.dataset.id = node.id;
      const where = graph.tokens
        .map((token, pos) => `<option value="${pos}"${pos === node.pos ? " selected" : ""}>${pos} ${esc(JSON.stringify(token))}</option>`)
        .join("");
      row.innerHTML =
        `<td class="id">${esc(node.id)}</td>` +
        '<td><select class="pin-kind" aria-label="intervention"><option value="delta">delta</option><option value="ablate">ablate</option></select> ' +
        '<input type="number" class="pin-delta" value="10" step="any" aria-label="delta"></td>' +
        `<td><select class="pin-where" aria-label="where">${where}<option value="generated">every generated token</option></select></td>`;
      row.querySelector(".pin-kind").addEventListener("change", (event) => {
        row.querySelector(".pin-delta").disabled = event.target.value === "ablate";
      });
      return row;
    });
    table.replaceChildren(...rows);
  }

  function pinSteerRequest() {
    const graph = state.graph;
    const prompt = $("pin-steer-prompt").value;
    if (!prompt.trim()) throw new Error("Type a prompt to steer.");
    const features = [...$("pin-steer-rows").querySelectorAll("tr")].map((row) => {
      const node = graph.nodes[graph.index.get(row.dataset.id)];
      const feature = { layer: node.layerNum, index: node.feature, token_active_position: node.pos };
      if (row.querySelector(".pin-kind").value === "ablate") feature.ablate = true;
      else {
        feature.delta = row.querySelector(".pin-delta").valueAsNumber;
        if (!Number.isFinite(feature.delta)) throw new Error(`${node.id}: delta must be a number.`);
      }
      const where = row.querySelector(".pin-where").value;
      if (where === "generated") feature.steer_generated_tokens = true;
      else feature.steer_position = Number(where);
      return feature;
    });
    const number = (id, name) => {
      const value = $(id).valueAsNumber;
      if (!Number.isFinite(value)) throw new Error(`${name} must be a number.`);
      return value;
    };
    const request = {
      model_id: state.health ? state.health.model_id : graph.metadata.scan || "demo",
      prompt,
      features,
      n_tokens: number("pin-tokens", "Tokens to generate"),
      top_k: 5,
      temperature: number("pin-temperature", "Temperature"),
      freq_penalty: number("pin-freq-penalty", "Frequency penalty"),
      freeze_attention: $("pin-freeze").checked,
    };
    if ($("pin-seed").value.trim() !== "") request.seed = number("pin-seed", "Seed");
    return request;
  }

  function pinSteer(event) {
    event.preventDefault();
    return runSteer("pin-steer", pinSteerRequest, (request) => `: ${request.features.length} features steered`);
  }

  // ------------------------------------------------------------------ the state in the link
  // The URL fragment holds the view state in the web app's query-parameter form (slug,
  // pinnedIds comma-separated, supernodes and clerps as JSON, clickedId), and the last graph is
  // kept in this browser's IndexedDB, so a reload shows the same graph in the same state.
  const STORE = { db: "npg-viewer", store: "graphs", key: "last" };

  function writeFragment() {
    if (!state.graph) return;
    const params = new URLSearchParams();
    params.set("slug", String(state.graph.metadata.slug || state.fileName));
    if (state.pins.length) params.set("pinnedIds", state.pins.join(","));
    if (state.supernodes.length) params.set("supernodes", JSON.stringify(state.supernodes));
    if (state.labels.size) params.set("clerps", JSON.stringify([...state.labels.entries()]));
    if (state.selected >= 0) params.set("clickedId", state.graph.nodes[state.selected].id);
    history.replaceState(null, "", `${location.pathname}${location.search}#${params}`);
  }

  function openStore() {
    return new Promise((resolve, reject) => {
      const request = indexedDB.open(STORE.db, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(STORE.store);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  }

  async function storeGraph(text, fileName) {
    try {
      const db = await openStore();
      const tx = db.transaction(STORE.store, "readwrite");
      tx.objectStore(STORE.store).put({ text, fileName }, STORE.key);
      tx.oncomplete = () => db.close();
    } catch {
      // No storage (private mode, quota): a reload then starts empty, nothing else changes.
    }
  }

  async function storedGraph() {
    try {
      const db = await openStore();
      return await new Promise((resolve) => {
        const get = db.transaction(STORE.store).objectStore(STORE.store).get(STORE.key);
        get.onsuccess = () => resolve(get.result || null);
        get.onerror = () => resolve(null);
      });
    } catch {
      return null;
    }
  }

  function jsonParam(params, name) {
    try {
      return JSON.parse(params.get(name) || "[]");
    } catch {
      return [];
    }
  }

  async function restoreFromFragment() {
    if (location.hash.length < 2) return;
    const params = new URLSearchParams(location.hash.slice(1));
    const slug = params.get("slug");
    const stored = await storedGraph();
    const status = $("status");
    let doc = null;
    try {
      doc = stored ? JSON.parse(stored.text) : null;
    } catch {
      doc = null;
    }
    if (!doc || !doc.metadata || doc.metadata.slug !== slug) {
      setStatus(status, "error", `The link holds the view of graph “${slug}”, which this browser no longer has: generate or open it.`);
      return;
    }
    showGraph(doc, stored.text, stored.fileName);
    const qParams = {
      pinnedIds: (params.get("pinnedIds") || "").split(",").filter((id) => id),
      supernodes: jsonParam(params, "supernodes"),
      clickedId: params.get("clickedId") || "",
      clerps: jsonParam(params, "clerps"),
    };
    state.labels = labelsFrom({ qParams });
    const clicked = stateFrom({ qParams });
    state.labelsEdited = true;
    state.stateEdited = true;
    drawSubgraph();
    if (clicked >= 0) selectNode(clicked);
    else clearSelection();
    requestDraw();
    setStatus(status, "ok", `Restored ${stored.fileName} (${state.graph.nodes.length} nodes) as the link left it.`);
  }

  // ------------------------------------------------------------------ zoom, pan, resize
  function wireViewControls() {
    const view = $("graph-view");
    let drag = null;
    let suppressClick = false;
    view.addEventListener(
      "wheel",
      (event) => {
        if (!state.graph) return;
        event.preventDefault();
        const started = performance.now();
        const rect = view.getBoundingClientRect();
        const delta = event.deltaMode === 1 ? event.deltaY * 16 : event.deltaY;
        zoomAt(event.clientX - rect.left, event.clientY - rect.top, Math.exp(-delta * 0.002));
        measureToFrame("npg:zoom", started);
      },
      { passive: false },
    );
    view.addEventListener("pointerdown", (event) => {
      suppressClick = false;
      if (!state.graph || event.button !== 0 || event.target.closest(".zoom-buttons")) return;
      drag = { id: event.pointerId, x: event.clientX, y: event.clientY, tx: state.view.tx, ty: state.view.ty, moved: false };
    });
    view.addEventListener("pointermove", (event) => {
      if (!drag || event.pointerId !== drag.id) return;
      const dx = event.clientX - drag.x;
      const dy = event.clientY - drag.y;
      if (!drag.moved && Math.hypot(dx, dy) < 4) return;
      if (!drag.moved) {
        // Captured only once it is a drag, so a plain click still reaches the node under it.
        drag.moved = true;
        view.setPointerCapture(event.pointerId);
        view.classList.add("panning");
        $("tooltip").hidden = true;
      }
      setView({ k: state.view.k, tx: drag.tx + dx, ty: drag.ty + dy }, true);
    });
    const endDrag = (event) => {
      if (!drag || event.pointerId !== drag.id) return;
      suppressClick = drag.moved;
      drag = null;
      view.classList.remove("panning");
    };
    view.addEventListener("pointerup", endDrag);
    view.addEventListener("pointercancel", endDrag);
    $("graph").addEventListener("click", (event) => {
      if (suppressClick) {
        suppressClick = false;
        return;
      }
      const target = event.target.closest(".node");
      if (target) selectNode(Number(target.dataset.i));
      else clearSelection();
    });
    $("zoom-in").addEventListener("click", () => zoomCentre(1.5));
    $("zoom-out").addEventListener("click", () => zoomCentre(1 / 1.5));
    $("zoom-fit").addEventListener("click", () => state.graph && setView({ ...state.fit }));
    // A new size lays the graph out again for the new shape, fitted.
    new ResizeObserver(() => {
      if (state.graph && state.viewSize !== `${view.clientWidth}x${view.clientHeight}`) render();
    }).observe(view);
  }

  // ------------------------------------------------------------------ the demo's vocabulary
  // A small model (the demo) knows few words: say which words of the prompt it does not know
  // (they become <unk>) and list the ones it does, before anything is generated.
  function updateVocabNotice() {
    const vocab = state.health && state.health.vocabulary;
    const box = $("vocab-notice");
    if (!vocab) {
      box.hidden = true;
      return;
    }
    if (!state.known) {
      state.known = new Set(vocab.words);
      const shown = [...new Set(vocab.words.map((w) => w.trim()).filter((w) => w))];
      $("vocab-words").textContent = shown.join(" ");
    }
    const pieces = $("prompt").value.match(WORD_PIECES) || [];
    // Pieces keep their leading space (" The" and "The" are different tokens), so they are
    // quoted as the graph quotes tokens.
    const unknown = [...new Set(pieces.filter((p) => !state.known.has(p) && p.trim()))];
    box.hidden = unknown.length === 0;
    $("vocab-unknown").textContent =
      `This model knows only ${state.known.size} tokens: ${unknown.map((w) => JSON.stringify(w)).join(", ")} ` +
      `${unknown.length === 1 ? "is" : "are"} not among them and will be read as ${vocab.unk_token || "an unknown token"}.`;
  }

  // ------------------------------------------------------------------ wiring
  function init() {
    $("graph-form").addEventListener("submit", generate);
    $("steer-form").addEventListener("submit", steer);
    for (const radio of document.querySelectorAll('input[name="mode"]')) {
      radio.addEventListener("change", () => {
        const chat = currentMode() === "chat";
        $("chat-box").hidden = !chat;
        $("prompt-box").hidden = chat;
        if (chat && !document.querySelector(".chat-turn")) addChatTurn("user", $("prompt").value);
      });
    }
    $("chat-add").addEventListener("click", () => addChatTurn(document.querySelectorAll(".chat-turn").length % 2 ? "assistant" : "user"));
    $("secret-change").addEventListener("click", () => askSecret());
    $("open-json").addEventListener("click", () => $("file-input").click());
    $("file-input").addEventListener("change", openFile);
    $("download-json").addEventListener("click", downloadGraph);
    $("job-cancel").addEventListener("click", cancelJob);
    $("recent-refresh").addEventListener("click", refreshRecent);
    for (const id of ["reprune-node", "reprune-edge"]) {
      $(id).addEventListener("input", () => {
        $(`${id}-value`).textContent = $(id).value;
      });
      $(id).addEventListener("change", reprune);
    }

    const frameAfter = (name, update) => {
      let pending = false;
      let started = 0;
      return () => {
        if (!state.graph) return;
        if (!pending) started = performance.now();
        update();
        if (pending) return;
        pending = true;
        requestAnimationFrame(() => {
          pending = false;
          measureToFrame(name, started);
        });
      };
    };
    $("edge-slider").addEventListener(
      "input",
      frameAfter("npg:edge-slider", () => {
        state.visible = sliderToVisible($("edge-slider").value, state.graph.nLinks);
        if (state.selected >= 0) highlight();
        requestDraw();
      }),
    );
    $("node-slider").addEventListener("input", frameAfter("npg:node-slider", applyNodeFilter));
    $("hide-errors").addEventListener("change", () => state.graph && applyNodeFilter());
    for (const radio of document.querySelectorAll('input[name="link-dir"]')) {
      radio.addEventListener("change", () => state.graph && state.selected >= 0 && highlight());
    }
    $("search-form").addEventListener("submit", runSearch);
    $("label-form").addEventListener("submit", saveLabel);
    $("pin-toggle").addEventListener("click", togglePin);
    $("pin-steer-form").addEventListener("submit", pinSteer);
    $("sg-group").addEventListener("click", groupChecked);
    $("sg-clear").addEventListener("click", () => {
      state.pins = [];
      state.supernodes = [];
      stateEdited();
      updatePinButton();
      drawSubgraph();
    });
    const nodeLayer = $("node-layer");
    nodeLayer.addEventListener("mousemove", showTooltip);
    nodeLayer.addEventListener("mouseleave", () => {
      $("tooltip").hidden = true;
    });
    wireViewControls();
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && state.selected >= 0) clearSelection();
    });
    $("prompt").addEventListener("input", updateVocabNotice);
    loadHealth();
    restoreFromFragment();
  }

  init();
})();
