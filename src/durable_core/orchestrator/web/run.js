// A run: its header and actions, the waterfall of its step attempts, and the chosen attempt's
// details beside it, with rerun from that step (optionally with a replacement output).
import { api, go, h, json, ms, parseJson, pill, toast, when } from "./api.js";
import { timeline } from "./timeline.js";

function waitingText(w) {
  const until = w.until ? ` until ${when(new Date(w.until).toISOString())}` : "";
  if (w.kind === "event") return `Waiting for event “${w.event}”${w.expression ? ` matching ${w.expression}` : ""}${until}`;
  if (w.kind === "signal") return `Waiting for signal “${w.signal}”${until}`;
  if (w.kind === "sleep") return `Sleeping${until}`;
  if (w.kind === "cancel_on") return `Cancelled by event “${w.event}”${w.expression ? ` matching ${w.expression}` : ""}${until}`;
  return `Times out${until}`;
}

function facts(run) {
  const fact = (name, value) => h("div", {}, h("span", {}, name), h("span", {}, value));
  const parent = run.parent_run_id ? h("a", { href: `#/runs/${encodeURIComponent(run.parent_run_id)}` }, run.parent_run_id) : "—";
  const event = run.event ? h("a", { href: `#/runs?event=${encodeURIComponent(run.event.id || "")}` }, run.event.name) : "—";
  return h("div", { class: "facts card" }, fact("Run id", h("span", { class: "mono" }, run.run_id)),
    fact("App", run.app_id), fact("Started", when(run.created_at)), fact("Ended", when(run.ended_at)),
    fact("Duration", ms(run.duration_ms)), fact("Event", event), fact("Parent", parent));
}

function stepDetail(step) {
  if (!step) return h("p", { class: "muted" }, "Choose a step on the timeline to see its output, error and attempt.");
  const kv = h("div", { class: "kv" },
    h("span", {}, "Step id"), h("span", { class: "mono" }, step.id), h("span", {}, "Kind"), h("span", {}, step.op),
    h("span", {}, "Attempt"), h("span", {}, String(step.attempt + 1)),
    h("span", {}, "Started"), h("span", {}, when(step.started_at)), h("span", {}, "In the app"), h("span", {}, ms(step.duration_ms)),
    h("span", {}, "Queued"), h("span", {}, step.queued_at ? ms(step.queue_delay_ms) : "—"));
  const error = step.error
    ? [h("h3", {}, "Error"), h("p", { class: "error" }, `${step.error.name || "Error"}: ${step.error.message || ""}`),
      step.error.stack ? h("pre", {}, step.error.stack) : null]
    : [];
  return h("div", {}, h("h2", {}, step.name), kv, ...error, h("h3", {}, "Output"), json(step.output));
}

function rerunForm(run, state) {
  const names = [...new Set(run.steps.filter((s) => s.op !== "StepError").map((s) => s.name))];
  const select = h("select", { id: "from-step" }, names.map((n) => h("option", { value: n }, n)));
  const output = h("textarea", { id: "replace-output", placeholder: "Replacement output for this step (JSON, optional)" });
  const start = async () => {
    try {
      const body = { from_step: select.value };
      const value = parseJson(output.value, "The replacement output");
      if (value !== undefined) body.output = value;
      const res = await api(`v1/runs/${encodeURIComponent(run.run_id)}/rerun`, { method: "POST", body });
      toast("Rerun started");
      go(`#/runs/${encodeURIComponent(res.run_id)}`);
    } catch (err) {
      toast(err.message, true);
    }
  };
  state.selectStep = (name) => { if (names.includes(name)) select.value = name; };
  return h("div", { class: "card form", id: "rerun-form" }, h("h2", {}, "Rerun from a step"),
    h("p", { class: "muted" }, "A new run on the same event. Steps stored before the chosen one keep their results; it and the steps after it run again, unless you give it an output."),
    h("label", {}, "From step", select), output, h("button", { class: "primary", onclick: start }, "Start rerun"));
}

function header(run) {
  const act = (path, text, done) => async () => {
    try {
      const res = await api(`v1/runs/${encodeURIComponent(run.run_id)}/${path}`, { method: "POST", body: {} });
      toast(text);
      done(res);
    } catch (err) { toast(err.message, true); }
  };
  const rerun = act("rerun", "Rerun started", (res) => go(`#/runs/${encodeURIComponent(res.run_id)}`));
  const cancel = act("cancel", "Run cancelled", () => {});
  const fromStep = () => document.getElementById("from-step")?.focus();
  return h("div", { class: "run-head" }, h("a", { href: "#/runs" }, "← Runs"), h("h1", {}, run.function_id), pill(run.status),
    h("div", { class: "actions" },
      h("button", { onclick: rerun }, "Rerun"),
      h("button", { onclick: fromStep, disabled: !run.steps.length }, "Rerun from step…"),
      h("button", { class: "danger", onclick: cancel, disabled: ["completed", "failed", "cancelled", "skipped"].includes(run.status) }, "Cancel")));
}

function runInfo(run) {
  const parts = [];
  for (const w of run.waiting_on || []) parts.push(h("div", { class: "notice" }, waitingText(w)));
  if (run.reason && !parts.length) parts.push(h("div", { class: "notice" }, run.reason));
  if (run.error) parts.push(h("div", { class: "notice bad" }, `${run.error.name || "Error"}: ${run.error.message || ""}`));
  return parts;
}

function below(run) {
  const kids = (run.children || []).map((c) => h("div", {}, pill(c.status), " ",
    h("a", { href: `#/runs/${encodeURIComponent(c.run_id)}` }, `${c.function_id} · ${c.run_id}`)));
  return h("div", {}, kids.length ? [h("h3", {}, "Invoked runs"), ...kids] : null,
    h("h3", {}, "Output"), json(run.output), h("h3", {}, "Event"), json(run.events));
}

export function runPage(main, runId) {
  const state = { selected: null, formFor: null };
  async function update() {
    const run = await api(`v1/runs/${encodeURIComponent(runId)}`);
    const seen = JSON.stringify(run);
    const typing = state.form?.contains(document.activeElement);
    if ((seen === state.seen && run.ended_at) || typing) return; // nothing new, or the user types
    state.seen = seen;
    if (state.selected === null && run.steps.length) state.selected = run.steps.length - 1;
    const select = (i) => { state.selected = i; state.selectStep?.(run.steps[i].name); draw(run); };
    function draw(r) {
      const left = h("div", { class: "card" }, h("h2", {}, "Timeline"), timeline(r, state.selected, select), below(r));
      const right = h("div", { class: "form" }, h("div", { class: "card", id: "step-detail" }, stepDetail(r.steps[state.selected])), state.form);
      main.replaceChildren(header(r), facts(r), ...runInfo(r), h("div", { class: "split" }, left, right));
    }
    const names = run.steps.map((s) => s.name).join("\n");
    if (state.formFor !== names) {  // keep what was typed while the run changes nothing
      state.form = rerunForm(run, state);
      state.formFor = names;
      if (state.selected !== null) state.selectStep(run.steps[state.selected].name);
    }
    draw(run);
  }
  return { title: "Run", update };
}
