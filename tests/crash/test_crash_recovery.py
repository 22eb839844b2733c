"""The orchestrator is killed with SIGKILL in the middle of 40 runs, started again on the same
database, and every run still completes with its exact output: no step is lost, a step whose
result was stored before the kill never runs again, and only the steps in flight at the kill
run twice.

The app (`ledger_app.py`) records each step's side effect in a ledger file, fsynced line by
line; the orchestrator's SQLite database, read right after the kill, says which step results
it had stored. Two set-ups: the orchestrator embedded in the app's process (killing the app
kills both), and `durable dev` standalone, calling the app over HTTP (the app stays up).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from .ledger_app import APP_ID, SERVE_PATH, expected_output, steps_of, width_of

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
DURABLE_CLI = Path(sys.executable).with_name("durable")
KINDS = ("seq", "nap", "fan")
RUNS = 40
PLAN = [(f"r{i:02d}", KINDS[i % len(KINDS)]) for i in range(RUNS)]
KIND_OF = dict(PLAN)
EXPECTED_PAIRS = {(marker, step) for marker, kind in PLAN for step in steps_of(kind)}
# Kill once this share of all steps have left their line in the ledger: at half, most runs are
# in their parallel steps or asleep; at three quarters, the sequential runs have finished.
KILL_POINTS = pytest.mark.parametrize("kill_at", [0.5, 0.75], ids=["half", "three-quarters"])
START_DEADLINE = 20.0
KILL_DEADLINE = 30.0
FINISH_DEADLINE = 60.0
POLL = 0.005
Pair = tuple[str, str]


# -- processes ----------------------------------------------------------------------------


class Processes:
    """The subprocesses of one test, each logging to a file; all are ended in teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.directory / f"{name}-{len(self.started)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args, env=env, cwd=HERE.parent.parent, stdout=out, stderr=subprocess.STDOUT
            )
        self.started.append((name, proc, log))
        return proc

    def sigkill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def assert_alive(self, *procs: subprocess.Popen[bytes]) -> None:
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"pid {proc.pid} exited with {proc.returncode}\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for name, proc, log in self.started:
            text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            parts.append(f"--- {name} (pid {proc.pid}, exit {proc.poll()}) ---\n{text}")
        return "\n".join(parts)

    def close(self) -> None:
        for _, proc, _ in self.started:
            if proc.poll() is None:
                proc.terminate()
        for _, proc, _ in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0, trust_env=False) as c:
        yield c


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def app_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DURABLE_", "CRASH_")) and "proxy" not in k.lower()
    }
    env.update(
        DURABLE_DIR=str(tmp_path / "durable"),
        DURABLE_FAST_RETRIES="1",
        CRASH_LEDGER=str(tmp_path / "ledger.tsv"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def uvicorn_args(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "ledger_app:app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip


def poll(
    what: str,
    deadline: float,
    procs: Processes,
    probe: Callable[[], T | None],
    state: Callable[[], str] = str,
) -> T:
    """`probe()` once it is not None; after `deadline` seconds, fail with `state()` and logs."""
    end = time.monotonic() + deadline
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {deadline} s\n{state()}\n{procs.logs()}")
        time.sleep(POLL)


def get_json(client: httpx.Client, url: str) -> Any:
    """The JSON answer to GET `url`, or None while the server is not (yet) answering 200."""
    try:
        res = client.get(url)
    except httpx.HTTPError:
        return None
    return res.json() if res.status_code == 200 else None


def wait_ready(
    procs: Processes, client: httpx.Client, proc: subprocess.Popen[bytes], url: str
) -> None:
    def answers() -> bool | None:
        procs.assert_alive(proc)
        return None if get_json(client, url) is None else True

    poll(f"{url} to answer", START_DEADLINE, procs, answers)


# -- the ledger and the database ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Line:
    index: int
    marker: str
    step: str
    pid: int


def read_ledger(path: Path) -> list[Line]:
    if not path.exists():
        return []
    lines = []
    for i, text in enumerate(path.read_text().splitlines()):
        marker, step, pid = text.split("\t")
        lines.append(Line(i, marker, step, int(pid)))
    return lines


def ledger_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def step_hash(step: str) -> str:
    return hashlib.sha1(step.encode()).hexdigest()


STEP_OF_HASH = {step_hash(s): s for kind in KINDS for s in steps_of(kind)}


@dataclasses.dataclass
class AtKill:
    """What the orchestrator's database held right after the kill."""

    status: dict[str, str]  # marker -> run status
    stored: set[Pair]  # (marker, step) whose result was stored


def read_database(path: Path) -> AtKill:
    assert path.exists(), f"no database at {path}"
    with contextlib.closing(sqlite3.connect(path)) as db:
        marker_of, status = {}, {}
        for run_id, events, run_status in db.execute(
            "SELECT run_id, events, status FROM runs WHERE fn_id LIKE ?", (f"{APP_ID}-%",)
        ):
            marker = json.loads(events)[0]["data"]["marker"]
            assert marker not in status, f"two runs for {marker}"
            marker_of[run_id], status[marker] = marker, run_status
        stored = set()
        for run_id, step in db.execute("SELECT run_id, step FROM memos"):
            if run_id in marker_of and step in STEP_OF_HASH:
                stored.add((marker_of[run_id], STEP_OF_HASH[step]))
    return AtKill(status, stored)


# -- the scenario ---------------------------------------------------------------------------


def send_events(client: httpx.Client, url: str) -> None:
    events = [
        {"name": f"crash/{kind}", "data": {"marker": marker}, "id": marker} for marker, kind in PLAN
    ]
    res = client.post(url, json=events)
    assert res.status_code == 200, res.text
    assert len(res.json()["ids"]) == RUNS


def kill_mid_run(
    procs: Processes, proc: subprocess.Popen[bytes], ledger: Path, kill_at: float
) -> None:
    """Wait until the `kill_at` share of all steps are done, then SIGKILL `proc`."""
    lines = int(len(EXPECTED_PAIRS) * kill_at)

    def started() -> bool | None:
        procs.assert_alive(proc)
        return True if ledger_count(ledger) >= lines else None

    poll("steps to run", KILL_DEADLINE, procs, started)
    procs.sigkill(proc)


def assert_kill_landed_mid_run(at_kill: AtKill) -> None:
    assert len(at_kill.status) == RUNS, f"runs stored at the kill: {len(at_kill.status)}"
    unfinished = sorted(m for m, s in at_kill.status.items() if s != "completed")
    assert unfinished, "every run had finished before the kill: nothing was interrupted"
    assert at_kill.stored, "no step result was stored before the kill"


def wait_all_completed(
    procs: Processes, client: httpx.Client, runs_url: str, alive: subprocess.Popen[bytes]
) -> dict[str, dict[str, Any]]:
    """marker -> run, once every run has completed (fails at once on a failed run)."""
    last: list[dict[str, Any]] = []

    def done() -> dict[str, dict[str, Any]] | None:
        procs.assert_alive(alive)
        body = get_json(client, f"{runs_url}?limit=1000")
        if body is None:
            return None
        runs = [r for r in body["data"] if r["function_id"].startswith(f"{APP_ID}-")]
        last[:] = runs
        ended_badly = [r for r in runs if r["status"] in ("failed", "cancelled")]
        if ended_badly:
            pytest.fail(f"runs ended {ended_badly[0]['status']}: {ended_badly}\n{procs.logs()}")
        if len(runs) >= RUNS and all(r["status"] == "completed" for r in runs):
            return {r["event"]["data"]["marker"]: r for r in runs} if len(runs) == RUNS else None
        return None

    def unfinished() -> str:
        rows = [
            f"{r['event']['data']['marker']} {r['run_id']} {r['status']} {r['reason'] or ''}"
            for r in last
            if r["status"] != "completed"
        ]
        return f"{len(last)} runs seen; not completed:\n" + "\n".join(sorted(rows))

    return poll("every run to complete", FINISH_DEADLINE, procs, done, unfinished)


def check_recovery(
    runs: dict[str, dict[str, Any]],
    lines: list[Line],
    at_kill: AtKill,
    duplicate_problem: Callable[[Line, Line], str | None],
) -> None:
    """The outputs, and the ledger against what was stored and what was in flight at the kill.

    `duplicate_problem(first, second)` names what is wrong with a step that ran twice, if
    anything, given its two ledger lines.
    """
    assert sorted(runs) == sorted(KIND_OF), f"runs: {sorted(runs)}"
    wrong = {
        m: r["output"] for m, r in runs.items() if r["output"] != expected_output(m, KIND_OF[m])
    }
    assert not wrong, f"wrong outputs: {wrong}"

    by_pair: dict[Pair, list[Line]] = {}
    for line in lines:
        by_pair.setdefault((line.marker, line.step), []).append(line)
    missing = sorted(EXPECTED_PAIRS - set(by_pair))
    assert not missing, f"steps with no side effect in the ledger (lost): {missing}"
    unknown = sorted(set(by_pair) - EXPECTED_PAIRS)
    assert not unknown, f"ledger lines for steps that do not exist: {unknown}"
    thrice = {p: ls for p, ls in by_pair.items() if len(ls) > 2}
    assert not thrice, f"steps that ran more than twice: {thrice}"
    rerun = {p: by_pair[p] for p in sorted(at_kill.stored) if len(by_pair[p]) != 1}
    assert not rerun, f"steps whose result was stored before the kill and that ran again: {rerun}"

    twice = {p: ls for p, ls in by_pair.items() if len(ls) == 2}
    problems = {p: why for p, (a, b) in twice.items() if (why := duplicate_problem(a, b))}
    assert not problems, f"steps that ran twice but were not in flight at the kill: {problems}"
    finished = {m for m, s in at_kill.status.items() if s == "completed"}
    per_run: dict[str, list[str]] = {}
    for marker, step in twice:
        per_run.setdefault(marker, []).append(step)
    too_many = {
        m: steps
        for m, steps in per_run.items()
        if m in finished or len(steps) > width_of(KIND_OF[m])
    }
    assert not too_many, (
        f"runs with more steps run twice than they could have in flight at the kill: {too_many}"
    )
    could = sum(width_of(KIND_OF[m]) for m, s in at_kill.status.items() if s != "completed")
    assert len(twice) <= could, f"{len(twice)} steps ran twice; at most {could} were in flight"


# -- the tests ------------------------------------------------------------------------------


@KILL_POINTS
def test_embedded_orchestrator_survives_sigkill(
    tmp_path: Path, procs: Processes, client: httpx.Client, kill_at: float
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = app_env(tmp_path)
    ledger = Path(env["CRASH_LEDGER"])

    first = procs.start("app", uvicorn_args(port), env)
    wait_ready(procs, client, first, f"{base}/durable/v1/runs")
    send_events(client, f"{base}/durable/e/any-key")
    kill_mid_run(procs, first, ledger, kill_at)
    at_kill = read_database(tmp_path / "durable" / "durable.db")
    assert_kill_landed_mid_run(at_kill)

    second = procs.start("app", uvicorn_args(port), env)
    runs = wait_all_completed(procs, client, f"{base}/durable/v1/runs", second)
    lines = read_ledger(ledger)

    strangers = {line.pid for line in lines} - {first.pid, second.pid}
    assert not strangers, f"ledger lines from unknown pids {strangers}"
    pids_of: dict[Pair, list[int]] = {}
    for ln in lines:
        pids_of.setdefault((ln.marker, ln.step), []).append(ln.pid)
    ran_after = sorted(p for p in at_kill.stored if second.pid in pids_of.get(p, []))
    assert not ran_after, f"stored before the kill, yet run again after the restart: {ran_after}"
    lost = sorted(p for p in at_kill.stored if first.pid not in pids_of.get(p, []))
    assert not lost, f"results stored before the kill with no side effect of the killed app: {lost}"

    def in_flight(a: Line, b: Line) -> str | None:
        if (a.pid, b.pid) != (first.pid, second.pid):
            return f"pids {a.pid}, {b.pid} (killed {first.pid}, restarted {second.pid})"
        return None

    check_recovery(runs, lines, at_kill, in_flight)


@KILL_POINTS
def test_standalone_orchestrator_survives_sigkill(
    tmp_path: Path, procs: Processes, client: httpx.Client, kill_at: float
) -> None:
    orch_port, app_port = free_port(), free_port()
    orch = f"http://127.0.0.1:{orch_port}"
    app = f"http://127.0.0.1:{app_port}"
    db = tmp_path / "dev.db"
    env = app_env(tmp_path, CRASH_ORCHESTRATOR_URL=orch)
    ledger = Path(env["CRASH_LEDGER"])
    dev_args = [
        str(DURABLE_CLI), "dev", "--port", str(orch_port), "--db", str(db), "--fast-retries",
        "-u", f"{app}{SERVE_PATH}",
    ]  # fmt: skip

    served = procs.start("app", uvicorn_args(app_port), env)
    wait_ready(procs, client, served, f"{app}/inflight")
    first = procs.start("orchestrator", dev_args, app_env(tmp_path))

    def synced() -> bool | None:
        procs.assert_alive(served, first)
        body = get_json(client, f"{orch}/v1/functions")
        ids = {f["function_id"] for f in body["data"]} if body else set()
        return True if ids >= {f"{APP_ID}-{k}" for k in KINDS} else None

    poll("the app to be synced", START_DEADLINE, procs, synced)
    send_events(client, f"{orch}/e/any-key")
    kill_mid_run(procs, first, ledger, kill_at)
    at_kill = read_database(db)
    assert_kill_landed_mid_run(at_kill)

    # The requests the killed orchestrator had sent finish in the app; then the ledger holds
    # every side effect of the first orchestrator's requests, and a second one starts.
    def quiet() -> bool | None:
        procs.assert_alive(served)
        return True if (get_json(client, f"{app}/inflight") or {}).get("active") == 0 else None

    poll("the app to finish its requests", START_DEADLINE, procs, quiet)
    before_restart = ledger_count(ledger)
    second = procs.start("orchestrator", dev_args, app_env(tmp_path))
    runs = wait_all_completed(procs, client, f"{orch}/v1/runs", second)
    procs.assert_alive(served)
    lines = read_ledger(ledger)

    assert {line.pid for line in lines} == {served.pid}
    early = {(ln.marker, ln.step) for ln in lines if ln.index < before_restart}
    lost = sorted(at_kill.stored - early)
    assert not lost, f"results stored before the kill with no side effect before it: {lost}"

    def in_flight(a: Line, b: Line) -> str | None:
        if not a.index < before_restart <= b.index:
            return f"ledger lines {a.index} and {b.index} (restart at line {before_restart})"
        return None

    check_recovery(runs, lines, at_kill, in_flight)
