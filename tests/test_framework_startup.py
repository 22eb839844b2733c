"""Where each framework starts the embedded orchestrator: once, in the process that serves.

The example apps run as real subprocesses (see test_examples.py). Which process hosts the
orchestrator is read from /proc: the one holding the SQLite store's lock file open."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from test_examples import (
    CART,
    DJANGO_PROJECT,
    MANAGE,
    PYTHON,
    START_DEADLINE,
    ServeFactory,
    Server,
    serve,
    server_env,
)

__all__ = ["serve"]  # the fixture, shared with test_examples.py

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def children(pid: int) -> set[int]:
    return {
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and parent_of(int(p.name)) == pid
    }


def holders(path: Path) -> set[int]:
    """The processes that have `path` open."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == str(path):
                    found.add(int(proc.name))
            except OSError:
                continue
    return found


def lock_file(server: Server) -> Path:
    return server.durable_dir / "durable.db.lock"


def check_runs_complete(server: Server, app_id: str) -> None:
    """A route workflow started by a plain POST and a function started by an event complete."""
    res = server.post("/api/checkout", CART)
    assert res.status_code == 200, res.text
    assert server.wait_for_run(f"{app_id}-route-api-checkout")["output"] == {
        "order_id": "o-7",
        "amount": 42.5,
    }
    server.send("shop/stock.low", {"sku": "sku-1"})
    assert server.wait_for_run(f"{app_id}-restock")["output"]["purchase_order"] == "po-sku-1-24"


def check_hosted_by_reloaded_child(server: Server, app_id: str) -> None:
    check_runs_complete(server, app_id)
    [child] = children(server.proc.pid)  # the reloader's child serves the requests
    assert holders(lock_file(server)) == {child}


def test_flask_run_debug_hosts_it_in_the_reloaded_child(serve: ServeFactory) -> None:
    server = serve("flask-run", "--debug")
    check_hosted_by_reloaded_child(server, "flask-shop")


@pytest.mark.parametrize("way", ["django-runserver", "python-m-django-runserver"])
def test_django_runserver_hosts_it_in_the_reloaded_child(serve: ServeFactory, way: str) -> None:
    server = serve(way)
    check_hosted_by_reloaded_child(server, "django-shop")


DJANGO_OPTIONS = ["--settings", "shopsite.settings", "--pythonpath", str(DJANGO_PROJECT)]


