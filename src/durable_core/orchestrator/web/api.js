// Calls to the orchestrator's /v1 API (relative, so the dashboard works at / and under a mount),
// and the small helpers every page uses to build its elements.

export async function api(path, { method = "GET", body } = {}) {
  const init = { method, credentials: "same-origin", headers: { "x-durable-dashboard": "1" } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path.replace(/^\//, ""), init);
  if (res.status === 401) {
    location.reload(); // the session ended: the page shows the login
    throw new Error("log in again");
  }
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || `${res.status} ${res.statusText}`);
  return data;
}

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
  return el;
}

export function pill(status) {
  return h("span", { class: `pill ${status}` }, status);
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour12: false });
  return today ? time : `${d.toLocaleDateString()} ${time}`;
}

export function ms(value) {
  if (value === null || value === undefined) return "—";
  if (value < 1000) return `${value} ms`;
  if (value < 60000) return `${(value / 1000).toFixed(value < 10000 ? 2 : 1)} s`;
  if (value < 3600000) return `${Math.floor(value / 60000)} m ${Math.round((value % 60000) / 1000)} s`;
  return `${(value / 3600000).toFixed(1)} h`;
}

export function json(value) {
  return h("pre", {}, value === undefined ? "—" : JSON.stringify(value, null, 2));
}

export function parseJson(text, what) {
  if (!text.trim()) return undefined;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${what} is not valid JSON: ${err.message}`);
  }
}

let toastTimer;
export function toast(message, bad = false) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = bad ? "bad" : "";
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 4000);
}

export function table(headers, rows, empty) {
  const body = rows.length
    ? rows
    : [h("tr", {}, h("td", { class: "empty", colspan: String(headers.length) }, empty))];
  return h("div", { class: "table" },
    h("table", {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), h("tbody", {}, body)));
}

export function go(hash) {
  location.hash = hash;
}
