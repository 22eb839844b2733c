"""The PostgreSQL store: psycopg 3 with a connection pool, shared by several orchestrators.

Queue items (runs, planned steps, timers) are claimed with `FOR UPDATE SKIP LOCKED` under a
lease; a run's changes are serialized by locking its row; memos are first-write-wins. Every
transaction that queues work or registers functions sends a NOTIFY, and each orchestrator
LISTENs on a connection of its own, so idle workers wake at once; polling is the fallback.
Payloads are stored as JSON text, not JSONB: JSONB rewrites numbers (1e300 comes back as a
301-digit integer) and drops duplicate keys, and what is stored must come back as it was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from ...errors import ConfigError
from .. import expressions
from .interface import Notify, Store, Tx
from .records import (
    ENDED_SQL,
    RUN_JSON_COLUMNS,
    AppRecord,
    EventRecord,
    FunctionRecord,
    HistoryRecord,
    ItemKind,
    QueueItem,
    RunFilter,
    RunRecord,
    RunStatus,
    WaitRecord,
    dump,
    item_from_row,
    load,
    now_ms,
    rank,
    run_from_row,
    wait_from_row,
)

_log = logging.getLogger("durable.orchestrator")
CHANNEL = "durable"
_MIGRATION_LOCK = 7_302_811_355

MIGRATIONS: list[str] = [
    """
    CREATE TABLE apps (app_id TEXT PRIMARY KEY, url TEXT NOT NULL, sdk TEXT NOT NULL,
        framework TEXT NOT NULL, updated_at BIGINT NOT NULL);
    CREATE TABLE functions (fn_id TEXT PRIMARY KEY, app_id TEXT NOT NULL, name TEXT NOT NULL,
        config TEXT NOT NULL);
    CREATE TABLE events (internal_id TEXT PRIMARY KEY, name TEXT NOT NULL, data TEXT NOT NULL,
        event_id TEXT NOT NULL, ts BIGINT NOT NULL, received_at BIGINT NOT NULL, raw TEXT NOT NULL);
    CREATE INDEX events_by_name ON events (name, received_at);
    CREATE INDEX events_by_time ON events (received_at);
    CREATE TABLE keys (scope TEXT NOT NULL, key TEXT NOT NULL, expires_at BIGINT NOT NULL,
        PRIMARY KEY (scope, key));
    CREATE TABLE runs (run_id TEXT PRIMARY KEY, fn_id TEXT NOT NULL, app_id TEXT NOT NULL,
        status TEXT NOT NULL, events TEXT NOT NULL, created_at BIGINT NOT NULL,
        started_at BIGINT, ended_at BIGINT, output TEXT, error TEXT, parent_run_id TEXT,
        parent_step TEXT, reason TEXT, batch_parallel BOOLEAN NOT NULL DEFAULT FALSE);
    CREATE INDEX runs_by_fn ON runs (fn_id, created_at);
    CREATE INDEX runs_by_time ON runs (created_at);
    CREATE INDEX runs_unfinished ON runs (status) WHERE status NOT IN ('completed','failed','cancelled');
    CREATE TABLE memos (run_id TEXT NOT NULL, step TEXT NOT NULL, memo TEXT NOT NULL,
        PRIMARY KEY (run_id, step));
    CREATE TABLE pending (run_id TEXT NOT NULL, step TEXT NOT NULL, PRIMARY KEY (run_id, step));
    CREATE TABLE history (id BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, step TEXT NOT NULL,
        name TEXT NOT NULL, op TEXT NOT NULL, attempt INTEGER NOT NULL, started_at BIGINT NOT NULL,
        ended_at BIGINT, output TEXT, error TEXT);
    CREATE INDEX history_by_run ON history (run_id, id);
    CREATE TABLE queue (id BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, kind TEXT NOT NULL,
        step TEXT, attempt INTEGER NOT NULL, available_at BIGINT NOT NULL, payload TEXT,
        lease_until BIGINT);
    CREATE INDEX queue_ready ON queue (available_at, id);
    CREATE INDEX queue_by_run ON queue (run_id);
    CREATE TABLE waits (run_id TEXT NOT NULL, step TEXT NOT NULL, event_name TEXT NOT NULL,
        expression TEXT, trigger_event TEXT NOT NULL, expires_at BIGINT NOT NULL,
        key_path TEXT, key_value TEXT, PRIMARY KEY (run_id, step));
    CREATE INDEX waits_by_key ON waits (event_name, key_path, key_value);
    CREATE TABLE signals (signal TEXT PRIMARY KEY, run_id TEXT NOT NULL, step TEXT NOT NULL);
    """,
    """
    ALTER TABLE queue ADD COLUMN flow TEXT, ADD COLUMN parked TEXT, ADD COLUMN rank BIGINT;
    CREATE INDEX queue_flow ON queue (rank, id) WHERE flow IS NOT NULL;
    CREATE INDEX queue_parked ON queue (parked, rank, id) WHERE parked IS NOT NULL;
    CREATE TABLE flow_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    DROP INDEX runs_unfinished;
    CREATE INDEX runs_unfinished ON runs (status)
        WHERE status NOT IN ('completed','failed','cancelled','skipped');
    """,
]


class PgTx(Tx):
    def __init__(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> None:
        self.conn = conn
        self.notify: set[str] = set()
        self.taken = []
        self.finished = []

    async def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = await self.conn.execute(sql, args)
        return await cur.fetchall()

    async def _count(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        cur = await self.conn.execute(sql, args)
        return cur.rowcount

    async def upsert_app(self, app: AppRecord, functions: list[FunctionRecord]) -> bool:
        rows = await self._all("SELECT fn_id, config FROM functions WHERE app_id=%s", (app.app_id,))
        before = {r["fn_id"]: r["config"] for r in rows}
        after = {f.fn_id: dump(f.config) for f in functions}
        old = await self._all("SELECT url FROM apps WHERE app_id=%s FOR UPDATE", (app.app_id,))
        await self.conn.execute(
            "INSERT INTO apps VALUES (%s,%s,%s,%s,%s) ON CONFLICT (app_id) DO UPDATE SET url=EXCLUDED.url,"
            " sdk=EXCLUDED.sdk, framework=EXCLUDED.framework, updated_at=EXCLUDED.updated_at",
            (app.app_id, app.url, app.sdk, app.framework, app.updated_at),
        )
        await self.conn.execute("DELETE FROM functions WHERE app_id=%s", (app.app_id,))
        for f in functions:
            await self.conn.execute(
                "INSERT INTO functions VALUES (%s,%s,%s,%s) ON CONFLICT (fn_id) DO UPDATE SET"
                " app_id=EXCLUDED.app_id, name=EXCLUDED.name, config=EXCLUDED.config",
                (f.fn_id, f.app_id, f.name, after[f.fn_id]),
            )
        self.notify.add("functions")
        return before != after or not old or old[0]["url"] != app.url

    async def list_apps(self) -> list[AppRecord]:
        return [AppRecord(**r) for r in await self._all("SELECT * FROM apps ORDER BY app_id")]

    async def list_functions(self) -> list[FunctionRecord]:
        rows = await self._all("SELECT * FROM functions ORDER BY fn_id")
        return [
            FunctionRecord(r["fn_id"], r["app_id"], r["name"], json.loads(r["config"]))
            for r in rows
        ]

    async def insert_event(self, event: EventRecord) -> None:
        await self.conn.execute(
            "INSERT INTO events VALUES (%s,%s,%s,%s,%s,%s,%s)",
            (
                event.internal_id,
                event.name,
                dump(event.data),
                event.event_id,
                event.ts,
                event.received_at,
                dump(event.raw),
            ),
        )

    async def list_events(
        self, name: str | None, limit: int, before: int | None
    ) -> list[EventRecord]:
        sql, args = "SELECT * FROM events WHERE TRUE", list[Any]()
        if name:
            sql += " AND name=%s"
            args.append(name)
        if before is not None:
            sql += " AND received_at<%s"
            args.append(before)
        sql += " ORDER BY received_at DESC, internal_id DESC LIMIT %s"
        args.append(limit)
        return [
            EventRecord(
                r["internal_id"],
                r["name"],
                json.loads(r["data"]),
                r["event_id"],
                r["ts"],
                r["received_at"],
                json.loads(r["raw"]),
            )
            for r in await self._all(sql, tuple(args))
        ]

    async def get_key(self, scope: str, key: str) -> int | None:
        rows = await self._all(
            "SELECT expires_at FROM keys WHERE scope=%s AND key=%s", (scope, key)
        )
        return None if not rows else int(rows[0]["expires_at"])

    async def advance_key(self, scope: str, key: str, value: int) -> bool:
        return (
            await self._count(
                "INSERT INTO keys VALUES (%s,%s,%s) ON CONFLICT (scope, key) DO UPDATE SET"
                " expires_at=EXCLUDED.expires_at WHERE keys.expires_at<EXCLUDED.expires_at",
                (scope, key, value),
            )
            == 1
        )

    async def claim_key(self, scope: str, key: str, expires_at: int) -> bool:
        return (
            await self._count(
                "INSERT INTO keys VALUES (%s,%s,%s) ON CONFLICT (scope, key) DO UPDATE SET"
                " expires_at=EXCLUDED.expires_at WHERE keys.expires_at<=%s",
                (scope, key, expires_at, now_ms()),
            )
            == 1
        )

    async def insert_run(self, run: RunRecord) -> None:
        await self.conn.execute(
            "INSERT INTO runs VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (
                run.run_id, run.fn_id, run.app_id, run.status.value, dump(run.events), run.created_at,
                run.started_at, run.ended_at, None if run.output is None else dump(run.output),
                None if run.error is None else dump(run.error), run.parent_run_id, run.parent_step,
                run.reason, run.batch_parallel,
            ),
        )  # fmt: skip

    async def get_run(self, run_id: str) -> RunRecord | None:
        rows = await self._all("SELECT * FROM runs WHERE run_id=%s", (run_id,))
        return run_from_row(rows[0]) if rows else None

    async def lock_run(self, run_id: str) -> RunRecord | None:
        rows = await self._all("SELECT * FROM runs WHERE run_id=%s FOR UPDATE", (run_id,))
        return run_from_row(rows[0]) if rows else None

    async def run_status(self, run_id: str) -> RunStatus | None:
        rows = await self._all("SELECT status FROM runs WHERE run_id=%s", (run_id,))
        return RunStatus(rows[0]["status"]) if rows else None

    async def update_run(self, run_id: str, **fields: Any) -> None:
        cols, args = [], list[Any]()
        for key, value in fields.items():
            cols.append(f"{key}=%s")
            if key in RUN_JSON_COLUMNS:
                value = None if value is None else dump(value)
            elif isinstance(value, RunStatus):
                value = value.value
            args.append(value)
        await self.conn.execute(
            f"UPDATE runs SET {', '.join(cols)} WHERE run_id=%s", (*args, run_id)
        )

    async def list_runs(self, flt: RunFilter) -> list[RunRecord]:
        sql, args = "SELECT * FROM runs WHERE TRUE", list[Any]()
        if flt.fn_id:
            sql += " AND fn_id=%s"
            args.append(flt.fn_id)
        if flt.status:
            sql += " AND status=%s"
            args.append(flt.status.value)
        if flt.before is not None:
            sql += " AND created_at<%s"
            args.append(flt.before)
        sql += " ORDER BY created_at DESC, run_id DESC LIMIT %s"
        args.append(flt.limit)
        return [run_from_row(r) for r in await self._all(sql, tuple(args))]

    async def unfinished_runs(self) -> list[RunRecord]:
        rows = await self._all(f"SELECT * FROM runs WHERE status NOT IN {ENDED_SQL}")
        return [run_from_row(r) for r in rows]

    async def put_memo(self, run_id: str, step: str, memo: Any) -> bool:
        return (
            await self._count(
                "INSERT INTO memos VALUES (%s,%s,%s) ON CONFLICT DO NOTHING",
                (run_id, step, dump(memo)),
            )
            == 1
        )

    async def get_memos(self, run_id: str) -> dict[str, Any]:
        rows = await self._all("SELECT step, memo FROM memos WHERE run_id=%s", (run_id,))
        return {r["step"]: json.loads(r["memo"]) for r in rows}

    async def add_pending(self, run_id: str, steps: list[str]) -> None:
        for step in steps:
            await self.conn.execute(
                "INSERT INTO pending VALUES (%s,%s) ON CONFLICT DO NOTHING", (run_id, step)
            )

    async def remove_pending(self, run_id: str, step: str) -> int:
        if not await self._count("DELETE FROM pending WHERE run_id=%s AND step=%s", (run_id, step)):
            return -1
        rows = await self._all("SELECT count(*) AS n FROM pending WHERE run_id=%s", (run_id,))
        return int(rows[0]["n"])

    async def clear_run(self, run_id: str) -> None:
        await self.conn.execute(
            "WITH q AS (DELETE FROM queue WHERE run_id=%(r)s), w AS (DELETE FROM waits WHERE run_id=%(r)s),"
            " s AS (DELETE FROM signals WHERE run_id=%(r)s) DELETE FROM pending WHERE run_id=%(r)s",
            {"r": run_id},
        )

    async def add_history(self, rec: HistoryRecord) -> None:
        await self.conn.execute(
            "INSERT INTO history (run_id, step, name, op, attempt, started_at, ended_at, output, error)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (
                rec.run_id, rec.step, rec.name, rec.op, rec.attempt, rec.started_at, rec.ended_at,
                None if rec.output is None else dump(rec.output),
                None if rec.error is None else dump(rec.error),
            ),
        )  # fmt: skip

    async def end_history(self, run_id: str, step: str, ended_at: int, output: Any) -> None:
        await self.conn.execute(
            "UPDATE history SET ended_at=%s, output=%s WHERE id=(SELECT max(id) FROM history"
            " WHERE run_id=%s AND step=%s AND ended_at IS NULL)",
            (ended_at, None if output is None else dump(output), run_id, step),
        )

    async def get_history(self, run_id: str) -> list[HistoryRecord]:
        rows = await self._all("SELECT * FROM history WHERE run_id=%s ORDER BY id", (run_id,))
        return [
            HistoryRecord(
                run_id=r["run_id"], step=r["step"], name=r["name"], op=r["op"], attempt=r["attempt"],
                started_at=r["started_at"], ended_at=r["ended_at"], output=load(r["output"]),
                error=load(r["error"]), id=r["id"],
            )
            for r in rows
        ]  # fmt: skip

    async def enqueue(
        self,
        run_id: str,
        kind: ItemKind,
        *,
        step: str | None = None,
        attempt: int = 0,
        available_at: int | None = None,
        payload: dict[str, Any] | None = None,
        lease_until: int | None = None,
        flow: dict[str, Any] | None = None,
    ) -> int:
        at = available_at or now_ms()
        rows = await self._all(
            "INSERT INTO queue (run_id, kind, step, attempt, available_at, payload, lease_until,"
            " flow, rank) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
            (
                run_id,
                kind.value,
                step,
                attempt,
                at,
                None if payload is None else dump(payload),
                lease_until,
                None if flow is None else dump(flow),
                None if flow is None else rank(at, flow),
            ),
        )
        # Timers wake their own process; work this process took needs no other.
        if lease_until is None and (available_at is None or available_at <= now_ms()):
            self.notify.add("queue")
        return int(rows[0]["id"])

    async def claim(self, now: int, limit: int, lease_ms: int) -> list[QueueItem]:
        rows = await self._all(
            "UPDATE queue SET lease_until=%s WHERE id IN (SELECT id FROM queue WHERE available_at<=%s"
            " AND (lease_until IS NULL OR lease_until<%s) AND flow IS NULL ORDER BY available_at, id"
            " LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING *",
            (now + lease_ms, now, now, limit),
        )
        items = [item_from_row(r) for r in rows]
        items.sort(key=lambda i: (i.available_at, i.id))
        await self._start_runs(items, now)
        return items

    async def _start_runs(self, items: list[QueueItem], now: int) -> None:
        starting = [i.run_id for i in items if i.kind is ItemKind.DISCOVERY]
        if starting:
            await self.conn.execute(
                "UPDATE runs SET status='running', started_at=coalesce(started_at, %s)"
                " WHERE run_id = ANY(%s) AND status='queued'",
                (now, starting),
            )

    async def lock_flow(self) -> None:
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':flow'))"
        )

    async def flow_leased(self, now: int) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT flow FROM queue WHERE flow IS NOT NULL AND lease_until>=%s", (now,)
        )
        return [json.loads(r["flow"]) for r in rows]

    async def parked_keys(self) -> list[tuple[str, dict[str, Any]]]:
        rows = await self._all(
            "SELECT parked, min(flow) AS flow FROM queue WHERE parked IS NOT NULL GROUP BY parked"
        )
        return [(r["parked"], json.loads(r["flow"])) for r in rows]

    async def unpark(self, key: str, count: int) -> None:
        await self.conn.execute(
            "UPDATE queue SET parked=NULL WHERE id IN (SELECT id FROM queue WHERE parked=%s"
            " ORDER BY rank, id LIMIT %s)",
            (key, count),
        )

    async def flow_items(self, now: int, limit: int) -> list[QueueItem]:
        rows = await self._all(
            "SELECT * FROM queue WHERE flow IS NOT NULL AND parked IS NULL AND available_at<=%s"
            " AND (lease_until IS NULL OR lease_until<%s) ORDER BY rank, id LIMIT %s"
            " FOR UPDATE SKIP LOCKED",
            (now, now, limit),
        )
        return [item_from_row(r) for r in rows]

    async def park(self, item: QueueItem, key: str) -> None:
        await self.conn.execute(
            "UPDATE queue SET parked=%s, flow=%s WHERE id=%s", (key, dump(item.flow), item.id)
        )

    async def delay_item(self, item: QueueItem, at: int) -> None:
        await self.conn.execute(
            "UPDATE queue SET available_at=%s, rank=%s, flow=%s WHERE id=%s",
            (at, rank(at, item.flow), dump(item.flow), item.id),
        )

    async def lease_items(self, items: list[QueueItem], now: int, until: int) -> None:
        await self.conn.execute(
            "UPDATE queue SET lease_until=%s WHERE id = ANY(%s)", (until, [i.id for i in items])
        )
        await self._start_runs(items, now)

    async def get_state(self, key: str) -> Any:
        # An upsert that changes nothing: one round trip that creates or locks the row.
        rows = await self._all(
            "INSERT INTO flow_state VALUES (%s, 'null') ON CONFLICT (key) DO UPDATE"
            " SET value=flow_state.value RETURNING value",
            (key,),
        )
        return json.loads(rows[0]["value"])

    async def set_state(self, key: str, value: Any) -> None:
        if value is None:
            await self.conn.execute("DELETE FROM flow_state WHERE key=%s", (key,))
        else:
            await self.conn.execute(
                "INSERT INTO flow_state VALUES (%s,%s) ON CONFLICT (key) DO UPDATE"
                " SET value=EXCLUDED.value",
                (key, dump(value)),
            )

    async def extend_lease(self, item_id: int, until: int) -> None:
        await self.conn.execute("UPDATE queue SET lease_until=%s WHERE id=%s", (until, item_id))

    async def delete_item(self, item_id: int) -> bool:
        return await self._count("DELETE FROM queue WHERE id=%s", (item_id,)) == 1

    async def next_available_at(self) -> int | None:
        rows = await self._all(
            "SELECT min(greatest(available_at, coalesce(lease_until, 0))) AS t FROM queue"
            " WHERE parked IS NULL"
        )
        return None if rows[0]["t"] is None else int(rows[0]["t"])

    async def release_leases(self) -> int:
        return 0  # other live orchestrators hold leases; a dead one's simply expire

    async def add_wait(self, wait: WaitRecord, index: tuple[str, str] | None) -> None:
        await self.conn.execute(
            "INSERT INTO waits VALUES (%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (run_id, step) DO UPDATE SET"
            " event_name=EXCLUDED.event_name, expression=EXCLUDED.expression, trigger_event=EXCLUDED.trigger_event,"
            " expires_at=EXCLUDED.expires_at, key_path=EXCLUDED.key_path, key_value=EXCLUDED.key_value",
            (
                wait.run_id, wait.step, wait.event_name, wait.expression, dump(wait.trigger_event),
                wait.expires_at, index[0] if index else None, index[1] if index else None,
            ),
        )  # fmt: skip

    async def candidate_waits(self, event: dict[str, Any]) -> list[WaitRecord]:
        name = event["name"]
        groups = await self._all(
            "SELECT key_path FROM waits WHERE event_name=%s GROUP BY key_path", (name,)
        )  # one round trip when nobody waits for this event, the common case
        rows: list[dict[str, Any]] = []
        for g in groups:
            path = g["key_path"]
            if path is None:
                rows += await self._all(
                    "SELECT * FROM waits WHERE event_name=%s AND key_path IS NULL", (name,)
                )
                continue
            value = expressions.event_value(event, path)
            if value is not None:
                rows += await self._all(
                    "SELECT * FROM waits WHERE event_name=%s AND key_path=%s AND key_value=%s",
                    (name, path, value),
                )
        return [wait_from_row(r) for r in rows]

    async def remove_wait(self, run_id: str, step: str) -> bool:
        return (
            await self._count("DELETE FROM waits WHERE run_id=%s AND step=%s", (run_id, step)) == 1
        )

    async def add_signal(self, signal: str, run_id: str, step: str, replace: bool) -> bool:
        if replace:
            await self.conn.execute(
                "INSERT INTO signals VALUES (%s,%s,%s) ON CONFLICT (signal) DO UPDATE SET"
                " run_id=EXCLUDED.run_id, step=EXCLUDED.step",
                (signal, run_id, step),
            )
            return True
        return (
            await self._count(
                "INSERT INTO signals VALUES (%s,%s,%s) ON CONFLICT DO NOTHING",
                (signal, run_id, step),
            )
            == 1
        )

    async def take_signal(self, signal: str) -> tuple[str, str] | None:
        rows = await self._all(
            "DELETE FROM signals WHERE signal=%s RETURNING run_id, step", (signal,)
        )
        return None if not rows else (rows[0]["run_id"], rows[0]["step"])

    async def remove_signal(self, run_id: str, step: str) -> bool:
        return (
            await self._count("DELETE FROM signals WHERE run_id=%s AND step=%s", (run_id, step))
            == 1
        )


class PostgresStore(Store):
    """PostgreSQL at `url`; any number of orchestrator processes may share it."""

    shared = True

    def __init__(
        self, url: str, *, schema: str | None = None, min_size: int = 2, max_size: int = 20
    ) -> None:
        if schema is not None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise ConfigError(f"schema {schema!r} must be a lowercase SQL identifier")
        self.url = url
        self.schema = schema
        self.channel = f"{CHANNEL}_{schema}" if schema else CHANNEL
        options = {"options": f"-c search_path={schema}"} if schema else {}
        self._connect_kwargs: dict[str, Any] = {"autocommit": True, **options}
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]] = (
            AsyncConnectionPool(
                url,
                min_size=min_size,
                max_size=max_size,
                open=False,
                kwargs={"row_factory": dict_row, **self._connect_kwargs},
                check=AsyncConnectionPool.check_connection,
            )
        )
        self._listener: asyncio.Task[None] | None = None

    def transient(self, err: BaseException) -> bool:
        return isinstance(
            err,
            psycopg.errors.DeadlockDetected
            | psycopg.errors.SerializationFailure
            | psycopg.errors.LockNotAvailable,
        )

    def _unreachable(self, why: str) -> ConfigError:
        return ConfigError(
            f"cannot connect to PostgreSQL at {_redact(self.url)} ({why}): is it running, and do "
            "the URL's host, port, user and database exist?"
        )

    async def open(self) -> None:
        try:  # one direct connection first: a clear error at once, not a pool timeout
            admin = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=10
            )
        except psycopg.OperationalError as err:
            raise self._unreachable(_redact(str(err).splitlines()[0])) from None
        async with admin:
            if self.schema:
                # Several processes may create it at once: one wins, the others find it made.
                with contextlib.suppress(
                    psycopg.errors.DuplicateSchema, psycopg.errors.UniqueViolation
                ):
                    await admin.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        try:
            await self.pool.open(wait=True, timeout=30)
        except psycopg_pool.PoolTimeout:
            raise self._unreachable("no connection within 30 s") from None
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            cur = await conn.execute("SELECT max(version) AS v FROM schema_version")
            row = await cur.fetchone()
            current = int(row["v"] or 0) if row else 0
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version VALUES (%s)", (version,))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self.pool.connection() as conn, conn.transaction():
            tx = PgTx(conn)
            yield tx
            for what in tx.notify:
                await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, what))

    async def checkpoint(self, rec: HistoryRecord, memo: Any) -> bool:
        # One statement, so one round trip and its own commit.
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "WITH ok AS (SELECT 1 FROM runs WHERE run_id=%(r)s"
                f"   AND status NOT IN {ENDED_SQL}),"
                " m AS (INSERT INTO memos SELECT %(r)s, %(s)s, %(memo)s FROM ok ON CONFLICT DO NOTHING RETURNING 1),"
                " h AS (INSERT INTO history (run_id, step, name, op, attempt, started_at, ended_at, output)"
                "   SELECT %(r)s, %(s)s, %(name)s, %(op)s, %(attempt)s, %(start)s, %(end)s, %(out)s FROM m)"
                " SELECT count(*) AS active FROM ok",
                {
                    "r": rec.run_id, "s": rec.step, "memo": dump(memo), "name": rec.name, "op": rec.op,
                    "attempt": rec.attempt, "start": rec.started_at, "end": rec.ended_at,
                    "out": None if rec.output is None else dump(rec.output),
                },
            )  # fmt: skip
            row = await cur.fetchone()
        return bool(row and row["active"])

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Tx]:
        async with self.pool.connection() as conn:
            yield PgTx(conn)

    async def subscribe(self, on_notify: Notify) -> None:
        self._listener = asyncio.create_task(self._listen(on_notify), name="durable-listen")

    async def _listen(self, on_notify: Notify) -> None:
        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, **self._connect_kwargs
                ) as conn:
                    await conn.execute(f"LISTEN {self.channel}")
                    delay = 0.1
                    on_notify("queue")  # anything queued while we were not listening
                    async for note in conn.notifies():
                        on_notify(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                _log.warning("LISTEN connection lost (%s); reconnecting in %.1f s", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self.pool.close()

    async def drop_schema(self) -> None:
        """Remove this store's schema and everything in it (tests)."""
        if not self.schema:
            raise ConfigError("drop_schema needs a store opened with schema=")
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


def _redact(text: str) -> str:
    """`text` with any password in a URL (user:pw@ or ?password=) replaced by ***."""
    text = re.sub(r"//([^:/@\s]+):[^@\s]*@", r"//\1:***@", text)
    return re.sub(r"(password=)[^&\s]*", r"\1***", text)
