"""The PostgreSQL store: psycopg 3 with a connection pool, shared by several orchestrators.

Queue items (runs, planned steps, timers) are claimed with `FOR UPDATE SKIP LOCKED` under a
lease; a run's changes are serialized by locking its row; memos are first-write-wins. Every
transaction that queues work or registers functions sends a NOTIFY, and each orchestrator
LISTENs on a connection of its own, so idle workers wake at once; polling is the fallback.
Payloads are stored as JSON text, not JSONB: JSONB rewrites numbers (1e300 comes back as a
301-digit integer) and drops duplicate keys, and what is stored must come back as it was sent.
The statements are those of `sql.py`, in PostgreSQL's dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from ...errors import ConfigError
from .dialect import Dialect
from .interface import Notify, Store, Tx
from .records import ENDED_SQL, HistoryRecord, dump, now_ms
from .schema import migrations, statements
from .sql import SqlTx

_log = logging.getLogger("durable.orchestrator")
CHANNEL = "durable"
_MIGRATION_LOCK = 7_302_811_355
#: The advisory lock a live process holds for the leases it owns.
_OWNER_KEY = "hashtext(current_schema() || ':owner:' || ?)"

POSTGRES = Dialect(
    name="postgres",
    shared=True,
    for_update=" FOR UPDATE",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    greatest="greatest",
    flow_lock="SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':flow'))",
    owner_alive=f"SELECT NOT pg_try_advisory_xact_lock({_OWNER_KEY}) AS alive",
    delete_in_with=True,
    array_params=True,
    bigint="BIGINT",
    serial="BIGSERIAL PRIMARY KEY",
    flag="BOOLEAN NOT NULL DEFAULT FALSE",
    memo="TEXT NOT NULL",
    key_only="",
    reuses_ids=False,
)
MIGRATIONS: list[str] = migrations(POSTGRES)

Connection = psycopg.AsyncConnection[dict[str, Any]]

#: `?` placeholders as psycopg spells them, by statement.
_SPELLED: dict[str, str] = {}


def _spelled(sql: str) -> str:
    found = _SPELLED.get(sql)
    if found is None:
        found = sql.replace("?", "%s")
        if len(_SPELLED) < 4096:  # statements are few; a runaway caller does not grow this
            _SPELLED[sql] = found
    return found


class _Conn:
    """A pooled connection, as `SqlTx` runs statements on it."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def rows(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = await self.conn.execute(_spelled(sql), args)
        return await cur.fetchall()

    async def one(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        cur = await self.conn.execute(_spelled(sql), args)
        return await cur.fetchone()

    async def insert(self, sql: str, args: Sequence[Any]) -> int:
        row = await self.one(sql + " RETURNING id", args)
        assert row is not None
        return int(row["id"])

    async def count(self, sql: str, args: Sequence[Any] = ()) -> int:
        cur = await self.conn.execute(_spelled(sql), args)
        return cur.rowcount

    async def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        for args in rows:  # one statement per row, each its own round trip
            await self.conn.execute(_spelled(sql), args)


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
        self.pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={"row_factory": dict_row, **self._connect_kwargs},
            check=AsyncConnectionPool.check_connection,
        )
        self._listener: asyncio.Task[None] | None = None
        #: This process's leases are tagged with `owner`; a session lock on `_owner_conn` says
        #: it is alive, so a process starting later can release the leases of one that died.
        self.owner = secrets.token_hex(8)
        self._owner_conn: psycopg.AsyncConnection[Any] | None = None

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
                for statement in statements(script):
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version VALUES (%s)", (version,))
        await self._hold_owner_lock()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self.pool.connection() as conn, conn.transaction():
            tx = SqlTx(_Conn(conn), POSTGRES, self.owner)
            yield tx
            for what in tx.notify:
                await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, what))

    async def checkpoint(
        self, rec: HistoryRecord, memo: Any, leased: int | None = None, owner: str | None = None
    ) -> bool:
        # One statement, so one round trip and its own commit.
        lease = ""
        if leased is not None:  # and the request's queue item is still its dispatcher's
            held = "lease_owner=%(o)s" if owner else "lease_until>=%(now)s"
            lease = f" AND EXISTS (SELECT 1 FROM queue WHERE id=%(q)s AND run_id=%(r)s AND {held})"
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "WITH ok AS (SELECT 1 FROM runs WHERE run_id=%(r)s"
                f"   AND status NOT IN {ENDED_SQL}{lease}),"
                " m AS (INSERT INTO memos SELECT %(r)s, %(s)s, %(memo)s, %(seq)s FROM ok ON CONFLICT DO NOTHING RETURNING 1),"
                " h AS (INSERT INTO history (run_id, step, name, op, attempt, started_at, ended_at, output)"
                "   SELECT %(r)s, %(s)s, %(name)s, %(op)s, %(attempt)s, %(start)s, %(end)s, %(out)s FROM m)"
                " SELECT count(*) AS active FROM ok",
                {
                    "r": rec.run_id, "s": rec.step, "memo": dump(memo), "seq": time.time_ns(), "name": rec.name, "op": rec.op,
                    "attempt": rec.attempt, "start": rec.started_at, "end": rec.ended_at,
                    "out": None if rec.output is None else dump(rec.output),
                    "q": leased, "now": now_ms(), "o": owner,
                },
            )  # fmt: skip
            row = await cur.fetchone()
        return bool(row and row["active"])

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Tx]:
        async with self.pool.connection() as conn:
            yield SqlTx(_Conn(conn), POSTGRES, self.owner)

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

    async def _hold_owner_lock(self) -> None:
        """Hold this process's liveness lock for as long as the store is open (a killed
        process's session ends, and the lock with it)."""
        self._owner_conn = await psycopg.AsyncConnection.connect(self.url, **self._connect_kwargs)
        await self._owner_conn.execute(
            f"SELECT pg_advisory_lock({_OWNER_KEY.replace('?', '%s')})", (self.owner,)
        )

    async def close(self) -> None:
        if self._owner_conn is not None:
            with contextlib.suppress(Exception):
                await self._owner_conn.close()
            self._owner_conn = None
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
