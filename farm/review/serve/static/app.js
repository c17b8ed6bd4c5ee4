// farm serve's page: plain DOM, no libraries. Every value from the queue is set as text, never
// as HTML. The page refetches what it shows whenever /api/stream says the database changed.
"use strict";
const $ = (sel) => document.querySelector(sel);
const state = { filter: "", page: 1, pages: 1, open: null, lastEvent: 0, readOnly: true, busy: false, again: false };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

async function get(url) {
  const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
  return r.json();
}

async function act(url, body = {}) {
  const r = await fetch(url, { method: "POST", credentials: "same-origin",
                               headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const out = await r.json().catch(() => ({}));
  if (!r.ok) alert(out.error || r.statusText);
  refresh();
}

const secs = (s) => s == null ? "" : s < 90 ? `${Math.round(s)}s` : s < 5400 ? `${Math.round(s / 60)}m` : `${(s / 3600).toFixed(1)}h`;

function actions(job) {
  if (state.readOnly) return el("span");
  const box = el("span", { class: "actions" });
  const live = job.state === "queued" || job.state === "running";
  const button = (what, label) => el("button", { text: label, "data-action": what, "data-job": job.job,
    onclick: (e) => { e.stopPropagation(); act(`/api/jobs/${job.job}/${what}`); } });
  if (live) box.append(job.paused ? button("resume", "Resume") : button("pause", "Pause"), " ", button("cancel", "Cancel"));
  if (job.state === "failed" || job.state === "canceled") box.append(button("retry", "Retry"));
  if (live) {
    const prio = el("input", { type: "number", class: "prio", value: job.priority, title: "priority (higher runs first)",
                               "data-priority": job.job, onclick: (e) => e.stopPropagation() });
    prio.addEventListener("change", () => act(`/api/jobs/${job.job}/priority`, { priority: Number(prio.value) }));
    box.append(" ", prio);
  }
  return box;
}

function jobRow(j) {
  const t = j.tasks, pct = t.total ? Math.round(100 * t.done / t.total) : 0;
  const bar = el("span", { class: "progress" }, el("div"));
  bar.firstChild.style.width = `${pct}%`;
  const stateText = j.state + (j.paused ? " (paused)" : "") + (j.published === "superseded" ? " (superseded)" : "");
  const row = el("tr", { class: "job" + (state.open === j.job ? " open" : ""), "data-job": j.job },
    el("td", { text: j.job }),
    el("td", { class: "name", title: j.error ? `${j.name}\n${j.error}` : j.name }, j.name,
       ...(j.error ? [el("div", { class: "error small", text: j.error })] : [])),
    el("td", { class: `state-${j.state}`, text: stateText, "data-state": j.job }),
    el("td", {}, bar, `${t.done}/${t.total}`), el("td", { text: j.priority }),
    el("td", { text: secs(j.elapsed) }), el("td", { text: secs(j.eta) }), el("td", {}, actions(j)));
  row.addEventListener("click", () => { state.open = j.job; state.lastEvent = 0; $("#events").textContent = ""; refresh(); });
  return row;
}

function workerRow(w) {
  const doing = w.task ? `job ${w.task.job} ${w.task.name}` : w.state === "stopping" ? "stopping" : "idle";
  return el("tr", {}, el("td", { text: w.name }), el("td", { text: w.device }), el("td", { text: (w.node || "").slice(0, 8) }),
    el("td", { text: w.state === "lost" ? `lost (${doing})` : doing }), el("td", { text: w.models.length }),
    el("td", { text: `${w.heartbeat_age}s` }), el("td", { text: w.done }));
}

async function showJob(id) {
  const d = await get(`/api/jobs/${id}`), j = d.job;
  $("#detail").hidden = false;
  $("#job-title").textContent = `job ${j.job}: ${j.name}`;
  $("#job-actions").replaceChildren(actions(j));
  $("#job-line").textContent = `${j.state}${j.paused ? " (paused)" : ""} · ${j.tasks.done}/${j.tasks.total} tasks done` +
    ` (${j.tasks.cached} from the cache) · priority ${j.priority} · ${secs(j.elapsed)}` + (j.eta != null ? ` · eta ${secs(j.eta)}` : "") +
    ` · ${j.output || ""}`;
  $("#job-error").hidden = !j.error;
  $("#job-error").textContent = j.error || "";
  $("#board").replaceChildren(...d.storyboard.map((k) => el("div", { class: "tile", "data-keyframe": k.index },
    el("div", { class: "pic" }, k.thumbnail ? el("img", { src: k.thumbnail, alt: `keyframe ${k.index}` }) : k.state),
    el("div", { class: "cap", text: `${k.index} · ${k.start.toFixed(2)}–${k.end.toFixed(2)} s · ${k.prompt ?? k.image ?? ""}` }))));
  const media = [];
  if (d.files.video) {
    const old = $("#media video");
    media.push(old && old.getAttribute("src") === d.files.video ? old :
      el("video", { src: d.files.video, controls: true, muted: true, loop: true, autoplay: true, playsInline: true }));
  }
  for (const [name, label] of [["contact_sheet", "contact sheet"], ["manifest", "manifest"], ["video", "video"]])
    if (d.files[name]) media.push(el("a", { href: d.files[name], text: label, target: "_blank" }));
  $("#media").replaceChildren(...media);
  $("#segments tbody").replaceChildren(...d.segments.map((s) => el("tr", {},
    el("td", { text: s.name }), el("td", { class: `state-${s.state}`, text: s.state }),
    el("td", { text: s.clips.length ? s.clips.map((c) => c.state).join(" ") : "" }),
    el("td", { text: s.worker || "" }), el("td", { class: "error", text: s.error || "" }))));
  const ev = await get(`/api/jobs/${id}/events?after=${state.lastEvent}`);
  for (const e of ev.events) {
    $("#events").append(`${new Date(e.ts * 1000).toLocaleTimeString()} ${e.event}${e.task ? " " + e.task : ""}` +
      `${e.worker ? " · " + e.worker : ""}\n`);
    state.lastEvent = e.id;
  }
}

async function refresh() {
  if (state.busy) { state.again = true; return; }
  state.busy = true;
  try {
    const f = await get("/api/farm");
    state.readOnly = f.read_only;
    $("#farm-state").textContent = f.paused ? "farm paused" : "farm running";
    $("#farm-pause").hidden = f.read_only || f.paused;
    $("#farm-resume").hidden = f.read_only || !f.paused;
    $("#counts").textContent = Object.entries(f.states).filter(([, n]) => n).map(([s, n]) => `${n} ${s}`).join(" · ");
    $("#workers tbody").replaceChildren(...(f.workers.length ? f.workers.map(workerRow) :
      [el("tr", {}, el("td", { colSpan: 7, class: "dim", text: "no workers running (start some with `farm work`)" }))]));
    const l = await get(`/api/jobs?page=${state.page}${state.filter ? "&state=" + state.filter : ""}`);
    state.pages = l.pages;
    $("#pages").textContent = ` page ${l.page} of ${l.pages} · ${l.total} jobs `;
    $("#jobs tbody").replaceChildren(...(l.jobs.length ? l.jobs.map(jobRow) :
      [el("tr", {}, el("td", { colSpan: 8, class: "dim", text: "no jobs" }))]));
    if (state.open != null) await showJob(state.open);
    document.body.dataset.updates = Number(document.body.dataset.updates || 0) + 1;
  } catch (e) {
    $("#farm-state").textContent = `error: ${e.message}`;
  } finally {
    state.busy = false;
    if (state.again) { state.again = false; refresh(); }
  }
}

$("#filter").addEventListener("change", (e) => { state.filter = e.target.value; state.page = 1; refresh(); });
$("#prev").addEventListener("click", () => { if (state.page > 1) { state.page--; refresh(); } });
$("#next").addEventListener("click", () => { if (state.page < state.pages) { state.page++; refresh(); } });
for (const b of document.querySelectorAll("[data-farm]")) b.addEventListener("click", () => act(`/api/farm/${b.dataset.farm}`));
const opened = new URLSearchParams(location.hash.slice(1)).get("job");
if (opened) state.open = Number(opened);
const live = new EventSource("/api/stream");
live.addEventListener("change", refresh);
live.onopen = () => $("#live").classList.add("on");
live.onerror = () => $("#live").classList.remove("on");
refresh();
