// What every page of the dashboard shares: the API client with the person's token, the
// sign-in form, an event-stream reader, polling, and building elements from data as text.
//
// The token lives in this tab's sessionStorage (gone when the tab closes), is sent only as
// `Authorization: Bearer` to this server's own API, and never goes in a URL. Nothing from the
// API is ever parsed as markup: elements are made with `h()`, which sets text.

const TOKEN_KEY = "celeriac.token";
const signedInListeners = [];
let signInShown = false;

export const token = {
  get() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY);
    } catch {
      return null;
    }
  },
  set(value) {
    window.sessionStorage.setItem(TOKEN_KEY, value);
  },
  clear() {
    window.sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** An answer of the API that is not a success, with its one error shape. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `the server answered ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

function headers(extra) {
  const all = { Accept: "application/json", ...extra };
  const value = token.get();
  if (value) all.Authorization = `Bearer ${value}`;
  return all;
}

/** Call the API (a path of this server); the JSON answer, or ApiError. */
export async function api(path, { method = "GET", body } = {}) {
  const options = { method, headers: headers(), cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = null;
  if (response.status !== 204) {
    try {
      data = await response.json();
    } catch {
      data = null;
    }
  }
  if (response.status === 401) {
    showSignIn(token.get() ? "That token is not live (unknown or revoked)." : "");
  } else {
    noteAccess(); // anything but a 401 took the token (or needed none)
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** Whether the page waits for a token before it reads anything more. */
export function waitingForToken() {
  return signInShown;
}

/** Run `callback` once a token is entered (the page reads everything again). */
export function onSignedIn(callback) {
  signedInListeners.push(callback);
}

function noteAccess() {
  const state = document.getElementById("auth-state");
  const held = Boolean(token.get());
  state.textContent = held ? "Signed in with a token" : "Open server: no token needed";
  document.getElementById("sign-out").hidden = !held;
  document.getElementById("sign-in-open").hidden = held;
}

function showSignIn(reason) {
  signInShown = true;
  const panel = document.getElementById("sign-in");
  panel.hidden = false;
  document.getElementById("sign-in-error").textContent = reason;
  document.getElementById("auth-state").textContent = "Not signed in";
  document.getElementById("sign-out").hidden = true;
  document.getElementById("sign-in-open").hidden = true;
  document.getElementById("token").focus();
}

function hideSignIn() {
  signInShown = false;
  document.getElementById("sign-in").hidden = true;
}

function setUpSignIn() {
  const form = document.getElementById("sign-in-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    const value = input.value.trim();
    if (!value) return;
    token.set(value);
    input.value = "";
    hideSignIn();
    for (const callback of signedInListeners) callback();
  });
  document.getElementById("sign-out").addEventListener("click", () => {
    token.clear();
    window.location.reload();
  });
  document.getElementById("sign-in-open").addEventListener("click", () => showSignIn(""));
}

/**
 * Follow a task's server-sent events (fetch, so that the token goes in a header, which
 * EventSource cannot send). Resumes after a dropped connection with Last-Event-ID.
 * Calls onEvent({seq, type, qualified_name, data}) and, at the end, onEnd({status}).
 */
export function followEvents(path, { onEvent, onEnd, onState }) {
  let last = -1;
  let stopped = false;
  let controller = null;

  function dispatch(block) {
    const fields = { data: [] };
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (name === "data") fields.data.push(value);
      else fields[name] = value;
    }
    if (!fields.data.length) return;
    const payload = JSON.parse(fields.data.join("\n"));
    if (fields.event === "end") {
      stopped = true;
      onEnd(payload);
      return;
    }
    if (fields.id !== undefined) last = Number(fields.id);
    onEvent({ seq: last, ...payload });
  }

  async function connect() {
    controller = new AbortController();
    const extra = { Accept: "text/event-stream" };
    if (last >= 0) extra["Last-Event-ID"] = String(last);
    const response = await fetch(path, {
      headers: headers(extra),
      cache: "no-store",
      credentials: "omit",
      signal: controller.signal,
    });
    if (response.status === 401) {
      showSignIn("");
      stopped = true;
      return;
    }
    if (response.status === 404) {
      stopped = true;
      onState("no such task");
      return;
    }
    if (!response.ok) throw new ApiError(response.status, null);
    onState("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    while (!stopped) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while (!stopped && (end = buffer.indexOf("\n\n")) >= 0) {
        dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
    if (stopped) controller.abort();
  }

  async function run() {
    while (!stopped) {
      try {
        await connect();
      } catch (error) {
        if (stopped) return;
        onState("reconnecting");
      }
      if (!stopped) await sleep(1000);
    }
  }

  run();
  return {
    stop() {
      stopped = true;
      if (controller) controller.abort();
    },
    /** Follow again from the last event seen (after a retry, the stream goes on). */
    resume() {
      if (!stopped) return;
      stopped = false;
      run();
    },
  };
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Call `load` now and then every `ms` (after each call ends), while the tab is visible and
 * no token is awaited; `load` may return a new interval. Returns a function that runs it now.
 */
export function every(ms, load) {
  let timer = null;
  let running = false;
  let interval = ms;
  async function tick() {
    clearTimeout(timer);
    if (running) return;
    if (!document.hidden && !waitingForToken()) {
      running = true;
      try {
        const next = await load();
        if (typeof next === "number") interval = next;
      } catch (error) {
        if (!(error instanceof ApiError && error.status === 401)) console.warn(error);
      } finally {
        running = false;
      }
    }
    timer = setTimeout(tick, interval);
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) tick();
  });
  onSignedIn(tick);
  tick();
  return tick;
}

/** An element: `h("a", {href, class}, "text", child...)`; strings become text, never markup. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) {
      // Handlers are functions only: no attribute ever holds script.
      if (typeof value === "function") element.addEventListener(name.slice(2), value);
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** The address of a page of this dashboard (names are encoded: never a scheme or a path). */
export function page(deployment, taskId) {
  const base = `/ui/deployments/${encodeURIComponent(deployment)}`;
  return taskId === undefined ? base : `${base}/tasks/${encodeURIComponent(taskId)}`;
}

/** The API path of a deployment (and more, already encoded by the caller). */
export function apiPath(deployment, rest = "") {
  return `/deployments/${encodeURIComponent(deployment)}${rest}`;
}

const LABELS = { waiting_input: "waiting for input", timed_out: "timed out" };

export function statusLabel(status) {
  return LABELS[status] || status;
}

export function pill(status) {
  return h("span", { class: `pill status-${status}` }, statusLabel(status));
}

function pad(number) {
  return String(number).padStart(2, "0");
}

/** A timestamp as local time, with the date unless it is today; null as a dash. */
export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const date = new Date(iso);
  const time = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  const today = new Date().toDateString() === date.toDateString();
  const text = today ? time : `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${time}`;
  return h("time", { datetime: iso, title: date.toString() }, text);
}

/** Milliseconds as a short duration: 340 ms, 4.2 s, 3 min 05 s, 2 h 04 min. */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${pad(Math.floor(seconds % 60))} s`;
  return `${Math.floor(minutes / 60)} h ${pad(minutes % 60)} min`;
}

/** How long a task took, or has taken so far. */
export function taskDuration(task) {
  if (!task.started_at) return duration(null);
  const end = task.finished_at ? new Date(task.finished_at) : new Date();
  return duration(end - new Date(task.started_at));
}

/** How long ago a timestamp was, in words. */
export function ago(iso) {
  return `${duration(new Date() - new Date(iso))} ago`;
}

/** JSON for a person: indented, as text. */
export function pretty(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

/** Show (or, with null, hide) the page's problem line. */
export function problem(error) {
  const line = document.getElementById("problem");
  if (!error || (error instanceof ApiError && error.status === 401)) {
    line.hidden = true;
    return;
  }
  line.hidden = false;
  line.textContent = error instanceof ApiError ? error.message : `Cannot reach the server (${error.message}).`;
}

/** The page's own data: deployment name and task id, from the body's attributes. */
export function pageData() {
  return { ...document.body.dataset };
}

setUpSignIn();
