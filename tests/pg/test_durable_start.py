"""`durable start`, the production orchestrator, as real processes on a PostgreSQL schema: it
refuses to start without its keys, and an app of ours in production mode (signed requests, an
event key) registers with it and runs; two processes on one schema share the work."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from tests import ports

from adapters.fastapi import Serve
from durable_core import Context, Durable, TriggerEvent
from durable_core.signing import hashed_signing_key

SIGNING_KEY = "signkey-prod-" + "5e" * 32
EVENT_KEY = "ek-test-1"
AUTH = {"authorization": f"Bearer {hashed_signing_key(SIGNING_KEY)}"}
SERVE_PATH = "/api/durable"
DEADLINE = 45.0  # only turns a hang into a failure (parallel tests may share the machine)
FINISHED = ("completed", "failed", "cancelled")


def free_port() -> int:
    return ports.free_port()


def wait_until(what: str, probe: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        last = probe()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what} (last probe: {last!r})")


def durable_command() -> list[str]:
    script = Path(sys.executable).parent / "durable"
    return [str(script)] if script.exists() else [sys.executable, "-m", "durable_core.cli"]


def clean_env() -> dict[str, str]:
    """The environment without any DURABLE_* setting, so only the arguments count."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}


@pytest.fixture(autouse=True)
def no_ambient_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DURABLE_") and name != "DURABLE_DIR":
            monkeypatch.delenv(name)


