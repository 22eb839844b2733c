"""The store contract, on each store (SQLite, then a PostgreSQL schema): migrations,
first-write-wins memos, the queue's leases, pending ops, the wait index, idempotency keys,
signals, runs, apps, events, history and flow control; and SQLite's one-owner rule.
PostgreSQL with several processes on one schema is tested in tests/pg."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from durable_core import ConfigError
from durable_core.orchestrator.expressions import index_term
from durable_core.orchestrator.store import (
    AppRecord,
    EventFilter,
    EventRecord,
    FunctionRecord,
    HistoryRecord,
    ItemKind,
    RunFilter,
    RunRecord,
    RunStatus,
    Store,
    WaitRecord,
    now_ms,
    open_store,
    postgres,
    sqlite,
)
from durable_core.orchestrator.store.sql import SqlTx
from durable_core.orchestrator.store.sqlite import SqliteStore

from .conftest import sqlite_only

LEASE = 30_000


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = open_store(database_url)
    await s.open()
    yield s
    await s.close()


async def versions(store: Store) -> list[int]:
    sql = "SELECT version FROM schema_version ORDER BY version"
    if isinstance(store, SqliteStore):
        return [r[0] for r in store.db.execute(sql)]
    assert isinstance(store, postgres.PostgresStore)
    async with store.pool.connection() as conn:
        return [r["version"] for r in await (await conn.execute(sql)).fetchall()]


def migrations(store: Store) -> list[str]:
    return sqlite.MIGRATIONS if isinstance(store, SqliteStore) else postgres.MIGRATIONS


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


async def test_migrations_are_versioned_and_applied_once(database_url: str) -> None:
    store = open_store(database_url)
    await store.open()
    async with store.transaction() as tx:
        await tx.insert_run(run_record("r1"))
    assert await versions(store) == list(range(1, len(migrations(store)) + 1))
    await store.close()

    reopened = open_store(database_url)
    await reopened.open()
    try:
        assert await versions(reopened) == list(range(1, len(migrations(reopened)) + 1))
        async with reopened.transaction() as tx:
            run = await tx.get_run("r1")
        assert run is not None and run.status is RunStatus.QUEUED
    finally:
        await reopened.close()


async def test_a_database_of_an_earlier_version_is_migrated_and_keeps_its_rows(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = sqlite if database_url.startswith("sqlite") else postgres
    latest = module.MIGRATIONS
    monkeypatch.setattr(module, "MIGRATIONS", latest[:2])  # before queue ids were made unique
    old = open_store(database_url)
    await old.open()
    async with old.transaction() as tx:
        await tx.insert_run(run_record("r1"))
        # A queue row as the code of that version wrote it (today's enqueue names later columns).
        assert isinstance(tx, SqlTx)
        kept = await tx.db.insert(
            "INSERT INTO queue (run_id, kind, attempt, available_at, payload) VALUES (?,?,?,?,?)",
            ("r1", ItemKind.DISCOVERY.value, 0, now_ms(), '{"n": 1}'),
        )
    await old.close()

    monkeypatch.setattr(module, "MIGRATIONS", latest)
    store = open_store(database_url)
    await store.open()
    try:
        assert await versions(store) == list(range(1, len(latest) + 1))
        async with store.transaction() as tx:
            assert (await tx.get_run("r1")) is not None
            gone = await tx.enqueue("r2", ItemKind.DISCOVERY)
            assert await tx.delete_item(gone)
            new = await tx.enqueue("r3", ItemKind.DISCOVERY)
            items = await tx.claim(now_ms(), 10, LEASE)
        assert [(i.id, i.run_id, i.payload) for i in items] == [
            (kept, "r1", {"n": 1}),
            (new, "r3", None),
        ]
        assert new > gone  # the deleted item's id is not handed out again
    finally:
        await store.close()


@sqlite_only
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


async def test_memos_first_write_wins(store: Store) -> None:
    async with store.transaction() as tx:
        assert await tx.put_memo("r1", "s1", {"data": 1}) is True
        assert await tx.put_memo("r1", "s1", {"data": 2}) is False
        assert await tx.put_memo("r1", "s2", None) is True
        assert await tx.put_memo("r2", "s1", {"error": {"message": "x"}}) is True
    async with store.transaction() as tx:
        assert await tx.get_memos("r1") == {"s1": {"data": 1}, "s2": None}
        assert await tx.get_memos("r2") == {"s1": {"error": {"message": "x"}}}
        assert await tx.get_memos("r3") == {}


async def test_memos_are_listed_in_the_order_they_were_stored(store: Store) -> None:
    # Requests send them in that order (`ctx.stack.stack`): the order steps finished, which
    # the TypeScript SDK replays parallel steps by; not the order of their hashed ids.
    async with store.transaction() as tx:
        await tx.insert_run(run_record("r1", status=RunStatus.RUNNING))
    steps = ["f" * 40, "0" * 40, "9" * 40, "a" * 40, "5" * 40]
    for i, step in enumerate(steps):
        if i % 2:  # both ways of storing a memo: in a unit, and a checkpoint of its own
            rec = HistoryRecord("r1", step, step[0], "StepRun", 0, now_ms(), now_ms(), i)
            assert await store.checkpoint(rec, {"data": i}) is True
        else:
            async with store.transaction() as tx:
                await tx.put_memo("r1", step, {"data": i})
    async with store.transaction() as tx:
        assert list(await tx.get_memos("r1")) == steps


async def test_a_failed_transaction_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.put_memo("r1", "s1", {"data": 1})
            raise RuntimeError("crash in the middle")
    async with store.transaction() as tx:
        assert await tx.get_memos("r1") == {}


async def test_claim_lease_and_release(store: Store) -> None:
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
        # On start, a one-owner store frees every lease; a shared one frees none (they are
        # other live processes' until they run out), so the item is claimed once its lease has
        # (the earliest item first: the timer is due by then too).
        assert await tx.release_leases() == (0 if store.shared else 1)
        at = now + 2 * LEASE + 2 if store.shared else now
        assert [i.id for i in await tx.claim(at, 1, LEASE)] == [ready]
        await tx.extend_lease(ready, now + 10 * LEASE)
        assert await tx.claim(now + LEASE + 1, 10, LEASE) == []
        await tx.delete_item(ready)
        due = await tx.claim(now + 60_000, 10, LEASE)
    assert [(i.id, i.step, i.payload) for i in due] == [(later, "s", {"memo": None})]

    async with store.transaction() as tx:
        await tx.clear_run("r1")
        assert await tx.next_available_at() is None


async def test_claim_respects_the_limit_and_order(store: Store) -> None:
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


async def test_pending_counts(store: Store) -> None:
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


async def test_indexed_wait_is_found_by_its_value_only(store: Store) -> None:
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


async def test_idempotency_keys_are_held_until_they_expire(store: Store) -> None:
    now = now_ms()
    async with store.transaction() as tx:
        assert await tx.claim_key("event:f", "k", now + 60_000) is True
        assert await tx.claim_key("event:f", "k", now + 60_000) is False
        assert await tx.claim_key("event:g", "k", now + 60_000) is True
        assert await tx.claim_key("event:f", "old", now - 1) is True
        assert await tx.claim_key("event:f", "old", now + 60_000) is True


async def test_signals_have_one_waiter(store: Store) -> None:
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


async def test_runs_are_listed_and_updated(store: Store) -> None:
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


async def test_a_deleted_queue_id_is_never_handed_out_again(store: Store) -> None:
    """A late answer deleting its (already cleared) item by id cannot hit another run's item."""
    async with store.transaction() as tx:
        first = await tx.enqueue("cancelled", ItemKind.STEP, step="s")
        await tx.clear_run("cancelled")
        other = await tx.enqueue("other", ItemKind.RESUME, step="nap", payload={"memo": None})
    assert other != first
    async with store.transaction() as tx:
        assert not await tx.delete_item(first)  # the cancelled run's late answer
        assert await tx.next_available_at() is not None  # the other run's timer is still there


