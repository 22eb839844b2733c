"""What the crash tests share: subprocesses, the ledger, the orchestrator's database read right
after a kill, the 40 runs and the checks made once they have completed.

A process is killed at a named fault point (`durable_core._faults`): it is started with
`DURABLE_FAULT=<point>:<n>` and `DURABLE_FAULT_MARK=<file>`, reaches the point for the n-th
time, writes the file and SIGKILLs itself. Every run must then complete before the earliest
lease the dead process held runs out: the restart (or the takeover) has to take up the work left
in flight itself, since waiting for the leases (30 s) would miss the deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from tests import ports

from .ledger_app import APP_ID, expected_output, steps_of, width_of

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
KINDS = ("seq", "nap", "fan")
RUNS = 40
PLAN = [(f"r{i:02d}", KINDS[i % len(KINDS)]) for i in range(RUNS)]
KIND_OF = dict(PLAN)
EXPECTED_PAIRS = {(marker, step) for marker, kind in PLAN for step in steps_of(kind)}
START_DEADLINE = 20.0
KILL_DEADLINE = 30.0
# The runs must complete this long before the first lease held at the kill would run out.
LEASE_MARGIN = 1.0
POLL = 0.005
Pair = tuple[str, str]


# -- processes ----------------------------------------------------------------------------


class Processes:
    """The subprocesses of one test, each logging to a file; all are ended in teardown.

    A process started with `group=True` leads a process group of its own (a server and its
    workers), which is continued and killed as a whole in teardown.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[tuple[str, subprocess.Popen[bytes], Path, bool]] = []

    def start(
        self, name: str, args: list[str], env: dict[str, str], *, group: bool = False
    ) -> subprocess.Popen[bytes]:
        log = self.directory / f"{name}-{len(self.started)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=group,
            )
        self.started.append((name, proc, log, group))
        return proc

    def assert_alive(self, *procs: subprocess.Popen[bytes]) -> None:
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"pid {proc.pid} exited with {proc.returncode}\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for name, proc, log, _ in self.started:
            text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            parts.append(f"--- {name} (pid {proc.pid}, exit {proc.poll()}) ---\n{text}")
        return "\n".join(parts)

    def close(self) -> None:
        for _, proc, _, group in self.started:
            if group:  # a stopped member would never see the SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
            if proc.poll() is None:
                proc.terminate()
        for _, proc, _, group in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            if group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


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
    return ports.free_port()


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


def fault_env(tmp_path: Path, point: str) -> dict[str, str]:
    """The variables that make a process die at `point` (`<name>:<n>`)."""
    return {"DURABLE_FAULT": point, "DURABLE_FAULT_MARK": str(tmp_path / "fault-mark")}


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
            pytest.fail(f"{what}: not within {deadline:.1f} s\n{state()}\n{procs.logs()}")
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


@dataclasses.dataclass(frozen=True)
class Fault:
    """Where a process died: the point, its count, and the pid written in the mark file."""

    point: str
    pid: int


def read_mark(tmp_path: Path) -> Fault | None:
    path = tmp_path / "fault-mark"
    text = path.read_text() if path.exists() else ""
    if not text.endswith("\n"):
        return None
    name, count, pid = text.split()
    return Fault(f"{name}:{count}", int(pid))


def wait_killed_at(
    procs: Processes, tmp_path: Path, proc: subprocess.Popen[bytes], point: str
) -> None:
    """Until `proc` has died at the fault point `point`."""

    def died() -> bool | None:
        return None if proc.poll() is None else True

    poll(f"the process to reach {point}", KILL_DEADLINE, procs, died)
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}\n{procs.logs()}"
    assert read_mark(tmp_path) == Fault(point, proc.pid), procs.logs()


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
    leased: int  # queue items leased to a process: work in flight
    leases_end: float  # when the first of those leases runs out (epoch seconds)

    def seconds_left(self) -> float:
        """How long the runs have to complete: until the first lease, less a margin."""
        return self.leases_end - LEASE_MARGIN - time.time()


