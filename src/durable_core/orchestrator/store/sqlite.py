"""The SQLite store: stdlib `sqlite3` in WAL mode, versioned migrations, one owner process.

Transactions are `BEGIN IMMEDIATE ... COMMIT` on one connection, serialized by a lock; with
`synchronous=NORMAL` a committed transaction survives the process being killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

from ...errors import ConfigError
from .. import expressions
from .interface import Store, Tx
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

MIGRATIONS: list[str] = [
    """
    CREATE TABLE apps (app_id TEXT PRIMARY KEY, url TEXT NOT NULL, sdk TEXT NOT NULL,
        framework TEXT NOT NULL, updated_at INTEGER NOT NULL);
    CREATE TABLE functions (fn_id TEXT PRIMARY KEY, app_id TEXT NOT NULL, name TEXT NOT NULL,
        config TEXT NOT NULL);
    CREATE TABLE events (internal_id TEXT PRIMARY KEY, name TEXT NOT NULL, data TEXT NOT NULL,
        event_id TEXT NOT NULL, ts INTEGER NOT NULL, received_at INTEGER NOT NULL, raw TEXT NOT NULL);
    CREATE INDEX events_by_name ON events (name, received_at);
    CREATE INDEX events_by_time ON events (received_at);
    CREATE TABLE keys (scope TEXT NOT NULL, key TEXT NOT NULL, expires_at INTEGER NOT NULL,
        PRIMARY KEY (scope, key));
    CREATE TABLE runs (run_id TEXT PRIMARY KEY, fn_id TEXT NOT NULL, app_id TEXT NOT NULL,
        status TEXT NOT NULL, events TEXT NOT NULL, created_at INTEGER NOT NULL,
        started_at INTEGER, ended_at INTEGER, output TEXT, error TEXT, parent_run_id TEXT,
        parent_step TEXT, reason TEXT, batch_parallel INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX runs_by_fn ON runs (fn_id, created_at);
    CREATE INDEX runs_by_time ON runs (created_at);
    CREATE INDEX runs_unfinished ON runs (status) WHERE status NOT IN ('completed','failed','cancelled');
    CREATE TABLE memos (run_id TEXT NOT NULL, step TEXT NOT NULL, memo TEXT,
        PRIMARY KEY (run_id, step)) WITHOUT ROWID;
    CREATE TABLE pending (run_id TEXT NOT NULL, step TEXT NOT NULL, PRIMARY KEY (run_id, step))
        WITHOUT ROWID;
    CREATE TABLE history (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, step TEXT NOT NULL,
        name TEXT NOT NULL, op TEXT NOT NULL, attempt INTEGER NOT NULL, started_at INTEGER NOT NULL,
        ended_at INTEGER, output TEXT, error TEXT);
    CREATE INDEX history_by_run ON history (run_id, id);
    CREATE TABLE queue (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, kind TEXT NOT NULL,
        step TEXT, attempt INTEGER NOT NULL, available_at INTEGER NOT NULL, payload TEXT,
        lease_until INTEGER);
    CREATE INDEX queue_ready ON queue (available_at, id);
    CREATE INDEX queue_by_run ON queue (run_id);
    CREATE TABLE waits (run_id TEXT NOT NULL, step TEXT NOT NULL, event_name TEXT NOT NULL,
        expression TEXT, trigger_event TEXT NOT NULL, expires_at INTEGER NOT NULL,
        key_path TEXT, key_value TEXT, PRIMARY KEY (run_id, step));
    CREATE INDEX waits_by_key ON waits (event_name, key_path, key_value);
    CREATE TABLE signals (signal TEXT PRIMARY KEY, run_id TEXT NOT NULL, step TEXT NOT NULL);
    """,
    """
    ALTER TABLE queue ADD COLUMN flow TEXT;
    ALTER TABLE queue ADD COLUMN parked TEXT;
    ALTER TABLE queue ADD COLUMN rank INTEGER;
    CREATE INDEX queue_flow ON queue (rank, id) WHERE flow IS NOT NULL;
    CREATE INDEX queue_parked ON queue (parked, rank, id) WHERE parked IS NOT NULL;
    CREATE TABLE flow_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    DROP INDEX runs_unfinished;
    CREATE INDEX runs_unfinished ON runs (status)
        WHERE status NOT IN ('completed','failed','cancelled','skipped');
    """,
    # Queue ids are never reused: a late answer to a cancelled run's request deletes its item
    # by id, which must not be another run's new item.
    """
    CREATE TABLE queue_new (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,
        kind TEXT NOT NULL, step TEXT, attempt INTEGER NOT NULL, available_at INTEGER NOT NULL,
        payload TEXT, lease_until INTEGER, flow TEXT, parked TEXT, rank INTEGER);
    INSERT INTO queue_new SELECT id, run_id, kind, step, attempt, available_at, payload,
        lease_until, flow, parked, rank FROM queue;
    DROP TABLE queue;
    ALTER TABLE queue_new RENAME TO queue;
    CREATE INDEX queue_ready ON queue (available_at, id);
    CREATE INDEX queue_by_run ON queue (run_id);
    CREATE INDEX queue_flow ON queue (rank, id) WHERE flow IS NOT NULL;
    CREATE INDEX queue_parked ON queue (parked, rank, id) WHERE parked IS NOT NULL;
    """,
]


class StoreLockedError(ConfigError):
    """Another process owns this SQLite file."""


class SqliteTx(Tx):
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.taken = []
        self.finished = []

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self.db.execute(sql, args).fetchall()

    async def upsert_app(self, app: AppRecord, functions: list[FunctionRecord]) -> bool:
        before = {
            r["fn_id"]: r["config"]
            for r in self._all("SELECT fn_id, config FROM functions WHERE app_id=?", (app.app_id,))
        }
        after = {f.fn_id: dump(f.config) for f in functions}
        old_app = self._all("SELECT url FROM apps WHERE app_id=?", (app.app_id,))
        self.db.execute(
            "INSERT INTO apps VALUES (?,?,?,?,?) ON CONFLICT (app_id) DO UPDATE SET url=excluded.url,"
            " sdk=excluded.sdk, framework=excluded.framework, updated_at=excluded.updated_at",
            (app.app_id, app.url, app.sdk, app.framework, app.updated_at),
        )
        self.db.execute("DELETE FROM functions WHERE app_id=?", (app.app_id,))
        self.db.executemany(
            "INSERT OR REPLACE INTO functions VALUES (?,?,?,?)",
            [(f.fn_id, f.app_id, f.name, after[f.fn_id]) for f in functions],
        )
        return before != after or not old_app or old_app[0]["url"] != app.url

    async def list_apps(self) -> list[AppRecord]:
        return [AppRecord(**dict(r)) for r in self._all("SELECT * FROM apps ORDER BY app_id")]

    async def list_functions(self) -> list[FunctionRecord]:
        rows = self._all("SELECT * FROM functions ORDER BY fn_id")
        return [
            FunctionRecord(r["fn_id"], r["app_id"], r["name"], json.loads(r["config"]))
            for r in rows
        ]

    async def insert_event(self, event: EventRecord) -> None:
        self.db.execute(
            "INSERT INTO events VALUES (?,?,?,?,?,?,?)",
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
        sql, args = "SELECT * FROM events WHERE 1=1", list[Any]()
        if name:
            sql += " AND name=?"
            args.append(name)
        if before is not None:
            sql += " AND received_at<?"
            args.append(before)
        sql += " ORDER BY received_at DESC, internal_id DESC LIMIT ?"
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
            for r in self._all(sql, tuple(args))
        ]

    async def get_key(self, scope: str, key: str) -> int | None:
        row = self.db.execute(
            "SELECT expires_at FROM keys WHERE scope=? AND key=?", (scope, key)
        ).fetchone()
        return None if row is None else int(row[0])

    async def advance_key(self, scope: str, key: str, value: int) -> bool:
        cur = self.db.execute(
            "INSERT INTO keys VALUES (?,?,?) ON CONFLICT (scope, key) DO UPDATE SET expires_at=excluded.expires_at"
            " WHERE keys.expires_at<excluded.expires_at",
            (scope, key, value),
        )
        return cur.rowcount == 1

    async def claim_key(self, scope: str, key: str, expires_at: int) -> bool:
        now = now_ms()
        cur = self.db.execute(
            "INSERT INTO keys VALUES (?,?,?) ON CONFLICT (scope, key) DO UPDATE SET expires_at=excluded.expires_at"
            " WHERE keys.expires_at<=?",
            (scope, key, expires_at, now),
        )
        return cur.rowcount == 1

    async def insert_run(self, run: RunRecord) -> None:
        self.db.execute(
            "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                run.run_id, run.fn_id, run.app_id, run.status.value, dump(run.events), run.created_at,
                run.started_at, run.ended_at, None if run.output is None else dump(run.output),
                None if run.error is None else dump(run.error), run.parent_run_id, run.parent_step,
                run.reason, int(run.batch_parallel),
            ),
        )  # fmt: skip

    async def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._all("SELECT * FROM runs WHERE run_id=?", (run_id,))
        return run_from_row(rows[0]) if rows else None

    async def lock_run(self, run_id: str) -> RunRecord | None:
        return await self.get_run(run_id)  # a SQLite transaction already excludes all others

    async def run_status(self, run_id: str) -> RunStatus | None:
        row = self.db.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return None if row is None else RunStatus(row[0])

    async def update_run(self, run_id: str, **fields: Any) -> None:
        cols, args = [], []
        for key, value in fields.items():
            cols.append(f"{key}=?")
            if key in RUN_JSON_COLUMNS:
                value = None if value is None else dump(value)
            elif isinstance(value, RunStatus):
                value = value.value
            elif isinstance(value, bool):
                value = int(value)
            args.append(value)
        self.db.execute(f"UPDATE runs SET {', '.join(cols)} WHERE run_id=?", (*args, run_id))

    async def list_runs(self, flt: RunFilter) -> list[RunRecord]:
        sql, args = "SELECT * FROM runs WHERE 1=1", list[Any]()
        if flt.fn_id:
            sql += " AND fn_id=?"
            args.append(flt.fn_id)
        if flt.status:
            sql += " AND status=?"
            args.append(flt.status.value)
        if flt.before is not None:
            sql += " AND created_at<?"
            args.append(flt.before)
        sql += " ORDER BY created_at DESC, run_id DESC LIMIT ?"
        args.append(flt.limit)
        return [run_from_row(r) for r in self._all(sql, tuple(args))]

    async def unfinished_runs(self) -> list[RunRecord]:
        rows = self._all(f"SELECT * FROM runs WHERE status NOT IN {ENDED_SQL}")
        return [run_from_row(r) for r in rows]

    async def put_memo(self, run_id: str, step: str, memo: Any) -> bool:
        cur = self.db.execute(
            "INSERT OR IGNORE INTO memos VALUES (?,?,?)", (run_id, step, dump(memo))
        )
        return cur.rowcount == 1

    async def get_memos(self, run_id: str) -> dict[str, Any]:
        rows = self.db.execute("SELECT step, memo FROM memos WHERE run_id=?", (run_id,)).fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    async def add_pending(self, run_id: str, steps: list[str]) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO pending VALUES (?,?)", [(run_id, s) for s in steps]
        )

    async def remove_pending(self, run_id: str, step: str) -> int:
        cur = self.db.execute("DELETE FROM pending WHERE run_id=? AND step=?", (run_id, step))
        if cur.rowcount == 0:
            return -1
        return int(
            self.db.execute("SELECT count(*) FROM pending WHERE run_id=?", (run_id,)).fetchone()[0]
        )

    async def clear_run(self, run_id: str) -> None:
        for table in ("queue", "waits", "signals", "pending"):
            self.db.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))

    async def add_history(self, rec: HistoryRecord) -> None:
        self.db.execute(
            "INSERT INTO history (run_id, step, name, op, attempt, started_at, ended_at, output, error)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (
                rec.run_id, rec.step, rec.name, rec.op, rec.attempt, rec.started_at, rec.ended_at,
                None if rec.output is None else dump(rec.output),
                None if rec.error is None else dump(rec.error),
            ),
        )  # fmt: skip

    async def end_history(self, run_id: str, step: str, ended_at: int, output: Any) -> None:
        self.db.execute(
            "UPDATE history SET ended_at=?, output=? WHERE id=(SELECT max(id) FROM history"
            " WHERE run_id=? AND step=? AND ended_at IS NULL)",
            (ended_at, None if output is None else dump(output), run_id, step),
        )

    async def get_history(self, run_id: str) -> list[HistoryRecord]:
        rows = self._all("SELECT * FROM history WHERE run_id=? ORDER BY id", (run_id,))
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
        cur = self.db.execute(
            "INSERT INTO queue (run_id, kind, step, attempt, available_at, payload, lease_until,"
            " flow, rank) VALUES (?,?,?,?,?,?,?,?,?)",
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
        return int(cur.lastrowid or 0)

    async def claim(self, now: int, limit: int, lease_ms: int) -> list[QueueItem]:
        rows = self._all(
            "UPDATE queue SET lease_until=? WHERE id IN (SELECT id FROM queue WHERE available_at<=?"
            " AND (lease_until IS NULL OR lease_until<?) AND flow IS NULL ORDER BY available_at, id"
            " LIMIT ?) RETURNING *",
            (now + lease_ms, now, now, limit),
        )
        items = [item_from_row(r) for r in rows]
        items.sort(key=lambda i: (i.available_at, i.id))
        self._start_runs(items, now)
        return items

    def _start_runs(self, items: list[QueueItem], now: int) -> None:
        starting = [i.run_id for i in items if i.kind is ItemKind.DISCOVERY]
        if starting:
            marks = ",".join("?" * len(starting))
            self.db.execute(
                "UPDATE runs SET status='running', started_at=coalesce(started_at, ?)"
                f" WHERE run_id IN ({marks}) AND status='queued'",
                (now, *starting),
            )

    async def lock_flow(self) -> None:
        pass  # a SQLite transaction already excludes all others

    async def flow_leased(self, now: int) -> list[dict[str, Any]]:
        rows = self._all("SELECT flow FROM queue WHERE flow IS NOT NULL AND lease_until>=?", (now,))
        return [json.loads(r[0]) for r in rows]

    async def parked_keys(self) -> list[tuple[str, dict[str, Any]]]:
        rows = self._all(
            "SELECT parked, min(flow) FROM queue WHERE parked IS NOT NULL GROUP BY parked"
        )
        return [(r[0], json.loads(r[1])) for r in rows]

    async def unpark(self, key: str, count: int) -> None:
        self.db.execute(
            "UPDATE queue SET parked=NULL WHERE id IN (SELECT id FROM queue WHERE parked=?"
            " ORDER BY rank, id LIMIT ?)",
            (key, count),
        )

    async def flow_items(self, now: int, limit: int) -> list[QueueItem]:
        rows = self._all(
            "SELECT * FROM queue WHERE flow IS NOT NULL AND parked IS NULL AND available_at<=?"
            " AND (lease_until IS NULL OR lease_until<?) ORDER BY rank, id LIMIT ?",
            (now, now, limit),
        )
        return [item_from_row(r) for r in rows]

    async def park(self, item: QueueItem, key: str) -> None:
        self.db.execute(
            "UPDATE queue SET parked=?, flow=? WHERE id=?", (key, dump(item.flow), item.id)
        )

    async def delay_item(self, item: QueueItem, at: int) -> None:
        self.db.execute(
            "UPDATE queue SET available_at=?, rank=?, flow=? WHERE id=?",
            (at, rank(at, item.flow), dump(item.flow), item.id),
        )

    async def lease_items(self, items: list[QueueItem], now: int, until: int) -> None:
        self.db.executemany(
            "UPDATE queue SET lease_until=? WHERE id=?", [(until, i.id) for i in items]
        )
        self._start_runs(items, now)

    async def get_state(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM flow_state WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    async def set_state(self, key: str, value: Any) -> None:
        if value is None:
            self.db.execute("DELETE FROM flow_state WHERE key=?", (key,))
        else:
            self.db.execute(
                "INSERT INTO flow_state VALUES (?,?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (key, dump(value)),
            )

    async def extend_lease(self, item_id: int, until: int) -> None:
        self.db.execute("UPDATE queue SET lease_until=? WHERE id=?", (until, item_id))

    async def delete_item(self, item_id: int) -> bool:
        return self.db.execute("DELETE FROM queue WHERE id=?", (item_id,)).rowcount == 1

    async def next_available_at(self) -> int | None:
        row = self.db.execute(
            "SELECT min(max(available_at, coalesce(lease_until, 0))) FROM queue WHERE parked IS NULL"
        ).fetchone()
        return None if row[0] is None else int(row[0])

    async def release_leases(self) -> int:
        return self.db.execute(
            "UPDATE queue SET lease_until=NULL WHERE lease_until IS NOT NULL"
        ).rowcount

    async def add_wait(self, wait: WaitRecord, index: tuple[str, str] | None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO waits VALUES (?,?,?,?,?,?,?,?)",
            (
                wait.run_id, wait.step, wait.event_name, wait.expression, dump(wait.trigger_event),
                wait.expires_at, index[0] if index else None, index[1] if index else None,
            ),
        )  # fmt: skip

    async def candidate_waits(self, event: dict[str, Any]) -> list[WaitRecord]:
        name = event["name"]
        groups = self._all(
            "SELECT key_path FROM waits WHERE event_name=? GROUP BY key_path", (name,)
        )
        rows: list[sqlite3.Row] = []
        for g in groups:
            path = g["key_path"]
            if path is None:
                rows += self._all(
                    "SELECT * FROM waits WHERE event_name=? AND key_path IS NULL", (name,)
                )
                continue
            value = expressions.event_value(event, path)
            if value is not None:
                rows += self._all(
                    "SELECT * FROM waits WHERE event_name=? AND key_path=? AND key_value=?",
                    (name, path, value),
                )
        return [wait_from_row(r) for r in rows]

    async def remove_wait(self, run_id: str, step: str) -> bool:
        return (
            self.db.execute("DELETE FROM waits WHERE run_id=? AND step=?", (run_id, step)).rowcount
            == 1
        )

    async def add_signal(self, signal: str, run_id: str, step: str, replace: bool) -> bool:
        if replace:
            self.db.execute("INSERT OR REPLACE INTO signals VALUES (?,?,?)", (signal, run_id, step))
            return True
        return (
            self.db.execute(
                "INSERT OR IGNORE INTO signals VALUES (?,?,?)", (signal, run_id, step)
            ).rowcount
            == 1
        )

    async def take_signal(self, signal: str) -> tuple[str, str] | None:
        row = self.db.execute(
            "DELETE FROM signals WHERE signal=? RETURNING run_id, step", (signal,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    async def remove_signal(self, run_id: str, step: str) -> bool:
        cur = self.db.execute("DELETE FROM signals WHERE run_id=? AND step=?", (run_id, step))
        return cur.rowcount == 1


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
        self._migrate()
        self._lock = asyncio.Lock()

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.db.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] or 0
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute("INSERT INTO schema_version VALUES (?)", (version,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteTx(self.db)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    async def checkpoint(self, rec: HistoryRecord, memo: Any) -> bool:
        async with self.transaction() as tx:
            status = await tx.run_status(rec.run_id)
            if status is None or status.finished:
                return False
            if await tx.put_memo(rec.run_id, rec.step, memo):
                await tx.add_history(rec)
            return True

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Tx]:
        async with self._lock:
            yield SqliteTx(self.db)

    async def close(self) -> None:
        self.db.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
