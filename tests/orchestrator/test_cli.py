"""The `durable` command: `durable dev` as a real process, an app of ours under uvicorn synced
to it with `-u`, and `durable send / runs / run / cancel` run against it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from adapters.fastapi import Serve
from durable_core import Context, Durable, TriggerEvent

from .conftest import DEADLINE, UvicornApp, free_port, sqlite_only, wait_until

pytestmark = sqlite_only  # the store does not matter here

SERVE_PATH = "/api/durable"
LONG_STEP = "check-the-inventory-of-every-warehouse"
FUNCTIONS = {"cli-greet", "cli-hold", "cli-fail"}


def durable_command() -> list[str]:
    script = Path(sys.executable).parent / "durable"
    return [str(script)] if script.exists() else [sys.executable, "-m", "durable_core.cli"]


def cli(
    *args: str, url: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*durable_command(), *args],
        env={**os.environ, "DURABLE_ORCHESTRATOR_URL": url, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 3,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


class Dev:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def get(self, path: str, **params: Any) -> Any:
        res = httpx.get(self.url + path, params=params, timeout=DEADLINE)
        assert res.status_code == 200, res.text
        return res.json()

    def runs(self, fn_id: str) -> list[dict[str, Any]]:
        return list(self.get("/v1/runs", function_id=fn_id)["data"])

    def wait_status(self, run_id: str, *statuses: str) -> dict[str, Any]:
        return dict(
            wait_until(
                f"run {run_id} to be {'/'.join(statuses)}",
                lambda: (r := self.get(f"/v1/runs/{run_id}"))["status"] in statuses and r,
            )
        )


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    """`durable dev` on a free port with a database under tmp_path, syncing our app."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    d = Durable("cli", dev=True, orchestrator_url=url)

    @d.function(id="greet", trigger=TriggerEvent("cli/greet"))
    async def greet(ctx: Context) -> dict[str, str]:
        hello = await ctx.step.run("say-hello", lambda: f"hello {ctx.event.data['name']}")
        loud = await ctx.step.run("shout", lambda: hello.upper())
        return {"said": loud}

    @d.function(id="hold", trigger=TriggerEvent("cli/hold"))
    async def hold(ctx: Context) -> Any:
        got = await ctx.step.wait_for_signal("hold-on", signal="never", timeout="1h")
        return got.data if got else None

    @d.function(id="fail", trigger=TriggerEvent("cli/fail"), retries=0)
    async def fail(ctx: Context) -> None:
        def check_the_inventory_of_the_warehouse() -> None:
            raise LookupError("sku-9 is not stocked")

        await ctx.step.run(LONG_STEP, check_the_inventory_of_the_warehouse)

    web = FastAPI()
    serve = Serve(web, d, path=SERVE_PATH)
    assert serve.embedded is None
    app = UvicornApp(web)
    app.start()

    log = tmp_path / "dev.log"
    with open(log, "w") as out:
        db, app_url = str(tmp_path / "dev.db"), f"{app.base_url}{SERVE_PATH}"
        args = ["dev", "--port", str(port), "--db", db, "--fast-retries", "-u", app_url]
        proc = subprocess.Popen(
            [*durable_command(), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    server = Dev(url, log)
    try:

        def synced() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"durable dev exited: {log.read_text()}")
            try:
                fns = server.get("/v1/functions")["data"]
            except httpx.HTTPError:
                return False
            registered = {f["function_id"] for f in fns} == FUNCTIONS
            return registered and f"synced {app_url}" in log.read_text()

        wait_until("durable dev to start and sync the app", synced, deadline=DEADLINE * 2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        app.stop()


def test_send_runs_run_and_cancel(dev: Dev) -> None:
    sent = ok(cli("send", "cli/greet", "--data", '{"name": "ann"}', url=dev.url))
    assert sent.startswith("sent cli/greet: ")
    event_id = sent.split(": ", 1)[1].strip()
    assert [e["internal_id"] for e in dev.get("/v1/events", name="cli/greet")["data"]] == [event_id]

    run_id = wait_until("a run of cli-greet", lambda: dev.runs("cli-greet"))[0]["run_id"]
    run = dev.wait_status(run_id, "completed", "failed")
    assert run["status"] == "completed", run
    assert run["output"] == {"said": "HELLO ANN"}

    listed = ok(cli("runs", url=dev.url))
    line = next(ln for ln in listed.splitlines() if run_id in ln)
    assert "cli-greet" in line and "completed" in line

    shown = ok(cli("run", run_id, url=dev.url))
    assert run_id in shown and "cli-greet" in shown and "completed" in shown
    assert "say-hello" in shown and "shout" in shown and "StepRun" in shown
    assert "HELLO ANN" in shown and '"name": "ann"' in shown

    ok(cli("send", "cli/hold", url=dev.url))
    held = wait_until("a run of cli-hold", lambda: dev.runs("cli-hold"))[0]["run_id"]
    dev.wait_status(held, "waiting")
    waiting = ok(cli("runs", "--function", "cli-hold", url=dev.url))
    assert held in waiting and "waiting" in waiting and run_id not in waiting
    cancelled = ok(cli("cancel", held, url=dev.url))
    assert cancelled.strip() == f"run {held} is cancelled"
    assert dev.get(f"/v1/runs/{held}")["status"] == "cancelled"
    only = ok(cli("runs", "--status", "cancelled", url=dev.url))
    assert held in only and run_id not in only


def test_cli_errors_are_readable(dev: Dev) -> None:
    missing = cli("run", "NO-SUCH-RUN", url=dev.url)
    assert missing.returncode != 0
    assert "404" in missing.stderr and "NO-SUCH-RUN" in missing.stderr
    assert "Traceback" not in missing.stderr

    bad_status = cli("runs", "--status", "bogus", url=dev.url)
    assert bad_status.returncode != 0 and "bogus" in bad_status.stderr

    bad_data = cli("send", "cli/greet", "--data", "{nope", url=dev.url)
    assert bad_data.returncode != 0 and "--data" in bad_data.stderr
    assert dev.runs("cli-greet") == []


def test_unreachable_orchestrator_is_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["runs"], ["send", "cli/greet"]):
        result = cli(*args, url=url)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert f"cannot reach the orchestrator at {url}" in result.stderr
        assert "durable dev" in result.stderr
        assert "Traceback" not in result.stderr


def fake_sdk_app(dev_url: str, body: dict[str, Any]) -> UvicornApp:
    """An app whose sync posts `body` to `/fn/register` and answers 200 whatever the answer
    was, as the TypeScript SDK does with an error body that has no `status`."""

    async def sync(request: Request) -> JSONResponse:
        async with httpx.AsyncClient(timeout=DEADLINE) as client:
            await client.post(f"{dev_url}/fn/register", json=body)
        return JSONResponse({"message": "Successfully registered", "modified": True})

    return UvicornApp(Starlette(routes=[Route("/api/inngest", sync, methods=["PUT"])]))


def run_dev(tmp_path: Path, app_url: str, port: int) -> tuple[subprocess.Popen[str], Path]:
    log = tmp_path / "dev.log"
    db = str(tmp_path / "dev.db")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*durable_command(), "dev", "--port", str(port), "--db", db, "-u", app_url],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return proc, log


