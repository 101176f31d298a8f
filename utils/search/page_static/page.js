// The listening page: talks to this server's /api only. Every query is timed from the request to the
// rendered results with performance marks: performance.getEntriesByName("query") (see benchmarks/).
"use strict";

const $ = (id) => document.getElementById(id);
let seq = 0;  // id of the latest query; older answers are dropped
let captions = null;

function fmtDuration(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s - 60 * m)).padStart(2, "0")} min`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k in node) node[k] = v; else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function resultItem(r) {
  const slash = r.path.lastIndexOf("/");
  const name = el("div", { class: "name" },
    slash >= 0 ? el("span", { class: "dir" }, r.path.slice(0, slash + 1)) : null, r.name,
    r.true ? el("span", { class: "badge" }, "true clip") : null);
  const meta = el("div", { class: "meta" }, "score ", el("span", { class: "score" }, r.score.toFixed(3)),
    r.duration !== null ? ` · ${fmtDuration(r.duration)}` : "");
  const audio = el("audio", { controls: true, preload: "none", src: r.url });
  // The thumbnail has its own route: the list renders at once and each picture arrives when it is made.
  const thumb = el("img", { class: "thumb", src: r.thumb, alt: "", width: 160, height: 40, loading: "lazy",
    title: "spectrogram (first 30 s)" });
  thumb.addEventListener("error", () => thumb.classList.add("missing"));
  const like = el("button", { type: "button", class: "like", title: "Search by this clip's sound" }, "More like this");
  like.addEventListener("click", () => { navigate({ like: r.path, k: k(), ...filters() }); });
  const li = el("li", { class: r.true ? "true" : "" }, el("div", { class: "rank" }, String(r.rank)), name, meta,
    el("div", { class: "player" }, thumb, audio, like));
  li.dataset.path = r.path;
  return li;
}

function afterPaint() {
  return new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  let body;
  try { body = await response.json(); } catch { body = { error: `${response.status} ${response.statusText}` }; }
  if (!response.ok) throw new Error(body.error || `${response.status}`);
  return body;
}

// Run one request, render its results into `list` and time it from the request to the painted page.
async function runQuery(list, info, url, describe, options) {
  const id = ++seq;
  performance.mark(`query-start-${id}`);
  list.dataset.state = "loading";
  info.classList.remove("error");
  info.textContent = "searching…";
  try {
    const body = await getJSON(url, options);
    if (id !== seq) return;
    list.replaceChildren(...body.results.map(resultItem));
    list.dataset.serverMs = String(body.server_ms);
    info.textContent = describe(body);
  } catch (err) {
    if (id !== seq) return;
    list.replaceChildren();
    info.textContent = err.message;
    info.classList.add("error");
  }
  await afterPaint();
  performance.mark(`query-end-${id}`);
  performance.measure("query", `query-start-${id}`, `query-end-${id}`);
  list.dataset.seq = String(id);
  list.dataset.state = info.classList.contains("error") ? "error" : "done";
}

function k() { return $("k").value; }

// The folder and duration filters, as URL / API parameters (empty ones left out).
const FILTERS = { folder: "folder", min_s: "min-s", max_s: "max-s" };
function filters() {
  const out = {};
  for (const [param, id] of Object.entries(FILTERS)) if ($(id).value.trim()) out[param] = $(id).value.trim();
  return out;
}
function filterQuery() {
  const f = new URLSearchParams(filters()).toString();
  return f ? `&${f}` : "";
}
function describeFilters() {
  const f = filters();
  const parts = [];
  if (f.folder) parts.push(`in ${f.folder}/`);
  if (f.min_s || f.max_s) parts.push(`${f.min_s || 0}–${f.max_s || "∞"} s`);
  return parts.length ? ` (${parts.join(", ")})` : "";
}

function searchText(q) {
  $("query").value = q;
  return runQuery($("results"), $("search-info"), `/api/search?q=${encodeURIComponent(q)}&k=${k()}${filterQuery()}`,
    (b) => `${b.results.length} clips for “${b.query}”${describeFilters()} (${b.server_ms.toFixed(0)} ms on the server)`);
}

function searchLike(path) {
  return runQuery($("results"), $("search-info"), `/api/like?path=${encodeURIComponent(path)}&k=${k()}${filterQuery()}`,
    (b) => `${b.results.length} clips that sound like ${b.like}${describeFilters()}`);
}

function searchUpload(file) {
  const url = `/api/upload?name=${encodeURIComponent(file.name)}&k=${k()}${filterQuery()}`;
  return runQuery($("results"), $("search-info"), url, (b) => `${b.results.length} clips that sound like ${b.like} (uploaded)`,
    { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
}

async function loadCaptions() {
  if (captions) return captions;
  const body = await getJSON("/api/captions");
  captions = body.captions;
  const list = $("captions");
  list.replaceChildren(...captions.map((c) => {
    const li = el("li", { title: c.fname }, c.text);
    li.dataset.i = String(c.i);
    li.addEventListener("click", () => navigate({ view: "eval", caption: c.i, k: k() }));
    return li;
  }));
  return captions;
}

async function evaluate(i) {
  await loadCaptions();
  for (const li of $("captions").children) {
    li.classList.toggle("active", li.dataset.i === String(i));
    if (li.dataset.i === String(i)) li.scrollIntoView({ block: "nearest" });
  }
  return runQuery($("eval-results"), $("eval-info"), `/api/eval?caption=${i}&k=${k()}`,
    (b) => `“${b.caption}”: the true clip ${b.true_path} ranks ${b.true_rank} of ${b.files}` +
      (b.true_rank > b.results.length ? " (below the list)" : ""));
}

function show(view) {
  for (const b of $("tabs").children) b.classList.toggle("active", b.dataset.view === view);
  for (const v of ["search", "eval", "index"]) $(`view-${v}`).hidden = v !== view;
  if (view === "eval") loadCaptions().catch((err) => { $("eval-info").textContent = err.message; });
}

// The URL holds the query (?q= / ?like= / ?view=eval&caption=, and &k=), so results can be shared and reloaded.
function navigate(params) {
  const url = new URL(location.href);
  url.search = new URLSearchParams(params).toString();
  history.pushState(null, "", url);
  apply();
}

function apply() {
  const p = new URLSearchParams(location.search);
  const view = p.get("view") || "search";
  if (p.get("k") && [...$("k").options].some((o) => o.value === p.get("k"))) $("k").value = p.get("k");
  for (const [param, id] of Object.entries(FILTERS)) $(id).value = p.get(param) || "";
  show(view);
  if (view === "eval" && p.has("caption")) return evaluate(p.get("caption"));
  if (p.get("like")) return searchLike(p.get("like"));
  if (p.get("q")) return searchText(p.get("q"));
}

function renderStatus(s) {
  $("status-line").textContent = `${s.files} files indexed` + (s.skipped_count ? `, ${s.skipped_count} skipped` : "") +
    ` · ${s.source}`;
  const rows = [["folder", s.folder], ["files indexed", s.files], ["skipped", s.skipped_count],
    ["missing from the list", s.missing.length], ["last refresh", `${s.refreshed} (${s.last_refresh})`],
    ["run", `${s.run} (${s.checkpoint}${s.epoch !== null ? `, epoch ${s.epoch}` : ""})`],
    ["text model", s.text_model], ["evaluation split", s.split ? `${s.split}: ${s.captions} captions` : "none (--split NAME)"],
    ["upload limit", `${s.max_upload_mb} MB`]];
  $("index-status").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
  const body = $("skipped").tBodies[0];
  const skipped = s.skipped.concat(s.missing.map((p) => ({ path: p, reason: "listed but not found" })));
  body.replaceChildren(...(skipped.length ? skipped.map((x) => el("tr", {}, el("td", {}, x.path), el("td", {}, x.reason)))
    : [el("tr", {}, el("td", { colSpan: 2 }, "none"))]));
  $("tabs").querySelector('[data-view="eval"]').hidden = !s.split;
}

async function refresh() {
  $("refresh").disabled = true;
  try { renderStatus(await getJSON("/api/refresh", { method: "POST" })); }
  catch (err) { $("status-line").textContent = err.message; }
  finally { $("refresh").disabled = false; }
}

function filterCaptions() {
  const needle = $("caption-filter").value.toLowerCase();
  for (const li of $("captions").children) li.hidden = !li.textContent.toLowerCase().includes(needle);
}

document.addEventListener("DOMContentLoaded", async () => {
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("query").value;
    if (q.trim()) navigate({ q, k: k(), ...filters() }); else searchText(q);  // an empty query shows the server's message
  });
  $("upload").addEventListener("change", () => { if ($("upload").files.length) searchUpload($("upload").files[0]); });
  for (const b of $("tabs").children) b.addEventListener("click", () => navigate(b.dataset.view === "search" ? {} : { view: b.dataset.view }));
  $("refresh").addEventListener("click", refresh);
  $("caption-filter").addEventListener("input", filterCaptions);
  window.addEventListener("popstate", apply);
  try { renderStatus(await getJSON("/api/status")); } catch (err) { $("status-line").textContent = err.message; }
  try {  // the folder filter's suggestions: the subfolders with the most files
    const body = await getJSON("/api/folders");
    $("folder-list").replaceChildren(...body.folders.filter((f) => f.folder).map((f) =>
      el("option", { value: f.folder }, `${f.files} files`)));
  } catch (err) { /* the filter still takes a typed folder */ }
  document.body.dataset.ready = "1";
  apply();
});
