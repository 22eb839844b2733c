// An app written with the unmodified TypeScript SDK (npm `inngest`, pinned in package.json),
// served by the SDK's own `inngest/node` handler on a plain `node:http` server.
//
// Run as `node app.js`, with
// - PEER_ORCHESTRATOR_URL: the orchestrator (`durable dev`) the client syncs with and sends to;
// - PEER_APP_PORT: the port to serve on (127.0.0.1); the functions are at /api/inngest and the
//   durable endpoint at /endpoint.
//
// Every function exists twice, with the SDK's `checkpointing` option on and off: its id ends in
// `-on` or `-off` and its trigger event is `ts/<name>.<on|off>`.
"use strict";

const http = require("node:http");
const {
  Inngest,
  NonRetriableError,
  RetryAfterError,
  step,
} = require("inngest");
const { serve, endpointAdapter, serveEndpoint } = require("inngest/node");

const ORCHESTRATOR_URL = process.env.PEER_ORCHESTRATOR_URL || "http://127.0.0.1:8288";
const PORT = Number(process.env.PEER_APP_PORT || "3000");
const SERVE_PATH = "/api/inngest";
const ENDPOINT_PATH = "/endpoint";

const inngest = new Inngest({
  id: "peer-ts",
  isDev: true,
  baseUrl: ORCHESTRATOR_URL,
  eventKey: "peer-test-key",
  endpointAdapter,
});

