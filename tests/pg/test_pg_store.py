"""The PostgreSQL store on its own, with several stores (several pools, as several orchestrator
processes would have) on one schema: migrations, first-write-wins memos, SKIP LOCKED claims
under leases, the run lock, LISTEN/NOTIFY, connection errors and event data kept exactly."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from tests import ports

from durable_core import ConfigError
from durable_core.orchestrator import lifecycle
from durable_core.orchestrator.registry import Registry
from durable_core.orchestrator.service import FAST_BACKOFF
from durable_core.orchestrator.store import (
    AppRecord,
    EventFilter,
    EventRecord,
    FunctionRecord,
    ItemKind,
    RunRecord,
    RunStatus,
    now_ms,
    open_store,
    postgres,
)
from durable_core.orchestrator.store.postgres import MIGRATIONS, PostgresStore
from durable_core.orchestrator.unit import Unit

LEASE = 30_000
DEADLINE = 10.0
ROUNDS = 25  # races are run this many times
MIGRATION_ROUNDS = 10

StoreFactory = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
async def stores(pg_schema_url: str) -> AsyncIterator[StoreFactory]:
    """`await stores(url=pg_schema_url, opened=True)` -> a PostgresStore; all closed afterwards."""
    made: list[PostgresStore] = []

    async def make(url: str = pg_schema_url, *, opened: bool = True) -> PostgresStore:
        store = open_store(url)
        assert isinstance(store, PostgresStore)
        made.append(store)
        if opened:
            await store.open()
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
def other_schema_url(pg_url: str) -> Iterator[str]:
    """A second fresh schema on the same server, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield f"{pg_url}{'&' if '?' in pg_url else '?'}schema={schema}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def free_port() -> int:
    return ports.free_port()