def function_record(fn_id: str, url: str = "http://127.0.0.1:9/api/durable") -> FunctionRecord:
    step = {"id": "step", "name": "step", "runtime": {"type": "http", "url": url}}
    return FunctionRecord(fn_id, "app", fn_id, {"id": fn_id, "steps": {"step": step}})


async def test_apps_and_functions_are_replaced_and_changes_reported(store: Store) -> None:
    url = "http://127.0.0.1:9/api/durable"
    app = AppRecord("app", url, "durable-py", "fastapi", 1)
    async with store.transaction() as tx:
        assert await tx.upsert_app(app, [function_record("app-a"), function_record("app-b")])
    async with store.transaction() as tx:
        app.updated_at = 2
        assert not await tx.upsert_app(app, [function_record("app-a"), function_record("app-b")])
        assert await tx.upsert_app(app, [function_record("app-b")])  # one function gone
        moved = AppRecord("app", url + "/v2", "durable-py", "fastapi", 3)
        assert await tx.upsert_app(moved, [function_record("app-b", url + "/v2")])
        assert await tx.list_apps() == [moved]
        (fn,) = await tx.list_functions()
    assert (fn.fn_id, fn.app_id, fn.url, fn.retries) == ("app-b", "app", url + "/v2", 4)


async def test_events_are_listed_newest_first(store: Store) -> None:
    async with store.transaction() as tx:
        for i, name in enumerate(["a/x", "a/y", "a/x", "a/x"]):
            data = {"i": i, "big": 2**70, "f": 1.0}
            raw = {"name": name, "data": data, "id": f"e{i}"}
            await tx.insert_event(EventRecord(f"i{i}", name, data, f"e{i}", 100 + i, 1000 + i, raw))
    async with store.snapshot() as tx:
        assert [e.internal_id for e in await tx.list_events(EventFilter(limit=10))] == [
            "i3", "i2", "i1", "i0"
        ]  # fmt: skip
        assert [e.internal_id for e in await tx.list_events(EventFilter("a/x", 2))] == ["i3", "i2"]
        older = await tx.list_events(EventFilter("a/x", 10, 1003))
    assert [(e.internal_id, e.event_id, e.ts, e.received_at) for e in older] == [
        ("i2", "e2", 102, 1002),
        ("i0", "e0", 100, 1000),
    ]
    assert older[0].data == {"i": 2, "big": 2**70, "f": 1.0}
    assert isinstance(older[0].data["f"], float)
    assert older[0].raw == {"name": "a/x", "data": older[0].data, "id": "e2"}


