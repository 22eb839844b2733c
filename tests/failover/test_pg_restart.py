"""PostgreSQL restarts in the middle of 200 runs served by two `durable start` processes; both
orchestrators reconnect (their pools and their LISTEN connections), take new events, and every
run completes with its exact output. A step whose result was stored before the restart never
runs again, and no step runs three times (a step whose result was lost with its connection
runs again once the lease of its queue item runs out).

The test restarts the local cluster that serves the test database (`pg_ctlcluster`, as root),
so every other client of that server sees the restart too; the server is running again when
the test ends, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pytest

from . import check_ledger, check_outputs, cluster, poll, read_ledger
from .ledger_app import KINDS, steps_of

pytestmark = pytest.mark.serial  # restarts the PostgreSQL server every test uses

RUNS = 200
PLAN = [(f"q{i:03d}", KINDS[i % len(KINDS)]) for i in range(RUNS)]
# A first wave runs to completion; the restart comes once a third of the second wave's steps
# have run; the last events are sent after the restart, through every orchestrator.
FIRST_WAVE, AFTER_RESTART = 50, 20
SECOND = PLAN[FIRST_WAVE : RUNS - AFTER_RESTART]
SECOND_STEPS = sum(len(steps_of(kind)) for _, kind in SECOND)
DEADLINE = 60.0
FINISH_DEADLINE = 90.0
READY_DEADLINE = 60.0
RESTART_DEADLINE = 150.0
IN_CI = os.environ.get("CI", "").lower() == "true"  # CI runs every test: nothing may skip there


def unavailable(why: str) -> NoReturn:
    """Skip, or in CI (where nothing may skip) fail, saying what the test needs."""
    if IN_CI:
        pytest.fail(f"CI must run this test: {why}")
    pytest.skip(why)


def local_cluster(url: str) -> tuple[str, str]:
    """(version, name) of the local cluster serving `url`; without one, skip (fail in CI)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost") or os.geteuid() != 0:
        unavailable("restarting PostgreSQL needs root and a server on this machine")
    if not shutil.which("pg_ctlcluster") or not shutil.which("pg_lsclusters"):
        unavailable("restarting PostgreSQL needs pg_ctlcluster (postgresql-common)")
    out = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout
    for row in out.splitlines():
        version, name, port = row.split()[:3]
        if int(port) == (parts.port or 5432):
            return version, name
    unavailable(f"no local cluster listens on port {parts.port or 5432}")


def restart(version: str, name: str) -> None:
    """Restart the cluster (fast shutdown: every connection is closed) and start it if that fails.

    A shutdown can take up to `authentication_timeout` (60 s) when a client has opened a
    connection without finishing its start-up, so the deadline is generous.
    """
    try:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "restart"],
            check=True,
            capture_output=True,
            timeout=RESTART_DEADLINE,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        start(version, name)


def start(version: str, name: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"],
        capture_output=True,
        timeout=RESTART_DEADLINE,
    )


def is_ready(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def wait_ready(url: str) -> None:
    end = time.monotonic() + READY_DEADLINE
    while not is_ready(url):
        if time.monotonic() > end:
            pytest.fail(f"PostgreSQL at {url} did not come back within {READY_DEADLINE} s")
        time.sleep(0.1)


@pytest.fixture
def restartable(pg_url: str) -> Iterator[tuple[str, str]]:
    """The local cluster of the test database, running again after the test."""
    found = local_cluster(pg_url)
    try:
        yield found
    finally:
        if not is_ready(pg_url):
            start(*found)
            wait_ready(pg_url)


def listeners(conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> int:
    """Sessions LISTENing on the schema's channel (their last statement was the LISTEN)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query = %s", (f"LISTEN durable_{schema}",)
    ).fetchone()
    return int(row[0]) if row else 0


def test_orchestrators_recover_from_a_postgres_restart(
    tmp_path: Path, pg_url: str, pg_schema_url: str, restartable: tuple[str, str]
) -> None:
    with cluster(tmp_path, pg_schema_url, lease=3.0) as c:
        c.start(orchestrators=2)
        everyone = [c.app, *(proc for proc, _ in c.orchestrators)]

        def all_listening() -> bool | None:
            try:
                with psycopg.connect(pg_url, autocommit=True, connect_timeout=2) as conn:
                    n = listeners(conn, c.schema)
            except psycopg.OperationalError:
                return None
            return True if n == len(c.orchestrators) else None

        poll("every orchestrator to LISTEN", DEADLINE, all_listening, c.logs)
        c.send(PLAN[:FIRST_WAVE])
        c.wait_completed(FIRST_WAVE, DEADLINE, everyone)
        c.send(SECOND)
        second = {marker for marker, _ in SECOND}
        c.wait_ledger(lambda line: line.marker in second, SECOND_STEPS // 3, DEADLINE, everyone)

        before = c.snapshot()
        restart(*restartable)
        wait_ready(pg_url)
        assert len(before.completed) < RUNS - AFTER_RESTART, "every run finished before"

        poll("every orchestrator to LISTEN again", DEADLINE, all_listening, c.logs)
        c.send(PLAN[RUNS - AFTER_RESTART :])
        c.wait_completed(RUNS, FINISH_DEADLINE, everyone)
        runs = {m: r for _, url in c.orchestrators for m, r in c.runs(url).items()}
        c.assert_alive(*everyone)
        lines = read_ledger(c.ledger)

    check_outputs(runs, PLAN)
    check_ledger(lines, PLAN, before.stored)


@pytest.mark.parametrize("ci", [True, False])
def test_a_missing_cluster_fails_in_ci_and_skips_elsewhere(
    ci: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(f"{__name__}.IN_CI", ci)
    try:
        local_cluster("postgresql://postgres@db.example:5432/test")
    except BaseException as err:  # a skip and a failure are both BaseExceptions
        outcome: BaseException | None = err
    else:
        outcome = None
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    assert isinstance(outcome, expected), outcome
    assert "restarting PostgreSQL needs root" in str(outcome)