async def until(what: str, probe: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if value := probe():
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def rows(store: PostgresStore, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with store.pool.connection() as conn:
        cur = await conn.execute(sql, args)
        return list(await cur.fetchall())


def run_record(run_id: str, status: RunStatus = RunStatus.RUNNING) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        fn_id="app-f",
        app_id="app",
        status=status,
        events=[{"name": "app/go", "data": {}}],
        created_at=now_ms(),
    )


def function_record(fn_id: str = "app-f") -> FunctionRecord:
    url = "http://127.0.0.1:9/api/durable"
    config = {
        "id": fn_id,
        "name": fn_id,
        "triggers": [{"event": "app/go"}],
        "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "http", "url": url}}},
    }
    return FunctionRecord(fn_id, "app", fn_id, config)


def app_record() -> AppRecord:
    return AppRecord("app", "http://127.0.0.1:9/api/durable", "durable-py", "fastapi", now_ms())


# -- migrations -------------------------------------------------------------------------------


async def create_schema(store: PostgresStore) -> None:
    async with await psycopg.AsyncConnection.connect(store.url, autocommit=True) as conn:
        await conn.execute(f"CREATE SCHEMA {store.schema}")


async def test_migrations_run_once_when_stores_open_the_schema_concurrently(
    stores: StoreFactory,
) -> None:
    expected = list(range(1, len(MIGRATIONS) + 1))
    for _ in range(MIGRATION_ROUNDS):
        a, b, c = [await stores(opened=False) for _ in range(3)]
        await create_schema(a)  # an empty schema: only the migrations race
        await asyncio.gather(a.open(), b.open(), c.open())
        versions = await rows(a, "SELECT version FROM schema_version ORDER BY version")
        assert [r["version"] for r in versions] == expected
        for store in (a, b, c):  # each store sees the same, usable tables
            async with store.transaction() as tx:
                await tx.insert_run(run_record(f"r-{uuid.uuid4().hex}"))
        for store in (a, b, c):
            await store.close()
        await a.drop_schema()


async def test_stores_opening_a_new_schema_concurrently_all_start(stores: StoreFactory) -> None:
    """Processes started together on a fresh `?schema=` all create it (or find it) and start."""
    for _ in range(MIGRATION_ROUNDS):
        a, b, c = [await stores(opened=False) for _ in range(3)]
        outcomes = await asyncio.gather(a.open(), b.open(), c.open(), return_exceptions=True)
        assert outcomes == [None, None, None]
        versions = await rows(a, "SELECT version FROM schema_version ORDER BY version")
        assert [r["version"] for r in versions] == list(range(1, len(MIGRATIONS) + 1))
        for store in (a, b, c):
            await store.close()
        await a.drop_schema()


async def test_a_new_migration_is_applied_once_on_top_of_the_current_schema(
    stores: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await stores()
    async with first.transaction() as tx:
        await tx.insert_run(run_record("kept"))
    await first.close()

    monkeypatch.setattr(
        postgres, "MIGRATIONS", [*MIGRATIONS, "CREATE TABLE extra (x INTEGER NOT NULL)"]
    )
    a, b = await stores(opened=False), await stores(opened=False)
    await asyncio.gather(a.open(), b.open())
    versions = await rows(a, "SELECT version FROM schema_version ORDER BY version")
    assert [r["version"] for r in versions] == list(range(1, len(MIGRATIONS) + 2))
    assert await rows(a, "SELECT count(*) AS n FROM extra") == [{"n": 0}]
    async with b.transaction() as tx:
        assert (await tx.get_run("kept")) is not None


async def test_the_schema_in_the_url_holds_the_tables(
    stores: StoreFactory, pg_schema_url: str
) -> None:
    store = await stores()
    schema = urllib.parse.parse_qs(urllib.parse.urlsplit(pg_schema_url).query)["schema"][0]
    found = await rows(
        store,
        "SELECT table_name FROM information_schema.tables WHERE table_schema=%s",
        schema,
    )
    assert {"runs", "queue", "memos", "events", "schema_version"} <= {
        r["table_name"] for r in found
    }


# -- memos ------------------------------------------------------------------------------------


async def test_memos_first_write_wins_across_stores(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    first = {"data": {"text": "a\u0000b é 😀", "n": 2**70}}
    async with a.transaction() as tx:
        assert await tx.put_memo("r1", "s", first)
    async with b.transaction() as tx:
        assert not await tx.put_memo("r1", "s", {"data": "second"})
        assert await tx.get_memos("r1") == {"s": first}

    async def write(store: PostgresStore, n: int) -> bool:
        async with store.transaction() as tx:
            return await tx.put_memo("r1", "race", {"data": n})

    won = await asyncio.gather(*(write((a, b)[n % 2], n) for n in range(20)))
    assert won.count(True) == 1
    async with a.transaction() as tx:
        assert (await tx.get_memos("r1"))["race"] == {"data": won.index(True)}


# -- claims and leases ------------------------------------------------------------------------


async def test_concurrent_claims_from_two_stores_never_share_an_item(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    async with a.transaction() as tx:
        ids = [
            await tx.enqueue(f"r{n % 13}", ItemKind.STEP, step=f"s{n}", payload={"n": n})
            for n in range(400)
        ]
    now = now_ms()

    async def claimer(store: PostgresStore) -> list[int]:
        got: list[int] = []
        while True:
            async with store.transaction() as tx:
                items = await tx.claim(now, 5, LEASE)
            if not items:
                return got
            got += [i.id for i in items]

    per_claimer = await asyncio.gather(*(claimer(s) for s in (a, b) for _ in range(4)))
    claimed = [item for got in per_claimer for item in got]
    assert len(claimed) == len(set(claimed)), "an item was claimed twice"
    assert sorted(claimed) == sorted(ids)
    assert sum(map(len, per_claimer[:4])) > 0 and sum(map(len, per_claimer[4:])) > 0
    for store in (a, b):  # everything is leased now
        async with store.transaction() as tx:
            assert await tx.claim(now, 100, LEASE) == []


async def test_an_expired_lease_is_claimable_by_another_store(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    async with a.transaction() as tx:
        item_id = await tx.enqueue("r1", ItemKind.DISCOVERY)
    t = now_ms()
    async with a.transaction() as tx:
        assert [i.id for i in await tx.claim(t, 10, 1000)] == [item_id]
    async with b.transaction() as tx:
        assert await tx.claim(t + 500, 10, 1000) == []  # leased to a
        assert await tx.next_available_at() == t + 1000
    async with b.transaction() as tx:
        taken = await tx.claim(t + 1001, 10, 1000)  # a's lease has run out
    assert [(i.id, i.run_id, i.kind) for i in taken] == [(item_id, "r1", ItemKind.DISCOVERY)]
    async with a.transaction() as tx:
        assert await tx.claim(t + 1500, 10, 1000) == []  # now leased to b until t + 2001


async def test_extend_lease_keeps_an_item_from_other_stores(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    async with a.transaction() as tx:
        item_id = await tx.enqueue("r1", ItemKind.STEP, step="s")
    t = now_ms()
    async with a.transaction() as tx:
        assert [i.id for i in await tx.claim(t, 10, 1000)] == [item_id]
        await tx.extend_lease(item_id, t + 5000)
    async with b.transaction() as tx:
        assert await tx.claim(t + 2000, 10, 1000) == []
        assert await tx.next_available_at() == t + 5000
    async with b.transaction() as tx:
        assert [i.id for i in await tx.claim(t + 5001, 10, 1000)] == [item_id]
    async with b.transaction() as tx:  # b answers first and consumes the item
        assert await tx.delete_item(item_id)
    async with a.transaction() as tx:  # a's late answer finds it gone
        assert not await tx.delete_item(item_id)


async def test_release_leases_leaves_other_processes_leases_alone(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    async with a.transaction() as tx:
        item_id = await tx.enqueue("r1", ItemKind.DISCOVERY)
        assert [i.id for i in await tx.claim(now_ms(), 10, LEASE)] == [item_id]
    async with b.transaction() as tx:  # b starting up must not take a's work
        assert await tx.release_leases() == 0
        assert await tx.claim(now_ms(), 10, LEASE) == []


# -- the run lock -----------------------------------------------------------------------------


async def resolve_in_step(
    store: PostgresStore,
    run_id: str,
    step: str,
    memo: Any,
    both_open: asyncio.Barrier,
) -> bool:
    """`lifecycle.resolve` in a unit of work over a transaction of `store`, once the other side's is open too."""
    async with store.transaction() as tx:
        assert await tx.get_run(run_id) is not None
        await both_open.wait()
        return await lifecycle.resolve(Unit(tx, Registry(), FAST_BACKOFF), run_id, step, memo)


async def test_last_two_steps_resolved_concurrently_queue_exactly_one_discovery(
    stores: StoreFactory,
) -> None:
    a, b = await stores(), await stores()
    for n in range(ROUNDS):
        run_id = f"run-{n}"
        async with a.transaction() as tx:
            await tx.insert_run(run_record(run_id, RunStatus.WAITING))
            await tx.add_pending(run_id, ["s1", "s2"])
        both_open = asyncio.Barrier(2)
        resolved = await asyncio.gather(
            resolve_in_step(a, run_id, "s1", {"data": "s1"}, both_open),
            resolve_in_step(b, run_id, "s2", {"data": "s2"}, both_open),
        )
        assert resolved == [True, True]
        async with a.transaction() as tx:
            queued = [i for i in await tx.claim(now_ms(), 100, LEASE) if i.run_id == run_id]
            run = await tx.get_run(run_id)
            memos = await tx.get_memos(run_id)
            left = await tx.remove_pending(run_id, "s1"), await tx.remove_pending(run_id, "s2")
        assert [i.kind for i in queued] == [ItemKind.DISCOVERY], f"round {n}: {queued}"
        assert run is not None and run.status is RunStatus.RUNNING
        assert memos == {"s1": {"data": "s1"}, "s2": {"data": "s2"}}
        assert left == (-1, -1)


async def test_one_step_resolved_twice_concurrently_is_stored_once(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    for n in range(ROUNDS):
        run_id = f"run-{n}"
        async with a.transaction() as tx:
            await tx.insert_run(run_record(run_id, RunStatus.WAITING))
            await tx.add_pending(run_id, ["s"])
        both_open = asyncio.Barrier(2)
        won = await asyncio.gather(
            resolve_in_step(a, run_id, "s", {"data": "a"}, both_open),
            resolve_in_step(b, run_id, "s", {"data": "b"}, both_open),
        )
        assert sorted(won) == [False, True]
        async with a.transaction() as tx:
            queued = [i for i in await tx.claim(now_ms(), 100, LEASE) if i.run_id == run_id]
            memos = await tx.get_memos(run_id)
        assert [i.kind for i in queued] == [ItemKind.DISCOVERY]
        assert memos == {"s": {"data": "a" if won[0] else "b"}}


async def test_lock_run_makes_another_transaction_on_the_run_wait(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    async with a.transaction() as tx:
        await tx.insert_run(run_record("r1"))
        await tx.insert_run(run_record("r2"))
    order: list[str] = []
    locked = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with a.transaction() as tx:
            await tx.lock_run("r1")
            locked.set()
            await release.wait()
            await tx.update_run("r1", reason="by the holder")
            order.append("holder commits")

    async def other() -> None:
        await locked.wait()
        async with b.transaction() as tx:
            assert (await tx.lock_run("r2")) is not None  # another run is not held up
            order.append("r2 locked")
            release.set()
            run = await tx.lock_run("r1")
            order.append("r1 locked")
            assert run is not None and run.reason == "by the holder"

    await asyncio.gather(holder(), other())
    assert order == ["r2 locked", "holder commits", "r1 locked"]


# -- LISTEN/NOTIFY ----------------------------------------------------------------------------


async def test_a_subscribed_store_hears_other_stores_queue_and_register(
    stores: StoreFactory,
) -> None:
    a, b = await stores(), await stores()
    heard: list[str] = []
    await a.subscribe(heard.append)
    await until("the listener to connect", lambda: heard)  # it reports "queue" once connected
    heard.clear()

    async with b.transaction() as tx:
        await tx.upsert_app(app_record(), [function_record()])
    await until("a 'functions' notification", lambda: heard)
    assert heard == ["functions"]
    heard.clear()

    async with b.transaction() as tx:
        for n in range(3):
            await tx.enqueue("r1", ItemKind.STEP, step=f"s{n}")
    await until("a 'queue' notification", lambda: heard)
    assert heard == ["queue"]  # one per transaction
    heard.clear()

    with pytest.raises(RuntimeError):
        async with b.transaction() as tx:
            await tx.enqueue("r1", ItemKind.DISCOVERY)
            raise RuntimeError("rolled back")
    async with b.transaction() as tx:
        await tx.upsert_app(app_record(), [function_record("app-g")])
    await until("a 'functions' notification", lambda: heard)
    assert heard == ["functions"], "a rolled-back enqueue was announced"


async def test_notifications_stay_within_their_schema(
    stores: StoreFactory, other_schema_url: str
) -> None:
    here = await stores()
    there, there_too = await stores(other_schema_url), await stores(other_schema_url)
    heard: list[str] = []
    await there.subscribe(heard.append)
    await until("the listener to connect", lambda: heard)
    heard.clear()
    async with here.transaction() as tx:  # another schema: not for `there`
        await tx.enqueue("r1", ItemKind.DISCOVERY)
    async with there_too.transaction() as tx:  # committed later, so heard later
        await tx.upsert_app(app_record(), [function_record()])
    await until("a 'functions' notification", lambda: heard)
    assert heard == ["functions"]


async def test_the_listener_stops_when_the_store_closes(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    heard: list[str] = []
    await a.subscribe(heard.append)
    await until("the listener to connect", lambda: heard)

    async def listeners() -> int:
        found = await rows(
            b,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE query = %s",
            f"LISTEN {a.channel}",
        )
        return int(found[0]["n"])

    assert await listeners() == 1
    await a.close()
    end = time.monotonic() + DEADLINE
    while await listeners() and time.monotonic() < end:
        await asyncio.sleep(0.01)
    assert await listeners() == 0


# -- connection errors ------------------------------------------------------------------------


@pytest.fixture
def quick_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool waits up to 30 s for its first connection; these tests shorten that wait."""
    real_open = AsyncConnectionPool.open

    async def open_quickly(self: Any, wait: bool = False, timeout: float = 30.0) -> None:
        await real_open(self, wait=wait, timeout=min(timeout, 1.0))

    monkeypatch.setattr(AsyncConnectionPool, "open", open_quickly)


SECRET = "s3cret-pw"


@pytest.mark.usefixtures("quick_pool")
@pytest.mark.parametrize(
    "template",
    [
        "postgresql://durable:{secret}@127.0.0.1:{port}/test",
        "postgresql://durable:{secret}@127.0.0.1:{port}/test?schema=t_unreachable",
        "postgresql://durable@127.0.0.1:{port}/test?password={secret}",
    ],
    ids=["password", "password-and-schema", "password-parameter"],
)
async def test_unreachable_server_is_a_config_error_naming_the_url_without_the_password(
    template: str,
) -> None:
    port = free_port()
    store = open_store(template.format(secret=SECRET, port=port))
    with pytest.raises(ConfigError) as caught:
        await store.open()
    await store.close()
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert SECRET not in message


@pytest.mark.usefixtures("quick_pool")
@pytest.mark.parametrize("schema", ["", "?schema=t_unreachable"], ids=["plain", "schema"])
async def test_missing_database_is_a_config_error(pg_url: str, schema: str) -> None:
    parts = urllib.parse.urlsplit(pg_url)
    url = f"{parts.scheme}://{parts.netloc}/no_such_database_{uuid.uuid4().hex[:8]}{schema}"
    store = open_store(url)
    with pytest.raises(ConfigError) as caught:
        await store.open()
    await store.close()
    assert "no_such_database_" in str(caught.value)


def test_a_bad_schema_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="schema"):
        open_store("postgresql://postgres@127.0.0.1:5432/test?schema=Robert'); DROP TABLE x;--")


# -- event data -------------------------------------------------------------------------------


EVENT_DATA: dict[str, Any] = {
    "text": "é ☃ 😀 \\ \" ' \n \t",
    "nul": "a\u0000b",
    "empty": "",
    "int": 7,
    "big": 2**70,
    "negative": -(2**63),
    "float": 0.1,
    "one": 1.0,
    "huge": 1e300,
    "tiny": 1e-300,
    "bool": True,
    "none": None,
    "list": [1, "x", None, False, {"deep": [[]]}],
    "nested": {"user": {"id": "u1", "tags": ["a", "b"]}},
    "": {"empty key": 1},
    "zkey first": 1,
    "a": 2,
}


def shape(value: Any) -> Any:
    """The value with every number's type attached, so 1.0 and 1 (or 1e300 and 10**300) differ."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return (type(value).__name__, value)


async def test_event_data_round_trips_exactly(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    raw = {"name": "app/go", "data": EVENT_DATA, "id": "evt-1", "ts": 123, "v": "2024-01-01"}
    async with a.transaction() as tx:
        await tx.insert_event(EventRecord("i1", "app/go", EVENT_DATA, "evt-1", 123, 456, raw))
    async with b.transaction() as tx:
        listed = await tx.list_events(EventFilter("app/go", 10))
    assert [(e.internal_id, e.name, e.event_id, e.ts, e.received_at) for e in listed] == [
        ("i1", "app/go", "evt-1", 123, 456)
    ]
    assert shape(listed[0].data) == shape(EVENT_DATA)
    assert list(listed[0].data) == list(EVENT_DATA)  # keys keep their order
    assert shape(listed[0].raw) == shape(raw)


async def test_a_starting_process_frees_the_leases_of_a_dead_one_only(
    stores: StoreFactory,
) -> None:
    a, b, c = await stores(), await stores(), await stores()
    now = now_ms()
    async with a.transaction() as tx:
        mine = await tx.enqueue("r1", ItemKind.STEP, step="x", available_at=now - 2)
        theirs = await tx.enqueue("r2", ItemKind.STEP, step="y", available_at=now - 1)
        assert [i.id for i in await tx.claim(now, 1, LEASE)] == [mine]
    async with b.transaction() as tx:
        assert [i.id for i in await tx.claim(now, 1, LEASE)] == [theirs]
    async with c.transaction() as tx:
        assert await tx.release_leases() == 0  # a and b are alive: their leases stand
    await a.close()  # a's session ends, as when its process is killed
    async with c.transaction() as tx:
        assert await tx.release_leases() == 1
        assert [i.id for i in await tx.claim(now_ms(), 10, LEASE)] == [mine]
    async with b.transaction() as tx:
        assert await tx.release_leases() == 1 - 1  # c holds a's item now; b keeps its own
