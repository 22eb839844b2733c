"""The orchestrator dies by SIGKILL at an exact place (a named fault point) in the middle of 40
runs and is started again on the same database; every run completes with its exact output before
the first lease the dead process held would have run out, so the restart took up the work left
in flight itself. No step is lost, a step whose result was stored before the kill never runs
again, and only the steps in flight at the kill run twice.

The app (`ledger_app.py`) records each step's side effect in a ledger file, fsynced line by
line; the orchestrator's database, read right after the kill, says which step results it had
stored and which queue items were leased. Three set-ups:

- embedded on SQLite: the orchestrator in the app's process (the kill ends both);
- embedded on PostgreSQL, the same: the restarted process frees the leases of the dead one
  (whose liveness lock went with its session) and leaves those of live processes alone;
- `durable dev` standalone, calling the app over HTTP (the app stays up).
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from .harness import (
    START_DEADLINE,
    Database,
    Line,
    Pair,
    Processes,
    app_env,
    assert_kill_landed_mid_run,
    check_recovery,
    check_step_killed_after_running_ran_again,
    client,
    fault_env,
    free_port,
    get_json,
    ledger_count,
    poll,
    procs,
    read_ledger,
    send_events,
    uvicorn_args,
    wait_all_completed,
    wait_killed_at,
    wait_ready,
)
from .ledger_app import APP_ID, SERVE_PATH

pytestmark = pytest.mark.serial  # recovery must beat a lease: no other tests' load

__all__ = ["client", "procs"]  # the fixtures

DURABLE_CLI = Path(sys.executable).with_name("durable")
KINDS = ("seq", "nap", "fan")
# Where the kill comes, as <point>:<n> (the n-th time the process reaches the point). The 40
# runs reach them (embedded) 200 times for step.ran, 95 for checkpoint.committed, 131 for each
# answer point and 9 or more for claim.committed; the kill comes with most runs under way.
EMBEDDED_POINTS = [
    "claim.committed:3",
    "step.ran:100",
    "checkpoint.committed:45",
    "answer.received:60",
    "answer.committed:60",
]
# Over HTTP the app checkpoints a chain of steps in one request; `step.ran` (in the app) is not
# reached by the orchestrator.
STANDALONE_POINTS = ["claim.committed:10", "answer.received:100", "answer.committed:100"]


def run_embedded(
    tmp_path: Path,
    procs: Processes,
    client: httpx.Client,
    point: str,
    database: Database,
    **extra_env: str,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = app_env(tmp_path, **extra_env)
    ledger = Path(env["CRASH_LEDGER"])

    first = procs.start("app", uvicorn_args(port), {**env, **fault_env(tmp_path, point)})
    wait_ready(procs, client, first, f"{base}/durable/v1/runs")
    send_events(client, f"{base}/durable/e/any-key")
    wait_killed_at(procs, tmp_path, first, point)
    at_kill = database.at_kill()
    assert_kill_landed_mid_run(at_kill)

    second = procs.start("app", uvicorn_args(port), env)
    runs = wait_all_completed(procs, client, f"{base}/durable/v1/runs", [second], at_kill)
    lines = read_ledger(ledger)

    strangers = {line.pid for line in lines} - {first.pid, second.pid}
    assert not strangers, f"ledger lines from unknown pids {strangers}"
    pids_of: dict[Pair, list[int]] = {}
    for ln in lines:
        pids_of.setdefault((ln.marker, ln.step), []).append(ln.pid)
    lost = sorted(p for p in at_kill.stored if first.pid not in pids_of.get(p, []))
    assert not lost, f"results stored before the kill with no side effect of the killed app: {lost}"

    def in_flight(a: Line, b: Line) -> str | None:
        if (a.pid, b.pid) != (first.pid, second.pid):
            return f"pids {a.pid}, {b.pid} (killed {first.pid}, restarted {second.pid})"
        return None

    check_recovery(runs, lines, at_kill, in_flight)
    if point.startswith("step.ran:"):
        check_step_killed_after_running_ran_again(lines, at_kill, first.pid, second.pid)


@pytest.mark.parametrize("point", EMBEDDED_POINTS)
def test_embedded_sqlite_restart_takes_up_work_in_flight(
    tmp_path: Path, procs: Processes, client: httpx.Client, point: str
) -> None:
    database = Database(sqlite_path=tmp_path / "durable" / "durable.db")
    run_embedded(tmp_path, procs, client, point, database)


@pytest.mark.parametrize("point", EMBEDDED_POINTS)
def test_embedded_postgres_restart_takes_up_work_in_flight(
    tmp_path: Path, procs: Processes, client: httpx.Client, point: str, pg_schema_url: str
) -> None:
    database = Database(postgres_url=pg_schema_url)
    run_embedded(tmp_path, procs, client, point, database, DURABLE_DATABASE_URL=pg_schema_url)


@pytest.mark.parametrize("point", STANDALONE_POINTS)
def test_standalone_restart_takes_up_work_in_flight(
    tmp_path: Path, procs: Processes, client: httpx.Client, point: str
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
    first = procs.start("orchestrator", dev_args, app_env(tmp_path, **fault_env(tmp_path, point)))

    def synced() -> bool | None:
        procs.assert_alive(served, first)
        body = get_json(client, f"{orch}/v1/functions")
        ids = {f["function_id"] for f in body["data"]} if body else set()
        return True if ids >= {f"{APP_ID}-{k}" for k in KINDS} else None

    poll("the app to be synced", START_DEADLINE, procs, synced)
    send_events(client, f"{orch}/e/any-key")
    wait_killed_at(procs, tmp_path, first, point)
    at_kill = Database(sqlite_path=db).at_kill()
    assert_kill_landed_mid_run(at_kill)

    # The requests the killed orchestrator had sent finish in the app; then the ledger holds
    # every side effect of the first orchestrator's requests, and a second one starts.
    def quiet() -> bool | None:
        procs.assert_alive(served)
        return True if (get_json(client, f"{app}/inflight") or {}).get("active") == 0 else None

    poll("the app to finish its requests", START_DEADLINE, procs, quiet)
    before_restart = ledger_count(ledger)
    second = procs.start("orchestrator", dev_args, app_env(tmp_path))
    runs = wait_all_completed(procs, client, f"{orch}/v1/runs", [second, served], at_kill)
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
