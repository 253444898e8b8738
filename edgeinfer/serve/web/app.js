// edgeinfer page: plain JavaScript, no build step, no CDN. It calls only the service's public
// routes (the same ones any client uses), with the bearer token when the user gave one.
"use strict";

const TOKEN_KEY = "edgeinfer.token";
// The page knows CIFAR-10's ten names itself so a classifier can be mapped onto them without a
// CLIP model loaded; other sets' names are learned from the CLIP model that carries the set.
const CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
const SET_TITLES = { cifar10: "CIFAR-10", imagenet: "ImageNet", own: "Each model's own labels" };
const TOP = 3;

const $ = (sel) => document.querySelector(sel);
const state = { models: [], file: null, run: 0 };

// ------------------------------------------------------------------ small helpers
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pct = (x) => `${(100 * x).toFixed(1)}%`;
const baseName = (p) => String(p || "").split(/[\\/]/).pop();
function bytes(n) {
  if (n == null) return "";
  const u = ["B", "KB", "MB", "GB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}
function showError(where, message) {
  const box = $(where);
  box.textContent = message || "";
  box.classList.toggle("hidden", !message);
}
// A failed call, said where it happened; a server that is down is said once, in the top banner.
function failed(where, e) {
  if (e.status === 0) showGlobal(e.message, "down");
  else showError(where, e.message);
}
// Responses are read tolerantly: a list may come bare or under one of a few keys.
function listOf(data, ...keys) {
  if (Array.isArray(data)) return data;
  for (const k of keys) if (data && Array.isArray(data[k])) return data[k];
  return [];
}
const photoId = (p) => p.id ?? p.photo_id;

// ------------------------------------------------------------------ API
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function explain(status, msg) {
  const said = msg ? ` (${msg})` : "";
  switch (status) {
    case 400: return `The server did not understand the request${said}.`;
    case 401: return "This server needs an access token: enter it with the Token button (top right).";
    case 403: return msg || "The server refused: that is outside what it may read.";
    case 404: return msg || "The server does not know that item.";
    case 413: return `The server refused this upload as too large${said}. Choose a smaller image.`;
    case 422: return msg || "The server could not use this input.";
    case 503: return `The server is busy (its request queue is full)${said}. Try again in a few seconds.`;
    default:
      if (status >= 500) return `The server failed with HTTP ${status}${said}. This is a bug in edgeinfer; please report it.`;
      return msg || `HTTP ${status}`;
  }
}

function serverDown() {
  setStatus("err", "server down");
  const e = new ApiError(0, `Cannot reach the edgeinfer server at ${location.origin}. Is \`edgeinfer serve\` still running?`);
  showGlobal(e.message, "down");
  return e;
}

async function api(path, { method = "GET", form, json, raw = false, retry = true } = {}) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (form) body = form;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  let res;
  try {
    res = await fetch(path, { method, headers, body });
  } catch (e) {
    throw serverDown();
  }
  // A full queue says when to come back: honour it once (briefly) before telling the user.
  if (res.status === 503 && retry) {
    const wait = Math.min(Number(res.headers.get("Retry-After")) || 1, 5);
    await sleep(wait * 1000);
    return api(path, { method, form, json, raw, retry: false });
  }
  if (!res.ok) {
    let msg = "";
    try { const d = await res.json(); msg = d.error || d.detail || ""; } catch (e) { /* not JSON */ }
    if (typeof msg !== "string") msg = JSON.stringify(msg);
    if (res.status === 401) askToken();
    throw new ApiError(res.status, explain(res.status, msg));
  }
  if (raw) return res;
  try {
    return await res.json();
  } catch (e) {
    throw new ApiError(res.status, `The server sent a reply that is not JSON for ${path}.`);
  }
}

// ------------------------------------------------------------------ token
function askToken() {
  const d = $("#token-dialog");
  if (d.open) return;
  $("#token-input").value = sessionStorage.getItem(TOKEN_KEY) || "";
  d.returnValue = "";  // Esc must not repeat the last choice
  d.showModal();
}
function initToken() {
  $("#token-button").addEventListener("click", askToken);
  $("#token-clear").addEventListener("click", () => $("#token-dialog").close("clear"));
  $("#token-dialog").addEventListener("close", () => {
    const v = $("#token-dialog").returnValue;
    if (v === "save" && $("#token-input").value.trim()) sessionStorage.setItem(TOKEN_KEY, $("#token-input").value.trim());
    else if (v === "clear") sessionStorage.removeItem(TOKEN_KEY);
    else return;
    updateTokenButton();
    loadModels();
    if (!$("#view-library").classList.contains("hidden")) loadLibrary();
  });
  updateTokenButton();
}
function updateTokenButton() {
  $("#token-button").textContent = sessionStorage.getItem(TOKEN_KEY) ? "Token ✓" : "Token";
}

// ------------------------------------------------------------------ server status
function setStatus(kind, text) {
  const s = $("#server-status");
  s.className = `pill pill-${kind}`;
  s.textContent = text;
}
async function pollHealth() {
  try {
    const h = await api("/health", { retry: false });
    const n = listOf(h.models).length;
    const rss = h.rss_mb != null ? ` · ${Math.round(h.rss_mb)} MB` : "";
    setStatus("ok", `● ${n} model${n === 1 ? "" : "s"}${rss}`);
    if ($("#global-error").dataset.kind === "down") {
      showGlobal("");
      if (!state.models.length) loadModels();  // the server came back after a start without it
    }
  } catch (e) {
    // Unreachable is said by api(); an answer that is an error is not "down".
    if (e.status !== 0) setStatus("err", `health: HTTP ${e.status}`);
  }
}
function showGlobal(msg, kind = "") {
  showError("#global-error", msg);
  $("#global-error").dataset.kind = msg ? kind : "";
}

// ------------------------------------------------------------------ models
function normModel(m) {
  let weights = m.weights ?? m.weights_origin ?? m.origin;
  if (weights && typeof weights === "object") weights = weights.origin;
  let sets = m.label_sets ?? m.labelSets;
  if (sets && !Array.isArray(sets)) sets = Object.keys(sets);
  let nLabels = m.labels_count ?? m.num_labels ?? m.labels;
  if (Array.isArray(nLabels)) nLabels = nLabels.length;
  return {
    name: m.name, kind: m.kind, provider: m.provider, precision: m.precision,
    nLabels: typeof nLabels === "number" ? nLabels : null, weights: weights || "",
    accuracy: m.accuracy_vs_fp32 ?? m.accuracy ?? m.fidelity ?? null,
    labelSets: Array.isArray(sets) ? sets : null,
  };
}
const isClip = (m) => m.kind === "clip";

async function loadModels() {
  try {
    const data = await api("/v1/models");
    state.models = listOf(data, "models").map(normModel);
    showError("#classify-error", "");
  } catch (e) {
    failed("#classify-error", e);
    return;
  }
  fillLabelSets();
  const hasClip = state.models.some(isClip);
  $("#no-clip-note").classList.toggle("hidden", hasClip);
  $("#custom-labels").disabled = !hasClip;
  updateButtons();
  if (state.file && !$("#cards").children.length) classifyWithSet();  // a photo chosen before the token
}

function fillLabelSets() {
  const sel = $("#label-set");
  const before = sel.value;
  const names = ["cifar10", "imagenet"];
  for (const m of state.models) for (const s of m.labelSets || []) if (!names.includes(s)) names.push(s);
  names.push("own");
  sel.replaceChildren(...names.map((n) => el("option", { value: n, text: SET_TITLES[n] || n })));
  sel.value = names.includes(before) ? before : "cifar10";
}

// ------------------------------------------------------------------ upload
function setFile(file) {
  if (!file) return;
  state.file = file;
  $("#file-name").textContent = `${file.name} · ${bytes(file.size)}`;
  const img = $("#preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.onload = () => { img.classList.remove("hidden"); $("#drop-hint").classList.add("hidden"); };
  img.onerror = () => {
    img.classList.add("hidden");
    $("#drop-hint").classList.remove("hidden");
    $("#drop-hint").innerHTML = "<strong>No preview</strong><br><span class=\"muted\">the browser cannot show this file; the server will say whether it can read it</span>";
  };
  img.src = URL.createObjectURL(file);
  updateButtons();
  classifyWithSet();
}
function initUpload() {
  const dz = $("#dropzone");
  $("#file-input").addEventListener("change", (e) => setFile(e.target.files[0]));
  for (const ev of ["dragenter", "dragover"]) dz.addEventListener(ev, (e) => { e.preventDefault(); dz.classList.add("dragover"); });
  for (const ev of ["dragleave", "drop"]) dz.addEventListener(ev, () => dz.classList.remove("dragover"));
  dz.addEventListener("drop", (e) => { e.preventDefault(); setFile(e.dataTransfer.files[0]); });
  // A file dropped outside the zone would make the browser navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
}
function updateButtons() {
  const ready = !!state.file && state.models.length > 0;
  $("#classify-button").disabled = !ready;
  $("#custom-button").disabled = !ready || !state.models.some(isClip);
}

// ------------------------------------------------------------------ classify
// The accuracy cost vs FP32 recorded in the artifact for the precision this model runs in:
// labelled top-1 when the export had labelled images, else fidelity (top-1 agreement / cosine).
function accuracyText(m) {
  const prec = String(m.precision || "").toLowerCase();
  let a = m.accuracy;
  if (a && typeof a === "object" && !Array.isArray(a) && (prec in a || ["fp32", "fp16", "int8"].some((k) => k in a))) a = a[prec];
  if (typeof a === "string" && a) return a;
  if (typeof a === "number") return `accuracy vs FP32: ${a}`;
  const parity = a && typeof a === "object" ? (a.parity || a.fidelity || a) : null;
  const n = (x) => (x && (x.images ?? x.n) ? ` (${x.images ?? x.n} images)` : "");
  if (prec === "fp32") {
    const c = parity ? (parity.cosine_min ?? parity.cosine_mean) : null;
    return c != null ? `FP32 reference · matches PyTorch, cosine ≥ ${Number(c).toFixed(5)}${n(parity)}` : "FP32: the reference precision";
  }
  if (!a || typeof a !== "object") return "no accuracy-vs-FP32 record in its manifest";
  const lab = a.labelled;
  if (lab && lab.top1 != null && lab.fp32_top1 != null) {
    const d = lab.drop_points ?? 100 * (lab.fp32_top1 - lab.top1);
    return `top-1 ${pct(lab.top1)} vs ${pct(lab.fp32_top1)} in FP32 (${d > 0 ? "−" : "+"}${Math.abs(d).toFixed(1)} pts)${n(lab)}`;
  }
  const parts = [];
  if (parity.top1_agreement != null) parts.push(`top-1 agrees with FP32 on ${pct(parity.top1_agreement)}`);
  if (parity.cosine_mean != null) parts.push(`cosine to FP32 ${Number(parity.cosine_mean).toFixed(4)}`);
  if (!parts.length) return "no accuracy-vs-FP32 record in its manifest";
  return parts.join(" · ") + n(parity);
}

function makeCard(m) {
  const card = el("article", { class: `card ${isClip(m) ? "clip" : ""}`, "data-model": m.name, "data-state": "loading" },
    el("div", { class: "card-head" },
      el("span", { class: "card-title", text: m.name }),
      el("span", { class: "badge", text: `${m.provider || "?"} · ${m.precision || "?"}` })),
    el("div", { class: "card-sub", text: accuracyText(m) }),
    m.weights === "random" ? el("div", { class: "banner-random", text: "Random weights: these answers are noise, not predictions." }) : null,
    el("div", { class: "card-body" }, el("div", { class: "spinner", "aria-label": "working" })),
    el("div", { class: "card-foot" },
      el("span", { text: isClip(m) ? "CLIP zero-shot" : "classifier" }),
      el("span", { class: "time", text: "" })));
  return card;
}

function fillCard(card, { labels, timeMs, note, error }) {
  const body = card.querySelector(".card-body");
  body.replaceChildren();
  if (error) {
    card.dataset.state = "error";
    body.append(el("div", { class: "card-error", text: error }));
  } else {
    card.dataset.state = "done";
    body.append(el("div", { class: "bars" }, labels.slice(0, TOP).map((l) =>
      el("div", { class: "bar-row" },
        el("div", { class: "bar-label" }, el("span", { text: l.label, title: l.label }), el("span", { class: "pct", text: pct(l.score) })),
        el("div", { class: "bar" }, el("div", { style: `width:${Math.max(0.5, 100 * l.score).toFixed(1)}%` }))))));
  }
  if (note) body.append(el("div", { class: "card-note", text: note }));
  if (timeMs != null) card.querySelector(".time").textContent = `${Number(timeMs).toFixed(1)} ms`;
}

// The result of one model for the one uploaded image: {labels} or {error}.
function firstImage(data, modelName) {
  const results = listOf(data, "results");
  const r = results.find((x) => x.model === modelName) || results[0];
  if (!r) return { error: "The server returned no result for this model." };
  const img = listOf(r, "images")[0] || {};
  if (img.error) return { error: `Could not read this image: ${img.error}`, timeMs: r.time_ms };
  return { labels: listOf(img, "labels"), timeMs: r.time_ms, provider: r.provider, precision: r.precision };
}

const labelKey = (s) => String(s).replace(/_/g, " ").split(/\s+/).join(" ").trim().toLowerCase();

// A classifier answers a label set with its own labels mapped onto the set's names (a label
// matches when it, or one of its comma-separated synonyms, equals a set name), renormalised over
// the matched labels; null when nothing matches.
function mapOntoSet(labels, setNames) {
  const index = new Map(setNames.map((n) => [labelKey(n), n]));
  const sums = new Map();
  for (const { label, score } of labels) {
    for (const syn of [label, ...String(label).split(",")]) {
      const hit = index.get(labelKey(syn));
      if (hit !== undefined) { sums.set(hit, (sums.get(hit) || 0) + score); break; }
    }
  }
  const covered = [...sums.values()].reduce((a, b) => a + b, 0);
  if (!sums.size || covered <= 0) return null;
  const mapped = [...sums].map(([label, s]) => ({ label, score: s / covered })).sort((a, b) => b.score - a.score);
  return { labels: mapped, matched: sums.size, covered };
}

function imageForm(extra) {
  const f = new FormData();
  f.append("image", state.file, state.file.name);
  for (const [k, v] of Object.entries(extra)) f.append(k, String(v));
  return f;
}

async function classifyWithSet() {
  if (!state.file || !state.models.length) return;
  const set = $("#label-set").value;
  await runCards(state.models, set === "own" ? "each model's own labels" : `label set ${SET_TITLES[set] || set}`, async (m, deferredNames) => {
    if (isClip(m)) {
      if (set === "own") return { error: "A CLIP model has no labels of its own: choose a label set or type custom labels." };
      if (m.labelSets && !m.labelSets.includes(set))
        return { error: `This CLIP artifact carries no “${SET_TITLES[set] || set}” label set (it has: ${m.labelSets.join(", ") || "none"}).` };
      // All of the set's labels come back when a classifier needs the set's names to map onto.
      const wantAll = !deferredNames.builtIn(set) && state.models.some((x) => !isClip(x));
      let r = null;
      try {
        const data = await api("/v1/zero-shot", { method: "POST", form: imageForm({ model: m.name, label_set: set, top_k: wantAll ? 1000 : TOP }) });
        r = firstImage(data, m.name);
        return r;
      } finally {
        if (wantAll) deferredNames.answered(set, r && r.labels ? r.labels.map((l) => l.label) : null);
      }
    }
    const k = set === "own" ? TOP : (m.nLabels || 1000);
    const data = await api("/v1/classify", { method: "POST", form: imageForm({ model: m.name, top_k: k }) });
    const r = firstImage(data, m.name);
    if (set === "own" || r.error) return r;
    const names = await deferredNames.get(set);
    if (!names) return { error: `No list of ${SET_TITLES[set] || set} names to map this classifier onto (load a CLIP model that carries the set).`, timeMs: r.timeMs };
    const mapped = mapOntoSet(r.labels, names);
    if (!mapped) return { error: `None of this classifier's labels matches a ${SET_TITLES[set] || set} name; choose another label set or “Each model's own labels”.`, timeMs: r.timeMs };
    const title = SET_TITLES[set] || set;
    const whole = mapped.matched === names.length && mapped.covered > 0.999;
    return {
      labels: mapped.labels, timeMs: r.timeMs,
      note: whole ? `its own labels are the ${title} classes`
        : `its labels mapped onto ${mapped.matched} of ${names.length} ${title} names (${pct(mapped.covered)} of its probability)`,
    };
  });
}

async function classifyCustom() {
  if (!state.file) return;
  const text = $("#custom-labels").value;
  const labels = text.split(",").map((s) => s.trim()).filter(Boolean);
  if (labels.length < 2) {
    showError("#classify-error", "Type at least two labels separated by commas, e.g. “shark, dolphin, lizard, giraffe”.");
    return;
  }
  await runCards(state.models.filter(isClip), `custom labels: ${labels.join(", ")}`, async (m) => {
    const data = await api("/v1/zero-shot", { method: "POST", form: imageForm({ model: m.name, labels: labels.join(", "), top_k: TOP }) });
    return firstImage(data, m.name);
  });
}

// One card per model, every model asked at once; a newer run makes an older one's answers stale.
async function runCards(models, caption, ask) {
  const run = ++state.run;
  showError("#classify-error", "");
  $("#classify-caption").textContent = `${state.file.name} — ${caption}`;
  const cards = models.map(makeCard);
  $("#cards").replaceChildren(...cards);
  const names = namesBroker(models);
  await Promise.all(models.map(async (m, i) => {
    let out;
    try {
      out = await ask(m, names);
    } catch (e) {
      // Whole-request failures are said once above the cards, not once per card.
      const shared = { 413: "Not classified: the upload is too large (see above).", 0: "Not classified: the server cannot be reached." };
      out = { error: shared[e.status] || e.message };
      if (e.status === 413) showError("#classify-error", e.message);
    }
    if (run === state.run) fillCard(cards[i], out);
  }));
  $("#cards").dataset.run = String(run);
}

// Label-set names for classifiers: CIFAR-10 is built in, any other set comes from a CLIP model
// of the same run that carries it; when every such CLIP model has answered (or failed) without
// the names, a waiting classifier gets null.
function namesBroker(models) {
  const known = new Map([["cifar10", CIFAR10]]);
  const pending = new Map();  // set -> CLIP models still to answer
  const waiting = new Map();  // set -> resolve functions
  const settle = (set) => {
    for (const r of waiting.get(set) || []) r(known.get(set) || null);
    waiting.delete(set);
  };
  for (const m of models) {
    if (!isClip(m)) continue;
    for (const set of m.labelSets || []) pending.set(set, (pending.get(set) || 0) + 1);
  }
  return {
    builtIn: (set) => set === "cifar10",
    answered(set, names) {
      if (names && !known.has(set)) known.set(set, names);
      pending.set(set, (pending.get(set) || 1) - 1);
      if (known.has(set) || pending.get(set) <= 0) settle(set);
    },
    get(set) {
      if (known.has(set) || !(pending.get(set) > 0)) return Promise.resolve(known.get(set) || null);
      return new Promise((resolve) => {
        if (!waiting.has(set)) waiting.set(set, []);
        waiting.get(set).push(resolve);
      });
    },
  };
}

// ------------------------------------------------------------------ library
function setScanProgress(j, startedAt) {
  const total = j.total || 0, done = j.done || 0;
  const finished = !["running", "queued", "pending", "started"].includes(String(j.state).toLowerCase());
  const frac = total ? done / total : (finished ? 1 : 0);
  const bar = $("#scan-bar");
  bar.style.width = `${(100 * frac).toFixed(1)}%`;
  bar.classList.toggle("done", finished && frac >= 1);
  const parts = [`${Math.round(100 * frac)}%`, `${done}/${total} photos`];
  if (j.photos_per_s != null) parts.push(`${Number(j.photos_per_s).toFixed(1)} photos/s`);
  if (!finished && j.eta_s != null) parts.push(`ETA ${Math.ceil(j.eta_s)} s`);
  if (j.failed) parts.push(`${j.failed} unreadable`);
  if (j.skipped) parts.push(`${j.skipped} unchanged`);
  if (j.deleted) parts.push(`${j.deleted} removed`);
  if (finished) parts.push(`${j.state} in ${Number(j.elapsed_s ?? (Date.now() - startedAt) / 1000).toFixed(1)} s`);
  $("#scan-text").textContent = parts.join(" · ");
  $("#scan-progress").dataset.state = finished ? "finished" : "running";
  return finished;
}

async function scan() {
  const path = $("#scan-path").value.trim();
  showError("#library-error", "");
  if (!path) { showError("#library-error", "Type the folder to scan (it must lie under the server's --library-root)."); return; }
  $("#scan-button").disabled = true;
  $("#scan-progress").classList.remove("hidden");
  const startedAt = Date.now();
  setScanProgress({ state: "running", done: 0, total: 0 }, startedAt);
  try {
    const { job } = await api("/v1/library/scan", { method: "POST", json: { path } });
    for (;;) {
      const j = await api(`/v1/library/jobs/${encodeURIComponent(job)}`);
      if (setScanProgress(j, startedAt)) {
        if (j.error) showError("#library-error", `The scan stopped: ${j.error}`);
        loadLibrary();
        browse();
        break;
      }
      await sleep(400);
    }
  } catch (e) {
    $("#scan-progress").classList.add("hidden");
    failed("#library-error", e);
  } finally {
    $("#scan-button").disabled = false;
  }
}

async function loadThumb(img, id) {
  try {
    const res = await api(`/v1/photos/${encodeURIComponent(id)}/thumbnail`, { raw: true });
    // <img src> cannot send a bearer token, so thumbnails are fetched and shown as blob URLs.
    const url = URL.createObjectURL(await res.blob());
    img.onload = () => URL.revokeObjectURL(url);  // the decoded picture stays; the blob need not
    img.src = url;
  } catch (e) {
    img.alt = "no thumbnail";
    img.title = e.message;
  }
}

function tile(p, { score, keep } = {}) {
  const id = photoId(p);
  // An unreadable photo has no thumbnail: its tile says so instead of asking for one.
  const img = p.error ? el("div", { class: "thumb broken", text: "unreadable" })
    : el("img", { class: "thumb", alt: baseName(p.path) });
  if (!p.error) loadThumb(img, id);
  const t = el("div", { class: `tile ${keep ? "keep" : ""}`, "data-photo-id": id, title: p.error ? `${p.path}: ${p.error}` : p.path,
    onclick: () => showDetails(id, t) },
    img,
    el("div", { class: "tile-body" },
      el("div", { class: "tile-name", text: baseName(p.path) }),
      el("div", { class: "tile-meta" },
        keep ? el("span", { class: "keep-badge", text: "KEEP" }) : null,
        score != null ? el("span", { class: "score", text: `score ${Number(score).toFixed(3)}` }) : null,
        // Duplicates show what decides the keeper: resolution, then file size.
        score == null && p.width ? el("span", { text: `${p.width}×${p.height}` }) : null,
        score == null && p.size ? el("span", { text: bytes(p.size) }) : null),
      p.error ? null
        : el("button", { class: "link", type: "button", text: "More like this ›", onclick: (e) => { e.stopPropagation(); similar(id); } })));
  return t;
}

function showHits(data, caption) {
  const hits = listOf(data, "results", "photos", "hits", "matches");
  $("#library-caption").textContent = hits.length ? caption : `${caption}: nothing found${data.note ? ` (${data.note})` : " (scan a folder first?)"}`;
  $("#library-results").replaceChildren(el("div", { class: "grid" }, hits.map((h) => tile(h.photo || h, { score: h.score }))));
}

// Every stored photo, a page at a time (the first 100 here), shown after a scan too.
async function browse() {
  showError("#library-error", "");
  try {
    const data = await api("/v1/photos?limit=100");
    const photos = listOf(data, "photos");
    const total = data.total ?? photos.length;
    $("#library-caption").textContent = photos.length
      ? `All photos (${photos.length < total ? `first ${photos.length} of ` : ""}${total}); click one for its details`
      : "The library is empty: scan a folder.";
    $("#library-results").replaceChildren(el("div", { class: "grid" }, photos.map((p) => tile(p))));
  } catch (e) { failed("#library-error", e); }
}

async function search() {
  const q = $("#search-input").value.trim();
  if (!q) { showError("#library-error", "Type what to look for, e.g. “a dog on the beach”."); return; }
  showError("#library-error", "");
  try {
    showHits(await api(`/v1/search?q=${encodeURIComponent(q)}&k=24`), `Photos matching “${q}”`);
  } catch (e) { failed("#library-error", e); }
}

async function similar(id) {
  showError("#library-error", "");
  try {
    showHits(await api("/v1/search/similar", { method: "POST", json: { photo_id: id } }), `Photos like #${id}`);
  } catch (e) { failed("#library-error", e); }
}

async function duplicates() {
  showError("#library-error", "");
  // An empty threshold leaves the choice to the server's default.
  const t = $("#dups-threshold").value.trim();
  let data;
  try { data = await api(`/v1/duplicates${t ? `?threshold=${encodeURIComponent(t)}` : ""}`); } catch (e) { failed("#library-error", e); return; }
  const groups = listOf(data, "groups", "duplicates");
  const at = t ? ` at similarity ≥ ${t}` : "";
  $("#library-caption").textContent = groups.length
    ? `${groups.length} group${groups.length === 1 ? "" : "s"} of near-duplicates${at}; the suggested keeper (largest resolution, then largest file) is marked KEEP`
    : `No near-duplicates${at}.`;
  $("#library-results").replaceChildren(...groups.map((g, i) => {
    const photos = listOf(g, "photos", "members", "items");
    const keeper = g.keep ?? g.keeper ?? g.keep_id;
    const keepId = keeper && typeof keeper === "object" ? photoId(keeper) : keeper;
    const isKeep = (p) => p.keep === true || p.keeper === true || (keepId != null && photoId(p) === keepId);
    return el("div", { class: "group" },
      el("h3", { text: `Group ${i + 1} · ${photos.length} photos` }),
      el("div", { class: "grid" }, photos.map((p) => tile(p, { keep: isKeep(p) }))));
  }));
}

async function showDetails(id, tileEl) {
  document.querySelectorAll(".tile.selected").forEach((t) => t.classList.remove("selected"));
  if (tileEl) tileEl.classList.add("selected");
  const box = $("#photo-details");
  let p;
  try { p = await api(`/v1/photos/${encodeURIComponent(id)}`); } catch (e) { failed("#library-error", e); return; }
  p = p.photo || p;
  const img = p.error ? null : el("img", { alt: baseName(p.path) });
  if (img) loadThumb(img, id);
  const facts = [
    ["path", p.path], ["size", bytes(p.size ?? p.bytes)],
    ["resolution", p.width ? `${p.width}×${p.height}` : null],
    ["modified", p.mtime ? new Date(p.mtime * 1000).toLocaleString() : null],
    ["sha256", p.sha256], ["embedding", embeddingText(p)],
    ["unreadable", p.error || p.failure || null],
  ].filter(([, v]) => v);
  box.replaceChildren(
    el("button", { class: "ghost close", type: "button", text: "✕", title: "close", onclick: () => closeDetails() }),
    el("h3", { text: baseName(p.path) }), img,
    ...tagsBlocks(p.tags),
    el("dl", {}, facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { class: k === "sha256" ? "mono" : "", text: String(v) })])),
    p.error ? null : el("button", { class: "ghost", type: "button", text: "More like this", onclick: () => similar(id) }));
  box.classList.remove("hidden");
  $(".library-layout").classList.add("with-details");
}
function closeDetails() {
  $("#photo-details").classList.add("hidden");
  $(".library-layout").classList.remove("with-details");
}
function embeddingText(p) {
  const e = p.embedding_model ?? p.embedding ?? p.embeddings;
  if (!e) return null;
  if (typeof e === "string") return e;
  const one = Array.isArray(e) ? e[0] : e;
  if (!one || typeof one !== "object") return null;
  const sha = one.sha256 || one.model_sha256;
  const shape = one.dim ? ` · ${one.dim}-d${one.dtype ? ` ${one.dtype}` : ""}` : "";
  return `${one.name || one.model || "model"}${shape}${sha ? ` · sha256 ${String(sha).slice(0, 12)}…` : ""}`;
}
// Tags arrive as [{model, labels: [{label, score}]}], [{model, label, score}] or {model: [...]}.
function tagsBlocks(tags) {
  if (!tags) return [];
  let byModel = tags;
  if (Array.isArray(tags)) {
    byModel = {};
    for (const t of tags) {
      const list = (byModel[t.model || "tags"] ||= []);
      if (Array.isArray(t.labels)) list.push(...t.labels); else list.push(t);
    }
  }
  return Object.entries(byModel).flatMap(([model, list]) => [
    el("div", { class: "small muted", text: `tags · ${model}` }),
    el("div", { class: "tags" }, listOf(list, "labels").slice(0, 5).map((t) =>
      el("span", { class: "tag", text: typeof t === "string" ? t : `${t.label} ${t.score != null ? pct(t.score) : ""}` }))),
  ]);
}

