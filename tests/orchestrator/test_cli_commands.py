"""`durable functions / invoke / signal / events / rerun / run` against a real `durable dev`,
its log lines, `Durable.signal` over HTTP, and a port that is taken."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from durable_core import Durable

from .conftest import DEADLINE, UvicornApp, free_port, sqlite_only, wait_until
from .test_cli import LONG_STEP, Dev, cli, dev, durable_command, ok

pytestmark = sqlite_only
__all__ = ["dev"]  # the fixture, shared with test_cli


def test_functions_invoke_signal_and_events(dev: Dev) -> None:
    listed = ok(cli("functions", url=dev.url))
    line = next(ln for ln in listed.splitlines() if ln.startswith("cli-greet "))
    assert "cli/greet" in line and " cli " in line

    waited = ok(cli("invoke", "cli-greet", "--data", '{"name": "bo"}', "--wait", url=dev.url))
    assert waited.startswith("run ") and waited.strip().endswith('completed: {"said": "HELLO BO"}')

    started = ok(cli("invoke", "cli-greet", "--data", '{"name": "cy"}', url=dev.url))
    run_id = started.split()[1]
    assert dev.wait_status(run_id, "completed")["output"] == {"said": "HELLO CY"}

    missing = cli("invoke", "cli-nope", url=dev.url)
    assert (
        missing.returncode == 1 and "cli-nope" in missing.stderr and "cli-greet" in missing.stderr
    )
    assert "Traceback" not in missing.stderr

    ok(cli("send", "cli/hold", "--data", '{"n": 1}', url=dev.url))
    held = wait_until("a run of cli-hold", lambda: dev.runs("cli-hold"))[0]["run_id"]
    dev.wait_status(held, "waiting")
    nobody = cli("signal", "nobody-waits", url=dev.url)
    assert nobody.returncode == 1 and "no run is waiting for signal 'nobody-waits'" in nobody.stderr
    resumed = ok(cli("signal", "never", "--data", '{"go": true}', url=dev.url))
    assert resumed.strip() == f"signal never resumed run {held}"
    assert dev.wait_status(held, "completed")["output"] == {"go": True}

    events = ok(cli("events", "--name", "cli/hold", url=dev.url))
    assert "cli/hold" in events and '{"n": 1}' in events and "cli/greet" not in events
    assert "inngest/function.finished" in ok(cli("events", url=dev.url))

    # Durable.signal over HTTP, as a remote app sends it.
    ok(cli("send", "cli/hold", url=dev.url))
    again = wait_until("a second run of cli-hold", lambda: len(dev.runs("cli-hold")) == 2)
    assert again
    second = next(r["run_id"] for r in dev.runs("cli-hold") if r["run_id"] != held)
    dev.wait_status(second, "waiting")
    client = Durable("remote", orchestrator_url=dev.url)
    assert client.signal("never", [1, 2]) == second
    assert client.signal("never") is None
    assert dev.wait_status(second, "completed")["output"] == [1, 2]


def test_run_shows_whole_step_names_and_the_traceback(dev: Dev) -> None:
    ok(cli("send", "cli/fail", url=dev.url))
    run_id = wait_until("a run of cli-fail", lambda: dev.runs("cli-fail"))[0]["run_id"]
    dev.wait_status(run_id, "failed")
    shown = ok(cli("run", run_id, url=dev.url))
    table = next(ln for ln in shown.splitlines() if ln.startswith(LONG_STEP))
    assert "StepFailed" in table or "StepError" in table
    assert f"step {LONG_STEP!r} (attempt 0) failed: LookupError: sku-9 is not stocked" in shown
    assert "Traceback (most recent call last)" in shown
    assert "in check_the_inventory_of_the_warehouse" in shown

    log = dev.log.read_text()
    assert f"run {run_id} of cli-fail started" in log
    assert f"run {run_id} of cli-fail: step {LONG_STEP!r} failed: LookupError" in log
    assert f"run {run_id} of cli-fail failed: " in log


def test_plain_rerun_starts_a_new_run(dev: Dev) -> None:
    ok(cli("send", "cli/greet", "--data", '{"name": "di"}', url=dev.url))
    first = wait_until("a run of cli-greet", lambda: dev.runs("cli-greet"))[0]["run_id"]
    dev.wait_status(first, "completed")
    said = ok(cli("rerun", first, url=dev.url)).strip()
    assert said.startswith(f"rerun of {first}: run ")
    new = said.rsplit(" ", 1)[1]
    assert new != first
    assert dev.wait_status(new, "completed")["output"] == {"said": "HELLO DI"}
    lonely = cli("rerun", first, "--output", "1", url=dev.url)
    assert lonely.returncode == 2 and "--from-step" in lonely.stderr


def test_rerun_from_a_step_keeps_the_earlier_steps(dev: Dev) -> None:
    """`durable rerun --from-step` against `durable dev`: the steps before the chosen one keep
    their results, the chosen one takes the replacement output, and the steps after it run."""
    ok(cli("send", "cli/greet", "--data", '{"name": "di"}', url=dev.url))
    first = wait_until("a run of cli-greet", lambda: dev.runs("cli-greet"))[0]["run_id"]
    dev.wait_status(first, "completed")

    said = ok(cli("rerun", first, "--from-step", "say-hello", "--output", '"hi zed"', url=dev.url))
    new = said.strip().rsplit(" ", 1)[1]
    assert dev.wait_status(new, "completed")["output"] == {"said": "HI ZED"}  # shout ran again

    said = ok(cli("rerun", first, "--from-step", "shout", "--output", '"quiet"', url=dev.url))
    new = said.strip().rsplit(" ", 1)[1]
    assert dev.wait_status(new, "completed")["output"] == {"said": "quiet"}

    unknown = cli("rerun", first, "--from-step", "no-such-step", url=dev.url)
    assert unknown.returncode == 1
    assert "no-such-step" in unknown.stderr and "Traceback" not in unknown.stderr


def test_rerun_from_a_step_posts_the_step_and_output() -> None:
    """The request the orchestrator gets (it decides what to do with it)."""
    seen: list[Any] = []

    async def rerun(request: Request) -> JSONResponse:
        seen.append((request.path_params["run_id"], await request.json()))
        return JSONResponse({"run_id": "NEW"}, status_code=202)

    app = UvicornApp(Starlette(routes=[Route("/v1/runs/{run_id}/rerun", rerun, methods=["POST"])]))
    app.start()
    try:
        args = ("rerun", "R1", "--from-step", "charge", "--output", '{"id": 7}')
        said = ok(cli(*args, url=app.base_url))
    finally:
        app.stop()
    assert said.strip() == "rerun of R1: run NEW"
    assert seen == [("R1", {"from_step": "charge", "output": {"id": 7}})]


def test_a_taken_port_is_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run(
            [*durable_command(), "dev", "--port", str(port), "--db", ":memory:"],
            capture_output=True,
            text=True,
            timeout=DEADLINE * 3,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port} (Address already in use): another program "
        "uses the port; pick another with --port N"
    ]


def test_dev_logs_json_lines(tmp_path: Any) -> None:
    """A run of a function whose app does not answer: started, then retrying, as JSON."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "dev.log"
    args = ["dev", "--port", str(port), "--db", str(tmp_path / "dev.db"), "--log-format", "json"]
    with open(log, "w") as out:
        proc = subprocess.Popen([*durable_command(), *args], stdout=out, stderr=subprocess.STDOUT)
    dead = "http://127.0.0.1:9/api/inngest"
    function = {
        "id": "gone-hello",
        "name": "hello",
        "triggers": [{"event": "gone/hello"}],
        "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "http", "url": f"{dead}?fnId=gone-hello&stepId=step"}}},
    }  # fmt: skip
    try:
        wait_until("durable dev to answer", lambda: cli("functions", url=url).returncode == 0)
        body = {"appname": "gone", "url": dead, "functions": [function]}
        assert httpx.post(f"{url}/fn/register", json=body, timeout=DEADLINE).status_code == 200
        run_id = ok(cli("invoke", "gone-hello", url=url)).split()[1]

        def changes() -> list[dict[str, Any]]:
            rows = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
            return [o for o in rows if o.get("run_id") == run_id]

        retrying = wait_until(
            "the retry line", lambda: [o for o in changes() if o["event"] == "retrying"]
        )
    finally:
        proc.terminate()
        proc.wait(timeout=DEADLINE)
    first = changes()[0]
    assert first == {
        "ts": first["ts"],
        "level": "INFO",
        "logger": "durable.runs",
        "message": f"run {run_id} of gone-hello started",
        "event": "started",
        "run_id": run_id,
        "function_id": "gone-hello",
    }
    assert {"attempt", "retry_at", "error", "step"} <= retrying[0].keys()
    assert retrying[0]["attempt"] == 1


def test_make_run_on_a_taken_port_is_one_line() -> None:
    quickstart = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(quickstart), "--port", str(port), "--once"],
            capture_output=True,
            text=True,
            timeout=DEADLINE * 3,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"cannot listen on 127.0.0.1:{port} (Address already in use): another program uses "
        "the port; pick another with PORT=8001 make run (or --port 8001)"
    ]
