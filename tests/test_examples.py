"""The example apps served the ways their docstrings say, as real subprocesses on loopback:
Flask (`flask run`, gunicorn), Django (runserver, gunicorn on WSGI, uvicorn on ASGI) and
FastAPI (uvicorn). Each run is started over HTTP and followed through /durable/v1/runs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests import ports

REPO = Path(__file__).resolve().parents[1]
FLASK_APP = REPO / "examples" / "flask_app.py"
DJANGO_PROJECT = REPO / "examples" / "django_project"
MANAGE = DJANGO_PROJECT / "manage.py"
PYTHON = sys.executable
START_DEADLINE = (
    30.0  # a server answers in about a second; the deadline turns a hang into a failure
)
RUN_DEADLINE = 20.0
STOP_GRACE = 10.0
CART = {"order_id": "o-7", "items": ["sku-1", "sku-2"], "email": "ada@example.com"}


def free_port() -> int:
    return ports.free_port()


def server_env(durable_dir: Path, runtime_dir: Path | None = None) -> dict[str, str]:
    """The test's environment without framework or durable settings, plus DURABLE_DIR (and a
    runtime directory, where gunicorn puts its control socket instead of ~/.gunicorn)."""
    drop = ("DURABLE_", "FLASK_", "DJANGO_", "WERKZEUG_", "RUN_MAIN", "GUNICORN_CMD_ARGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["DURABLE_DIR"] = str(durable_dir)
    if runtime_dir is not None:
        env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def command(way: str, port: int, *extra: str) -> list[str]:
    """The command line serving an example one way, as its docstring gives it."""
    bind = f"127.0.0.1:{port}"
    commands = {
        "flask-run": [PYTHON, "-m", "flask", "--app", str(FLASK_APP), "run", "--host", "127.0.0.1", "--port", str(port)],
        "flask-gunicorn": [PYTHON, "-m", "gunicorn", "--pythonpath", str(REPO), "examples.flask_app:app", "--bind", bind],
        "django-runserver": [PYTHON, str(MANAGE), "runserver", bind],
        "python-m-django-runserver": [PYTHON, "-m", "django", "runserver", bind, "--settings", "shopsite.settings", "--pythonpath", str(DJANGO_PROJECT)],
        "django-gunicorn": [PYTHON, "-m", "gunicorn", "--pythonpath", str(DJANGO_PROJECT), "shopsite.wsgi", "--bind", bind],
        "django-uvicorn": [PYTHON, "-m", "uvicorn", "--app-dir", str(DJANGO_PROJECT), "shopsite.asgi:application", "--host", "127.0.0.1", "--port", str(port)],
        "fastapi-uvicorn": [PYTHON, "-m", "uvicorn", "--app-dir", str(REPO), "examples.fastapi_app:app", "--host", "127.0.0.1", "--port", str(port)],
    }  # fmt: skip
    return commands[way] + list(extra)


@dataclasses.dataclass
class Server:
    """An example app served by a real server process (in a process group of its own)."""

    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path
    durable_dir: Path
    http: httpx.Client

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n--- server output ---\n{self.output}")

    def wait_until_answering(self, path: str = "/") -> None:
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"the server exited with code {self.proc.returncode} before answering")
            try:
                if self.http.get(path).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.fail(f"{self.base_url}{path} did not answer in {START_DEADLINE} s")

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.http.post(path, content=json.dumps(body))

    def send(self, name: str, data: dict[str, Any]) -> list[str]:
        res = self.post("/durable/e/dev", {"name": name, "data": data})
        if res.status_code != 200:
            self.fail(f"sending {name} answered {res.status_code}: {res.text}")
        ids: list[str] = res.json()["ids"]
        return ids

    def runs(self, function_id: str, status: str | None = None) -> list[dict[str, Any]]:
        params = {"function_id": function_id, **({"status": status} if status else {})}
        res = self.http.get("/durable/v1/runs", params=params)
        if res.status_code != 200:
            self.fail(f"listing runs answered {res.status_code}: {res.text}")
        data: list[dict[str, Any]] = res.json()["data"]
        return data

    def wait_for_run(
        self, function_id: str, status: str = "completed", deadline: float = RUN_DEADLINE
    ) -> dict[str, Any]:
        """The one run of `function_id`, once it reached `status` (a failed run fails the test)."""
        end = time.monotonic() + deadline
        runs: list[dict[str, Any]] = []
        while time.monotonic() < end:
            runs = self.runs(function_id)
            if len(runs) > 1:
                self.fail(f"expected one run of {function_id}, got {runs}")
            if runs and runs[0]["status"] == status:
                return runs[0]
            if runs and runs[0]["status"] in ("failed", "cancelled"):
                self.fail(f"the run of {function_id} ended {runs[0]['status']}: {runs[0]}")
            time.sleep(0.05)
        self.fail(f"no run of {function_id} reached {status!r} in {deadline} s: {runs}")
        raise AssertionError  # unreachable: fail() raises

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(STOP_GRACE)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # the process group may outlive its leader (a reloader's child, a gunicorn worker)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


ServeFactory = Callable[..., Server]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    """`serve(way, *extra_args)` -> a started `Server`, working in a temporary directory with
    DURABLE_DIR in it; every server is stopped on teardown."""
    servers: list[Server] = []

    def start(way: str, *extra: str, wait: bool = True) -> Server:
        port = free_port()
        workdir = tmp_path / f"cwd-{len(servers)}"
        workdir.mkdir()
        durable_dir = tmp_path / f"durable-{len(servers)}"
        log = tmp_path / f"server-{len(servers)}.log"
        runtime_dir = tmp_path / f"run-{len(servers)}"
        runtime_dir.mkdir(mode=0o700)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command(way, port, *extra),
                cwd=workdir,
                env=server_env(durable_dir, runtime_dir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        base_url = f"http://127.0.0.1:{port}"
        server = Server(
            proc, base_url, log, durable_dir, httpx.Client(base_url=base_url, timeout=10)
        )
        servers.append(server)
        if wait:
            server.wait_until_answering()
        return server

    yield start
    for server in reversed(servers):
        server.stop()
    for index in range(len(servers)):
        assert not any((tmp_path / f"cwd-{index}").iterdir()), (
            "a server wrote in its working directory"
        )


def check_shop(server: Server, app_id: str) -> None:
    """The Flask and Django examples: a checkout workflow announces an order; the order's run
    waits for an approval event, then ships; a sync function runs from an event."""
    res = server.post("/api/checkout", CART)
    assert res.status_code == 200, res.text
    run_id = res.json()["workflowRunId"]
    checkout = server.wait_for_run(f"{app_id}-route-api-checkout")
    assert checkout["run_id"] == run_id
    assert checkout["output"] == {"order_id": "o-7", "amount": 42.5}

    waiting = server.wait_for_run(f"{app_id}-process-order", status="waiting")
    assert waiting["event"]["data"] == {"order_id": "o-7", "amount": 42.5, "email": CART["email"]}
    server.send("shop/order.approved", {"order_id": "o-7"})
    order = server.wait_for_run(f"{app_id}-process-order")
    assert order["output"] == {
        "order": "o-7",
        "status": "shipped",
        "charge": "ch_o-7",
        "label": "label-o-7",
        "email": f"sent to {CART['email']}",
    }

    server.send("shop/stock.low", {"sku": "sku-2"})
    restock = server.wait_for_run(f"{app_id}-restock")
    assert restock["output"] == {
        "sku": "sku-2",
        "supplier": "supplier-of-sku-2",
        "quantity": 24,
        "purchase_order": "po-sku-2-24",
    }


@pytest.mark.parametrize(
    ("way", "extra"),
    [
        ("flask-run", ()),
        ("flask-gunicorn", ()),
        ("django-runserver", ("--noreload",)),
        ("django-gunicorn", ()),
        ("django-uvicorn", ()),
    ],
)
def test_shop_example_runs_to_completion(
    serve: ServeFactory, way: str, extra: tuple[str, ...]
) -> None:
    server = serve(way, *extra)
    check_shop(server, "flask-shop" if way.startswith("flask") else "django-shop")
    assert (server.durable_dir / "durable.db").exists()


def test_fastapi_example_runs_to_completion(serve: ServeFactory) -> None:
    server = serve("fastapi-uvicorn")
    order = {"id": "o-9", "items": ["sku-1", "sku-2"], "amount": 42.5, "email": "ada@example.com"}
    server.send("shop/order.created", order)
    server.wait_for_run("shop-process-order", status="waiting")
    server.send("shop/order.approved", {"order_id": "o-9"})
    run = server.wait_for_run("shop-process-order")
    assert run["output"] == {
        "order": "o-9",
        "status": "shipped",
        "reserved": {"sku-1": 1, "sku-2": 1},
        "charge": "ch_o-9",
        "label": "label-o-9",
        "email": "sent to ada@example.com",
    }
    assert (server.durable_dir / "durable.db").exists()
