"""The SQLite store on its own: migrations, first-write-wins memos, the queue's leases,
pending ops, the wait index, idempotency keys, signals and the one-owner rule."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from durable_core import ConfigError
from durable_core.orchestrator.expressions import index_term
from durable_core.orchestrator.store import (
    ItemKind,
    RunFilter,
    RunRecord,
    RunStatus,
    WaitRecord,
    now_ms,
)
from durable_core.orchestrator.store.sqlite import MIGRATIONS, SqliteStore

from .conftest import sqlite_only

pytestmark = sqlite_only  # the store does not matter here

LEASE = 30_000


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "store.db"))
    yield s
    await s.close()


def versions(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY version")]


def run_record(
    run_id: str, fn_id: str = "app-f", status: RunStatus = RunStatus.QUEUED
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        fn_id=fn_id,
        app_id="app",
        status=status,
        events=[{"name": "x", "data": {}}],
        created_at=now_ms(),
    )


async def test_migrations_are_versioned_and_applied_once(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(str(path))
    async with store.transaction() as tx:
        await tx.insert_run(run_record("r1"))
    await store.close()
    assert versions(path) == list(range(1, len(MIGRATIONS) + 1))

    reopened = SqliteStore(str(path))
    try:
        assert versions(path) == list(range(1, len(MIGRATIONS) + 1))
        async with reopened.transaction() as tx:
            run = await tx.get_run("r1")
        assert run is not None and run.status is RunStatus.QUEUED
    finally:
        await reopened.close()


async def test_second_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "owned.db")
    first = SqliteStore(path)
    try:
        with pytest.raises(ConfigError) as err:
            SqliteStore(path)
        assert path in str(err.value)
    finally:
        await first.close()
    second = SqliteStore(path)  # the first owner is gone
    await second.close()


async def test_memos_first_write_wins(store: SqliteStore) -> None:
    async with store.transaction() as tx:
        assert await tx.put_memo("r1", "s1", {"data": 1}) is True
        assert await tx.put_memo("r1", "s1", {"data": 2}) is False
        assert await tx.put_memo("r1", "s2", None) is True
        assert await tx.put_memo("r2", "s1", {"error": {"message": "x"}}) is True
    async with store.transaction() as tx:
        assert await tx.get_memos("r1") == {"s1": {"data": 1}, "s2": None}
        assert await tx.get_memos("r2") == {"s1": {"error": {"message": "x"}}}
        assert await tx.get_memos("r3") == {}


async def test_a_failed_transaction_leaves_nothing(store: SqliteStore) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.put_memo("r1", "s1", {"data": 1})
            raise RuntimeError("crash in the middle")
    async with store.transaction() as tx:
        assert await tx.get_memos("r1") == {}


async def test_claim_lease_and_release(store: SqliteStore) -> None:
    now = now_ms()
    async with store.transaction() as tx:
        ready = await tx.enqueue("r1", ItemKind.DISCOVERY, available_at=now - 10)
        later = await tx.enqueue(
            "r1", ItemKind.RESUME, step="s", available_at=now + 60_000, payload={"memo": None}
        )
        assert await tx.next_available_at() == now - 10

    async with store.transaction() as tx:
        items = await tx.claim(now, 10, LEASE)
    assert [(i.id, i.kind, i.attempt) for i in items] == [(ready, ItemKind.DISCOVERY, 0)]

    async with store.transaction() as tx:
        assert await tx.claim(now, 10, LEASE) == []  # leased
        # The next thing to look at is the earlier of the lease's end and the timer.
        assert await tx.next_available_at() == now + LEASE
        again = await tx.claim(now + LEASE + 1, 10, LEASE)  # the lease ran out
    assert [i.id for i in again] == [ready]

    async with store.transaction() as tx:
        assert await tx.release_leases() == 1
        assert [i.id for i in await tx.claim(now, 10, LEASE)] == [ready]
        await tx.extend_lease(ready, now + 10 * LEASE)
        assert await tx.claim(now + LEASE + 1, 10, LEASE) == []
        await tx.delete_item(ready)
        due = await tx.claim(now + 60_000, 10, LEASE)
    assert [(i.id, i.step, i.payload) for i in due] == [(later, "s", {"memo": None})]

    async with store.transaction() as tx:
        await tx.clear_run("r1")
        assert await tx.next_available_at() is None


async def test_claim_respects_the_limit_and_order(store: SqliteStore) -> None:
    now = now_ms()
    async with store.transaction() as tx:
        ids = [
            await tx.enqueue("r", ItemKind.STEP, step=f"s{i}", available_at=now - i)
            for i in range(5)
        ]
        first = await tx.claim(now, 2, LEASE)
        rest = await tx.claim(now, 10, LEASE)
    assert [i.id for i in first] == [ids[4], ids[3]]
    assert [i.id for i in rest] == [ids[2], ids[1], ids[0]]


async def test_pending_counts(store: SqliteStore) -> None:
    async with store.transaction() as tx:
        await tx.add_pending("r1", ["a", "b", "c"])
        await tx.add_pending("r1", ["a"])
        await tx.add_pending("r2", ["a"])
        assert await tx.remove_pending("r1", "a") == 2
        assert await tx.remove_pending("r1", "a") == -1
        assert await tx.remove_pending("r1", "b") == 1
        await tx.clear_run("r1")
        assert await tx.remove_pending("r1", "c") == -1
        assert await tx.remove_pending("r2", "a") == 0


def wait(run_id: str, step: str, expression: str | None, trigger: dict[str, Any]) -> WaitRecord:
    return WaitRecord(run_id, step, "shop/paid", expression, trigger, now_ms() + 60_000)


async def test_indexed_wait_is_found_by_its_value_only(store: SqliteStore) -> None:
    expr = "async.data.order == event.data.order"
    trigger = {"name": "shop/order", "data": {"order": 7}}
    term = index_term(expr, trigger)
    assert term is not None
    async with store.transaction() as tx:
        await tx.add_wait(wait("r1", "w", expr, trigger), term)
        await tx.add_wait(wait("r2", "w", None, trigger), None)

        async def found(event: dict[str, Any]) -> set[str]:
            return {w.run_id for w in await tx.candidate_waits(event)}

        assert await found({"name": "shop/paid", "data": {"order": 7}}) == {"r1", "r2"}
        assert await found({"name": "shop/paid", "data": {"order": 7.0}}) == {"r1", "r2"}
        assert await found({"name": "shop/paid", "data": {"order": 8}}) == {"r2"}
        assert await found({"name": "shop/paid", "data": {"order": "7"}}) == {"r2"}
        assert await found({"name": "shop/paid", "data": {}}) == {"r2"}
        assert await found({"name": "shop/other", "data": {"order": 7}}) == set()

        (record,) = [
            w
            for w in await tx.candidate_waits({"name": "shop/paid", "data": {"order": 7}})
            if w.run_id == "r1"
        ]
        assert (record.step, record.expression, record.trigger_event) == ("w", expr, trigger)

        assert await tx.remove_wait("r1", "w") is True
        assert await tx.remove_wait("r1", "w") is False
        assert await found({"name": "shop/paid", "data": {"order": 7}}) == {"r2"}
        await tx.clear_run("r2")
        assert await found({"name": "shop/paid", "data": {"order": 7}}) == set()


async def test_idempotency_keys_are_held_until_they_expire(store: SqliteStore) -> None:
    now = now_ms()
    async with store.transaction() as tx:
        assert await tx.claim_key("event:f", "k", now + 60_000) is True
        assert await tx.claim_key("event:f", "k", now + 60_000) is False
        assert await tx.claim_key("event:g", "k", now + 60_000) is True
        assert await tx.claim_key("event:f", "old", now - 1) is True
        assert await tx.claim_key("event:f", "old", now + 60_000) is True


async def test_signals_have_one_waiter(store: SqliteStore) -> None:
    async with store.transaction() as tx:
        assert await tx.add_signal("sig", "r1", "s", replace=False) is True
        assert await tx.add_signal("sig", "r2", "s", replace=False) is False
        assert await tx.take_signal("sig") == ("r1", "s")
        assert await tx.take_signal("sig") is None
        assert await tx.add_signal("sig", "r1", "s", replace=False) is True
        assert await tx.add_signal("sig", "r2", "s", replace=True) is True
        assert await tx.remove_signal("r1", "s") is False
        assert await tx.remove_signal("r2", "s") is True
        assert await tx.take_signal("sig") is None


async def test_runs_are_listed_and_updated(store: SqliteStore) -> None:
    async with store.transaction() as tx:
        for i, fn in enumerate(["app-a", "app-b", "app-a"]):
            run = run_record(f"r{i}", fn)
            run.created_at = 1000 + i
            await tx.insert_run(run)
        await tx.update_run("r0", status=RunStatus.COMPLETED, output={"ok": [1]}, ended_at=5)
        assert [r.run_id for r in await tx.list_runs(RunFilter())] == ["r2", "r1", "r0"]
        assert [r.run_id for r in await tx.list_runs(RunFilter(fn_id="app-a"))] == ["r2", "r0"]
        done = await tx.list_runs(RunFilter(status=RunStatus.COMPLETED))
        assert [(r.run_id, r.output, r.ended_at) for r in done] == [("r0", {"ok": [1]}, 5)]
        assert [r.run_id for r in await tx.list_runs(RunFilter(limit=1, before=1002))] == ["r1"]
        assert {r.run_id for r in await tx.unfinished_runs()} == {"r1", "r2"}


async def test_a_deleted_queue_id_is_never_handed_out_again(store: SqliteStore) -> None:
    """A late answer deleting its (already cleared) item by id cannot hit another run's item."""
    async with store.transaction() as tx:
        first = await tx.enqueue("cancelled", ItemKind.STEP, step="s")
        await tx.clear_run("cancelled")
        other = await tx.enqueue("other", ItemKind.RESUME, step="nap", payload={"memo": None})
    assert other != first
    async with store.transaction() as tx:
        assert not await tx.delete_item(first)  # the cancelled run's late answer
        assert await tx.next_available_at() is not None  # the other run's timer is still there