@pytest.mark.parametrize("spelling", ["appName", "appname"])
def test_dev_syncs_an_app_that_spells_its_name_either_way(tmp_path: Path, spelling: str) -> None:
    port = free_port()
    dev_url = f"http://127.0.0.1:{port}"
    function = {
        "id": "ts-app-hello",
        "name": "hello",
        "triggers": [{"event": "ts/hello"}],
        "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "http", "url": "http://127.0.0.1:9/api/inngest?fnId=ts-app-hello&stepId=step"}}},
    }  # fmt: skip
    body = {spelling: "ts-app", "deployType": "ping", "url": "http://127.0.0.1:9/api/inngest", "functions": [function]}  # fmt: skip
    app = fake_sdk_app(dev_url, body)
    app.start()
    proc, log = run_dev(tmp_path, f"{app.base_url}/api/inngest", port)
    try:
        wait_until("the sync", lambda: "synced" in log.read_text(), deadline=DEADLINE * 2)
        fns = httpx.get(f"{dev_url}/v1/functions", timeout=DEADLINE).json()["data"]
        assert [(f["function_id"], f["app_id"]) for f in fns] == [("ts-app-hello", "ts-app")]
    finally:
        proc.terminate()
        proc.wait(timeout=DEADLINE)
        app.stop()


def test_dev_reports_a_sync_that_registered_nothing_with_the_reason(tmp_path: Path) -> None:
    port = free_port()
    dev_url = f"http://127.0.0.1:{port}"
    app = fake_sdk_app(dev_url, {"appName": "ts-app", "url": "http://127.0.0.1:9/api/inngest"})
    app.start()
    proc, log = run_dev(tmp_path, f"{app.base_url}/api/inngest", port)
    try:
        wait_until("the report", lambda: "registered nothing" in log.read_text(), DEADLINE * 2)
        text = log.read_text()
        assert "synced" not in text, text
        assert "registered nothing: registration: functions: Field required" in text, text
        # The Apps page's source: the refused registration under the app id it named, and the
        # sync under the URL durable dev synced.
        failed = httpx.get(f"{dev_url}/v1/apps", timeout=DEADLINE).json()["sync_errors"]
        assert {f["app"]: f["error"] for f in failed} == {
            "ts-app": "registration: functions: Field required",
            f"{app.base_url}/api/inngest": "registered nothing: registration: functions: Field required",
        }
        assert all(f["at"] for f in failed)
    finally:
        proc.terminate()
        proc.wait(timeout=DEADLINE)
        app.stop()


def test_dev_lists_an_app_that_does_not_answer_its_sync(tmp_path: Path) -> None:
    port, dead = free_port(), f"http://127.0.0.1:{free_port()}/api/durable"
    dev_url = f"http://127.0.0.1:{port}"
    proc, _log = run_dev(tmp_path, dead, port)
    try:

        def failed() -> Any:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{dev_url}/v1/apps", timeout=DEADLINE).json()["sync_errors"]
            return None

        [problem] = wait_until("the failed sync in /v1/apps", failed, DEADLINE * 2)
        assert problem["app"] == dead
        assert problem["error"] == "the app did not answer (ConnectError); is it running?"
    finally:
        proc.terminate()
        proc.wait(timeout=DEADLINE)