function define(mode) {
  const checkpointing = mode === "on";
  const on = (name) => ({ event: `ts/${name}.${mode}` });
  const fn = (name, options, handler) =>
    inngest.createFunction(
      { id: `${name}-${mode}`, checkpointing, retries: 3, triggers: [on(name)], ...options },
      handler,
    );

  const loop = fn("loop", {}, async ({ event, step }) => {
    const out = [];
    for (let i = 0; i < event.data.count; i++) {
      out.push(await step.run("item", () => i * 10));
    }
    return out;
  });

  // A handler that is not async and uses no step: its value is the run's output.
  const plain = fn("plain", {}, ({ event }) => ({ doubled: event.data.n * 2 }));

  const asyncHandler = fn("async", {}, async ({ event, step }) => {
    const a = await step.run("first", async () => event.data.n + 1);
    const b = await step.run("second", () => a * 3);
    return { a, b };
  });

  const sleep = fn("sleep", {}, async ({ step }) => {
    const before = await step.run("before", () => "dozing");
    await step.sleep("nap", "2s");
    const after = await step.run("after", () => "awake");
    return [before, after];
  });

  const sleepUntil = fn("sleep-until", {}, async ({ event, step }) => {
    await step.sleepUntil("alarm", event.data.until);
    return await step.run("after", () => "rang");
  });

  const wait = fn("wait", {}, async ({ event, step }) => {
    const reply = await step.waitForEvent("reply", {
      event: `ts/reply.${mode}`,
      match: "data.key",
      timeout: event.data.timeout,
    });
    return reply === null ? { timedOut: true } : { got: reply.data.answer };
  });

  const sent = fn("sent", {}, async ({ event }) => ({ token: event.data.token }));

  const sender = fn("sender", {}, async ({ event, step }) => {
    const ids = await step.sendEvent("send", {
      name: `ts/sent.${mode}`,
      data: { token: event.data.token },
    });
    return { sent: ids.ids.length };
  });

  const child = fn("child", {}, async ({ event, step }) => {
    if (event.data.slow) await step.sleep("dawdle", "30s");
    return await step.run("grow", () => event.data.n + 1000);
  });

  const invoker = fn("invoker", {}, async ({ event, step }) => {
    try {
      const result = await step.invoke("call", {
        function: child,
        data: { n: event.data.n, slow: event.data.slow },
        ...(event.data.timeout ? { timeout: event.data.timeout } : {}),
      });
      return { result };
    } catch (err) {
      return { caught: String(err && err.message) };
    }
  });

  const parallel = fn("parallel", {}, async ({ step }) => {
    const results = await Promise.all(
      ["a", "b", "c"].map((name) => step.run(`par-${name}`, () => name.toUpperCase())),
    );
    return results;
  });

  // The race goes to the step that finished first, which the SDK learns from the order of
  // `ctx.stack.stack` (the step ids hash the other way round: "late" sorts first).
  const race = fn("race", {}, async ({ event, step }) => {
    return await Promise.race([
      step
        .waitForEvent("late", {
          event: `ts/race-go.${mode}`,
          if: `async.data.tag == "${event.data.tag}"`,
          timeout: "60s",
        })
        .then(() => "late"),
      step.run("early", () => "early"),
    ]);
  });

  const flaky = fn("flaky", {}, async ({ step, attempt }) => {
    const value = await step.run("flaky", () => {
      if (attempt < 2) throw new Error(`failing on attempt ${attempt}`);
      return { succeededOn: attempt };
    });
    return value;
  });

  const later = fn("later", {}, async ({ step, attempt }) => {
    return await step.run("later", () => {
      if (attempt === 0) throw new RetryAfterError("not yet", "3s");
      return { succeededOn: attempt };
    });
  });

  const doomed = fn(
    "doomed",
    {
      onFailure: async ({ event, error }) => ({
        failedRun: event.data.run_id,
        message: error.message,
        tag: event.data.event.data.tag,
      }),
    },
    async ({ step }) => {
      await step.run("fatal", () => {
        throw new NonRetriableError("no point retrying");
      });
      return "unreachable";
    },
  );

  const signal = fn("signal", {}, async ({ event, step }) => {
    const got = await step.waitForSignal("sig", {
      signal: event.data.signal,
      timeout: "60s",
    });
    return got === null ? { timedOut: true } : { data: got.data };
  });

  const signaller = fn("signaller", {}, async ({ event, step }) => {
    const sent = await step.sendSignal("notify", {
      signal: event.data.signal,
      data: { from: "signaller" },
    });
    return { runId: sent.runId };
  });

  const serial = fn(
    "serial",
    { concurrency: { limit: 1 } },
    async ({ event, step }) => {
      // Concurrency limits the requests in flight: no two of these steps run at once.
      const [started, ended] = await step.run("work", async () => {
        const start = Date.now();
        await new Promise((resolve) => setTimeout(resolve, 200));
        return [start, Date.now()];
      });
      return [started, ended, event.data.n];
    },
  );

  const limited = fn(
    "limited",
    {
      rateLimit: { limit: 1, period: "60s", key: "event.data.tag" },
      throttle: { limit: 5, period: "1s" },
    },
    async ({ event }) => ({ n: event.data.n }),
  );

  return [
    loop, plain, asyncHandler, sleep, sleepUntil, wait, sent, sender, child, invoker, parallel,
    race, flaky, later, doomed, signal, signaller, serial,
    limited,
  ];
}

const functions = [...define("on"), ...define("off")];
const handler = serve({ client: inngest, functions });

// A durable endpoint: a run started inside the app by an HTTP request, its steps checkpointed.
const endpoint = serveEndpoint(
  inngest.endpoint(async (req) => {
    const url = new URL(req.url);
    const n = Number(url.searchParams.get("n") || "1");
    const a = await step.run("first", () => n + 1);
    const b = await step.run("second", () => a * 2);
    return { a, b }; // sent as JSON, and checkpointed as the run's output
  }),
);

const server = http.createServer((req, res) => {
  const path = (req.url || "").split("?")[0];
  if (path === SERVE_PATH) return handler(req, res);
  if (path === ENDPOINT_PATH) return endpoint(req, res);
  res.writeHead(404);
  res.end();
});
server.listen(PORT, "127.0.0.1", () => {
  console.log(`peer-ts app listening on http://127.0.0.1:${PORT}${SERVE_PATH}`);
});
