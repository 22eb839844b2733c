"""`make run`: serve the example shop app with the embedded orchestrator, run one order
end to end (steps, a sleep, a wait fulfilled by a second event, a parallel pair), print each
step as it completes, then keep serving.

    .venv/bin/python examples/quickstart.py [--port 8000] [--once]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from typing import Any

import httpx
import uvicorn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.fastapi_app import app
from examples.shop import durable

START = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - START:6.2f}s] {text}", flush=True)


def short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 100 else text[:97] + "..."


async def wait_until(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def port_taken(port: int) -> str | None:
    """Why the app cannot listen on `port`, if it cannot."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as err:
            return err.strerror or str(err)
    return None


class Progress(logging.Handler):
    """Prints the run's changes: the `durable.runs` log lines, through their fields."""

    def __init__(self, done: asyncio.Future[dict[str, Any]]) -> None:
        super().__init__()
        self.done = done

    def emit(self, record: logging.LogRecord) -> None:
        change: dict[str, Any] = getattr(record, "durable", {})
        event, step = change.get("event"), change.get("step")
        if step is not None:
            extra = change.get("until") or change.get("error") or ""
            say(f"  step {step:<18} {event:<12} {short(extra) if extra else ''}")
        elif (
            change.get("function_id") == "shop-process-order"
            and event != "started"
            and not self.done.done()
        ):
            self.done.set_result(change)


async def main(port: int, once: bool) -> None:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        await wait_until(lambda: server.started, "the app to start")
        assert durable.local is not None, "the embedded orchestrator did not start"
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        runs = logging.getLogger("durable.runs")
        runs.addHandler(Progress(done))
        runs.propagate = False  # printed here, not also as plain log lines
        say(f"app serving at {base} (durable endpoint {base}/api/durable)")
        order = {
            "id": "o-1001",
            "items": ["sku-1", "sku-2"],
            "amount": 42.5,
            "email": "ada@example.com",
        }
        ids = await durable.send_async({"name": "shop/order.created", "data": order})
        say(f"sent shop/order.created (event {ids[0]})")

        async def waiting_run() -> Any:
            runs = (
                await http.get(
                    "/durable/v1/runs",
                    params={"function_id": "shop-process-order", "status": "waiting"},
                )
            ).json()["data"]
            return runs[0] if runs else None

        run = await wait_until(waiting_run, "the run to wait for approval")
        say(f"run {run['run_id']} is {run['status']}: {run['reason']}")
        await durable.send_async({"name": "shop/order.approved", "data": {"order_id": order["id"]}})
        say("sent shop/order.approved")
        finished = await asyncio.wait_for(done, 30)
        detail = (await http.get(f"/durable/v1/runs/{finished['run_id']}")).json()
        say(f"run {detail['run_id']} {detail['status']}: {short(detail['output'])}")
        for step in detail["steps"]:
            say(f"  {step['name']:<18} {step['op']:<12} {short(step['error'] or step['output'])}")
        say(f"{len(detail['steps'])} step records, {detail['duration_ms']} ms end to end")
        print(
            f"\napp:  {base}/\nAPI:  {base}/durable/v1/runs\nrun:  {base}/durable/v1/runs/{finished['run_id']}",
            flush=True,
        )
        if once:
            server.should_exit = True
        else:
            print("serving; press Ctrl-C to stop", flush=True)
    await serving


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--once", action="store_true", help="stop after the example run")
    args = parser.parse_args()
    taken = port_taken(args.port)
    if taken:
        sys.exit(
            f"cannot listen on 127.0.0.1:{args.port} ({taken}): another program uses the port; "
            f"pick another with PORT=8001 make run (or --port 8001)"
        )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.port, args.once))
