"""Three `durable start` processes share one PostgreSQL schema; one of them is killed with
SIGKILL in the middle of 500 runs, and the other two finish every run with its exact output.

The app (`ledger_app.py`, production mode, synced to the first orchestrator) records each
step's side effect in a ledger file, fsynced line by line, with the time its request arrived.
The killed process is first stopped (SIGSTOP), so what the database held at that moment can be
read before it dies.

Until the kill no step runs twice. A step whose result was stored before the kill never runs
again; a step runs twice only if its first request came before the kill and its result was
lost with the process, and the second after the kill (once the lease ran out); no step runs
three times.

Orchestrators started at the same moment on a schema that does not exist yet must all start:
the first creates the schema and its tables, the others use them.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import psycopg
import pytest

from durable_core.orchestrator.store.postgres import PostgresStore

from . import WORKERS, by_pair, check_ledger, check_outputs, cluster, read_ledger
from .ledger_app import KINDS, PLANS, steps_of

pytestmark = pytest.mark.serial  # a 3 s lease must not lapse under other tests' load

RUNS = 500
PLAN = [(f"r{i:03d}", KINDS[i % len(KINDS)]) for i in range(RUNS)]
KIND_OF = dict(PLAN)
# Events go in two waves: the second once the first has completed, and the kill comes once a
# third of the second wave's steps have run: some runs are complete, and the orchestrators are
# busy with the others. (Queue items are taken oldest first, so within one wave most runs'
# first steps run before any run's last, and runs complete near the end of the wave.)
FIRST_WAVE = 100
SECOND_WAVE_STEPS = sum(len(steps_of(kind)) for _, kind in PLAN[FIRST_WAVE:])
KILL_DEADLINE = 60.0
FINISH_DEADLINE = 90.0
# A request the killed process sent reaches the app within this many seconds; a survivor takes
# its work over only once the lease (3 s) has run out.
ARRIVAL_SLACK = 1.0
TRIALS = 5  # fresh schemas opened by six stores at once


def width_of(kind: str) -> int:
    """How many steps of one run of `kind` can be in flight at the same moment."""
    return max(len(e) if isinstance(e, tuple) else 1 for e in PLANS[kind])


def test_survivors_finish_every_run_after_sigkill(tmp_path: Path, pg_schema_url: str) -> None:
    with cluster(tmp_path, pg_schema_url, lease=3.0) as c:
        c.start(orchestrators=3)
        victim = c.orchestrators[0][0]  # the one the app syncs with
        survivors = [proc for proc, _ in c.orchestrators[1:]]
        everyone = [c.app, *(proc for proc, _ in c.orchestrators)]
        c.send(PLAN[:FIRST_WAVE])
        c.wait_completed(FIRST_WAVE, KILL_DEADLINE, everyone)
        c.send(PLAN[FIRST_WAVE:])
        second = {marker for marker, _ in PLAN[FIRST_WAVE:]}
        c.wait_ledger(
            lambda line: line.marker in second, SECOND_WAVE_STEPS // 3, KILL_DEADLINE, everyone
        )

        stopped_at = c.freeze(victim)
        until_kill = read_ledger(c.ledger)
        at_kill = c.snapshot()
        c.kill(victim)
        assert len(at_kill.status) == RUNS, f"runs stored at the kill: {len(at_kill.status)}"
        assert at_kill.completed, "no run had completed before the kill"
        assert len(at_kill.completed) < RUNS, "every run had finished before the kill"

        c.wait_completed(RUNS, FINISH_DEADLINE, [c.app, *survivors])
        runs = c.runs(c.orchestrators[1][1])
        c.assert_alive(c.app, *survivors)
        lines = read_ledger(c.ledger)

    check_outputs(runs, PLAN)
    check_ledger(lines, PLAN, at_kill.stored)
    assert {line.pid for line in lines} == {c.app.pid}
    early = {p: ls for p, ls in by_pair(until_kill).items() if len(ls) > 1}
    assert not early, f"steps that ran twice while every orchestrator was up: {early}"

    twice = {p: ls for p, ls in by_pair(lines).items() if len(ls) == 2}
    assert twice, (
        "no step ran twice: the killed process had no step in flight, so the takeover of its "
        "work was not exercised"
    )
    not_in_flight = {
        p: [(line.index, round(line.arrived - stopped_at, 3)) for line in ls]
        for p, ls in twice.items()
        if not (
            min(ls[0].arrived, ls[1].arrived) < stopped_at + ARRIVAL_SLACK
            and max(ls[0].arrived, ls[1].arrived) > stopped_at
        )
    }
    assert not not_in_flight, (
        "steps that ran twice, not first before the kill and again after it "
        f"(ledger line, request arrival in seconds after the kill): {not_in_flight}"
    )
    finished = {p: ls for p, ls in twice.items() if p[0] in at_kill.completed}
    assert not finished, f"steps of runs completed before the kill that ran again: {finished}"
    per_run: dict[str, list[str]] = {}
    for marker, step in twice:
        per_run.setdefault(marker, []).append(step)
    too_many = {m: s for m, s in per_run.items() if len(s) > width_of(KIND_OF[m])}
    assert not too_many, f"runs with more steps run twice than could be in flight: {too_many}"
    assert len(twice) <= WORKERS, f"{len(twice)} steps ran twice; one process sends {WORKERS}"


async def test_orchestrators_starting_together_on_a_new_schema_all_start(pg_url: str) -> None:
    for _ in range(TRIALS):
        schema = f"t_{uuid.uuid4().hex[:16]}"
        stores = [PostgresStore(pg_url, schema=schema, min_size=1, max_size=2) for _ in range(6)]
        try:
            opened = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
        finally:
            for store in stores:
                await store.close()
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        failed = [f"{type(e).__name__}: {e}" for e in opened if isinstance(e, BaseException)]
        assert not failed, f"{len(failed)} of {len(stores)} stores failed to open: {failed[0]}"
