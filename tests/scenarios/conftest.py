"""`served_app`: the scenario app of one framework under a real server, and a client for it."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from .apps import FRAMEWORKS, start

HTTP_TIMEOUT = 10.0
# Runs settle in well under a second; the deadline only turns a hang into a failure.
RUN_DEADLINE = 20.0
POLL_EVERY = 0.02
FINISHED = ("completed", "failed", "cancelled")


@dataclasses.dataclass
class ServedApp:
    """A served app, driven over HTTP: its events, route workflows and the /durable API."""

    framework: str
    store: str
    base_url: str
    app_id: str
    http: httpx.Client

    def fn_id(self, local_id: str) -> str:
        return f"{self.app_id}-{local_id}"

    def _ok(self, res: httpx.Response) -> Any:
        assert res.status_code < 300, f"{res.request.method} {res.request.url}: {res.text}"
        return res.json()

    def send(self, events: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
        """Send events to the app's event intake (dev mode: any key)."""
        ids: list[str] = self._ok(self.http.post("/durable/e/dev", json=events))["ids"]
        return ids

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.http.post(path, json=body)

    def signal(self, name: str, data: Any) -> httpx.Response:
        return self.http.post("/durable/v1/signals", json={"signal": name, "data": data})

    def runs(self, local_id: str) -> list[dict[str, Any]]:
        query = {"function_id": self.fn_id(local_id), "limit": 1000}
        runs: list[dict[str, Any]] = self._ok(self.http.get("/durable/v1/runs", params=query))[
            "data"
        ]
        return runs

    def run(self, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self._ok(self.http.get(f"/durable/v1/runs/{run_id}"))
        return run

    def events(self, name: str) -> list[dict[str, Any]]:
        query = {"name": name, "limit": 1000}
        events: list[dict[str, Any]] = self._ok(self.http.get("/durable/v1/events", params=query))[
            "data"
        ]
        return events

    def find_run(self, local_id: str, **event_data: Any) -> dict[str, Any]:
        """The run of `local_id` whose triggering event's data holds `event_data` (polled)."""
        deadline = time.monotonic() + RUN_DEADLINE
        while True:
            for run in self.runs(local_id):
                data = (run.get("event") or {}).get("data") or {}
                if all(data.get(k) == v for k, v in event_data.items()):
                    return run
            assert time.monotonic() < deadline, f"no run of {local_id} for {event_data}"
            time.sleep(POLL_EVERY)

    def wait_run(self, run_id: str, statuses: tuple[str, ...] = FINISHED) -> dict[str, Any]:
        """The run, with its steps, once its status is one of `statuses` (polled)."""
        deadline = time.monotonic() + RUN_DEADLINE
        while True:
            run = self.run(run_id)
            if run["status"] in statuses:
                return run
            assert time.monotonic() < deadline, (
                f"run {run_id} is still {run['status']} ({run['reason']}), not {statuses}"
            )
            time.sleep(POLL_EVERY)


STORES = ("sqlite", "postgres")


@pytest.fixture(
    scope="module",
    params=[(f, s) for s in STORES for f in FRAMEWORKS],
    ids=[f"{f}-{s}" for s in STORES for f in FRAMEWORKS],
)
def served_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedApp]:
    """The framework's app under its real server, with a real embedded orchestrator on a fresh
    database (a SQLite file, or a PostgreSQL schema) and fast retries; one per module."""
    framework, store = request.param
    schema = None
    with pytest.MonkeyPatch.context() as env:  # read when the app's orchestrator is created
        env.setenv("DURABLE_DIR", str(tmp_path_factory.mktemp(f"durable-{framework}")))
        env.setenv("DURABLE_FAST_RETRIES", "1")
        if store == "postgres":
            pg_url: str = request.getfixturevalue("pg_url")
            schema = f"scn_{uuid.uuid4().hex[:12]}"
            env.setenv(
                "DURABLE_DATABASE_URL", f"{pg_url}{'&' if '?' in pg_url else '?'}schema={schema}"
            )
        running = start(framework)
    try:
        with httpx.Client(base_url=running.base_url, timeout=HTTP_TIMEOUT) as http:
            yield ServedApp(framework, store, running.base_url, running.app_id, http)
    finally:
        running.stop()
        if schema is not None:
            with psycopg.connect(request.getfixturevalue("pg_url"), autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
