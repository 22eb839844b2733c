"""The peer harness: the `inngest` app and our orchestrator (`durable dev`), each a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from tests import ports

APP_SCRIPT = Path(__file__).with_name("inngest_app.py")
DURABLE_BIN = Path(sys.executable).with_name("durable")
SERVE_PATH = "/api/inngest"
START_DEADLINE = 60.0  # only turns a hang into a failure; a loaded machine needs more than 20 s
RUN_DEADLINE = 15.0
POLL_INTERVAL = 0.05
FUNCTION_IDS = {
    "peer-loop",
    "peer-sleep",
    "peer-wait",
    "peer-sent",
    "peer-sender",
    "peer-child",
    "peer-invoker",
    "peer-parallel",
    "peer-retry",
    "peer-doomed",
    "peer-doomed-failure",
    "peer-batched",
    "peer-serial",
    "peer-cancellable",
    "peer-bulky",
}
FINISHED = {"completed", "failed", "cancelled"}

T = TypeVar("T")


def free_port() -> int:
    return ports.free_port()


class Process:
    """A subprocess whose output goes to a log file; `stop()` terminates, then kills."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        self._out.flush()
        text = self.log.read_text(errors="replace")
        return f"--- {self.name} (exit code {self.proc.poll()}) ---\n{text[-chars:]}"

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._out.close()


class Peer:
    """The orchestrator's HTTP API, with polling helpers that fail with both processes' logs."""

    def __init__(self, url: str, processes: list[Process]) -> None:
        self.url = url
        self.processes = processes
        self.http = httpx.Client(base_url=url, timeout=10)

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.processes)

    def until(
        self,
        what: str,
        probe: Callable[[], T | None],
        deadline: float = RUN_DEADLINE,
    ) -> T:
        """Poll `probe` until it returns something other than None; fail after `deadline` s."""
        end = time.monotonic() + deadline
        last: Any = None
        while time.monotonic() < end:
            for p in self.processes:
                if not p.alive():
                    pytest.fail(f"{p.name} exited while waiting for {what}\n{self.logs()}")
            last = probe()
            if last is not None:
                return last
            time.sleep(POLL_INTERVAL)
        pytest.fail(f"timed out after {deadline} s waiting for {what}\n{self.logs()}")

    def get(self, path: str, **params: Any) -> Any:
        res = self.http.get(path, params=params)
        assert res.status_code == 200, f"GET {path} {params} -> {res.status_code} {res.text}"
        return res.json()

    def send(self, *events: dict[str, Any]) -> list[str]:
        res = self.http.post("/e/peer-test-key", json=list(events))
        assert res.status_code == 200, f"POST /e -> {res.status_code} {res.text}"
        body = res.json()
        assert len(body["ids"]) == len(events), body
        return list(body["ids"])

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.get(f"/v1/runs/{run_id}"))

    def runs(self, fn_id: str, **data: Any) -> list[dict[str, Any]]:
        """Runs of `fn_id` whose triggering event's data contains `data`."""
        rows = self.get("/v1/runs", function_id=fn_id, limit=1000)["data"]
        return [
            r
            for r in rows
            if all((r["event"] or {}).get("data", {}).get(k) == v for k, v in data.items())
        ]

    def one_run(self, fn_id: str, status: set[str] | None = None, **data: Any) -> dict[str, Any]:
        """The single run of `fn_id` matching `data`, once its status is in `status`
        (default: finished), with its steps."""
        wanted = status or FINISHED

        def probe() -> dict[str, Any] | None:
            rows = self.runs(fn_id, **data)
            assert len(rows) <= 1, f"more than one run of {fn_id} for {data}: {rows}"
            if rows and rows[0]["status"] in wanted:
                return self.run(rows[0]["run_id"])
            return None

        return self.until(f"a run of {fn_id} with data {data} in status {sorted(wanted)}", probe)


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """The `inngest` app under uvicorn and `durable dev` syncing it, both ready to run."""
    tmp = tmp_path_factory.mktemp("peer")
    orch_port, app_port = free_port(), free_port()
    orch_url = f"http://127.0.0.1:{orch_port}"
    app_url = f"http://127.0.0.1:{app_port}{SERVE_PATH}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INNGEST_", "DURABLE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    processes: list[Process] = []
    peer = None
    try:
        processes.append(
            Process(
                "inngest app",
                [sys.executable, str(APP_SCRIPT)],
                {**env, "PEER_APP_PORT": str(app_port), "PEER_ORCHESTRATOR_URL": orch_url},
                tmp / "app.log",
            )
        )
        processes.append(
            Process(
                "durable dev",
                [
                    str(DURABLE_BIN),
                    "dev",
                    "--port",
                    str(orch_port),
                    "--db",
                    str(tmp / "dev.db"),
                    "--fast-retries",
                    "-u",
                    app_url,
                ],
                env,
                tmp / "orchestrator.log",
            )
        )
        peer = Peer(orch_url, processes)

        def synced() -> set[str] | None:
            try:
                rows = peer.http.get("/v1/functions").json()["data"]
            except httpx.TransportError:
                return None
            ids = {f["function_id"] for f in rows}
            return ids if ids >= FUNCTION_IDS else None

        registered = peer.until("the app's functions to be synced", synced, START_DEADLINE)
        assert registered == FUNCTION_IDS
        yield peer
    finally:
        if peer is not None:
            peer.http.close()
        for p in reversed(processes):
            p.stop()
