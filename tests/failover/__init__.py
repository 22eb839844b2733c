"""A cluster for the failover tests: `durable start` processes on one PostgreSQL schema, and the
ledger app (`ledger_app.py`) served by uvicorn in production mode, each in a subprocess.

`Cluster` starts and ends the processes, syncs the app, sends events and reads what the
database and the ledger hold; the tests decide when to break something and what to check.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import signal
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

from durable_core.signing import hashed_signing_key

from .ledger_app import APP_ID, KINDS, SERVE_PATH, expected_output, steps_of

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DURABLE_CLI = Path(sys.executable).with_name("durable")
EVENT_KEY = "failover-event-key"
WORKERS = 64  # requests one orchestrator process sends at once
START_DEADLINE = 30.0
SEND_TIMEOUT = 60.0  # one post of a hundred events or more, to a busy orchestrator
POLL = 0.02
Pair = tuple[str, str]


def free_port() -> int:
    return ports.free_port()


def split_schema(url: str) -> tuple[str, str]:
    """(libpq URL, schema) from a `...?schema=name` database URL."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    schema = dict(query)["schema"]
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "schema"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), schema


def poll(what: str, deadline: float, probe: Callable[[], T | None], state: Callable[[], str]) -> T:
    """`probe()` once it is not None; after `deadline` seconds, fail with `state()`."""
    end = time.monotonic() + deadline
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {deadline} s\n{state()}")
        time.sleep(POLL)


def step_hash(step: str) -> str:
    return hashlib.sha1(step.encode()).hexdigest()


STEP_OF_HASH = {step_hash(s): s for kind in KINDS for s in steps_of(kind)}


@dataclasses.dataclass(frozen=True)
class Line:
    """One side effect in the ledger: which step of which run, sent by whom, when."""

    index: int
    marker: str
    step: str
    pid: int
    port: int
    arrived: float
    attempt: int


def read_ledger(path: Path) -> list[Line]:
    if not path.exists():
        return []
    lines = []
    for i, text in enumerate(path.read_text().split("\n")[:-1]):  # complete lines only
        marker, step, pid, port, arrived, attempt = text.split("\t")
        lines.append(Line(i, marker, step, int(pid), int(port), float(arrived), int(attempt)))
    return lines


def by_pair(lines: list[Line]) -> dict[Pair, list[Line]]:
    out: dict[Pair, list[Line]] = {}
    for line in lines:
        out.setdefault((line.marker, line.step), []).append(line)
    return out


@dataclasses.dataclass
class Snapshot:
    """What the database held at one moment."""

    status: dict[str, str]  # marker -> run status
    stored: set[Pair]  # (marker, step) whose result was stored

    @property
    def completed(self) -> set[str]:
        return {m for m, s in self.status.items() if s == "completed"}


