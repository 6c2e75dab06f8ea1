// /ui/: every deployment with its services, their queues, live workers and task counts.

import { ago, api, apiPath, every, h, page, problem, statusLabel, when } from "./common.js";

const NOW_ORDER = ["running", "waiting_input", "queued", "retrying"];
const ENDED_ORDER = ["succeeded", "failed", "timed_out", "cancelled"];

/** The counts that are not 0, each in its status's colour; `none` in words when all are. */
function counts(values, order, none) {
  const shown = order.filter((status) => values[status]);
  if (!shown.length) return h("span", { class: "muted" }, none);
  return h(
    "div",
    { class: "counts" },
    shown.map((status) =>
      h(
        "span",
        { class: `count status-${status}`, "data-status": status },
        h("b", {}, String(values[status])),
        " ",
        statusLabel(status),
      ),
    ),
  );
}

function workers(list) {
  if (!list.length) return h("span", { class: "warn" }, "no live worker");
  return h(
    "ul",
    { class: "workers" },
    list.map((worker) =>
      h(
        "li",
        { title: `${worker.host}, pid ${worker.pid}, started ${worker.started_at}` },
        h("span", { class: "dot alive" }),
        h("span", { class: "mono" }, worker.name),
        h("span", { class: "muted" }, ` · heartbeat ${ago(worker.last_heartbeat)}`),
      ),
    ),
  );
}

function serviceRow(service, isDefault) {
  return h(
    "tr",
    { "data-service": service.name },
    h(
      "td",
      {},
      h("div", { class: "strong" }, service.display_name || service.name),
      h("div", { class: "muted mono" }, service.name, isDefault ? " · default" : ""),
    ),
    h("td", { class: "mono" }, service.queue),
    h("td", {}, workers(service.workers)),
    h("td", {}, counts(service.now, NOW_ORDER, "idle")),
    h("td", {}, counts(service.last_hour, ENDED_ORDER, "none")),
    h("td", { class: "num" }, `${service.per_minute.toFixed(1)}/min`),
  );
}

function card(deployment, services) {
  const active = services.reduce((sum, s) => sum + s.now.running + s.now.waiting_input, 0);
  const failed = services.reduce((sum, s) => sum + s.last_hour.failed + s.last_hour.timed_out, 0);
  const idle = services.filter((s) => !s.workers.length).length;
  return h(
    "article",
    { class: "card", "data-deployment": deployment.name },
    h(
      "div",
      { class: "card-head" },
      h("h2", {}, h("a", { href: page(deployment.name) }, deployment.name)),
      h("span", { class: "muted" }, `version ${deployment.version} · updated `, when(deployment.updated_at)),
      h(
        "span",
        { class: "headline" },
        active ? h("span", { class: "pill status-running" }, `${active} running`) : null,
        failed ? h("span", { class: "pill status-failed" }, `${failed} failed in the last hour`) : null,
        idle ? h("span", { class: "pill status-waiting_input" }, `${idle} service${idle > 1 ? "s" : ""} without a worker`) : null,
      ),
    ),
    h(
      "table",
      { class: "services-table" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", {}, "Service"),
          h("th", {}, "Queue"),
          h("th", {}, "Live workers"),
          h("th", {}, "Now"),
          h("th", {}, "Ended in the last hour"),
          h("th", { class: "num" }, "Rate"),
        ),
      ),
      h("tbody", {}, services.map((s) => serviceRow(s, s.name === deployment.default_service))),
    ),
    deployment.warnings && deployment.warnings.length
      ? h("ul", { class: "warnings" }, deployment.warnings.map((w) => h("li", {}, w)))
      : null,
  );
}

async function load() {
  const box = document.getElementById("deployments");
  try {
    const deployments = await api("/deployments/");
    const summaries = await Promise.all(
      deployments.map((d) => api(apiPath(d.name, "/summary")).catch(() => [])),
    );
    problem(null);
    box.setAttribute("aria-busy", "false");
    if (!deployments.length) {
      box.replaceChildren(
        h(
          "div",
          { class: "empty" },
          h("p", {}, "No deployments yet."),
          h("p", { class: "muted" }, "Deploy one: ", h("code", {}, "celeriac deploy path/to/deployment.yml")),
        ),
      );
      return;
    }
    box.replaceChildren(...deployments.map((d, i) => card(d, summaries[i])));
  } catch (error) {
    problem(error);
  }
}

every(3000, load);
