"""Shared fixtures: the app served through each adapter, request builders, a real uvicorn server."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.testclient import TestClient

from durable_core import Durable

SERVE_PATH = "/api/durable"
FRAMEWORKS = ["fastapi", "starlette"]
SERVER_START_DEADLINE = 10.0
SERVER_STOP_GRACE = 3


# PostgreSQL: CI always runs these tests (and fails if the server is unreachable); elsewhere
# they run when DURABLE_TEST_POSTGRES_URL is set.
IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("DURABLE_TEST_POSTGRES_URL") or (
    "postgresql://postgres@127.0.0.1:5432/test" if IN_CI else None
)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks on the workers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `pytest -n N --dist loadgroup`, the tests that share a module-scoped fixture of
    this suite (a server, a subprocess pair, a built wheel) go to one worker together, so each
    such fixture starts once, as in a serial run, instead of once per worker."""
    for item in items:
        group = _shared_fixture_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def _shared_fixture_group(item: pytest.Item) -> str | None:
    """`<module>[<param>,...]` when `item` uses a module-scoped fixture of the suite: one group
    per module and per parameter of its parametrized module-scoped fixtures."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    params = item.callspec.params if hasattr(item, "callspec") else {}
    shared = False
    keys = []
    for name in sorted(item.fixturenames):
        defs = info.name2fixturedefs.get(name)
        # A plugin's fixtures have an empty baseid; the suite's own are under tests/.
        if defs and defs[-1].scope in ("module", "package") and defs[-1].baseid:
            shared = True
            if name in params:
                keys.append(str(params[name]))
    if not shared:
        return None
    return item.nodeid.split("::")[0] + (f"[{','.join(keys)}]" if keys else "")


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A reachable PostgreSQL server for the tests."""
    if PG_URL is None:
        pytest.skip("PostgreSQL tests run in CI, or with DURABLE_TEST_POSTGRES_URL set")
    import psycopg

    try:
        psycopg.connect(PG_URL, connect_timeout=5).close()
    except psycopg.OperationalError as err:
        message = f"PostgreSQL at {PG_URL} is unreachable: {err}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return PG_URL


def _with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    """A database URL whose tables live in a fresh schema, dropped afterwards."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield _with_schema(pg_url, schema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store in turn: a SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/durable.db"
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.fixture(autouse=True)
def _durable_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """An embedded orchestrator started by any test keeps its files out of the repo."""
    monkeypatch.setenv("DURABLE_DIR", str(tmp_path_factory.mktemp("durable")))


def step_hash(step_id: str, n: int = 0) -> str:
    """The hashed id of the (n+1)-th use of `step_id` in a run."""
    return hashlib.sha1((step_id if n == 0 else f"{step_id}:{n}").encode()).hexdigest()


def exec_body(
    event: dict[str, Any] | None = None,
    *,
    steps: dict[str, Any] | None = None,
    events: list[dict[str, Any]] | None = None,
    run_id: str = "r1",
    attempt: int = 0,
    max_attempts: int | None = 3,
    **extra: Any,
) -> dict[str, Any]:
    """An execution request body (protocol section 4)."""
    event = event if event is not None else {"name": "test/event", "data": {}}
    return {
        "event": event,
        "events": events if events is not None else [event],
        "steps": steps or {},
        "ctx": {
            "run_id": run_id,
            "attempt": attempt,
            "max_attempts": max_attempts,
            "disable_immediate_execution": False,
            "stack": {"stack": list(steps or {}), "current": 0},
        },
        "use_api": False,
        "version": 2,
        **extra,
    }


def exec_query(fn_id: str, step: str = "step") -> str:
    return urllib.parse.urlencode({"fnId": fn_id, "stepId": step})


def build_app(
    framework: str, durable: Durable, path: str = SERVE_PATH, *, embedded: bool | None = False
) -> Starlette:
    """A FastAPI or Starlette app serving `durable` at `path`.

    The embedded orchestrator is off unless asked for (`embedded=None` keeps the adapter's
    default), so the app only answers the serve protocol and writes no files.
    """
    if framework == "fastapi":
        from adapters.fastapi import Serve as FastAPIServe

        fastapi_app = FastAPI()
        FastAPIServe(fastapi_app, durable, path=path, embedded=embedded)
        return fastapi_app
    if framework == "starlette":
        from adapters.starlette import Serve as StarletteServe

        starlette_app = Starlette()
        StarletteServe(starlette_app, durable, path=path, embedded=embedded)
        return starlette_app
    raise ValueError(f"unknown framework {framework!r}")


@dataclasses.dataclass
class Served:
    """An app served through one adapter, with a TestClient to call it."""

    framework: str
    client: TestClient
    path: str

    def url(self, fn_id: str, step: str = "step") -> str:
        return f"{self.path}?{exec_query(fn_id, step)}"

    def execute(
        self,
        fn_id: str,
        body: dict[str, Any],
        step: str = "step",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        return self.client.post(self.url(fn_id, step), json=body, headers=headers)


ServeFactory = Callable[..., Served]


@pytest.fixture(params=FRAMEWORKS)
def served(request: pytest.FixtureRequest) -> Iterator[ServeFactory]:
    """`served(durable, path=...)` -> a `Served` for the parametrized framework."""
    clients: list[TestClient] = []

    def make(durable: Durable, path: str = SERVE_PATH) -> Served:
        client = TestClient(build_app(request.param, durable, path))
        clients.append(client)
        return Served(request.param, client, path)

    yield make
    for client in clients:
        client.close()


class UvicornServer:
    """An ASGI app under real uvicorn on 127.0.0.1, in a background thread."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            ws="none",
            access_log=False,
            timeout_graceful_shutdown=SERVER_STOP_GRACE,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + SERVER_START_DEADLINE
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn exited before it started serving")
            if self._server.started:
                try:
                    httpx.get(self.base_url + "/", timeout=1.0)
                except httpx.TransportError:
                    pass
                else:
                    return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"uvicorn did not answer on {self.base_url} in time")

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=SERVER_START_DEADLINE)
        self._sock.close()


@pytest.fixture
def uvicorn_server() -> Iterator[Callable[[Any], UvicornServer]]:
    """`uvicorn_server(app)` -> a started `UvicornServer`; every server stops on teardown."""
    servers: list[UvicornServer] = []

    def start(app: Any) -> UvicornServer:
        server = UvicornServer(app)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in reversed(servers):
        server.stop()
