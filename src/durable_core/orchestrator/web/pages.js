// Events (and the runs each started), functions (triggers, flow control, recent statistics),
// apps (last sync), and the forms to send an event, invoke a function and send a signal.
import { api, go, h, json, ms, parseJson, pill, table, toast, when } from "./api.js";

const FLOW = ["concurrency", "throttle", "rateLimit", "debounce", "batchEvents", "priority", "idempotency", "singleton", "cancel", "timeouts"];

export function eventsPage(main, params) {
  const list = h("div", {});
  const detail = h("div", { class: "card" }, h("p", { class: "muted" }, "Choose an event to see its data and the runs it started."));
  let chosen = null;
  main.append(h("h1", {}, "Events"), h("div", { class: "split" }, list, detail));
  async function showEvent(e) {
    chosen = e;
    const q = new URLSearchParams({ event_id: e.id, limit: "50" });
    const runs = (await api(`v1/runs?${q}`)).data;
    const rows = runs.map((r) => h("div", {}, pill(r.status), " ",
      h("a", { href: `#/runs/${encodeURIComponent(r.run_id)}` }, `${r.function_id} · ${r.run_id}`)));
    detail.replaceChildren(h("h2", {}, e.name), h("p", { class: "muted mono" }, e.id),
      h("h3", {}, "Runs it started"), rows.length ? rows : h("p", { class: "muted" }, "None."),
      h("h3", {}, "Data"), json(e.data));
  }
  async function update() {
    const page = await api(`v1/events?limit=50${params.get("name") ? "&name=" + encodeURIComponent(params.get("name")) : ""}`);
    list.replaceChildren(table(["Name", "Id", "Received"], page.data.map((e) =>
      h("tr", { class: "click", onclick: () => showEvent(e) }, h("td", {}, e.name), h("td", { class: "mono muted" }, e.id), h("td", {}, when(e.received_at)))),
    "No events yet."));
    if (chosen) await showEvent(chosen);
  }
  return { title: "Events", update };
}

function triggers(f) {
  return (f.triggers || []).map((t) => (t.event ? `event ${t.event}${t.expression ? ` if ${t.expression}` : ""}` : `cron ${t.cron}`)).join(", ");
}

export function functionsPage(main) {
  const list = h("div", {});
  main.append(h("h1", {}, "Functions"), list);
  async function update() {
    const [fns, stats] = await Promise.all([api("v1/functions"), api("v1/functions/stats")]);
    const by = Object.fromEntries(stats.data.map((s) => [s.function_id, s]));
    const rows = fns.data.map((f) => {
      const s = by[f.function_id] || {};
      const flow = FLOW.filter((k) => f.config && f.config[k] !== undefined && f.config[k] !== null).join(", ") || "—";
      const rate = s.failure_rate === null || s.failure_rate === undefined ? "—" : `${(s.failure_rate * 100).toFixed(1)} %`;
      return h("tr", { class: "click", onclick: () => go(`#/runs?function=${encodeURIComponent(f.function_id)}`) },
        h("td", {}, h("div", {}, f.name || f.function_id), h("div", { class: "mono muted" }, f.function_id)),
        h("td", {}, f.app_id), h("td", {}, triggers(f)), h("td", {}, flow),
        h("td", { class: "num" }, String(s.runs ?? 0)), h("td", { class: "num" }, ms(s.p50_ms)),
        h("td", { class: "num" }, ms(s.p95_ms)), h("td", { class: "num" }, rate));
    });
    list.replaceChildren(table(["Function", "App", "Triggers", "Flow control", `Runs (last ${stats.window})`, "p50", "p95", "Failure rate"],
      rows, "No functions registered: start an app that serves some."), h("p", { class: "muted" }, `Durations and failure rate over each function's last ${stats.window} runs.`));
  }
  return { title: "Functions", update };
}

export function appsPage(main) {
  const list = h("div", {});
  main.append(h("h1", {}, "Apps"), list);
  async function update() {
    const apps = await api("v1/apps");
    const problems = (apps.sync_errors || []).length ? [h("h2", {}, "Failed syncs"),
      table(["App or URL", "Error", "When"], apps.sync_errors.map((p) =>
        h("tr", { class: "sync-error" }, h("td", { class: "mono" }, p.app), h("td", {}, p.error), h("td", {}, when(p.at)))), "")] : [];
    list.replaceChildren(table(["App", "URL", "SDK", "Framework", "Last sync"], apps.data.map((a) =>
      h("tr", {}, h("td", {}, a.app_id), h("td", { class: "mono" }, a.url || "in process"), h("td", {}, a.sdk),
        h("td", {}, a.framework), h("td", {}, when(a.updated_at)))), "No app has synced yet."), ...problems);
  }
  return { title: "Apps", update };
}

function actionForm(title, fields, submit) {
  const send = async () => {
    try { toast(await submit()); } catch (err) { toast(err.message, true); }
  };
  return h("div", { class: "card form" }, h("h2", {}, title), ...fields, h("button", { class: "primary", onclick: send }, title));
}

export function actionsPage(main) {
  const evName = h("input", { placeholder: "shop/order.created" });
  const evData = h("textarea", { placeholder: '{"order_id": 1}' });
  const fnPick = h("select", {});
  const fnData = h("textarea", { placeholder: '{"key": "value"}' });
  const sigName = h("input", { placeholder: "signal name" });
  const sigData = h("textarea", { placeholder: "data (JSON, optional)" });
  main.append(h("h1", {}, "Send & invoke"), h("div", { class: "grid3" },
    actionForm("Send event", [h("label", {}, "Name", evName), h("label", {}, "Data", evData)], async () => {
      const res = await api("v1/events", { method: "POST", body: { name: evName.value, data: parseJson(evData.value, "The data") || {} } });
      return `Event sent (${res.ids.length})`;
    }),
    actionForm("Invoke function", [h("label", {}, "Function", fnPick), h("label", {}, "Data", fnData)], async () => {
      const res = await api(`v1/functions/${encodeURIComponent(fnPick.value)}/invoke`, { method: "POST", body: { data: parseJson(fnData.value, "The data") || {} } });
      go(`#/runs/${encodeURIComponent(res.run_id)}`);
      return "Run started";
    }),
    actionForm("Send signal", [h("label", {}, "Signal", sigName), h("label", {}, "Data", sigData)], async () => {
      const res = await api("v1/signals", { method: "POST", body: { signal: sigName.value, data: parseJson(sigData.value, "The data") ?? null } });
      return `Signal delivered to run ${res.run_id}`;
    })));
  api("v1/functions").then((fns) => fnPick.replaceChildren(...fns.data.map((f) => h("option", { value: f.function_id }, f.name || f.function_id))));
  return { title: "Send & invoke" };
}
