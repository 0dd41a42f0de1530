// neuronpedia-graph viewer: generate, open, draw and steer attribution graphs.
//
// Plain browser JavaScript with no dependencies, so the page works offline. The graph is SVG:
// nodes are one element each; edges are batched into a few <path> elements (by sign, width
// bucket and screen region), because one element per edge makes a 200,000-link graph unusable.
"use strict";

(() => {
  const SECRET_KEY = "npg-secret-key";
  // The slider starts by hiding all but this many of the strongest edges.
  const DEFAULT_VISIBLE_EDGES = 3000;
  // Never draw more than this many edges at once: beyond it the browser stalls on every redraw.
  const MAX_DRAWN_EDGES = 30000;
  const WIDTH_BUCKETS = [0.6, 1.2, 2.2, 3.6];
  const EDGE_BLOCK_PX = 400; // edges are grouped into paths by the blocks their ends fall in
  const NEIGHBOURS_SHOWN = 12;
  const NO_SECRET = "A secret key is needed: click “Secret key…” and enter it.";
  const MARGIN = { left: 64, right: 20, top: 46, bottom: 62 };
  const MIN_COLUMN = 64;
  const MIN_BAND = 34;
  const MAX_FILL_BAND = 130; // bands grow to fill the view up to this height

  const $ = (id) => document.getElementById(id);
  const state = {
    health: null,
    graph: null, // parsed graph, see parseGraph
    rawText: null, // the document as received or opened, for Download JSON
    fileName: "graph.json",
    selected: -1,
    steerNode: -1,
    visible: 0, // how many of the strongest edges the slider lets through
    drawn: 0,
  };
  // Timings of the last drawing, for bench/viewer_render.py; not used by the page itself.
  window.npgViewer = { lastRender: null };

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
    const rid = headers && headers.get("X-Request-Id");
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
    const secret = await ensureSecret();
    if (!secret) return { ok: false, message: NO_SECRET };
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", "x-secret-key": secret },
        body: JSON.stringify(payload),
      });
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

  async function generate(event) {
    event.preventDefault();
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

  function downloadGraph() {
    if (!state.rawText) return;
    const url = URL.createObjectURL(new Blob([state.rawText], { type: "application/json" }));
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

  // A logit-difference target (metadata.attribution_targets: {contrast: [a, b], node_id}) is
  // one logit node whose "token" is the label "a−b": name it for what it is.
  function contrastLabels(metadata) {
    const t = metadata.attribution_targets;
    if (!t || !Array.isArray(t.contrast) || t.contrast.length !== 2 || typeof t.node_id !== "string") return new Map();
    const [a, b] = t.contrast.map((x) => JSON.stringify(String(x)));
    return new Map([[t.node_id, `logit(${a}) − logit(${b})`]]);
  }

  function logitToken(clerp) {
    const match = /^Output "([\s\S]*)" \(p=[^)]*\)$/.exec(clerp);
    return match ? match[1] : clerp;
  }

  /**
   * Turn a graph document (this server's or circuit-tracer's) into arrays the drawing uses.
   * Unknown extra fields are ignored; links to missing nodes are counted and skipped.
   */
  function parseGraph(doc) {
    if (!doc || typeof doc !== "object" || !Array.isArray(doc.nodes) || !Array.isArray(doc.links)) {
      throw new Error("not a graph document (it needs 'nodes' and 'links' arrays)");
    }
    const metadata = doc.metadata && typeof doc.metadata === "object" ? doc.metadata : {};
    const contrasts = contrastLabels(metadata);
    const nodes = [];
    const index = new Map();
    let maxLayer = -1;
    let logitLayer = -1;
    let maxPos = 0;
    for (const raw of doc.nodes) {
      if (!raw || typeof raw.node_id !== "string" || index.has(raw.node_id)) continue;
      const kind = kindOf(raw);
      const layerNum = Number.parseInt(raw.layer, 10);
      const pos = Number.isInteger(raw.ctx_idx) && raw.ctx_idx >= 0 ? raw.ctx_idx : 0;
      const clerp = typeof raw.clerp === "string" ? raw.clerp : "";
      const node = {
        id: raw.node_id,
        kind,
        type: String(raw.feature_type || kind),
        layer: raw.layer === undefined ? "" : String(raw.layer),
        layerNum: Number.isFinite(layerNum) ? layerNum : null,
        pos,
        feature: featureIndexOf(raw, kind),
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
    // Strongest first: the slider keeps a prefix of this order.
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    const absW = new Float32Array(n);
    for (let i = 0; i < n; i++) absW[i] = Math.abs(weight[i]);
    order.sort((a, b) => absW[b] - absW[a]);

    const tokens = Array.isArray(metadata.prompt_tokens) ? metadata.prompt_tokens.map(String) : [];
    const nPos = Math.max(tokens.length, maxPos + 1);
    const nLayers = Math.max(maxLayer + 1, logitLayer > 0 ? logitLayer - 1 : 0);
    for (const node of nodes) {
      if (node.kind === "embedding") node.row = 0;
      else if (node.kind === "logit") node.row = nLayers + 1;
      else node.row = (node.layerNum ?? 0) + 1;
    }
    let top = -1;
    for (let i = 0; i < nodes.length; i++) {
      const node = nodes[i];
      if (node.kind !== "logit") continue;
      if (top < 0 || (node.prob ?? -1) > (nodes[top].prob ?? -1) || ((node.prob ?? -1) === (nodes[top].prob ?? -1) && node.isTarget)) top = i;
    }
    return {
      metadata, nodes, index, src: src.subarray(0, n), dst: dst.subarray(0, n),
      weight: weight.subarray(0, n), absW, order, nLinks: n, skipped, tokens, nPos, nLayers, topLogit: top,
    };
  }

  // ------------------------------------------------------------------ layout
  function importance(node) {
    // `influence` is circuit-tracer's cumulative influence: the most influential node has the
    // smallest value, so size follows 1 - influence.
    if (node.influence === null) return node.kind === "logit" ? 1 : 0.5;
    return Math.min(1, Math.max(0, 1 - node.influence));
  }

  function layout(graph, width, height) {
    const { nodes, nPos, nLayers } = graph;
    const nRows = nLayers + 2;
    const large = nodes.length > 800;
    const rMax = large ? 4 : 9;
    const rMin = large ? 1.5 : 3;
    const slot = 2 * rMax + 3;
    const colW = Math.max(MIN_COLUMN, Math.floor((width - MARGIN.left - MARGIN.right) / nPos));
    const perLine = Math.max(1, Math.floor((colW - 8) / slot));

    const cells = new Map();
    nodes.forEach((node, i) => {
      node.r = rMin + (rMax - rMin) * Math.sqrt(importance(node));
      const key = node.row * nPos + node.pos;
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(i);
    });
    const lines = new Array(nRows).fill(1);
    for (const [key, members] of cells) {
      const row = Math.floor(key / nPos);
      if (row === nRows - 1) members.sort((a, b) => (nodes[b].prob ?? 0) - (nodes[a].prob ?? 0));
      else members.sort((a, b) => importance(nodes[b]) - importance(nodes[a]));
      lines[row] = Math.max(lines[row], Math.ceil(members.length / perLine));
    }
    const fill = Math.min(MAX_FILL_BAND, Math.floor((height - MARGIN.top - MARGIN.bottom) / nRows));
    const bandH = lines.map((l) => Math.max(MIN_BAND, fill, l * slot + 12));
    const bandTop = new Array(nRows);
    let y = MARGIN.top;
    for (let row = nRows - 1; row >= 0; row--) {
      bandTop[row] = y;
      y += bandH[row];
    }
    const svgHeight = y + MARGIN.bottom;
    const x = new Float32Array(nodes.length);
    const yy = new Float32Array(nodes.length);
    for (const [key, members] of cells) {
      const row = Math.floor(key / nPos);
      const pos = key % nPos;
      const cx = MARGIN.left + (pos + 0.5) * colW;
      const lineCount = Math.ceil(members.length / perLine);
      members.forEach((i, j) => {
        const line = Math.floor(j / perLine);
        const inLine = Math.min(perLine, members.length - line * perLine);
        x[i] = cx + ((j % perLine) - (inLine - 1) / 2) * slot;
        // The most important nodes sit on the middle line of the band.
        yy[i] = bandTop[row] + bandH[row] / 2 + (line - (lineCount - 1) / 2) * slot;
      });
    }
    return { width: MARGIN.left + nPos * colW + MARGIN.right, height: svgHeight, colW, bandTop, bandH, x, y: yy, nRows };
  }

  // ------------------------------------------------------------------ drawing
  function rowLabel(row, nRows) {
    if (row === 0) return "Emb";
    if (row === nRows - 1) return "Logits";
    return `L${row - 1}`;
  }

  function drawGrid(graph, lay) {
    const parts = [];
    for (let row = 0; row < lay.nRows; row++) {
      const top = lay.bandTop[row];
      parts.push(`<rect class="band${row % 2 ? " alt" : ""}" x="0" y="${top}" width="${lay.width}" height="${lay.bandH[row]}"/>`);
      parts.push(`<text class="axis-label" x="8" y="${top + lay.bandH[row] / 2 + 4}">${rowLabel(row, lay.nRows)}</text>`);
    }
    const bottom = lay.bandTop[0] + lay.bandH[0];
    const rotate = lay.colW < 90;
    for (let pos = 0; pos <= graph.nPos; pos++) {
      const x = MARGIN.left + pos * lay.colW;
      parts.push(`<line class="col-line" x1="${x}" y1="${MARGIN.top}" x2="${x}" y2="${bottom}"/>`);
      if (pos === graph.nPos) break;
      const token = graph.tokens[pos];
      const label = token === undefined ? `#${pos}` : showToken(token);
      const short = label.length > 14 ? `${label.slice(0, 13)}…` : label;
      const cx = x + lay.colW / 2;
      const ty = bottom + 16;
      const transform = rotate ? ` transform="rotate(-35 ${cx} ${ty})" text-anchor="end"` : ' text-anchor="middle"';
      parts.push(`<text class="token-label" data-pos="${pos}" x="${cx}" y="${ty}"${transform}>${esc(short)}</text>`);
    }
    $("grid-layer").innerHTML = parts.join("");
  }

  function nodeMarkup(node, i, x, y) {
    const cls = `node ${node.kind}${i === state.graph.topLogit ? " top-logit" : ""}${node.isTarget ? " target" : ""}`;
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
    const labels = [];
    graph.nodes.forEach((node, i) => {
      if (node.kind !== "logit") return;
      const x = lay.x[i];
      const y = lay.y[i] - node.r - 4;
      const text = node.contrast ?? showToken(node.token);
      const short = text.length > 12 && !node.contrast ? `${text.slice(0, 11)}…` : text;
      labels.push(`<text class="logit-label${i === graph.topLogit ? " top" : ""}" data-i="${i}" x="${x}" y="${y}" transform="rotate(-30 ${x} ${y})">${esc(short)}</text>`);
    });
    $("label-layer").innerHTML = labels.join("");
  }

  function edgePath(x1, y1, x2, y2) {
    const ym = (y1 + y2) / 2;
    return `M${x1.toFixed(1)} ${y1.toFixed(1)}C${x1.toFixed(1)} ${ym.toFixed(1)} ${x2.toFixed(1)} ${ym.toFixed(1)} ${x2.toFixed(1)} ${y2.toFixed(1)}`;
  }

  function bucketOf(absW, maxAbs) {
    if (maxAbs <= 0) return 0;
    return Math.min(WIDTH_BUCKETS.length - 1, Math.floor(WIDTH_BUCKETS.length * Math.sqrt(absW / maxAbs)));
  }

  // The slider hides the weakest edges: its value is the hidden fraction in thousandths.
  function sliderToVisible(value, nLinks) {
    return nLinks - Math.floor((Number(value) / 1000) * nLinks);
  }

  function drawEdges() {
    const graph = state.graph;
    const lay = state.layout;
    const visible = Math.min(state.visible, graph.nLinks);
    const drawn = Math.min(visible, MAX_DRAWN_EDGES);
    const maxAbs = graph.nLinks ? graph.absW[graph.order[0]] : 0;
    // One path per (sign, width bucket, source block, target block): few elements, and each
    // has a tight bounding box, so the browser rasters only the paths that cross a tile.
    const groups = new Map();
    for (let k = 0; k < drawn; k++) {
      const e = graph.order[k];
      const s = graph.src[e];
      const t = graph.dst[e];
      const b = bucketOf(graph.absW[e], maxAbs) + (graph.weight[e] < 0 ? WIDTH_BUCKETS.length : 0);
      const key = (b * 4096 + Math.floor(lay.x[s] / EDGE_BLOCK_PX)) * 4096 + Math.floor(lay.x[t] / EDGE_BLOCK_PX);
      let group = groups.get(key);
      if (!group) {
        group = [];
        groups.set(key, group);
      }
      group.push(edgePath(lay.x[s], lay.y[s], lay.x[t], lay.y[t]));
    }
    const parts = [];
    for (const [key, paths] of groups) {
      const b = Math.floor(key / (4096 * 4096));
      const sign = b < WIDTH_BUCKETS.length ? "pos" : "neg";
      const w = WIDTH_BUCKETS[b % WIDTH_BUCKETS.length];
      const opacity = 0.25 + 0.15 * (b % WIDTH_BUCKETS.length);
      parts.push(`<path class="edges ${sign}" data-count="${paths.length}" stroke-width="${w}" stroke-opacity="${opacity.toFixed(2)}" d="${paths.join("")}"/>`);
    }
    $("edge-layer").innerHTML = parts.join("");
    state.drawn = drawn;
    const hidden = graph.nLinks - drawn;
    const threshold = drawn ? graph.absW[graph.order[drawn - 1]] : null;
    let text = `Showing ${drawn.toLocaleString("en-US")} of ${graph.nLinks.toLocaleString("en-US")} edges · ${hidden.toLocaleString("en-US")} hidden`;
    if (threshold !== null && hidden > 0) text += ` (|weight| < ${fmt(threshold)})`;
    if (visible > MAX_DRAWN_EDGES) text += ` · capped at the ${MAX_DRAWN_EDGES.toLocaleString("en-US")} strongest for speed`;
    if (graph.skipped) text += ` · ${graph.skipped} links to unknown nodes skipped`;
    const counter = $("edge-count");
    counter.textContent = text;
    counter.dataset.drawn = String(drawn);
    counter.dataset.hidden = String(hidden);
  }

  function render() {
    const graph = state.graph;
    const started = performance.now();
    const scroller = $("graph-scroll");
    const lay = layout(graph, Math.max(scroller.clientWidth, 600), Math.max(scroller.clientHeight - 4, 300));
    state.layout = lay;
    for (const svg of [$("graph-grid"), $("graph-back"), $("graph")]) {
      svg.setAttribute("width", lay.width);
      svg.setAttribute("height", lay.height);
      svg.setAttribute("viewBox", `0 0 ${lay.width} ${lay.height}`);
    }
    drawGrid(graph, lay);
    drawNodes(graph, lay);
    drawEdges();
    if (state.selected >= 0) selectNode(state.selected);
    return performance.now() - started;
  }

  function showGraph(doc, text, fileName) {
    const started = performance.now();
    const graph = parseGraph(doc);
    const parsed = performance.now();
    state.graph = graph;
    state.rawText = text;
    state.fileName = fileName;
    state.selected = -1;
    state.steerNode = -1;
    $("steer-prompt").value = "";
    clearSelection();
    const slider = $("edge-slider");
    slider.disabled = false;
    state.visible = Math.min(graph.nLinks, DEFAULT_VISIBLE_EDGES);
    slider.value = String(graph.nLinks ? Math.round((1 - state.visible / graph.nLinks) * 1000) : 0);
    const meta = graph.metadata;
    const title = $("graph-title");
    const prompt = typeof meta.prompt === "string" ? meta.prompt : graph.tokens.join("");
    title.innerHTML = `<span class="prompt">${esc(prompt)}</span> <span class="muted">· ${esc(meta.slug || fileName)} · ${esc(meta.scan || "")} · ${graph.nodes.length} nodes · ${graph.nLinks} links</span>`;
    const top = graph.topLogit >= 0 ? graph.nodes[graph.topLogit] : null;
    if (top) title.innerHTML += ` <span id="top-logit" class="muted">· top logit <b>${esc(JSON.stringify(top.token))}</b> p=${esc(fmt(top.prob))}</span>`;
    $("download-json").disabled = false;
    const drawMs = render();
    const svg = $("graph");
    // Timings for the render benchmark: parsing, then layout and DOM building; paint follows.
    window.npgViewer.lastRender = { parseMs: parsed - started, drawMs, nodes: graph.nodes.length, links: graph.nLinks, drawnEdges: state.drawn };
    svg.dataset.rendered = String(Number(svg.dataset.rendered || 0) + 1);
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
    facts.push(["label", node.clerp || "—"]);
    return facts;
  }

  function showTooltip(event) {
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
    const pad = 14;
    const left = Math.min(event.clientX + pad, window.innerWidth - tip.offsetWidth - 4);
    const top = event.clientY + pad + tip.offsetHeight > window.innerHeight ? event.clientY - tip.offsetHeight - pad : event.clientY + pad;
    tip.style.left = `${Math.max(4, left)}px`;
    tip.style.top = `${Math.max(4, top)}px`;
  }

  // ------------------------------------------------------------------ selection
  function clearSelection() {
    state.selected = -1;
    $("highlight-layer").replaceChildren();
    $("graph-back").classList.remove("dimmed");
    $("node-layer").classList.remove("dimmed");
    for (const el of document.querySelectorAll("#node-layer .selected, #node-layer .neighbor")) el.classList.remove("selected", "neighbor");
    $("selection").hidden = true;
    $("selection-empty").hidden = false;
    $("steer-panel").hidden = true;
  }

  function neighbourItem(other, w) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.id = other.id;
    const label = other.kind === "logit" ? ` ${JSON.stringify(other.token)}` : other.kind === "embedding" ? ` ${JSON.stringify(state.graph.tokens[other.pos] ?? "")}` : "";
    button.textContent = `${other.id}${label}`;
    button.addEventListener("click", () => selectNode(state.graph.index.get(other.id)));
    const weight = document.createElement("span");
    weight.className = w < 0 ? "w-neg" : "w-pos";
    weight.textContent = ` ${w >= 0 ? "+" : ""}${fmt(w)}`;
    li.append(button, weight);
    return li;
  }

  function selectNode(i) {
    const graph = state.graph;
    if (!graph || i === undefined || i < 0 || i >= graph.nodes.length) return;
    clearSelection();
    state.selected = i;
    const node = graph.nodes[i];
    const lay = state.layout;
    const incoming = [];
    const outgoing = [];
    for (let e = 0; e < graph.nLinks; e++) {
      if (graph.dst[e] === i) incoming.push(e);
      if (graph.src[e] === i) outgoing.push(e);
    }
    const maxAbs = graph.nLinks ? graph.absW[graph.order[0]] : 0;
    const markup = [];
    const nodeEls = $("node-layer").children;
    for (const [edges, dir] of [[incoming, "in"], [outgoing, "out"]]) {
      for (const e of edges) {
        const s = graph.src[e];
        const t = graph.dst[e];
        const w = graph.weight[e];
        const width = 1 + 2 * WIDTH_BUCKETS[bucketOf(graph.absW[e], maxAbs)];
        markup.push(`<path class="hl-edge hl-${dir} ${w < 0 ? "neg" : "pos"}" data-source="${esc(graph.nodes[s].id)}" data-target="${esc(graph.nodes[t].id)}" stroke-width="${width.toFixed(1)}" d="${edgePath(lay.x[s], lay.y[s], lay.x[t], lay.y[t])}"/>`);
        nodeEls[dir === "in" ? s : t].classList.add("neighbor");
      }
    }
    $("highlight-layer").innerHTML = markup.join("");
    $("graph-back").classList.add("dimmed");
    $("node-layer").classList.add("dimmed");
    nodeEls[i].classList.add("selected");

    $("selection-empty").hidden = true;
    $("selection").hidden = false;
    $("sel-title").textContent = node.id;
    const facts = $("sel-facts");
    facts.replaceChildren();
    for (const [k, v] of describeNode(node)) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = String(v);
      facts.append(dt, dd);
    }
    const strongest = (edges, end) => {
      const list = end === "src" ? $("sel-inputs") : $("sel-outputs");
      list.replaceChildren();
      edges
        .slice()
        .sort((a, b) => graph.absW[b] - graph.absW[a])
        .slice(0, NEIGHBOURS_SHOWN)
        .forEach((e) => list.appendChild(neighbourItem(graph.nodes[end === "src" ? graph.src[e] : graph.dst[e]], graph.weight[e])));
      if (!edges.length) list.innerHTML = '<li class="muted">none</li>';
    };
    strongest(incoming, "src");
    strongest(outgoing, "dst");
    showSteerPanel(i);
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

  async function steer(event) {
    event.preventDefault();
    const status = $("steer-status");
    const sent = await submit(status, "steer-run", "Steering", "/steer", steerRequest);
    if (!sent) return;
    const { request, result, started } = sent;
    if (!result.ok) {
      setStatus(status, "error", result.message);
      $("steer-result").hidden = true;
      return;
    }
    const body = result.body;
    fillSteerColumn($("steer-default"), body.DEFAULT_GENERATION, request.prompt, body.DEFAULT_LOGITS_BY_TOKEN || []);
    fillSteerColumn($("steer-steered"), body.STEERED_GENERATION, request.prompt, body.STEERED_LOGITS_BY_TOKEN || []);
    $("steer-result").hidden = false;
    setStatus(status, "ok", `Done in ${((performance.now() - started) / 1000).toFixed(2)} s.`);
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

    let pending = false;
    $("edge-slider").addEventListener("input", () => {
      if (!state.graph) return;
      state.visible = sliderToVisible($("edge-slider").value, state.graph.nLinks);
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        drawEdges();
      });
    });
    const nodeLayer = $("node-layer");
    nodeLayer.addEventListener("mousemove", showTooltip);
    nodeLayer.addEventListener("mouseleave", () => {
      $("tooltip").hidden = true;
    });
    $("graph").addEventListener("click", (event) => {
      const target = event.target.closest(".node");
      if (target) selectNode(Number(target.dataset.i));
      else clearSelection();
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && state.selected >= 0) clearSelection();
    });
    let resizeTimer = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => state.graph && render(), 150);
    });
    loadHealth();
  }

  init();
})();