async def test_a_key_only_advances(store: Store) -> None:
    async with store.transaction() as tx:
        assert await tx.get_key("cron:f", "k") is None
        assert await tx.advance_key("cron:f", "k", 10) is True
        assert await tx.advance_key("cron:f", "k", 10) is False
        assert await tx.advance_key("cron:f", "k", 5) is False
        assert await tx.get_key("cron:f", "k") == 10
        assert await tx.advance_key("cron:f", "k", 11) is True
        assert await tx.get_key("cron:f", "k") == 11
        assert await tx.get_key("cron:g", "k") is None


async def test_history_and_checkpoints(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.insert_run(run_record("r1", status=RunStatus.RUNNING))
        await tx.insert_run(run_record("done", status=RunStatus.COMPLETED))
        await tx.add_history(HistoryRecord("r1", "s1", "one", "StepPlanned", 0, 10, None))
        await tx.add_history(
            HistoryRecord("r1", "s1", "one", "StepError", 1, 20, 25, None, {"message": "x"})
        )
        await tx.add_history(HistoryRecord("r1", "s1", "one", "StepPlanned", 2, 30, None))
        await tx.end_history("r1", "s1", 40, {"data": [1]})
    rec = HistoryRecord("r1", "s2", "two", "StepRun", 0, 50, 60, {"data": "out"})
    assert await store.checkpoint(rec, {"data": "out"}) is True
    again = HistoryRecord("r1", "s2", "two", "StepRun", 0, 70, 80, {"data": "late"})
    assert await store.checkpoint(again, {"data": "late"}) is True  # the first write stays
    assert await store.checkpoint(HistoryRecord("done", "s", "s", "StepRun", 0, 1, 2), 1) is False
    assert await store.checkpoint(HistoryRecord("gone", "s", "s", "StepRun", 0, 1, 2), 1) is False
    async with store.snapshot() as tx:
        history = await tx.get_history("r1")
        assert await tx.get_memos("r1") == {"s2": {"data": "out"}}
        assert await tx.get_memos("done") == {} and await tx.get_history("done") == []
    assert [(h.step, h.op, h.attempt, h.started_at, h.ended_at) for h in history] == [
        ("s1", "StepPlanned", 0, 10, None),
        ("s1", "StepError", 1, 20, 25),
        ("s1", "StepPlanned", 2, 30, 40),  # the latest open one is ended
        ("s2", "StepRun", 0, 50, 60),
    ]
    assert [(h.output, h.error) for h in history] == [
        (None, None), (None, {"message": "x"}), ({"data": [1]}, None), ({"data": "out"}, None)
    ]  # fmt: skip
    assert all(h.id is not None for h in history)


async def test_run_fields_round_trip(store: Store) -> None:
    async with store.transaction() as tx:
        run = run_record("r1")
        run.parent_run_id, run.parent_step, run.batch_parallel = "p", "ps", True
        await tx.insert_run(run)
        await tx.update_run("r1", status=RunStatus.FAILED, error={"message": "no"}, reason="why")
        assert await tx.run_status("r1") is RunStatus.FAILED
        assert await tx.run_status("r2") is None
        await tx.update_run("r1", batch_parallel=False, output=None, ended_at=9)
        locked = await tx.lock_run("r1")
        assert await tx.lock_run("r2") is None
    assert locked is not None
    assert (locked.status, locked.error, locked.reason, locked.ended_at) == (
        RunStatus.FAILED, {"message": "no"}, "why", 9
    )  # fmt: skip
    assert (locked.parent_run_id, locked.parent_step, locked.batch_parallel) == ("p", "ps", False)
    assert locked.events == run.events and locked.output is None


async def test_flow_controlled_items_wait_in_line_park_and_lease(store: Store) -> None:
    now = now_ms()
    key = ["fn:k", 1, "limit"]
    async with store.transaction() as tx:
        for run_id in ("a", "b", "c"):
            await tx.insert_run(run_record(run_id))
        plain = await tx.enqueue("p", ItemKind.DISCOVERY, available_at=now - 5)
        a = await tx.enqueue("a", ItemKind.DISCOVERY, available_at=now - 3, flow={"c": [key]})
        b = await tx.enqueue("b", ItemKind.DISCOVERY, available_at=now - 2, flow={"p": 10})
        c = await tx.enqueue("c", ItemKind.DISCOVERY, available_at=now - 1, flow={"c": [key]})
    async with store.transaction() as tx:
        await tx.lock_flow()
        assert [i.id for i in await tx.claim(now, 10, LEASE)] == [plain]  # no flow control
        items = await tx.flow_items(now, 10)
        assert [i.id for i in items] == [b, a, c]  # by rank: b's priority moves it up
        assert items[1].flow == {"c": [key]} and items[0].run_id == "b"
        assert await tx.flow_items(now, 1) == items[:1]
        await tx.park(items[1], "fn:k")
        await tx.park(items[2], "fn:k")
        assert await tx.parked_keys() == [("fn:k", {"c": [key]})]
        assert [i.id for i in await tx.flow_items(now, 10)] == [b]
        items[0].flow = {"p": 10, "w": 1}
        await tx.delay_item(items[0], now + 1000)
        assert await tx.flow_items(now, 10) == []
        assert await tx.next_available_at() == now + 1000  # parked items do not count
        await tx.unpark("fn:k", 1)
        assert await tx.parked_keys() == [("fn:k", {"c": [key]})]
        first = await tx.flow_items(now, 10)
        assert [i.id for i in first] == [a]
        await tx.lease_items(first, now, now + LEASE)
        await tx.lease_items([], now, now + LEASE)
        assert await tx.flow_items(now, 10) == []
        assert await tx.flow_leased(now) == [{"c": [key]}]
        assert await tx.run_status("a") is RunStatus.RUNNING
        assert await tx.run_status("c") is RunStatus.QUEUED
        (delayed,) = await tx.flow_items(now + 1000, 10)
    assert (delayed.id, delayed.available_at, delayed.flow) == (b, now + 1000, {"p": 10, "w": 1})


async def test_flow_state_is_kept_until_cleared(store: Store) -> None:
    async with store.transaction() as tx:
        assert await tx.get_state("rate:f:k") is None
        await tx.set_state("rate:f:k", {"tat": 5, "list": [1, 2.5]})
        await tx.set_state("single:f", "r1")
    async with store.transaction() as tx:
        assert await tx.get_state("rate:f:k") == {"tat": 5, "list": [1, 2.5]}
        assert await tx.get_state("single:f") == "r1"
        await tx.set_state("single:f", "r2")
        assert await tx.get_state("single:f") == "r2"
        await tx.set_state("single:f", None)
        assert await tx.get_state("single:f") is None
