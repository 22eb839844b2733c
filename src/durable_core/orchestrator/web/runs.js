// The runs list: filters kept in the address (#/runs?function=&status=&since=&until=&event=),
// pages by cursor, refreshed live; bulk cancel and replay of what the filter matches.
import { api, go, h, ms, pill, table, toast, when } from "./api.js";

const STATUSES = ["queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled", "skipped"];
const PAGE = 50;

function localInput(msValue) {
  if (!msValue) return "";
  const d = new Date(Number(msValue));
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function filterBar(params, functions) {
  const fn = h("select", { name: "function" }, h("option", { value: "" }, "All functions"),
    functions.map((f) => h("option", { value: f.function_id, selected: f.function_id === params.get("function") }, f.name || f.function_id)));
  const status = h("select", { name: "status" }, h("option", { value: "" }, "Any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === params.get("status") }, s)));
  const since = h("input", { type: "datetime-local", name: "since", value: localInput(params.get("since")) });
  const until = h("input", { type: "datetime-local", name: "until", value: localInput(params.get("until")) });
  const event = h("input", { name: "event", placeholder: "event id", value: params.get("event") || "", size: "18" });
  const apply = () => {
    const q = new URLSearchParams();
    if (fn.value) q.set("function", fn.value);
    if (status.value) q.set("status", status.value);
    if (since.value) q.set("since", String(new Date(since.value).getTime()));
    if (until.value) q.set("until", String(new Date(until.value).getTime()));
    if (event.value.trim()) q.set("event", event.value.trim());
    go(`#/runs${q.toString() ? "?" + q : ""}`);
  };
  for (const el of [fn, status, since, until]) el.addEventListener("change", apply);
  event.addEventListener("keydown", (e) => e.key === "Enter" && apply());
  return h("div", { class: "bar" },
    h("label", {}, "Function", fn), h("label", {}, "Status", status),
    h("label", {}, "From", since), h("label", {}, "Until", until), h("label", {}, "Event id", event),
    h("span", { class: "spacer" }),
    h("button", { class: "danger", id: "bulk-cancel", onclick: () => bulk(params, "cancel") }, "Cancel matching"),
    h("button", { id: "bulk-replay", onclick: () => bulk(params, "replay") }, "Replay matching"));
}

function bulkFilter(params) {
  const body = {};
  if (params.get("function")) body.function_id = params.get("function");
  if (params.get("status")) body.status = params.get("status");
  if (params.get("since")) body.since = Number(params.get("since"));
  if (params.get("until")) body.before = Number(params.get("until"));
  return body;
}

async function bulk(params, action) {
  const body = bulkFilter(params);
  if (!Object.keys(body).length) {
    toast("Choose a function, status or time range first: bulk actions act on a filter.", true);
    return;
  }
  if (!confirm(`${action === "cancel" ? "Cancel" : "Replay"} up to 1000 runs matching this filter?`)) return;
  try {
    const res = await api(`v1/runs/${action}`, { method: "POST", body: { ...body, limit: 1000 } });
    const done = action === "cancel" ? `${res.cancelled} cancelled` : `${res.replayed} replayed`;
    toast(`${res.matched} matched, ${done}${res.capped ? " (capped at 1000: run it again for more)" : ""}`);
  } catch (err) {
    toast(err.message, true);
  }
}

function query(params, cursor) {
  const q = new URLSearchParams({ limit: String(PAGE) });
  if (params.get("function")) q.set("function_id", params.get("function"));
  if (params.get("status")) q.set("status", params.get("status"));
  if (params.get("since")) q.set("since", params.get("since"));
  if (params.get("until")) q.set("before", params.get("until"));
  if (params.get("event")) q.set("event_id", params.get("event"));
  if (cursor) q.set("cursor", cursor);
  return `v1/runs?${q}`;
}

function row(run) {
  const open = () => go(`#/runs/${encodeURIComponent(run.run_id)}`);
  return h("tr", { class: "click", onclick: open, "data-run": run.run_id },
    h("td", {}, pill(run.status)),
    h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(run.run_id)}` }, run.function_id)),
    h("td", { class: "mono muted" }, run.run_id),
    h("td", {}, run.event ? run.event.name : "—"),
    h("td", {}, when(run.created_at)),
    h("td", { class: "num" }, run.ended_at ? ms(run.duration_ms) : "—"));
}

export function runsPage(main, params) {
  const cursors = [null];
  const list = h("div", {});
  const pager = h("div", { class: "pager" });
  main.append(h("h1", {}, "Runs"), h("div", { id: "filters" }), list, pager);
  api("v1/functions").then((fns) => main.querySelector("#filters").replaceWith(filterBar(params, fns.data)))
    .catch(() => main.querySelector("#filters").replaceWith(filterBar(params, [])));
  let next = null;
  async function update() {
    const page = await api(query(params, cursors[cursors.length - 1]));
    next = page.next_cursor || null;
    list.replaceChildren(table(["Status", "Function", "Run id", "Event", "Started", "Duration"],
      page.data.map(row), "No runs match. Send an event or invoke a function to start one."));
    pager.replaceChildren(
      h("span", { class: "muted" }, `Page ${cursors.length}`),
      h("button", { disabled: cursors.length === 1, onclick: () => { cursors.pop(); update(); } }, "Newer"),
      h("button", { disabled: !next, onclick: () => { cursors.push(next); update(); } }, "Older"));
  }
  return { title: "Runs", update };
}