@pytest.mark.parametrize(
    ("cli", "options"),
    [
        ([PYTHON, str(MANAGE)], []),
        ([PYTHON, "-m", "django"], DJANGO_OPTIONS),
        ([str(Path(PYTHON).parent / "django-admin")], DJANGO_OPTIONS),
    ],
    ids=["manage.py", "python -m django", "django-admin"],
)
def test_django_management_commands_do_not_start_it(
    tmp_path: Path, cli: list[str], options: list[str]
) -> None:
    durable_dir = tmp_path / "durable"
    for name in ("check", "diffsettings"):
        done = subprocess.run(
            [*cli, name, *options],
            cwd=tmp_path,
            env=server_env(durable_dir),
            capture_output=True,
            timeout=START_DEADLINE,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert not durable_dir.exists(), f"`{name}` started the orchestrator"
    assert list(tmp_path.iterdir()) == []


# -- gunicorn with two workers ----------------------------------------------------------------

GUNICORN = pytest.mark.parametrize(
    ("way", "app_id"), [("flask-gunicorn", "flask-shop"), ("django-gunicorn", "django-shop")]
)
Answer = tuple[int, bytes]


def wait_for_two_workers(server: Server) -> int:
    """The worker hosting the orchestrator, once both workers have booted."""
    deadline = time.monotonic() + START_DEADLINE
    workers: set[int] = set()
    hosts: set[int] = set()
    while time.monotonic() < deadline:
        workers = children(server.proc.pid)
        hosts = holders(lock_file(server)) if lock_file(server).exists() else set()
        if len(workers) == 2 and len(hosts) == 1:
            [host] = hosts
            assert host in workers, "the gunicorn master hosts the orchestrator"
            return host
        time.sleep(0.05)
    server.fail(
        f"expected two workers, one hosting the orchestrator: workers {workers}, hosts {hosts}"
    )
    raise AssertionError  # unreachable: fail() raises


def read_response(sock: socket.socket) -> Answer:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def ask_each_worker(server: Server, method: str, path: str, body: object = None) -> list[Answer]:
    """The same request, answered once by each of two sync workers: a sync worker handles one
    connection at a time, so while one waits for the end of a request's headers, the other
    takes the next connection."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    ).encode()
    address = ("127.0.0.1", int(server.base_url.rsplit(":", 1)[1]))
    with socket.create_connection(address, timeout=10) as held:
        held.sendall(head)  # the worker that accepts this one waits for the blank line
        with socket.create_connection(address, timeout=10) as other:
            other.sendall(head + b"\r\n" + payload)
            first = read_response(other)
        held.sendall(b"\r\n" + payload)
        return [first, read_response(held)]


@GUNICORN
def test_gunicorn_two_workers_one_hosts_it_both_serve(
    serve: ServeFactory, way: str, app_id: str
) -> None:
    """One worker owns the SQLite store; the other forwards to it, so whichever worker gets
    a request, events are accepted, runs complete and the API answers."""
    server = serve(way, "--workers", "2")
    host = wait_for_two_workers(server)

    for sku in ("sku-3", "sku-4"):
        event = {"name": "shop/stock.low", "data": {"sku": sku}}
        answers = ask_each_worker(server, "POST", "/durable/e/dev", event)
        assert [status for status, _ in answers] == [200, 200], answers
        assert all(len(json.loads(body)["ids"]) == 1 for _, body in answers)

    deadline = time.monotonic() + START_DEADLINE
    runs: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        path = f"/durable/v1/runs?function_id={app_id}-restock"
        listed = ask_each_worker(server, "GET", path)
        assert [status for status, _ in listed] == [200, 200], listed
        runs = json.loads(listed[0][1])["data"]
        if len(runs) == 4 and all(r["status"] == "completed" for r in runs):
            break
        time.sleep(0.05)
    assert len(runs) == 4 and all(r["status"] == "completed" for r in runs), runs
    assert sorted(r["output"]["sku"] for r in runs) == ["sku-3", "sku-3", "sku-4", "sku-4"]
    views = ask_each_worker(server, "GET", f"/durable/v1/runs?function_id={app_id}-restock")
    assert json.loads(views[0][1]) == json.loads(views[1][1])  # one store seen from both workers
    assert holders(lock_file(server)) == {host}


@GUNICORN
def test_gunicorn_route_workflow_starts_from_either_worker(
    serve: ServeFactory, way: str, app_id: str
) -> None:
    server = serve(way, "--workers", "2")
    wait_for_two_workers(server)
    answers = ask_each_worker(server, "POST", "/api/checkout", CART)
    assert [status for status, _ in answers] == [200, 200], answers
    assert all("workflowRunId" in json.loads(body) for _, body in answers)


def test_gunicorn_preload_serves_without_hanging(serve: ServeFactory) -> None:
    """With --preload the app is imported (and the orchestrator started) in the master, which
    forks the worker: the worker forwards to the master's orchestrator, and no request hangs."""
    server = serve("flask-gunicorn", "--preload", "--graceful-timeout", "1")
    server.http.timeout = httpx.Timeout(3.0)  # a request settles in milliseconds
    try:
        check_runs_complete(server, "flask-shop")
    except httpx.TimeoutException:
        server.fail("a request that needs the orchestrator hung in the forked worker")
    [worker] = children(server.proc.pid)
    # The master owns the store; the forked worker inherits its open lock file, not its lock.
    assert server.proc.pid in holders(lock_file(server)) <= {server.proc.pid, worker}
