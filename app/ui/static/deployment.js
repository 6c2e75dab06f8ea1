// /ui/deployments/{name}: the deployment's services at a glance, its tasks (filtered by
// status, service and session, paged, newest first, updated live) and its sessions.

import {
  ApiError,
  api,
  apiPath,
  every,
  h,
  page,
  pageData,
  pill,
  problem,
  taskDuration,
  when,
} from "./common.js";

const PAGE_SIZE = 25;
const SESSIONS_SHOWN = 20;
const { deployment } = pageData();
const filters = { status: "", service: "", session: "", page: 1 };
let shownServices = "";
let knownSessions = null;
let refreshSessions = () => {};
let lastTasks = "";

function readAddress() {
  const query = new URLSearchParams(window.location.search);
  filters.status = query.get("status") || "";
  filters.service = query.get("service") || "";
  filters.session = query.get("session") || "";
  filters.page = Math.max(1, Number.parseInt(query.get("page") || "1", 10) || 1);
  document.getElementById("filter-status").value = filters.status;
  document.getElementById("filter-session").value = filters.session;
  setServiceChoice();
}

function writeAddress() {
  const query = new URLSearchParams();
  for (const name of ["status", "service", "session"]) if (filters[name]) query.set(name, filters[name]);
  if (filters.page > 1) query.set("page", String(filters.page));
  const search = query.toString();
  window.history.replaceState(null, "", search ? `?${search}` : window.location.pathname);
}

function setServiceChoice() {
  const select = document.getElementById("filter-service");
  if (filters.service && ![...select.options].some((o) => o.value === filters.service)) {
    select.append(h("option", { value: filters.service }, filters.service));
  }
  select.value = filters.service;
}

function short(id) {
  return id.length > 12 ? `${id.slice(0, 12)}…` : id;
}

function sessionLink(sessionId) {
  if (!sessionId) return h("span", { class: "muted" }, "—");
  return h(
    "button",
    {
      type: "button",
      class: "link mono",
      title: `Show the tasks of session ${sessionId}`,
      onclick: () => applyFilter({ session: sessionId }),
    },
    short(sessionId),
  );
}

/** A waiting task whose run was let go (a durable service's): it holds no worker. */
function parkedBadge(task) {
  if (task.status !== "waiting_input" || !task.parked_at) return null;
  return h("span", { class: "pill parked", title: "Parked: its run holds no worker; the answer resumes it." }, "parked");
}

function taskRow(task) {
  return h(
    "tr",
    { "data-task": task.task_id, "data-status": task.status },
    h("td", {}, h("a", { class: "mono", href: page(deployment, task.task_id), title: task.task_id }, short(task.task_id))),
    h("td", {}, pill(task.status), parkedBadge(task)),
    h("td", {}, task.service_id),
    h("td", {}, sessionLink(task.session_id)),
    h("td", {}, when(task.created_at)),
    h("td", {}, when(task.started_at)),
    h("td", {}, when(task.finished_at)),
    h("td", { class: "num" }, taskDuration(task)),
  );
}

async function loadTasks() {
  const query = new URLSearchParams({
    order: "newest",
    limit: String(PAGE_SIZE + 1),
    offset: String((filters.page - 1) * PAGE_SIZE),
  });
  if (filters.status) query.set("status", filters.status);
  if (filters.service) query.set("service_id", filters.service);
  if (filters.session) query.set("session_id", filters.session);
  const body = document.getElementById("tasks");
  try {
    const tasks = await api(apiPath(deployment, `/tasks?${query}`));
    problem(null);
    document.getElementById("panels").hidden = false;
    const more = tasks.length > PAGE_SIZE;
    const shown = tasks.slice(0, PAGE_SIZE);
    document.getElementById("page-prev").disabled = filters.page <= 1;
    document.getElementById("page-next").disabled = !more;
    document.getElementById("page-label").textContent = `Page ${filters.page}`;
    // Unchanged, unfinished tasks still need their running duration redrawn.
    const key = JSON.stringify(shown);
    if (key === lastTasks && shown.every((t) => t.finished_at)) return;
    lastTasks = key;
    if (!shown.length) {
      const filtered = filters.status || filters.service || filters.session;
      body.replaceChildren(
        h("tr", {}, h("td", { colspan: "8", class: "muted empty-row" }, filtered ? "No task matches these filters." : "No tasks yet.")),
      );
      return;
    }
    body.replaceChildren(...shown.map(taskRow));
    // A task of a session not listed yet: the sessions are read again now, not in 10 s.
    // (once per session: a deleted session's tasks stay, and it is never listed again)
    const unseen = shown.filter((t) => t.session_id && knownSessions && !knownSessions.has(t.session_id));
    if (unseen.length) {
      for (const t of unseen) knownSessions.add(t.session_id);
      refreshSessions();
    }
  } catch (error) {
    // No such deployment (the message says so): nothing else to show.
    if (error instanceof ApiError && error.status === 404) document.getElementById("panels").hidden = true;
    problem(error);
  }
}

