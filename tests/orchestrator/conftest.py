"""Fixtures for the orchestrator tests: an app with the embedded orchestrator, polled through
its /durable API, under Starlette's TestClient or a real uvicorn server.

Every test here runs once per store (`database_url`: SQLite, then a PostgreSQL schema), which
the embedded orchestrator picks up from DURABLE_DATABASE_URL. Modules whose tests do not depend
on the store (expressions, the SQLite store itself, the `durable dev` CLI) pin it to SQLite
with `sqlite_only`."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tests import ports

from adapters.fastapi import Serve
from durable_core import Durable

API = "/durable"
# Seconds; every run here finishes in well under one, and a subprocess starts in a few: the
# deadline only turns a hang into a failure, with room for a machine busy with parallel tests.
DEADLINE = 30.0
FINISHED = ("completed", "failed", "cancelled")


def free_port() -> int:
    return ports.free_port()


def wait_until(what: str, probe: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    """Poll `probe` until it returns something truthy; fail naming `what` after `deadline`."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        last = probe()
        if last:
            return last
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what} (last probe: {last!r})")


class Harness:
    """An app with the embedded orchestrator, driven through its HTTP API."""

    def __init__(self, client: httpx.Client, durable: Durable) -> None:
        self.client = client
        self.durable = durable

    def fn_id(self, local_id: str) -> str:
        return f"{self.durable.app_id}-{local_id}"

    # -- requests -------------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(API + path, params=params)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        if body is None and not kw:
            return self.client.post(API + path)
        if body is not None:
            kw["json"] = body
        return self.client.post(API + path, **kw)

    def send(self, name: str, data: dict[str, Any] | None = None, **extra: Any) -> list[str]:
        res = self.post("/e/test-key", {"name": name, "data": data or {}, **extra})
        assert res.status_code == 200, res.text
        return list(res.json()["ids"])

    def runs(self, local_id: str | None = None, **params: Any) -> list[dict[str, Any]]:
        if local_id is not None:
            params["function_id"] = self.fn_id(local_id)
        res = self.get("/v1/runs", **params)
        assert res.status_code == 200, res.text
        return list(res.json()["data"])

    def run(self, run_id: str) -> dict[str, Any]:
        res = self.get(f"/v1/runs/{run_id}")
        assert res.status_code == 200, res.text
        return dict(res.json())

    def events(self, name: str) -> list[dict[str, Any]]:
        res = self.get("/v1/events", name=name)
        assert res.status_code == 200, res.text
        return list(res.json()["data"])

    # -- waiting --------------------------------------------------------------------------

    def wait_runs(self, local_id: str, count: int = 1) -> list[dict[str, Any]]:
        """The runs of a function once there are at least `count`, oldest first."""
        runs = wait_until(
            f"{count} run(s) of {local_id}",
            lambda: (r := self.runs(local_id)) and len(r) >= count and r,
        )
        return list(reversed(runs))

    def wait_status(self, run_id: str, *statuses: str) -> dict[str, Any]:
        """The run (with steps) once its status is one of `statuses` (default: finished)."""
        wanted = statuses or FINISHED
        return dict(
            wait_until(
                f"run {run_id} to be {'/'.join(wanted)}",
                lambda: (r := self.run(run_id))["status"] in wanted and r,
            )
        )

    def finish(self, run_id: str) -> dict[str, Any]:
        return self.wait_status(run_id)

    def only_run(self, local_id: str) -> dict[str, Any]:
        """Wait for the single run of `local_id` to finish and return it with its steps."""
        return self.finish(self.wait_runs(local_id)[0]["run_id"])


def _prepare(durable: Durable, app: FastAPI | None) -> FastAPI:
    app = app if app is not None else FastAPI()
    Serve(app, durable)
    return app


class UvicornApp:
    """An app under real uvicorn (lifespan on, so an embedded orchestrator starts)."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", ws="none", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        wait_until("uvicorn to start", lambda: self.server.started or not self.thread.is_alive())
        if not self.thread.is_alive():
            raise RuntimeError("uvicorn exited before it started serving")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=DEADLINE)
        self.sock.close()


@pytest.fixture(autouse=True)
def durable_env(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, database_url: str) -> Any:
    """Every test gets its own database (a SQLite file, or a fresh PostgreSQL schema dropped
    afterwards) and fast retries; no ambient configuration."""
    for name in (
        "DURABLE_ORCHESTRATOR_URL",
        "DURABLE_SIGNING_KEY",
        "DURABLE_SIGNING_KEY_FALLBACK",
        "DURABLE_EVENT_KEY",
        "DURABLE_DEV",
        "DURABLE_SERVE_ORIGIN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DURABLE_DIR", str(tmp_path / "durable"))
    monkeypatch.setenv("DURABLE_FAST_RETRIES", "1")
    monkeypatch.setenv("DURABLE_DATABASE_URL", database_url)
    return tmp_path


sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
"""`pytestmark = sqlite_only`: the module's tests run once, on SQLite."""
postgres_only = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
"""For tests of what only a store several processes share can show."""


StartFactory = Callable[..., Harness]


@pytest.fixture
def embedded() -> Iterator[StartFactory]:
    """`embedded(durable, app=None, server="testclient"|"uvicorn")` -> a started `Harness`."""
    stops: list[Callable[[], None]] = []

    def start(durable: Durable, app: FastAPI | None = None, server: str = "testclient") -> Harness:
        served = _prepare(durable, app)
        if server == "testclient":
            client = TestClient(served)
            client.__enter__()
            stops.append(lambda: client.__exit__(None, None, None))
            return Harness(client, durable)
        if server == "uvicorn":
            srv = UvicornApp(served)
            srv.start()
            http = httpx.Client(base_url=srv.base_url, timeout=DEADLINE)
            stops.append(srv.stop)
            stops.append(http.close)
            return Harness(http, durable)
        raise ValueError(f"unknown server {server!r}")

    yield start
    for stop in reversed(stops):
        stop()
