"""The queue, flow control, waits and signals of `SqlTx`: one implementation for both
databases (see `sql.py`)."""

from __future__ import annotations

import json
from typing import Any, Unpack

from .. import expressions
from .dialect import Conn, Dialect
from .records import (
    ItemKind,
    ItemOptions,
    QueueItem,
    Row,
    WaitRecord,
    dump,
    item_from_row,
    now_ms,
    rank,
    wait_from_row,
)

_ENQUEUE = (
    "INSERT INTO queue (run_id, kind, step, attempt, available_at, payload, lease_until,"
    " lease_owner, flow, rank) VALUES (?,?,?,?,?,?,?,?,?,?)"
)
_UPSERT_WAIT = (
    "INSERT INTO waits VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (run_id, step) DO UPDATE SET"
    " event_name=excluded.event_name, expression=excluded.expression,"
    " trigger_event=excluded.trigger_event, expires_at=excluded.expires_at,"
    " key_path=excluded.key_path, key_value=excluded.key_value"
)


class QueueSql:
    """The queue, flow control, waits and signals of `SqlTx` (one connection, one dialect)."""

    db: Conn
    dialect: Dialect
    notify: set[str]
    #: Who takes the leases this transaction grants (a process of a shared store).
    owner: str | None

    # queue and timers

    async def enqueue(self, run_id: str, kind: ItemKind, **item: Unpack[ItemOptions]) -> int:
        available_at, lease_until = item.get("available_at"), item.get("lease_until")
        payload, flow = item.get("payload"), item.get("flow")
        at = available_at or now_ms()
        item_id = await self.db.insert(
            _ENQUEUE,
            (
                run_id, kind.value, item.get("step"), item.get("attempt", 0), at,
                None if payload is None else dump(payload),
                lease_until, None if lease_until is None else self.owner,
                None if flow is None else dump(flow),
                None if flow is None else rank(at, flow),
            ),
        )  # fmt: skip
        # Timers wake their own process; work this process took needs no other.
        if lease_until is None and (available_at is None or available_at <= now_ms()):
            self.notify.add("queue")
        return item_id

    async def claim(self, now: int, limit: int, lease_ms: int) -> list[QueueItem]:
        rows = await self.db.rows(
            "UPDATE queue SET lease_until=?, lease_owner=? WHERE id IN (SELECT id FROM queue"
            " WHERE available_at<=? AND (lease_until IS NULL OR lease_until<?) AND flow IS NULL"
            f" ORDER BY available_at, id LIMIT ?{self.dialect.skip_locked}) RETURNING *",
            (now + lease_ms, self.owner, now, now, limit),
        )
        items = [item_from_row(r) for r in rows]
        items.sort(key=lambda i: (i.available_at, i.id))
        await self._start_runs(items, now)
        return items

    async def _start_runs(self, items: list[QueueItem], now: int) -> None:
        starting = [i.run_id for i in items if i.kind is ItemKind.DISCOVERY]
        if starting:
            which, args = self.dialect.any_of("run_id", starting)
            await self.db.count(
                "UPDATE runs SET status='running', started_at=coalesce(started_at, ?)"
                f" WHERE {which} AND status='queued'",
                (now, *args),
            )

    async def extend_lease(self, item_id: int, until: int) -> None:
        sql = "UPDATE queue SET lease_until=?, lease_owner=? WHERE id=?"
        await self.db.count(sql, (until, self.owner, item_id))

    async def get_item(self, item_id: int) -> QueueItem | None:
        row = await self.db.one("SELECT * FROM queue WHERE id=?", (item_id,))
        return None if row is None else item_from_row(row)

    async def reset_attempt(self, item_id: int) -> None:
        await self.db.count("UPDATE queue SET attempt=0 WHERE id=? AND attempt<>0", (item_id,))

    async def delete_item(self, item_id: int) -> bool:
        return await self.db.count("DELETE FROM queue WHERE id=?", (item_id,)) == 1

    async def next_available_at(self) -> int | None:
        row = await self.db.one(
            f"SELECT min({self.dialect.greatest}(available_at, coalesce(lease_until, 0))) AS t"
            " FROM queue WHERE parked IS NULL"
        )
        return None if row is None or row["t"] is None else int(row["t"])

    async def release_leases(self) -> int:
        if not self.dialect.shared:  # one process owns the store: every lease left was ours
            return await self.db.count(
                "UPDATE queue SET lease_until=NULL, lease_owner=NULL WHERE lease_until IS NOT NULL"
            )
        # Other processes hold leases too: release only those of owners that are gone (their
        # liveness lock is free), so their work is taken up now, not when the leases run out.
        rows = await self.db.rows(
            "SELECT DISTINCT lease_owner FROM queue WHERE lease_until>=? AND lease_owner<>?",
            (now_ms(), self.owner or ""),
        )
        released = 0
        for row in rows:
            owner = str(row["lease_owner"])
            if self.dialect.owner_alive is not None:
                row_alive = await self.db.one(self.dialect.owner_alive, (owner,))
                if row_alive is not None and row_alive["alive"]:
                    continue
            released += await self.db.count(
                "UPDATE queue SET lease_until=NULL, lease_owner=NULL WHERE lease_owner=?", (owner,)
            )
        return released

    # flow control

    async def lock_flow(self) -> None:
        if self.dialect.flow_lock is not None:  # else a transaction already excludes all others
            await self.db.count(self.dialect.flow_lock)

    async def flow_leased(self, now: int) -> list[dict[str, Any]]:
        sql = "SELECT flow FROM queue WHERE flow IS NOT NULL AND lease_until>=?"
        return [json.loads(r["flow"]) for r in await self.db.rows(sql, (now,))]

    async def parked_keys(self) -> list[tuple[str, dict[str, Any]]]:
        rows = await self.db.rows(
            "SELECT parked, min(flow) AS flow FROM queue WHERE parked IS NOT NULL GROUP BY parked"
        )
        return [(r["parked"], json.loads(r["flow"])) for r in rows]

    async def unpark(self, key: str, count: int) -> None:
        await self.db.count(
            "UPDATE queue SET parked=NULL WHERE id IN (SELECT id FROM queue WHERE parked=?"
            " ORDER BY rank, id LIMIT ?)",
            (key, count),
        )

    async def flow_items(self, now: int, limit: int) -> list[QueueItem]:
        rows = await self.db.rows(
            "SELECT * FROM queue WHERE flow IS NOT NULL AND parked IS NULL AND available_at<=?"
            f" AND (lease_until IS NULL OR lease_until<?) ORDER BY rank, id LIMIT ?{self.dialect.skip_locked}",
            (now, now, limit),
        )
        return [item_from_row(r) for r in rows]

    async def park(self, item: QueueItem, key: str) -> None:
        sql = "UPDATE queue SET parked=?, flow=? WHERE id=?"
        await self.db.count(sql, (key, dump(item.flow), item.id))

    async def delay_item(self, item: QueueItem, at: int) -> None:
        await self.db.count(
            "UPDATE queue SET available_at=?, rank=?, flow=? WHERE id=?",
            (at, rank(at, item.flow), dump(item.flow), item.id),
        )

    async def lease_items(self, items: list[QueueItem], now: int, until: int) -> None:
        if items:
            which, args = self.dialect.any_of("id", [i.id for i in items])
            sql = f"UPDATE queue SET lease_until=?, lease_owner=? WHERE {which}"
            await self.db.count(sql, (until, self.owner, *args))
            await self._start_runs(items, now)

    async def get_state(self, key: str) -> Any:
        if self.dialect.shared:
            # An upsert that changes nothing: one round trip that creates or locks the row.
            row = await self.db.one(
                "INSERT INTO flow_state VALUES (?, 'null') ON CONFLICT (key) DO UPDATE"
                " SET value=flow_state.value RETURNING value",
                (key,),
            )
        else:
            row = await self.db.one("SELECT value FROM flow_state WHERE key=?", (key,))
        return None if row is None else json.loads(row["value"])

    async def set_state(self, key: str, value: Any) -> None:
        if value is None:
            await self.db.count("DELETE FROM flow_state WHERE key=?", (key,))
            return
        await self.db.count(
            "INSERT INTO flow_state VALUES (?,?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
            (key, dump(value)),
        )

    # waits for events, and waits for signals

    async def add_wait(self, wait: WaitRecord, index: tuple[str, str] | None) -> None:
        await self.db.count(
            _UPSERT_WAIT,
            (
                wait.run_id, wait.step, wait.event_name, wait.expression, dump(wait.trigger_event),
                wait.expires_at, index[0] if index else None, index[1] if index else None,
            ),
        )  # fmt: skip

    async def candidate_waits(self, event: dict[str, Any]) -> list[WaitRecord]:
        name = event["name"]
        groups = await self.db.rows(
            "SELECT key_path FROM waits WHERE event_name=? GROUP BY key_path", (name,)
        )  # one round trip when nobody waits for this event, the common case
        rows: list[Row] = []
        for g in groups:
            path = g["key_path"]
            if path is None:
                sql = "SELECT * FROM waits WHERE event_name=? AND key_path IS NULL"
                rows += await self.db.rows(sql, (name,))
                continue
            value = expressions.event_value(event, path)
            if value is not None:
                rows += await self.db.rows(
                    "SELECT * FROM waits WHERE event_name=? AND key_path=? AND key_value=?",
                    (name, path, value),
                )
        return [wait_from_row(r) for r in rows]

    async def remove_wait(self, run_id: str, step: str) -> bool:
        sql = "DELETE FROM waits WHERE run_id=? AND step=?"
        return await self.db.count(sql, (run_id, step)) == 1

    async def add_signal(self, signal: str, run_id: str, step: str, replace: bool) -> bool:
        if replace:
            await self.db.count(
                "INSERT INTO signals VALUES (?,?,?) ON CONFLICT (signal) DO UPDATE SET"
                " run_id=excluded.run_id, step=excluded.step",
                (signal, run_id, step),
            )
            return True
        sql = "INSERT INTO signals VALUES (?,?,?) ON CONFLICT DO NOTHING"
        return await self.db.count(sql, (signal, run_id, step)) == 1

    async def take_signal(self, signal: str) -> tuple[str, str] | None:
        sql = "DELETE FROM signals WHERE signal=? RETURNING run_id, step"
        row = await self.db.one(sql, (signal,))
        return None if row is None else (row["run_id"], row["step"])

    async def remove_signal(self, run_id: str, step: str) -> bool:
        sql = "DELETE FROM signals WHERE run_id=? AND step=?"
        return await self.db.count(sql, (run_id, step)) == 1
