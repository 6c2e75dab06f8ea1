// /ui/deployments/{name}/tasks/{id}: one task, live. Its input, timeline, result or error
// (the workflow's own frame first), runs, a durable task's steps (and whether it is parked),
// events (the task's SSE stream), a form to answer its question, and Cancel / Retry (the
// API's own routes).

import {
  ApiError,
  api,
  apiPath,
  duration,
  every,
  followEvents,
  h,
  page,
  pageData,
  pill,
  pretty,
  problem,
  statusLabel,
  taskDuration,
  when,
} from "./common.js";

const ENDED = new Set(["succeeded", "failed", "cancelled", "timed_out"]);
const RETRYABLE = new Set(["failed", "cancelled", "timed_out"]);
const { deployment, task: taskId } = pageData();
const taskPath = apiPath(deployment, `/tasks/${encodeURIComponent(taskId)}`);
let task = null;
let question = null;
let stream = null;
let refresh = () => {};

// -- the error, with the workflow's own frame first ---------------------------------------

const FRAME = /^\s*File "(.*)", line (\d+), in (.*)$/;
// Frames of installed packages and of Python itself: not the workflow's own code.
const LIBRARY = /[\\/](site-packages|dist-packages)[\\/]|[\\/]lib[\\/]python\d[\d.]*[\\/]|^<frozen /;

/** The frames of a Python traceback: file, line, function and the code line shown. */
export function frames(traceback) {
  const lines = traceback.split("\n");
  const found = [];
  lines.forEach((line, index) => {
    const match = FRAME.exec(line);
    if (!match) return;
    const next = lines[index + 1] || "";
    const code = FRAME.test(next) || !/^\s{4,}\S/.test(next) ? "" : next.trim();
    found.push({ file: match[1], line: Number(match[2]), name: match[3], code });
  });
  return found;
}

/** The last frame in the workflow's own files (else the last frame at all). */
export function ownFrame(list) {
  for (let i = list.length - 1; i >= 0; i -= 1) if (!LIBRARY.test(list[i].file)) return list[i];
  return list[list.length - 1] || null;
}

function errorBlock(error, title) {
  const block = [h("h2", {}, title)];
  block.push(
    h(
      "p",
      { class: "error-line" },
      h("span", { class: "error-type" }, error.type || "Error"),
      h("span", { class: "error-message" }, error.message || ""),
    ),
  );
  if (error.traceback) {
    const frame = ownFrame(frames(error.traceback));
    if (frame) {
      const file = frame.file.split(/[\\/]/).pop();
      block.push(
        h(
          "div",
          { class: "frame" },
          h("div", { class: "frame-where", title: frame.file }, h("b", {}, file), `, line ${frame.line}, in `, h("b", {}, frame.name)),
          frame.code ? h("pre", { class: "frame-code" }, frame.code) : null,
        ),
      );
    }
    block.push(h("details", { class: "trace" }, h("summary", {}, "Full traceback"), h("pre", {}, error.traceback)));
  } else if (task && task.status === "failed") {
    block.push(
      h(
        "p",
        { class: "muted small" },
        "The traceback is shown to holders of an admin token only; the server keeps it.",
      ),
    );
  }
  return block;
}

function renderOutcome() {
  const box = document.getElementById("outcome");
  box.className = "panel outcome";
  if (task.status === "succeeded") {
    box.classList.add("result");
    box.replaceChildren(h("h2", {}, "Result"), h("pre", { class: "json", id: "result" }, pretty(task.result)));
  } else if (task.error) {
    const title = task.status === "retrying" ? "The last run failed" : statusLabel(task.status).replace(/^./, (c) => c.toUpperCase());
    box.classList.add(`status-box-${task.status}`);
    box.replaceChildren(...errorBlock(task.error, title));
  } else {
    box.hidden = true;
    return;
  }
  box.hidden = false;
}

// -- facts, timeline, runs ----------------------------------------------------------------

function fact(name, value) {
  return h("div", { class: "fact" }, h("dt", {}, name), h("dd", {}, value));
}

