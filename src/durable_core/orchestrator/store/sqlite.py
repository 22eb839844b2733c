"""The SQLite store: stdlib `sqlite3` in WAL mode, versioned migrations, one owner process.

Transactions are `BEGIN IMMEDIATE ... COMMIT` on one connection, serialized by a lock; with
`synchronous=NORMAL` a committed transaction survives the process being killed. One writer at
a time means no row needs locking: the statements are those of `sql.py`, in SQLite's dialect.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

from ...errors import StoreLockedError
from .dialect import Dialect
from .interface import Store, Tx
from .records import HistoryRecord, now_ms
from .schema import migrations, statements
from .sql import SqlTx

SQLITE = Dialect()
MIGRATIONS: list[str] = migrations(SQLITE)


class _Conn:
    """The store's one connection, as `SqlTx` runs statements on it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    async def rows(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.db.execute(sql, args).fetchall()

    async def one(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(sql, args).fetchone()
        return row

    async def insert(self, sql: str, args: Sequence[Any]) -> int:
        return int(self.db.execute(sql, args).lastrowid or 0)

    async def count(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self.db.execute(sql, args).rowcount

    async def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.db.executemany(sql, rows)


class _Held(AbstractAsyncContextManager[Tx]):
    """The store's connection for one `async with`, under the store's lock: a transaction
    (`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` if the body raises), or plain reads.

    A class rather than `@asynccontextmanager`: every step of a run opens one, and a generator
    based context manager costs about three times as much."""

    __slots__ = ("_begin", "_store")

    def __init__(self, store: SqliteStore, *, begin: bool) -> None:
        self._store = store
        self._begin = begin

    async def __aenter__(self) -> Tx:
        store = self._store
        await store._lock.acquire()
        if self._begin:
            try:
                store.db.execute("BEGIN IMMEDIATE")
            except BaseException:
                store._lock.release()
                raise
        return SqlTx(store._conn, SQLITE)

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._begin:
                self._store.db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self._store._lock.release()


class SqliteStore(Store):
    """SQLite at `path` (':memory:' for a throwaway store). One orchestrator process owns a file."""

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._lock_file = None
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._lock_file = open(path + ".lock", "w")  # noqa: SIM115 - held for the store's life
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock_file.close()
                raise StoreLockedError(
                    f"another orchestrator process already uses {path}; stop it, or give this one "
                    "its own database (a SQLite store has one owner; use PostgreSQL to share)"
                ) from None
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("PRAGMA busy_timeout=5000")
        self._conn = _Conn(self.db)
        self._migrate()
        self._lock = asyncio.Lock()

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.db.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] or 0
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements(script):
                    self.db.execute(statement)
                self.db.execute("INSERT INTO schema_version VALUES (?)", (version,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        return _Held(self, begin=True)

    async def checkpoint(
        self, rec: HistoryRecord, memo: Any, leased: int | None = None, owner: str | None = None
    ) -> bool:
        async with self.transaction() as tx:
            status = await tx.run_status(rec.run_id)
            if status is None or status.finished:
                return False
            if leased is not None:
                item = await tx.get_item(leased)
                if item is None or item.run_id != rec.run_id or not item.leased(now_ms()):
                    return False
            if await tx.put_memo(rec.run_id, rec.step, memo):
                await tx.add_history(rec)
            return True

    def snapshot(self) -> AbstractAsyncContextManager[Tx]:
        return _Held(self, begin=False)

    async def close(self) -> None:
        self.db.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
