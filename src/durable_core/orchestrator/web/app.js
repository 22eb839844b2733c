// The dashboard's shell: a page per hash route (#/runs, #/runs/<id>, #/events, ...), each
// rendered again every POLL_MS so what it shows stays live without reloading.
import { runsPage } from "./runs.js";
import { runPage } from "./run.js";
import { actionsPage, appsPage, eventsPage, functionsPage } from "./pages.js";

const POLL_MS = 1500;
const routes = { runs: runsPage, events: eventsPage, functions: functionsPage, apps: appsPage, actions: actionsPage };
let current = null;
let timer = null;

function parse() {
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query) };
}

async function refresh() {
  const live = document.getElementById("live");
  try {
    if (current?.update) await current.update();
    live.className = "live";
    live.textContent = "live";
  } catch (err) {
    live.className = "live off";
    live.textContent = "offline";
    console.warn(err);
  }
}

function show() {
  const { parts, params } = parse();
  const name = parts[0] || "runs";
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === name));
  const main = document.getElementById("main");
  main.replaceChildren();
  current?.leave?.();
  current = name === "runs" && parts[1]
    ? runPage(main, parts[1])
    : (routes[name] || routes.runs)(main, params);
  document.title = `durable · ${current.title || name}`;
  refresh();
}

addEventListener("hashchange", show);
addEventListener("DOMContentLoaded", () => {
  show();
  timer = setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
});
