"""The steps one in-process request finishes, made durable one by one.

Each step is recorded when it finishes and made durable just before the next step runs (or
with the request's answer), so each result is stored before anything else happens, with one
commit per step and none extra for the last.
"""

from __future__ import annotations

from typing import Any

from .._faults import fault
from ..errors import RunCancelledError
from .store import FunctionRecord, HistoryRecord, QueueItem, Store, now_ms
from .watch import Watchers


class StepBuffer:
    def __init__(
        self, store: Store, watchers: Watchers, item: QueueItem, fn: FunctionRecord
    ) -> None:
        self.store = store
        self.watchers = watchers
        self.item = item
        self.fn = fn
        self.count = 0
        self.buffer: list[tuple[HistoryRecord, dict[str, Any]]] = []

    async def record(self, op: dict[str, Any]) -> None:
        now = now_ms()
        attempt = self.item.attempt if self.count == 0 else 0
        self.count += 1
        data = op.get("data")
        rec = HistoryRecord(
            self.item.run_id,
            op["id"],
            op["displayName"],
            op["op"],
            attempt,
            op.get("started_at", now),
            now,
            data,
        )
        self.buffer.append((rec, {"data": data}))
        details = {
            "run_id": self.item.run_id,
            "fn_id": self.fn.fn_id,
            "step": op["displayName"],
            "op": op["op"],
            "data": data,
        }
        self.watchers.emit("step", details)

    async def flush(self) -> None:
        while self.buffer:
            rec, memo = self.buffer[0]
            if not await self.store.checkpoint(rec, memo):
                raise RunCancelledError(f"run {rec.run_id} has ended; its request stops here")
            fault("checkpoint.committed")
            self.buffer.pop(0)
