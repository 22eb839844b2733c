"""Every `Tx` method, written once in SQL for SQLite and PostgreSQL alike.

Statements use `?` placeholders (a PostgreSQL connection turns them into `%s`); the few things
the databases do differently (row locks, `SKIP LOCKED`, lists as parameters, the flow-control
lock) come from the `Dialect`. Payloads are JSON text in both.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .dialect import Conn, Dialect
from .interface import Tx
from .records import (
    ENDED_SQL,
    RUN_JSON_COLUMNS,
    AppRecord,
    EventFilter,
    EventRecord,
    FunctionRecord,
    HistoryRecord,
    RunFilter,
    RunRecord,
    RunStatus,
    app_from_row,
    dump,
    event_from_row,
    function_from_row,
    history_from_row,
    now_ms,
    run_from_row,
)
from .sql_queue import QueueSql


def _json(value: Any) -> str | None:
    return None if value is None else dump(value)


_UNFINISHED = f"status NOT IN {ENDED_SQL}"
#: The tables holding a run's live state, emptied when it ends.
_RUN_STATE = ("queue", "waits", "signals", "pending")
_CLEAR_IN_ONE = (
    "WITH "
    + ", ".join(f"d_{t} AS (DELETE FROM {t} WHERE run_id=?)" for t in _RUN_STATE[:-1])
    + f" DELETE FROM {_RUN_STATE[-1]} WHERE run_id=?"
)
_UPSERT_APP = (
    "INSERT INTO apps VALUES (?,?,?,?,?) ON CONFLICT (app_id) DO UPDATE SET url=excluded.url,"
    " sdk=excluded.sdk, framework=excluded.framework, updated_at=excluded.updated_at"
)
_UPSERT_FUNCTION = (
    "INSERT INTO functions VALUES (?,?,?,?) ON CONFLICT (fn_id) DO UPDATE SET"
    " app_id=excluded.app_id, name=excluded.name, config=excluded.config"
)
_ADVANCE_KEY = (
    "INSERT INTO keys VALUES (?,?,?) ON CONFLICT (scope, key) DO UPDATE SET"
    " expires_at=excluded.expires_at WHERE keys.expires_at<excluded.expires_at"
)
_CLAIM_KEY = (
    "INSERT INTO keys VALUES (?,?,?) ON CONFLICT (scope, key) DO UPDATE SET"
    " expires_at=excluded.expires_at WHERE keys.expires_at<=?"
)
_ADD_HISTORY = (
    "INSERT INTO history (run_id, step, name, op, attempt, started_at, ended_at, output, error,"
    " queued_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
)


def _filtered(
    table: str, conds: list[tuple[str, tuple[Any, ...]]], order: str, limit: int
) -> tuple[str, list[Any]]:
    """A SELECT of `table` where every (condition, its arguments) of `conds` holds, in `order`."""
    where = "".join(f" AND {c}" for c, _ in conds)
    sql = f"SELECT * FROM {table} WHERE TRUE{where} ORDER BY {order} LIMIT ?"
    return sql, [v for _, args in conds for v in args] + [limit]


def _after(time_column: str, id_column: str, key: tuple[int, str]) -> tuple[str, tuple[Any, ...]]:
    """Rows after `key` in the order (`time_column` DESC, `id_column` DESC): a cursor that
    cannot tie, since the id breaks every tie of times."""
    cond = f"({time_column}<? OR ({time_column}=? AND {id_column}<?))"
    return cond, (key[0], key[0], key[1])


class SqlTx(QueueSql, Tx):
    """A transaction (or, for a snapshot, a series of statements) on one connection."""

    def __init__(self, conn: Conn, dialect: Dialect, owner: str | None = None) -> None:
        self.db = conn
        self.dialect = dialect
        self.owner = owner
        #: What this transaction changed that other processes may want to hear of once it
        #: commits ("queue", "functions"); a shared store announces it.
        self.notify: set[str] = set()

    # apps and functions

    async def upsert_app(self, app: AppRecord, functions: list[FunctionRecord]) -> bool:
        rows = await self.db.rows(
            "SELECT fn_id, config FROM functions WHERE app_id=?", (app.app_id,)
        )
        before = {r["fn_id"]: r["config"] for r in rows}
        after = {f.fn_id: dump(f.config) for f in functions}
        old = await self.db.one(
            f"SELECT url FROM apps WHERE app_id=?{self.dialect.for_update}", (app.app_id,)
        )
        await self.db.count(
            _UPSERT_APP, (app.app_id, app.url, app.sdk, app.framework, app.updated_at)
        )
        await self.db.count("DELETE FROM functions WHERE app_id=?", (app.app_id,))
        await self.db.many(
            _UPSERT_FUNCTION, [(f.fn_id, f.app_id, f.name, after[f.fn_id]) for f in functions]
        )
        self.notify.add("functions")
        return before != after or old is None or old["url"] != app.url

    async def list_apps(self) -> list[AppRecord]:
        return [app_from_row(r) for r in await self.db.rows("SELECT * FROM apps ORDER BY app_id")]

    async def list_functions(self) -> list[FunctionRecord]:
        rows = await self.db.rows("SELECT * FROM functions ORDER BY fn_id")
        return [function_from_row(r) for r in rows]

    # events and keys

    async def insert_event(self, event: EventRecord) -> None:
        await self.db.count(
            "INSERT INTO events VALUES (?,?,?,?,?,?,?)",
            (
                event.internal_id, event.name, dump(event.data), event.event_id, event.ts,
                event.received_at, dump(event.raw),
            ),
        )  # fmt: skip

    async def list_events(self, flt: EventFilter) -> list[EventRecord]:
        conds: list[tuple[str, tuple[Any, ...]]] = [("name=?", (flt.name,))] if flt.name else []
        if flt.before is not None:
            conds.append(("received_at<?", (flt.before,)))
        if flt.after is not None:
            conds.append(_after("received_at", "internal_id", flt.after))
        sql, args = _filtered("events", conds, "received_at DESC, internal_id DESC", flt.limit)
        return [event_from_row(r) for r in await self.db.rows(sql, args)]

    async def get_key(self, scope: str, key: str) -> int | None:
        row = await self.db.one("SELECT expires_at FROM keys WHERE scope=? AND key=?", (scope, key))
        return None if row is None else int(row["expires_at"])

    async def advance_key(self, scope: str, key: str, value: int) -> bool:
        return await self.db.count(_ADVANCE_KEY, (scope, key, value)) == 1

    async def claim_key(self, scope: str, key: str, expires_at: int) -> bool:
        return await self.db.count(_CLAIM_KEY, (scope, key, expires_at, now_ms())) == 1

    # runs

    async def insert_run(self, run: RunRecord) -> None:
        await self.db.count(
            "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                run.run_id, run.fn_id, run.app_id, run.status.value, dump(run.events), run.created_at,
                run.started_at, run.ended_at, _json(run.output), _json(run.error), run.parent_run_id,
                run.parent_step, run.reason, run.batch_parallel,
            ),
        )  # fmt: skip

    async def get_run(self, run_id: str) -> RunRecord | None:
        row = await self.db.one("SELECT * FROM runs WHERE run_id=?", (run_id,))
        return None if row is None else run_from_row(row)

    async def lock_run(self, run_id: str) -> RunRecord | None:
        row = await self.db.one(
            f"SELECT * FROM runs WHERE run_id=?{self.dialect.for_update}", (run_id,)
        )
        return None if row is None else run_from_row(row)

    async def run_status(self, run_id: str) -> RunStatus | None:
        row = await self.db.one("SELECT status FROM runs WHERE run_id=?", (run_id,))
        return None if row is None else RunStatus(row["status"])

    async def update_run(self, run_id: str, **fields: Any) -> None:
        cols, args = [], list[Any]()
        for key, value in fields.items():
            cols.append(f"{key}=?")
            if key in RUN_JSON_COLUMNS:
                value = _json(value)
            elif isinstance(value, RunStatus):
                value = value.value
            args.append(value)
        await self.db.count(f"UPDATE runs SET {', '.join(cols)} WHERE run_id=?", (*args, run_id))

    async def list_runs(self, flt: RunFilter) -> list[RunRecord]:
        conds: list[tuple[str, tuple[Any, ...]]] = [("fn_id=?", (flt.fn_id,))] if flt.fn_id else []
        if flt.status:
            conds.append(("status=?", (flt.status.value,)))
            if not flt.status.finished:  # spelled out, so the planner takes `runs_unfinished`
                conds.append((_UNFINISHED, ()))
        if flt.before is not None:
            conds.append(("created_at<?", (flt.before,)))
        if flt.after is not None:
            conds.append(_after("created_at", "run_id", flt.after))
        if flt.since is not None:
            conds.append(("created_at>=?", (flt.since,)))
        if flt.event_id is not None:
            conds.append((f"{self.dialect.first_event_id}=?", (flt.event_id,)))
        sql, args = _filtered("runs", conds, "created_at DESC, run_id DESC", flt.limit)
        return [run_from_row(r) for r in await self.db.rows(sql, args)]

    async def unfinished_runs(self) -> list[RunRecord]:
        return [
            run_from_row(r) for r in await self.db.rows(f"SELECT * FROM runs WHERE {_UNFINISHED}")
        ]

    # memos, pending ops, history

    async def put_memo(self, run_id: str, step: str, memo: Any) -> bool:
        sql = "INSERT INTO memos (run_id, step, memo, seq) VALUES (?,?,?,?) ON CONFLICT DO NOTHING"
        return await self.db.count(sql, (run_id, step, dump(memo), time.time_ns())) == 1

    async def memo_usage(self, run_id: str) -> tuple[int, int]:
        # A memo is stored as compact JSON: `{"data":<output>}` is 9 characters more than
        # the output `_limits.memo_size` counts (an error's 10, close enough for a limit).
        row = await self.db.one(
            "SELECT count(*) AS n, coalesce(sum(length(memo)), 0) AS size FROM memos"
            " WHERE run_id=?",
            (run_id,),
        )
        count, size = (int(row["n"]), int(row["size"])) if row is not None else (0, 0)
        return count, max(0, size - 9 * count)

    async def get_memos(self, run_id: str) -> dict[str, Any]:
        # In the order they were stored (memos from before `seq` existed first, by step).
        sql = "SELECT step, memo FROM memos WHERE run_id=? ORDER BY COALESCE(seq, 0), step"
        rows = await self.db.rows(sql, (run_id,))
        return {r["step"]: json.loads(r["memo"]) for r in rows}

    async def add_pending(self, run_id: str, steps: list[str]) -> None:
        sql = "INSERT INTO pending VALUES (?,?) ON CONFLICT DO NOTHING"
        await self.db.many(sql, [(run_id, s) for s in steps])

    async def remove_pending(self, run_id: str, step: str) -> int:
        if not await self.db.count("DELETE FROM pending WHERE run_id=? AND step=?", (run_id, step)):
            return -1
        row = await self.db.one("SELECT count(*) AS n FROM pending WHERE run_id=?", (run_id,))
        return int(row["n"]) if row is not None else 0

    async def clear_run(self, run_id: str) -> None:
        if self.dialect.delete_in_with:
            await self.db.count(_CLEAR_IN_ONE, (run_id,) * len(_RUN_STATE))
            return
        for table in _RUN_STATE:
            await self.db.count(f"DELETE FROM {table} WHERE run_id=?", (run_id,))

    async def add_history(self, rec: HistoryRecord) -> None:
        await self.db.count(
            _ADD_HISTORY,
            (
                rec.run_id, rec.step, rec.name, rec.op, rec.attempt, rec.started_at, rec.ended_at,
                _json(rec.output), _json(rec.error), rec.queued_at,
            ),
        )  # fmt: skip

    async def end_history(self, run_id: str, step: str, ended_at: int, output: Any) -> None:
        await self.db.count(
            "UPDATE history SET ended_at=?, output=? WHERE id=(SELECT max(id) FROM history"
            " WHERE run_id=? AND step=? AND ended_at IS NULL)",
            (ended_at, _json(output), run_id, step),
        )

    async def get_history(self, run_id: str) -> list[HistoryRecord]:
        rows = await self.db.rows("SELECT * FROM history WHERE run_id=? ORDER BY id", (run_id,))
        return [history_from_row(r) for r in rows]