function serviceCard(service) {
  const now = service.now;
  const ended = service.last_hour;
  const live = service.workers.length;
  return h(
    "div",
    { class: "service-card", "data-service": service.name },
    h("div", { class: "strong" }, service.display_name || service.name),
    h("div", { class: "muted mono" }, `queue ${service.queue}`),
    h(
      "div",
      { class: live ? "ok" : "warn" },
      h("span", { class: live ? "dot alive" : "dot" }),
      live ? `${live} live worker${live > 1 ? "s" : ""}` : "no live worker",
    ),
    h(
      "div",
      { class: "mini-counts" },
      h("span", { class: "status-running" }, `${now.running} running`),
      h("span", { class: "status-queued" }, `${now.queued + now.retrying} queued`),
      now.waiting_input ? h("span", { class: "status-waiting_input" }, `${now.waiting_input} waiting`) : null,
      h("span", { class: ended.failed ? "status-failed" : "" }, `${ended.failed} failed/h`),
      h("span", {}, `${service.per_minute.toFixed(1)}/min`),
    ),
  );
}

async function loadServices() {
  try {
    const services = await api(apiPath(deployment, "/summary"));
    document.getElementById("services").replaceChildren(...services.map(serviceCard));
    const names = JSON.stringify(services.map((s) => s.name));
    if (names !== shownServices) {
      shownServices = names;
      const select = document.getElementById("filter-service");
      select.replaceChildren(
        h("option", { value: "" }, "any"),
        ...services.map((s) => h("option", { value: s.name }, s.display_name ? `${s.display_name} (${s.name})` : s.name)),
      );
      setServiceChoice();
    }
  } catch (error) {
    // (a missing deployment is told by the task list)
    if (!(error instanceof ApiError)) problem(error);
  }
}

function sessionItem(session) {
  const ids = session.task_ids;
  const shown = ids.slice(-5).reverse();
  return h(
    "li",
    { "data-session": session.session_id },
    h(
      "div",
      { class: "session-head" },
      h(
        "button",
        { type: "button", class: "link mono", onclick: () => applyFilter({ session: session.session_id }) },
        session.session_id,
      ),
      h("span", { class: "muted" }, " · created ", when(session.created_at), ` · ${ids.length} task${ids.length === 1 ? "" : "s"}`),
    ),
    shown.length
      ? h(
          "div",
          { class: "session-tasks" },
          shown.map((id) => h("a", { class: "mono chip", href: page(deployment, id) }, short(id))),
          ids.length > shown.length ? h("span", { class: "muted" }, ` and ${ids.length - shown.length} more`) : null,
        )
      : null,
  );
}

async function loadSessions() {
  const box = document.getElementById("sessions");
  try {
    const sessions = await api(apiPath(deployment, "/sessions"));
    knownSessions = new Set(sessions.map((session) => session.session_id));
    if (!sessions.length) {
      box.replaceChildren(h("p", { class: "muted" }, "No sessions."));
      return;
    }
    // Newest first, as the tasks; the newest few only.
    const newest = sessions.slice().reverse();
    const shown = newest.slice(0, SESSIONS_SHOWN);
    const more = newest.length - shown.length;
    const parts = [h("ul", { class: "sessions" }, shown.map(sessionItem))];
    if (more) parts.push(h("p", { class: "muted small" }, `and ${more} older session${more > 1 ? "s" : ""}`));
    box.replaceChildren(...parts);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) box.replaceChildren();
  }
}

let refreshTasks = () => {};

function applyFilter(changes) {
  Object.assign(filters, changes, { page: changes.page || 1 });
  document.getElementById("filter-status").value = filters.status;
  document.getElementById("filter-session").value = filters.session;
  setServiceChoice();
  writeAddress();
  lastTasks = "";
  refreshTasks();
}

function setUpFilters() {
  document.getElementById("filter-status").addEventListener("change", (e) => applyFilter({ status: e.target.value }));
  document.getElementById("filter-service").addEventListener("change", (e) => applyFilter({ service: e.target.value }));
  const session = document.getElementById("filter-session");
  session.addEventListener("change", () => applyFilter({ session: session.value.trim() }));
  document.getElementById("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    applyFilter({ session: session.value.trim() });
  });
  document.getElementById("filter-clear").addEventListener("click", () => applyFilter({ status: "", service: "", session: "" }));
  document.getElementById("page-prev").addEventListener("click", () => applyFilter({ page: Math.max(1, filters.page - 1) }));
  document.getElementById("page-next").addEventListener("click", () => applyFilter({ page: filters.page + 1 }));
}

readAddress();
setUpFilters();
every(5000, loadServices);
// Sessions cost a read per session on the server: less often.
refreshSessions = every(10000, loadSessions);
refreshTasks = every(2000, loadTasks);