function renderFacts() {
  const session = task.session_id
    ? h("a", { class: "mono", href: `${page(deployment)}?session=${encodeURIComponent(task.session_id)}` }, task.session_id)
    : h("span", { class: "muted" }, "none");
  const items = [
    fact("Deployment", h("a", { href: page(deployment) }, deployment)),
    fact("Service", task.service_id),
    fact("Session", session),
    fact("Created", when(task.created_at)),
    fact("Started", when(task.started_at)),
    fact("Finished", when(task.finished_at)),
    fact("Duration", taskDuration(task)),
    fact("Run", `${task.run} (${task.attempts} recorded)`),
  ];
  if (task.retry_at) items.push(fact("Runs again", when(task.retry_at)));
  if (task.parked_at) items.push(fact("Parked", when(task.parked_at)));
  if (task.expires_at && task.status === "queued") items.push(fact("Expires", when(task.expires_at)));
  if (task.controls) {
    const controls = Object.entries(task.controls).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`);
    items.push(fact("Controls", controls.join(" · ")));
  }
  document.getElementById("facts").replaceChildren(...items);
}

function renderTimeline(moments) {
  document.getElementById("timeline").replaceChildren(
    ...moments.map((moment) =>
      h(
        "li",
        { class: `moment status-${moment.status}`, "data-status": moment.status },
        h("span", { class: "dot" }),
        h("div", { class: "moment-head" }, h("b", {}, statusLabel(moment.status)), " ", when(moment.at)),
        h("div", { class: "moment-note" }, moment.note),
        moment.error ? h("div", { class: "moment-error" }, `${moment.error.type}: ${moment.error.message}`) : null,
      ),
    ),
  );
}

/** A run's outcome; one without any, of a task that ended, has not reported its end yet
 * (a cancelled run stops at its next await, or is left behind after a grace period). */
function runOutcome(run) {
  if (run.outcome) return pill(run.outcome);
  if (parked()) return h("span", { class: "pill parked", title: "Let go while the task waits: it holds no worker." }, "parked");
  if (ENDED.has(task.status)) return h("span", { class: "pill status-lost" }, "stopping");
  return pill("running");
}

function renderAttempts() {
  const runs = task.attempt_history || [];
  const box = document.getElementById("attempts");
  if (!runs.length) {
    box.replaceChildren(h("p", { class: "muted" }, "None yet."));
    return;
  }
  box.replaceChildren(
    h(
      "table",
      { class: "attempts" },
      h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "Worker"), h("th", {}, "Began"), h("th", { class: "num" }, "Took"), h("th", {}, "Outcome"))),
      h(
        "tbody",
        {},
        runs.map((run) =>
          h(
            "tr",
            { title: run.error ? `${run.error.type}: ${run.error.message}` : "" },
            h("td", {}, String(run.attempt)),
            h("td", { class: "mono small" }, run.worker),
            h("td", {}, when(run.started_at)),
            h("td", { class: "num" }, run.finished_at ? duration(new Date(run.finished_at) - new Date(run.started_at)) : "…"),
            h("td", {}, runOutcome(run)),
          ),
        ),
      ),
    ),
  );
}

/** Whether the task waits for input with its run let go (no worker holds it). */
function parked() {
  return Boolean(task && task.status === "waiting_input" && task.parked_at);
}

/** Whether the task's service journals its steps (``celeriac: {durable: true}``). */
function durable() {
  return Boolean(task && task.controls && task.controls.durable);
}

/** A step's outcome, coloured as the status it resembles. */
function stepOutcome(outcome) {
  let status = "";
  if (outcome.startsWith("failed")) status = "failed";
  else if (outcome.startsWith("waits for input")) status = "waiting_input";
  return h("span", { class: status ? `step-outcome status-${status}` : "step-outcome" }, outcome);
}

/** The steps of a durable task that ended, in the order they ended; the panel is shown only
 * once there is one. The run is named when the task ran more than once. */
function renderSteps(steps) {
  const panel = document.getElementById("steps-panel");
  panel.hidden = !steps.length;
  if (!steps.length) return;
  const runs = new Set(steps.map((step) => step.run)).size > 1;
  document.getElementById("steps-state").textContent = `${steps.length} ended`;
  document.getElementById("steps").replaceChildren(
    h(
      "table",
      { class: "steps", id: "steps-table" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          runs ? h("th", { class: "num" }, "Run") : null,
          h("th", {}, "Step"),
          h("th", {}, "Input"),
          h("th", { class: "num" }, "Attempt"),
          h("th", {}, "Started"),
          h("th", { class: "num" }, "Took"),
          h("th", {}, "Outcome"),
        ),
      ),
      h(
        "tbody",
        {},
        steps.map((step) =>
          h(
            "tr",
            { "data-step": step.step, "data-run": step.run },
            runs ? h("td", { class: "num" }, String(step.run)) : null,
            h("td", { class: "mono" }, step.step),
            h("td", { class: "mono small", title: step.input }, step.input.split(".").pop()),
            h("td", { class: "num" }, String(step.attempt)),
            h("td", {}, when(step.started_at)),
            h("td", { class: "num" }, step.duration === null ? "—" : duration(step.duration * 1000)),
            h("td", {}, stepOutcome(step.outcome)),
          ),
        ),
      ),
    ),
  );
}

// -- buttons and the answer form ----------------------------------------------------------

function renderControls() {
  const status = document.getElementById("status");
  status.className = `pill status-${task.status}`;
  status.textContent = statusLabel(task.status);
  status.hidden = false;
  document.getElementById("parked").hidden = !parked();
  const note = document.getElementById("parked-note");
  note.hidden = !parked();
  note.textContent = parked()
    ? "Parked: its run was let go while it waits, and holds no worker. Your answer queues it again; it resumes from its last finished step."
    : "";
  document.getElementById("cancel").hidden = ENDED.has(task.status);
  document.getElementById("retry").hidden = !RETRYABLE.has(task.status);
  const answer = document.getElementById("answer");
  const waiting = task.status === "waiting_input";
  if (waiting && answer.hidden) document.getElementById("answer-error").textContent = "";
  answer.hidden = !waiting;
  document.getElementById("question").textContent = question || "The workflow waits for an answer.";
}

async function act(button, path) {
  button.disabled = true;
  try {
    await api(path, { method: "POST" });
    problem(null);
    if (path.endsWith("/retry") && stream) stream.resume();
  } catch (error) {
    problem(error);
  } finally {
    button.disabled = false;
    refresh();
  }
}

function setUpControls() {
  const cancel = document.getElementById("cancel");
  cancel.addEventListener("click", () => act(cancel, `${taskPath}/cancel`));
  const retry = document.getElementById("retry");
  retry.addEventListener("click", () => act(retry, `${taskPath}/retry`));
  const form = document.getElementById("answer-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("answer-text");
    const errorLine = document.getElementById("answer-error");
    const button = form.querySelector("button");
    const answer = { __is_pydantic: true, value: { response: input.value }, qualified_name: "HumanResponseEvent" };
    button.disabled = true;
    try {
      await api(`${taskPath}/events`, {
        method: "POST",
        body: { service_id: task ? task.service_id : null, event_obj_str: JSON.stringify(answer) },
      });
      input.value = "";
      errorLine.textContent = "";
      question = null;
    } catch (error) {
      errorLine.textContent = error.message;
    } finally {
      button.disabled = false;
      refresh();
    }
  });
}

// -- events, live ----------------------------------------------------------------------------

function addEvent(event) {
  const list = document.getElementById("events");
  if (list.querySelector(`[data-seq="${event.seq}"]`)) return;
  for (const none of list.querySelectorAll(".none")) none.remove();
  if (event.type === "InputRequiredEvent") {
    question = (event.data && event.data.prefix) || null;
    if (task) renderControls();
  }
  // An event says the task moved on from what the page shows: read it now, not at the next poll.
  if (task && (task.status === "queued" || event.type === "InputRequiredEvent")) refresh();
  const data = event.data && Object.keys(event.data).length ? JSON.stringify(event.data) : "";
  list.append(
    h(
      "li",
      { class: event.type === "InputRequiredEvent" ? "event asks" : "event", "data-seq": event.seq, "data-type": event.type },
      h("span", { class: "seq" }, String(event.seq)),
      h("span", { class: "event-type", title: event.qualified_name }, event.type),
      data ? h("code", { class: "event-data" }, data) : null,
    ),
  );
  list.lastElementChild.scrollIntoView({ block: "nearest" });
}

function startEvents() {
  const state = document.getElementById("events-state");
  stream = followEvents(`${taskPath}/events`, {
    onEvent: addEvent,
    onEnd: ({ status }) => {
      state.textContent = `stream ended (${statusLabel(status)})`;
      const list = document.getElementById("events");
      if (!list.children.length) list.append(h("li", { class: "muted none" }, "No events."));
      refresh();
    },
    onState: (text) => {
      state.textContent = text;
    },
  });
}

// -- loading ---------------------------------------------------------------------------------

const drawn = {};

/** Run `draw` if `value` differs from what was drawn under `name` last time. */
function changed(name, value, draw) {
  const key = JSON.stringify(value);
  if (drawn[name] === key) return;
  drawn[name] = key;
  draw();
}

async function load() {
  try {
    // The timeline after the task: it tells at least what the task says.
    const found = await api(taskPath);
    const moments = await api(`${taskPath}/timeline`);
    task = found;
    // Only a durable task's steps are journaled: no other task has any to ask for.
    const steps = durable() ? await api(`${taskPath}/steps`) : [];
    problem(null);
    for (const id of ["facts", "columns"]) document.getElementById(id).hidden = false;
    renderControls();
    renderFacts();
    // Redrawn only when they change: an opened traceback stays open, a selection selected.
    changed("outcome", [task.status, task.result, task.error], renderOutcome);
    changed("timeline", moments, () => renderTimeline(moments));
    changed("attempts", [task.status, task.parked_at, task.attempt_history], renderAttempts);
    changed("steps", steps, () => renderSteps(steps));
    changed("input", task.input, () => {
      document.getElementById("input").textContent = pretty(JSON.parse(task.input || "{}"));
    });
    if (!stream) startEvents();
    else if (!ENDED.has(task.status)) stream.resume(); // retried meanwhile: its stream goes on
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      problem(error);
      if (stream) stream.stop();
      for (const id of ["status", "parked", "facts", "answer", "columns"]) document.getElementById(id).hidden = true;
      return 30000;
    }
    problem(error);
    throw error;
  }
  // Quick while it runs (or a run of it still has to report its end); now and then once
  // ended (it may be retried elsewhere).
  const settled =
    (task.attempt_history || []).every((run) => run.outcome) ||
    (task.finished_at && new Date() - new Date(task.finished_at) > 60000);
  return ENDED.has(task.status) && settled ? 10000 : 1500;
}

setUpControls();
refresh = every(1500, load);