class Cluster:
    """Orchestrator processes on the schema of `database_url`, and the ledger app."""

    def __init__(self, directory: Path, database_url: str, *, lease: float = 3.0) -> None:
        self.directory = directory
        self.database_url = database_url
        self.dsn, self.schema = split_schema(database_url)
        self.lease = lease
        self.signing_key = secrets.token_hex(32)
        self.ledger = directory / "ledger.tsv"
        self.started: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.orchestrators: list[tuple[subprocess.Popen[bytes], str]] = []
        self._app: subprocess.Popen[bytes] | None = None
        self.app_port = 0
        self.http = httpx.Client(timeout=10.0, trust_env=False)

    # -- processes --------------------------------------------------------------------------

    def _env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DURABLE_", "FAILOVER_")) and "proxy" not in k.lower()
        }
        env.update(PYTHONUNBUFFERED="1", **extra)
        return env

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.directory / f"{name}-{len(self.started)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        self.started.append((name, proc, log))
        return proc

    def start(self, orchestrators: int) -> None:
        """Start the orchestrators and the app, wait for them to answer, and sync the app."""
        # The first creates the schema; the others start together once it answers.
        for i in range(orchestrators):
            port = free_port()
            args = [
                str(DURABLE_CLI), "start", "--database", self.database_url, "--host", "127.0.0.1",
                "--port", str(port), "--signing-key", self.signing_key, "--event-key", EVENT_KEY,
                "--lease", str(self.lease), "--workers", str(WORKERS),
            ]  # fmt: skip
            proc = self._start("orchestrator", args, self._env())
            self.orchestrators.append((proc, f"http://127.0.0.1:{port}"))
            if i == 0:
                self._wait_answers(proc, f"http://127.0.0.1:{port}/health")
        self.app_port = free_port()
        app_args = [
            sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(HERE), "ledger_app:create_app",
            "--host", "127.0.0.1", "--port", str(self.app_port), "--log-level", "warning",
        ]  # fmt: skip
        self._app = self._start(
            "app",
            app_args,
            self._env(
                FAILOVER_LEDGER=str(self.ledger),
                FAILOVER_SIGNING_KEY=self.signing_key,
                FAILOVER_EVENT_KEY=EVENT_KEY,
                FAILOVER_ORCHESTRATOR_URL=self.orchestrators[0][1],
                # An unsigned sync in production registers only the configured origin.
                DURABLE_SERVE_ORIGIN=f"http://127.0.0.1:{self.app_port}",
            ),
        )
        for proc, url in self.orchestrators:
            self._wait_answers(proc, f"{url}/health")
        self._wait_answers(self.app, self.app_url)
        res = self.http.put(self.app_url)
        assert res.status_code == 200, f"sync: {res.status_code} {res.text}\n{self.logs()}"
        wanted = {f"{APP_ID}-{kind}" for kind in KINDS}
        for proc, url in self.orchestrators:

            def knows(proc: subprocess.Popen[bytes] = proc, url: str = url) -> bool | None:
                self.assert_alive(proc)
                body = self.get(f"{url}/v1/functions")
                ids = {f["function_id"] for f in body["data"]} if body else set()
                return True if ids >= wanted else None

            poll(f"{url} to know the app's functions", START_DEADLINE, knows, self.logs)

    def _wait_answers(self, proc: subprocess.Popen[bytes], url: str) -> None:
        def answers() -> bool | None:
            self.assert_alive(proc)
            try:
                return True if self.http.get(url).status_code == 200 else None
            except httpx.HTTPError:
                return None

        poll(f"{url} to answer", START_DEADLINE, answers, self.logs)

    @property
    def app(self) -> subprocess.Popen[bytes]:
        assert self._app is not None, "the cluster has not been started"
        return self._app

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}{SERVE_PATH}"

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
        self.http.close()

    def freeze(self, proc: subprocess.Popen[bytes]) -> float:
        """SIGSTOP `proc` and return the time at which it had stopped."""
        proc.send_signal(signal.SIGSTOP)

        def stopped() -> bool | None:
            with open(f"/proc/{proc.pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
            return True if state == "T" else None

        poll(f"pid {proc.pid} to stop", 10, stopped, self.logs)
        return time.time()

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    # -- events, runs, database -------------------------------------------------------------

    def get(self, url: str, **params: Any) -> Any:
        """The JSON answer to an authorized GET, or None while the answer is not 200."""
        headers = {"authorization": f"Bearer {hashed_signing_key(self.signing_key)}"}
        try:
            res = self.http.get(url, params=params, headers=headers)
        except httpx.HTTPError:
            return None
        return res.json() if res.status_code == 200 else None

    def send(self, plan: list[tuple[str, str]]) -> None:
        """One event per (marker, kind), split across the orchestrators, sent to all at once."""
        events = [
            {"name": f"{APP_ID}/{kind}", "data": {"marker": marker}, "id": marker}
            for marker, kind in plan
        ]
        n = len(self.orchestrators)

        def post(i: int) -> None:
            chunk = events[i::n]
            url = f"{self.orchestrators[i][1]}/e/{EVENT_KEY}"
            res = self.http.post(url, json=chunk, timeout=SEND_TIMEOUT)
            assert res.status_code == 200, f"{res.status_code} {res.text}"
            assert len(res.json()["ids"]) == len(chunk)

        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            for done in [pool.submit(post, i) for i in range(n)]:
                done.result()

    @contextlib.contextmanager
    def db(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(
            self.dsn, autocommit=True, options=f"-c search_path={self.schema}", connect_timeout=5
        ) as conn:
            yield conn

    def count_completed(self) -> int:
        with self.db() as conn:
            row = conn.execute("SELECT count(*) FROM runs WHERE status='completed'").fetchone()
        return int(row[0]) if row else 0

    def snapshot(self) -> Snapshot:
        """Run statuses and stored step results, read in one transaction."""
        with self.db() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            marker_of, status = {}, {}
            for run_id, events, run_status in conn.execute(
                "SELECT run_id, events, status FROM runs WHERE fn_id LIKE %s", (f"{APP_ID}-%",)
            ):
                marker = json.loads(events)[0]["data"]["marker"]
                assert marker not in status, f"two runs for {marker}"
                marker_of[run_id], status[marker] = marker, run_status
            stored = set()
            for run_id, step in conn.execute("SELECT run_id, step FROM memos"):
                if run_id in marker_of and step in STEP_OF_HASH:
                    stored.add((marker_of[run_id], STEP_OF_HASH[step]))
        return Snapshot(status, stored)

    def wait_ledger(
        self, which: Callable[[Line], bool], count: int, deadline: float, alive: list[Any]
    ) -> None:
        """Until the ledger holds `count` lines for which `which(line)` is true."""

        def enough() -> bool | None:
            self.assert_alive(*alive)
            return True if sum(map(which, read_ledger(self.ledger))) >= count else None

        poll(f"{count} steps to run", deadline, enough, lambda: self.unfinished() + self.logs())

    def wait_completed(self, count: int, deadline: float, alive: list[Any]) -> None:
        """Until `count` runs have completed (fails at once on a failed or cancelled run)."""

        def done() -> bool | None:
            self.assert_alive(*alive)
            with self.db() as conn:
                rows = conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
            counts = {str(status): int(n) for status, n in rows}
            bad = {s: n for s, n in counts.items() if s in ("failed", "cancelled")}
            if bad:
                pytest.fail(f"runs ended badly: {bad}\n{self.unfinished()}\n{self.logs()}")
            return True if counts.get("completed", 0) >= count else None

        poll(f"{count} runs to complete", deadline, done, lambda: self.unfinished() + self.logs())

    def unfinished(self) -> str:
        """What the database holds about the runs that have not completed (for failures)."""
        try:
            with self.db() as conn:
                now = int(time.time() * 1000)
                runs = conn.execute(
                    "SELECT run_id, status, reason, events FROM runs WHERE status<>'completed'"
                    " ORDER BY created_at LIMIT 10"
                ).fetchall()
                out = [f"{len(runs)} unfinished run(s) shown (at most 10)"]
                for run_id, status, reason, events in runs:
                    marker = json.loads(events)[0]["data"]["marker"]
                    items = conn.execute(
                        "SELECT id, kind, step, attempt, available_at - %s, lease_until - %s"
                        " FROM queue WHERE run_id=%s",
                        (now, now, run_id),
                    ).fetchall()
                    memos = conn.execute("SELECT step FROM memos WHERE run_id=%s", (run_id,))
                    stored = [STEP_OF_HASH.get(m, m) for (m,) in memos.fetchall()]
                    pending = conn.execute("SELECT step FROM pending WHERE run_id=%s", (run_id,))
                    history = conn.execute(
                        "SELECT name, op, attempt, ended_at IS NOT NULL FROM history"
                        " WHERE run_id=%s ORDER BY id",
                        (run_id,),
                    ).fetchall()
                    out.append(
                        f"{marker} {run_id} {status} reason={reason!r} stored={stored} "
                        f"pending={[STEP_OF_HASH.get(p, p) for (p,) in pending.fetchall()]}\n"
                        f"  queue (id, kind, step, attempt, due in ms, lease in ms)={items}\n"
                        f"  history={history}"
                    )
                sessions = conn.execute(
                    "SELECT pid, state, now() - xact_start, wait_event_type, left(query, 120)"
                    " FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND state <> 'idle'"
                ).fetchall()
                out.append(
                    f"busy sessions (pid, state, in transaction for, wait, query)={sessions}"
                )
            return "\n".join(out) + "\n"
        except psycopg.Error as err:
            return f"(database unreachable: {err})\n"

    def runs(self, url: str) -> dict[str, dict[str, Any]]:
        """marker -> run, as the orchestrator at `url` lists them."""
        body = self.get(f"{url}/v1/runs", limit=1000)
        assert body is not None, f"GET {url}/v1/runs failed\n{self.logs()}"
        out: dict[str, dict[str, Any]] = {}
        for run in body["data"]:
            if run["function_id"].startswith(f"{APP_ID}-"):
                marker = run["event"]["data"]["marker"]
                assert marker not in out, f"two runs for event {marker}"
                out[marker] = run
        return out


def check_outputs(runs: dict[str, dict[str, Any]], plan: list[tuple[str, str]]) -> None:
    kind_of = dict(plan)
    assert sorted(runs) == sorted(kind_of), f"runs for {len(runs)} of {len(kind_of)} events"
    wrong = {
        m: (r["status"], r["output"])
        for m, r in runs.items()
        if r["status"] != "completed" or r["output"] != expected_output(m, kind_of[m])
    }
    assert not wrong, f"runs not completed with their output: {wrong}"


def check_ledger(lines: list[Line], plan: list[tuple[str, str]], stored: set[Pair]) -> None:
    """Every step ran, none ran three times, and a stored step never ran again."""
    expected = {(marker, step) for marker, kind in plan for step in steps_of(kind)}
    pairs = by_pair(lines)
    missing = sorted(expected - set(pairs))
    assert not missing, f"steps with no side effect in the ledger (lost): {missing[:20]}"
    unknown = sorted(set(pairs) - expected)
    assert not unknown, f"ledger lines for steps that do not exist: {unknown[:20]}"
    thrice = {p: ls for p, ls in pairs.items() if len(ls) > 2}
    assert not thrice, f"steps that ran more than twice: {thrice}"
    rerun = {p: pairs[p] for p in sorted(stored) if len(pairs[p]) != 1}
    assert not rerun, f"steps whose result was stored and that ran again: {rerun}"


@contextlib.contextmanager
def cluster(directory: Path, database_url: str, **kw: Any) -> Iterator[Cluster]:
    c = Cluster(directory, database_url, **kw)
    try:
        yield c
    finally:
        c.close()
