// The waterfall: one bar per step attempt on a time axis from the run's start, sleeps and
// waits as hatched bars, failed attempts in red, attempts still open drawn up to now.
import { h, ms } from "./api.js";

function kind(step) {
  if (step.error) return "error";
  if (step.op === "Sleep") return "sleep";
  if (step.op.startsWith("WaitFor") || step.op === "InvokeFunction") return "wait";
  return "ok";
}

function label(step) {
  const op = { Sleep: "sleep", WaitForEvent: "wait for event", WaitForSignal: "wait for signal",
    InvokeFunction: "invoke", StepError: "error", StepFailed: "failed" }[step.op];
  const attempt = step.attempt > 0 ? `attempt ${step.attempt + 1}` : null;
  return [op, attempt].filter(Boolean).join(" · ");
}

export function span(run) {
  const t0 = Date.parse(run.created_at);
  let end = run.ended_at ? Date.parse(run.ended_at) : Date.now();
  for (const s of run.steps) end = Math.max(end, s.ended_at ? Date.parse(s.ended_at) : Date.now());
  return { t0, total: Math.max(end - t0, 1) };
}

export function timeline(run, selected, onSelect) {
  const { t0, total } = span(run);
  const rows = run.steps.map((step, index) => {
    const start = Date.parse(step.started_at) - t0;
    const stop = (step.ended_at ? Date.parse(step.ended_at) : Date.now()) - t0;
    const bar = h("div", { class: `tl-bar ${kind(step)}${step.ended_at ? "" : " open"}`, title: `${step.name}: ${ms(stop - start)}` });
    bar.style.left = `${(Math.max(start, 0) / total) * 100}%`;
    bar.style.width = `${(Math.max(stop - start, 0) / total) * 100}%`;
    const queued = step.queued_at ? Date.parse(step.queued_at) - t0 : null;
    const wait = queued !== null && start - queued >= 1 ? h("div", { class: "tl-queue", title: `queued ${ms(start - queued)}` }) : null;
    if (wait) {
      wait.style.left = `${(Math.max(queued, 0) / total) * 100}%`;
      wait.style.width = `${((start - Math.max(queued, 0)) / total) * 100}%`;
    }
    const extra = label(step);
    return h("div", { class: `tl-row${index === selected ? " selected" : ""}`, "data-step": step.name, onclick: () => onSelect(index) },
      h("div", { class: "tl-name", title: step.name }, step.name, extra ? h("small", {}, extra) : null),
      h("div", { class: "tl-track" }, wait, bar),
      h("div", { class: "tl-dur", title: step.queue_delay_ms ? `queued ${ms(step.queue_delay_ms)}, in the app ${ms(step.duration_ms)}` : "" },
        step.ended_at ? ms(step.duration_ms) : "…"));
  });
  const axis = h("div", { class: "tl-axis" }, h("span", {}, "Step"),
    h("div", {}, h("span", {}, "0"), h("span", {}, ms(Math.round(total / 2))), h("span", {}, ms(total))),
    h("span", {}, ""));
  const legend = h("div", { class: "legend" },
    ...[["#d1d5db", "queued"], ["#6366f1", "step"], ["#ef4444", "failed attempt"], ["#fcd34d", "sleep"], ["#93c5fd", "wait / invoke"]]
      .map(([color, text]) => { const i = h("i", {}); i.style.background = color; return h("span", {}, i, text); }));
  return h("div", { class: "timeline" }, axis,
    rows.length ? rows : h("p", { class: "empty" }, "No steps yet."), legend);
}
