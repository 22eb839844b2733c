"""Under `gunicorn -w 2` one worker owns the SQLite store and hosts the embedded orchestrator;
the other forwards to it, and takes over within seconds if the host stops (README, "Under a
server with several worker processes"). Here the host dies by SIGKILL at a fault point in the
middle of 40 runs (the sync functions of `ledger_app.create_wsgi_app`), and the surviving
worker, or the one gunicorn starts in its place, finishes every run with its exact output before
the first lease the dead host held would have run out. No step is lost, a step whose result was
stored before the kill never runs again, and only the steps in flight at the kill run twice.

The master and the other worker are stopped (SIGSTOP) before the events are sent, so the
database can be read as the dead host left it before anyone takes over; they are continued
right after.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from .harness import (
    HERE,
    START_DEADLINE,
    Database,
    Fault,
    Line,
    Processes,
    app_env,
    assert_kill_landed_mid_run,
    check_recovery,
    client,
    fault_env,
    free_port,
    get_json,
    poll,
    procs,
    read_ledger,
    read_mark,
    send_events,
    wait_all_completed,
)

__all__ = ["client", "procs"]  # the fixtures

pytestmark = [
    pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc"),
    pytest.mark.serial,  # the takeover must beat a lease: no other tests' load
]

# The sync functions reach `step.ran` 200 times and `checkpoint.committed` 95 times in all.
POINTS = ["step.ran:100", "checkpoint.committed:45"]


def state_of(pid: int) -> str | None:
    """The process's state letter (R, S, T, Z, ...), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def children(pid: int) -> set[int]:
    """The live child processes of `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, parent = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(parent) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def holders(path: Path) -> set[int]:
    """The processes that have `path` open (the store's lock file: the host)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == str(path):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def stop(procs: Processes, *pids: int) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        poll(f"pid {pid} to stop", START_DEADLINE, procs, lambda p=pid: state_of(p) == "T" or None)


@pytest.mark.parametrize("point", POINTS)
def test_gunicorn_worker_takes_over_from_the_killed_host(
    tmp_path: Path, procs: Processes, client: httpx.Client, point: str
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    runtime_dir = tmp_path / "run"  # gunicorn's control socket, instead of ~/.gunicorn
    runtime_dir.mkdir(mode=0o700)
    env = app_env(tmp_path, **fault_env(tmp_path, point), XDG_RUNTIME_DIR=str(runtime_dir))
    ledger = Path(env["CRASH_LEDGER"])
    lock = tmp_path / "durable" / "durable.db.lock"
    args = [
        sys.executable, "-m", "gunicorn", "--workers", "2", "--pythonpath", str(HERE),
        "ledger_app:create_wsgi_app()", "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "5",
    ]  # fmt: skip
    master = procs.start("gunicorn", args, env, group=True)

    def booted() -> tuple[int, int] | None:
        procs.assert_alive(master)
        workers = children(master.pid)
        hosts = holders(lock) if lock.exists() else set()
        if len(workers) != 2 or len(hosts) != 1 or not hosts <= workers:
            return None
        if get_json(client, f"{base}/durable/v1/runs") is None:
            return None
        [host] = hosts
        [other] = workers - hosts
        return host, other

    host, other = poll("two workers, one hosting the orchestrator", START_DEADLINE, procs, booted)
    stop(procs, master.pid, other)  # the host alone accepts connections now
    send_events(client, f"{base}/durable/e/dev")

    def host_died() -> bool | None:
        return True if state_of(host) in (None, "Z") and read_mark(tmp_path) else None

    poll(f"the host to reach {point}", START_DEADLINE, procs, host_died)
    assert read_mark(tmp_path) == Fault(point, host), procs.logs()
    at_kill = Database(sqlite_path=tmp_path / "durable" / "durable.db").at_kill()
    assert_kill_landed_mid_run(at_kill)
    for pid in (master.pid, other):
        os.kill(pid, signal.SIGCONT)

    runs = wait_all_completed(procs, client, f"{base}/durable/v1/runs", [master], at_kill)
    [new_host] = holders(lock)
    assert new_host in children(master.pid) - {host}, f"host {new_host}\n{procs.logs()}"
    lines = read_ledger(ledger)
    assert {line.pid for line in lines} <= {host, new_host}, procs.logs()

    def in_flight(a: Line, b: Line) -> str | None:
        if (a.pid, b.pid) != (host, new_host):
            return f"pids {a.pid}, {b.pid} (killed host {host}, new host {new_host})"
        return None

    check_recovery(runs, lines, at_kill, in_flight)
    if point.startswith("step.ran:"):
        # The step that hit the point (one of the steps running in the host's threads then) had
        # run, but its result was never stored: some step of the dead host ran again.
        assert any(a.pid == host and b.pid == new_host for a, b in _twice(lines)), lines


def _twice(lines: list[Line]) -> list[tuple[Line, Line]]:
    by_pair: dict[tuple[str, str], list[Line]] = {}
    for line in lines:
        by_pair.setdefault((line.marker, line.step), []).append(line)
    return [(ls[0], ls[1]) for ls in by_pair.values() if len(ls) == 2]