// The library's size and roots: the first root pre-fills the folder to scan.
async function loadLibrary() {
  try {
    const lib = await api("/v1/library");
    const roots = listOf(lib, "roots", "library_roots");
    const box = $("#scan-path");
    if (roots[0] && !box.value && !box.dataset.typed) box.value = roots[0];
    const parts = [];
    if (lib.photos != null) parts.push(`${lib.photos} photo${lib.photos === 1 ? "" : "s"} in the library`);
    if (lib.failed) parts.push(`${lib.failed} unreadable`);
    if (roots.length) parts.push(`scannable under ${roots.join(", ")}`);
    $("#library-stats").textContent = parts.join(" · ");
  } catch (e) {
    $("#library-stats").textContent = "";
    if (e.status !== 401) failed("#library-error", e);
  }
}

// ------------------------------------------------------------------ tabs + start
function showView(name) {
  for (const v of ["classify", "library"]) {
    $(`#view-${v}`).classList.toggle("hidden", v !== name);
    const tab = $(`#tab-${v}`);
    tab.classList.toggle("active", v === name);
    tab.setAttribute("aria-selected", String(v === name));
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  if (name === "library") loadLibrary();
}

function init() {
  initToken();
  initUpload();
  document.querySelectorAll(".tab").forEach((t) => t.addEventListener("click", () => showView(t.dataset.view)));
  $("#classify-button").addEventListener("click", classifyWithSet);
  $("#label-set").addEventListener("change", classifyWithSet);
  $("#custom-button").addEventListener("click", classifyCustom);
  $("#custom-labels").addEventListener("keydown", (e) => { if (e.key === "Enter") classifyCustom(); });
  $("#scan-button").addEventListener("click", scan);
  $("#scan-path").addEventListener("keydown", (e) => { if (e.key === "Enter") scan(); });
  // What the user typed wins over the root pre-filled when the library answers.
  $("#scan-path").addEventListener("input", (e) => { e.target.dataset.typed = "1"; });
  $("#search-button").addEventListener("click", search);
  $("#search-input").addEventListener("keydown", (e) => { if (e.key === "Enter") search(); });
  $("#dups-button").addEventListener("click", duplicates);
  $("#browse-button").addEventListener("click", browse);
  const viewFromHash = () => showView(location.hash === "#library" ? "library" : "classify");
  window.addEventListener("hashchange", viewFromHash);  // links and back/forward between the tabs
  viewFromHash();
  pollHealth();
  setInterval(pollHealth, 10000);
  loadModels();
}
init();
