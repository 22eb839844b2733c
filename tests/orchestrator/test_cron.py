"""Cron triggers, on both stores: a new schedule waits for its next tick, ticks missed while no
orchestrator ran collapse into one run, and a tick runs once however many orchestrators share
the store. Ticks are minutes apart, so the tests move the stored last tick instead of waiting."""

from __future__ import annotations

import asyncio
import datetime as _dt
import time
from pathlib import Path
from typing import Any

import pytest

from durable_core import ConfigError, Context, Durable, TriggerCron
from durable_core.orchestrator import cron
from durable_core.orchestrator.embedded import Embedded
from durable_core.orchestrator.service import Orchestrator
from durable_core.orchestrator.store import RunFilter, now_ms, open_store

SPEC = "* * * * *"
KEY = f"cron-tick|{SPEC}"


def make_app() -> Durable:
    durable = Durable("cron", dev=True)

    @durable.function(id="tick", trigger=TriggerCron(SPEC))
    async def tick(ctx: Context) -> dict[str, Any]:
        stamp = await ctx.step.run("stamp", lambda: ctx.event.data["cron"])
        return {"cron": stamp, "event": ctx.event.name}

    return durable


async def runs_of(orch: Orchestrator) -> list[Any]:
    async with orch.store.snapshot() as tx:
        return await tx.list_runs(RunFilter(fn_id="cron-tick"))


async def poll(what: str, probe: Any, deadline: float = 15.0) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def ticks(runs: list[Any]) -> list[int]:
    """The tick each run was started for (a real minute may pass during a test: its tick runs
    too, so the tests count runs per tick)."""
    return sorted(run.events[0]["ts"] for run in runs)


async def stored_tick(orch: Orchestrator) -> int | None:
    async with orch.store.snapshot() as tx:
        return await tx.get_key("cron", KEY)


async def rewind(database_url: str, tick: int) -> None:
    """Pretend the last tick that ran is `tick` (as after downtime)."""
    store = open_store(database_url)
    await store.open()
    try:
        async with store.transaction() as tx:
            assert await tx.claim_key("cron", KEY, tick)  # the stored tick is past, so it yields
    finally:
        await store.close()


def host(database_url: str, tmp_path: Path, name: str) -> Embedded:
    return Embedded(make_app(), database=database_url, directory=str(tmp_path / name))


async def test_a_new_schedule_waits_for_its_next_tick(database_url: str, tmp_path: Path) -> None:
    emb = host(database_url, tmp_path, "a")
    orch = await emb.start()
    try:
        tick = await poll("the schedule to be recorded", lambda: stored_tick(orch))
        assert tick <= now_ms() and tick == cron.latest_tick(SPEC, tick)
        assert await runs_of(orch) == []  # nothing ran for the tick before registration
    finally:
        await emb.stop()


async def test_ticks_missed_while_down_run_once(database_url: str, tmp_path: Path) -> None:
    first = host(database_url, tmp_path, "a")
    orch = await first.start()
    await poll("the schedule to be recorded", lambda: stored_tick(orch))
    await first.stop()

    latest = cron.latest_tick(SPEC, now_ms())
    await rewind(database_url, latest - 3 * 60_000)  # three ticks missed while nothing ran

    second = host(database_url, tmp_path, "a")
    orch = await second.start()
    try:
        run = (await poll("the catch-up run", lambda: runs_of(orch)))[-1]  # the oldest
        assert run.events[0]["ts"] >= latest  # the missed ticks collapse into the latest one
        done = await orch.wait_for_run(run.run_id, 15)
        assert done is not None and done.status.value == "completed"
        assert done.output == {"cron": SPEC, "event": "inngest/scheduled.timer"}
        assert await stored_tick(orch) >= latest
        all_ticks = ticks(await runs_of(orch))
        # One run for the three missed ticks (none for older ones), and at most one more if a
        # real minute passed during the test.
        assert all_ticks[0] >= latest and len(set(all_ticks)) == len(all_ticks) <= 2
    finally:
        await second.stop()


async def test_a_tick_runs_once_across_orchestrators(pg_schema_url: str, tmp_path: Path) -> None:
    first = host(pg_schema_url, tmp_path, "a")
    orch = await first.start()
    await poll("the schedule to be recorded", lambda: stored_tick(orch))
    await first.stop()
    due = cron.latest_tick(SPEC, now_ms())
    await rewind(pg_schema_url, due - 60_000)

    hosts = [host(pg_schema_url, tmp_path, name) for name in ("b", "c", "d")]
    orchs = await asyncio.gather(*(h.start() for h in hosts))
    try:
        run = (await poll("the tick's run", lambda: runs_of(orchs[0])))[-1]
        done = await orchs[0].wait_for_run(run.run_id, 15)
        assert done is not None and done.status.value == "completed"
        for orch in orchs:  # every scheduler has looked at the tick by now
            await poll("every scheduler to see the tick", lambda o=orch: _seen(o))
        all_ticks = ticks(await runs_of(orchs[0]))
        # The due tick ran, or the next one if a minute began in the meantime (a busy machine).
        assert all_ticks and min(all_ticks) >= due
        assert len(all_ticks) == len(set(all_ticks))  # three schedulers, one run per tick
    finally:
        for h in hosts:
            await h.stop()


async def _seen(orch: Orchestrator) -> bool:
    tick = await stored_tick(orch)
    return tick is not None and tick >= cron.latest_tick(SPEC, now_ms()) - 60_000


def test_schedules_in_a_time_zone() -> None:
    spec = "TZ=Europe/Paris 0 9 * * *"
    noon_utc = int(_dt.datetime(2026, 7, 1, 12, tzinfo=_dt.UTC).timestamp() * 1000)
    # 09:00 in Paris is 07:00 UTC in summer.
    assert cron.latest_tick(spec, noon_utc) == int(
        _dt.datetime(2026, 7, 1, 7, tzinfo=_dt.UTC).timestamp() * 1000
    )
    assert cron.next_tick(spec, noon_utc) == int(
        _dt.datetime(2026, 7, 2, 7, tzinfo=_dt.UTC).timestamp() * 1000
    )


@pytest.mark.parametrize(
    "spec", ["61 * * * *", "* * * *", "TZ=Nowhere/Else 0 9 * * *", "every day"]
)
def test_a_bad_schedule_is_refused_where_it_is_written(spec: str) -> None:
    with pytest.raises(ConfigError, match="cron"):
        TriggerCron(spec)


async def test_a_bad_schedule_in_a_registration_is_a_400(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from durable_core.orchestrator.api import Api
    from durable_core.orchestrator.store.sqlite import SqliteStore

    orch = Orchestrator(SqliteStore(str(tmp_path / "reg.db")))
    runtime = {"type": "http", "url": "http://127.0.0.1:9/api?fnId=a-f&stepId=step"}
    function = {
        "id": "a-f",
        "triggers": [{"cron": "61 * * * *"}],
        "steps": {"step": {"runtime": runtime}},
    }
    try:
        with TestClient(Api(orch).app()) as client:
            res = client.post("/fn/register", json={"appname": "a", "functions": [function]})
    finally:
        await orch.http.aclose()
        await orch.store.close()
    assert res.status_code == 400
    assert "triggers[0].cron" in res.json()["error"]