class Database:
    """The orchestrator's store, a SQLite file or a PostgreSQL schema, as the test reads it."""

    def __init__(self, sqlite_path: Path | None = None, postgres_url: str | None = None) -> None:
        assert (sqlite_path is None) != (postgres_url is None)
        self.sqlite_path = sqlite_path
        self.postgres_url = postgres_url

    @contextlib.contextmanager
    def _rows(self) -> Iterator[Callable[[str], list[tuple[Any, ...]]]]:
        """A function running one query, all of them within one consistent snapshot."""
        if self.sqlite_path is not None:
            assert self.sqlite_path.exists(), f"no database at {self.sqlite_path}"
            with contextlib.closing(sqlite3.connect(self.sqlite_path)) as db:
                db.execute("BEGIN")
                yield lambda sql: db.execute(sql).fetchall()
            return
        assert self.postgres_url is not None
        dsn, schema = split_schema(self.postgres_url)
        with (
            psycopg.connect(dsn, autocommit=True, options=f"-c search_path={schema}") as conn,
            conn.transaction(),
        ):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield lambda sql: conn.execute(sql).fetchall()

    def at_kill(self) -> AtKill:
        with self._rows() as rows:
            marker_of, status = {}, {}
            for run_id, events, run_status in rows(
                f"SELECT run_id, events, status FROM runs WHERE fn_id LIKE '{APP_ID}-%'"
            ):
                marker = json.loads(events)[0]["data"]["marker"]
                assert marker not in status, f"two runs for {marker}"
                marker_of[run_id], status[marker] = marker, run_status
            stored = set()
            for run_id, step in rows("SELECT run_id, step FROM memos"):
                if run_id in marker_of and step in STEP_OF_HASH:
                    stored.add((marker_of[run_id], STEP_OF_HASH[step]))
            [(leased, first_end)] = rows(
                "SELECT count(*), min(lease_until) FROM queue WHERE lease_until IS NOT NULL"
            )
        return AtKill(status, stored, int(leased), (first_end or 0) / 1000)


def split_schema(url: str) -> tuple[str, str]:
    """(libpq URL, schema) from a `...?schema=name` database URL."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    schema = dict(query)["schema"]
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "schema"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), schema


# -- the scenario ---------------------------------------------------------------------------


def send_events(client: httpx.Client, url: str) -> None:
    events = [
        {"name": f"crash/{kind}", "data": {"marker": marker}, "id": marker} for marker, kind in PLAN
    ]
    res = client.post(url, json=events)
    assert res.status_code == 200, res.text
    assert len(res.json()["ids"]) == RUNS


def assert_kill_landed_mid_run(at_kill: AtKill) -> None:
    assert len(at_kill.status) == RUNS, f"runs stored at the kill: {len(at_kill.status)}"
    unfinished = sorted(m for m, s in at_kill.status.items() if s != "completed")
    assert unfinished, "every run had finished before the kill: nothing was interrupted"
    assert at_kill.stored, "no step result was stored before the kill"
    assert at_kill.leased, "no queue item was leased at the kill: no work was in flight"
    # The restart has (nearly) the whole lease to finish the runs: if it had to wait for the
    # leases to run out, it could not.
    assert at_kill.seconds_left() > 15, f"the first lease runs out in {at_kill.seconds_left()} s"


def wait_all_completed(
    procs: Processes,
    client: httpx.Client,
    runs_url: str,
    alive: list[subprocess.Popen[bytes]],
    at_kill: AtKill,
) -> dict[str, dict[str, Any]]:
    """marker -> run, once every run has completed, which must happen before the first lease
    held at the kill runs out (fails at once on a failed run)."""
    last: list[dict[str, Any]] = []

    def done() -> dict[str, dict[str, Any]] | None:
        procs.assert_alive(*alive)
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
        return (
            f"{at_kill.leased} queue item(s) were leased at the kill; the work left in flight "
            "was not taken up before those leases ran out.\n"
            f"{len(last)} runs seen; not completed:\n" + "\n".join(sorted(rows))
        )

    return poll(
        "every run to complete before the leases held at the kill run out",
        at_kill.seconds_left(),
        procs,
        done,
        unfinished,
    )


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


def check_step_killed_after_running_ran_again(
    lines: list[Line], at_kill: AtKill, killed: int, restarted: int
) -> None:
    """With `step.ran`, the killed process's last ledger line is the step that hit the point:
    its function had run, its result was never stored, so it ran again after the restart."""
    last = [ln for ln in lines if ln.pid == killed][-1]
    pair = (last.marker, last.step)
    assert pair not in at_kill.stored, f"{pair}: stored, though killed before it was reported"
    again = [ln.index for ln in lines if (ln.marker, ln.step) == pair and ln.pid == restarted]
    assert again, f"{pair}, killed once its function had run, never ran again"
