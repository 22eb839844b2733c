"""The app dies by SIGKILL between two checkpoints over HTTP, and the run still completes with
every step run exactly once.

A standalone orchestrator (its API under uvicorn in this process) calls the crash tests' ledger
app (`tests/crash/ledger_app.py`, a uvicorn subprocess), whose steps each append a line to a
ledger file. The app is started with `DURABLE_FAULT=checkpoint.posted:3`: it is killed right
after the orchestrator accepted its third checkpoint, before the fourth step starts. Started
again, it is called again (the failed request is retried) and runs only the steps left."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.crash.harness import (
    START_DEADLINE,
    Processes,
    app_env,
    fault_env,
    free_port,
    poll,
    read_ledger,
    read_mark,
    uvicorn_args,
    wait_ready,
)
from tests.crash.ledger_app import APP_ID, SERVE_PATH, expected_output, steps_of

from durable_core.orchestrator.api import Api
from durable_core.orchestrator.service import Orchestrator
from durable_core.orchestrator.store import open_store

from .conftest import UvicornApp

# The killed app is started again and must answer the failed request's retries in time.
pytestmark = pytest.mark.serial
POINT = "checkpoint.posted:3"


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.close()


@contextlib.contextmanager
def standalone(database_url: str) -> Iterator[str]:
    # Retries wait long enough for the app to be started again.
    orch = Orchestrator(open_store(database_url), backoff=(3.0,), http_checkpoints=True)
    server = UvicornApp(Api(orch).served())
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()


def test_the_app_killed_between_two_checkpoints_runs_each_step_once(
    database_url: str, tmp_path: Path, procs: Processes
) -> None:
    port = free_port()
    app = f"http://127.0.0.1:{port}"
    with standalone(database_url) as orch, httpx.Client(timeout=5.0, trust_env=False) as client:
        env = app_env(tmp_path, CRASH_ORCHESTRATOR_URL=orch)
        first = procs.start("app", uvicorn_args(port), {**env, **fault_env(tmp_path, POINT)})
        wait_ready(procs, client, first, f"{app}/inflight")
        assert client.put(f"{app}{SERVE_PATH}").status_code == 200
        res = client.post(f"{orch}/e/key", json={"name": "crash/seq", "data": {"marker": "m"}})
        assert res.status_code == 200, res.text

        poll("the app to die at its fault point", START_DEADLINE, procs, first.poll)
        assert first.returncode == -signal.SIGKILL, procs.logs()
        mark = read_mark(tmp_path)
        assert mark is not None and mark.pid == first.pid, procs.logs()
        ledger = Path(env["CRASH_LEDGER"])
        before = [line.step for line in read_ledger(ledger)]
        assert before == ["s1", "s2", "s3"], procs.logs()  # three checkpoints, then the kill

        second = procs.start("app", uvicorn_args(port), env)
        wait_ready(procs, client, second, f"{app}/inflight")

        def completed() -> dict[str, object] | None:
            procs.assert_alive(second)
            runs = client.get(f"{orch}/v1/runs", params={"function_id": f"{APP_ID}-seq"})
            data = runs.json()["data"] if runs.status_code == 200 else []
            done = data and data[0]["status"] in ("completed", "failed")
            return dict(data[0]) if done else None

        run = poll("the run to finish", START_DEADLINE, procs, completed)
        assert run["status"] == "completed", (run, procs.logs())
        assert run["output"] == expected_output("m", "seq")
        lines = read_ledger(ledger)
        assert [line.step for line in lines] == steps_of("seq")  # each step exactly once
        assert {line.pid for line in lines[3:]} == {second.pid}
