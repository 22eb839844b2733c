"""The steps one in-process request finishes, made durable one by one.

Each step is recorded when it finishes and made durable just before the next step runs (or
with the request's answer), so each result is stored before anything else happens, with one
commit per step and none extra for the last. A step over the run's limits is refused before
it is kept, and every later one too: the request's answer then fails the run with that error.
"""

from __future__ import annotations

from typing import Any

from .._faults import fault
from .._limits import Budget
from ..errors import LimitExceededError, RunCancelledError
from .store import FunctionRecord, HistoryRecord, QueueItem, Store, now_ms
from .watch import Watchers


class StepBuffer:
    def __init__(
        self,
        store: Store,
        watchers: Watchers,
        item: QueueItem,
        fn: FunctionRecord,
        budget: Budget | None = None,
    ) -> None:
        self.store = store
        self.watchers = watchers
        self.item = item
        self.fn = fn
        self.count = 0
        self.buffer: list[tuple[HistoryRecord, dict[str, Any]]] = []
        self.budget = budget if budget is not None else Budget()
        self.exceeded: LimitExceededError | None = None  # then nothing more is kept

    def _within_limits(self, op: dict[str, Any]) -> None:
        if self.exceeded is None:
            try:
                self.budget.add_steps(1)
                self.budget.store(f"the output of step {op['displayName']!r}", op.get("data"))
            except LimitExceededError as err:
                self.exceeded = err
        if self.exceeded is not None:
            raise LimitExceededError(str(self.exceeded), self.exceeded.limit, self.exceeded.value)

    async def record(self, op: dict[str, Any]) -> None:
        self._within_limits(op)
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
        if self.exceeded is not None:
            raise LimitExceededError(str(self.exceeded), self.exceeded.limit, self.exceeded.value)
        while self.buffer:
            rec, memo = self.buffer[0]
            if not await self.store.checkpoint(rec, memo):
                raise RunCancelledError(f"run {rec.run_id} has ended; its request stops here")
            fault("checkpoint.committed")
            self.buffer.pop(0)