# -- refusing to start ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--event-key", EVENT_KEY], ["signing key", "DURABLE_SIGNING_KEY"]),
        (["--signing-key", "", "--event-key", EVENT_KEY], ["DURABLE_SIGNING_KEY"]),
        (["--signing-key", SIGNING_KEY], ["event key", "--event-key"]),
        (["--signing-key", "not-hex-at-all", "--event-key", EVENT_KEY], ["hex"]),
        (["--signing-key", "signkey-prod-abc", "--event-key", EVENT_KEY], ["hex"]),
        (["--signing-key", "signkey-prod-", "--event-key", EVENT_KEY], ["hex"]),
    ],
    ids=["no-signing-key", "empty-signing-key", "no-event-key", "not-hex", "odd-hex", "empty-hex"],
)
def test_durable_start_refuses_to_start_without_good_keys(
    tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    db, port = tmp_path / "never.db", free_port()
    command = [*durable_command(), "start", "--database", f"sqlite:///{db}"]
    command += ["--host", "127.0.0.1", "--port", str(port), *args]
    proc = subprocess.Popen(
        command, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:

        def exited_or_serving() -> bool:
            if proc.poll() is not None:
                return True
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    raise AssertionError(f"durable start {args} did not refuse: it serves")
            return False

        wait_until("durable start to exit", exited_or_serving)
    finally:
        if proc.poll() is None:
            proc.kill()
        stdout, stderr = proc.communicate(timeout=DEADLINE)
    assert proc.returncode != 0, (stdout, stderr)
    for needle in needles:
        assert needle in stderr, stderr
    assert "Traceback" not in stderr
    assert not db.exists(), "it opened the database before refusing"


# -- running ----------------------------------------------------------------------------------


class Orchestrator:
    """A `durable start` process on 127.0.0.1."""

    def __init__(self, database: str, log: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [*durable_command(), "start", "--database", database, "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--signing-key", SIGNING_KEY]
        command += ["--event-key", EVENT_KEY, "--workers", "8", "--lease", "5", *flags]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                command, env=clean_env(), stdout=out, stderr=subprocess.STDOUT, text=True
            )

    def wait_serving(self) -> None:
        def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"durable start exited: {self.log.read_text()}")
            try:
                return httpx.get(f"{self.url}/v1/runs", headers=AUTH, timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(f"durable start on {self.url} to serve", serving)

    def get(self, path: str, **params: Any) -> Any:
        res = httpx.get(self.url + path, params=params, headers=AUTH, timeout=DEADLINE)
        assert res.status_code == 200, res.text
        return res.json()

    def send(self, name: str, data: dict[str, Any], key: str = EVENT_KEY) -> httpx.Response:
        return httpx.post(
            f"{self.url}/e/{key}", json={"name": name, "data": data}, timeout=DEADLINE
        )

    def functions(self) -> list[str]:
        return [f["function_id"] for f in self.get("/v1/functions")["data"]]

    def finished_run(self, fn_id: str) -> dict[str, Any]:
        run_id = wait_until(
            f"a run of {fn_id}", lambda: self.get("/v1/runs", function_id=fn_id)["data"]
        )[0]["run_id"]
        return dict(
            wait_until(
                f"run {run_id} to finish",
                lambda: (r := self.get(f"/v1/runs/{run_id}"))["status"] in FINISHED and r,
            )
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


OrchestratorFactory = Callable[..., Orchestrator]


@pytest.fixture
def orchestrators(pg_schema_url: str, tmp_path: Path) -> Iterator[OrchestratorFactory]:
    """`orchestrators()` -> a serving `durable start` on the test's schema; stopped afterwards."""
    started: list[Orchestrator] = []

    def start(*flags: str) -> Orchestrator:
        log = tmp_path / f"orchestrator-{len(started)}.log"
        orch = Orchestrator(pg_schema_url, log, *flags)
        started.append(orch)
        orch.wait_serving()
        return orch

    yield start
    for orch in started:
        orch.stop()


def production_app(
    orchestrator_url: str, uvicorn_server: Callable[[Any], Any], calls: list[int] | None = None
) -> Any:
    """The production app, served; it syncs its own origin (an unsigned sync in production
    registers only the configured serve origin). `calls` gets a 1 per request to `greet`."""
    d = Durable(
        "prod", signing_key=SIGNING_KEY, event_key=EVENT_KEY, orchestrator_url=orchestrator_url
    )

    @d.function(id="greet", trigger=TriggerEvent("prod/greet"))
    async def greet(ctx: Context) -> dict[str, Any]:
        if calls is not None:
            calls.append(1)
        hello = await ctx.step.run("hello", lambda: f"hello {ctx.event.data['name']}")
        loud = await ctx.step.run("shout", lambda: hello.upper())
        return {"said": loud, "attempt": ctx.attempt}

    web = FastAPI()
    Serve(web, d, path=SERVE_PATH, embedded=False)
    server = uvicorn_server(web)
    d.serve_origin = server.base_url
    return server


def test_a_production_app_registers_and_runs(
    orchestrators: OrchestratorFactory, uvicorn_server: Callable[[Any], Any]
) -> None:
    orch = orchestrators()
    app = production_app(orch.url, uvicorn_server)

    res = httpx.put(app.base_url + SERVE_PATH, timeout=DEADLINE)
    assert res.status_code == 200, res.text
    assert res.json()["ok"] is True
    assert orch.functions() == ["prod-greet"]
    apps = orch.get("/v1/apps")["data"]
    assert [(a["app_id"], a["url"]) for a in apps] == [("prod", app.base_url + SERVE_PATH)]

    res = orch.send("prod/greet", {"name": "ann"})
    assert res.status_code == 200, res.text
    run = orch.finished_run("prod-greet")
    assert run["status"] == "completed", run
    assert run["output"] == {"said": "HELLO ANN", "attempt": 0}
    assert [s["name"] for s in run["steps"]] == ["hello", "shout"]

    wrong = orch.send("prod/greet", {"name": "bob"}, key="not-the-key")
    assert wrong.status_code == 401, wrong.text
    assert "event key" in wrong.json()["error"]
    unauthorized = httpx.get(f"{orch.url}/v1/runs", timeout=DEADLINE)
    assert unauthorized.status_code == 401, unauthorized.text
    assert "Authorization" in unauthorized.json()["error"]
    bad_register = httpx.post(
        f"{orch.url}/fn/register", json={"appname": "x", "functions": []}, timeout=DEADLINE
    )
    assert bad_register.status_code == 401
    assert len(orch.get("/v1/runs")["data"]) == 1  # the refused event started nothing


def test_rerun_from_a_step_with_the_cli_on_postgresql(
    orchestrators: OrchestratorFactory, uvicorn_server: Callable[[Any], Any]
) -> None:
    """`durable rerun --from-step` against `durable start` on PostgreSQL: the earlier step keeps
    its result and the chosen one takes the replacement output."""
    orch = orchestrators()
    app = production_app(orch.url, uvicorn_server)
    assert httpx.put(app.base_url + SERVE_PATH, timeout=DEADLINE).status_code == 200
    assert orch.send("prod/greet", {"name": "di"}).status_code == 200
    first = orch.finished_run("prod-greet")["run_id"]

    env = {**clean_env(), "DURABLE_ORCHESTRATOR_URL": orch.url, "DURABLE_SIGNING_KEY": SIGNING_KEY}
    args = ["rerun", first, "--from-step", "shout", "--output", '"quiet"']
    said = subprocess.run(
        [*durable_command(), *args], env=env, capture_output=True, text=True, timeout=DEADLINE
    )
    assert said.returncode == 0, said.stderr
    new = said.stdout.strip().rsplit(" ", 1)[1]
    run = wait_until(
        f"run {new} to finish",
        lambda: (r := orch.get(f"/v1/runs/{new}"))["status"] in FINISHED and r,
    )
    assert run["status"] == "completed", run
    assert run["output"] == {"said": "quiet", "attempt": 0}


@pytest.mark.parametrize(("flag", "requests"), [("--http-checkpoints", 1), (None, 3)])
def test_http_checkpoints_run_a_chain_of_steps_in_one_request_when_turned_on(
    orchestrators: OrchestratorFactory,
    uvicorn_server: Callable[[Any], Any],
    flag: str | None,
    requests: int,
) -> None:
    orch = orchestrators(*([flag] if flag else []))
    calls: list[int] = []
    app = production_app(orch.url, uvicorn_server, calls)
    assert httpx.put(app.base_url + SERVE_PATH, timeout=DEADLINE).status_code == 200

    assert orch.send("prod/greet", {"name": "di"}).status_code == 200
    run = orch.finished_run("prod-greet")

    assert run["output"] == {"said": "HELLO DI", "attempt": 0}
    assert [s["name"] for s in run["steps"]] == ["hello", "shout"]
    assert len(calls) == requests  # off by default on PostgreSQL: one request per step


def test_two_processes_on_one_schema_share_functions_and_runs(
    orchestrators: OrchestratorFactory, uvicorn_server: Callable[[Any], Any]
) -> None:
    first, second = orchestrators(), orchestrators()
    assert first.get("/v1/runs") == second.get("/v1/runs") == {"data": []}
    app = production_app(first.url, uvicorn_server)

    res = httpx.put(app.base_url + SERVE_PATH, timeout=DEADLINE)
    assert res.status_code == 200, res.text
    assert first.functions() == ["prod-greet"]
    # The second process hears of the registration (NOTIFY) without being told.
    wait_until("the second process to load the function", lambda: second.functions())
    assert second.functions() == ["prod-greet"]

    res = second.send("prod/greet", {"name": "cy"})
    assert res.status_code == 200, res.text
    run = second.finished_run("prod-greet")
    assert run["status"] == "completed", run
    assert run["output"] == {"said": "HELLO CY", "attempt": 0}
    assert first.get(f"/v1/runs/{run['run_id']}")["status"] == "completed"

    # Many events sent to both: every run completes exactly once.
    for n in range(10):
        target = first if n % 2 else second
        assert target.send("prod/greet", {"name": f"n{n}"}).status_code == 200

    def all_done() -> list[dict[str, Any]] | None:
        runs = first.get("/v1/runs", function_id="prod-greet", limit=50)["data"]
        done = [r for r in runs if r["status"] in FINISHED]
        return runs if len(runs) == 11 and len(done) == 11 else None

    runs = wait_until("11 finished runs", all_done)
    assert {r["status"] for r in runs} == {"completed"}
    assert sorted(r["output"]["said"] for r in runs) == sorted(
        ["HELLO CY", *(f"HELLO N{n}" for n in range(10))]
    )
    for r in runs:
        steps = first.get(f"/v1/runs/{r['run_id']}")["steps"]
        assert [s["name"] for s in steps] == ["hello", "shout"], steps
