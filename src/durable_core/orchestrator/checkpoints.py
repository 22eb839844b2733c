"""The steps one request finishes, made durable one by one.

Each step is recorded when it finishes and made durable just before the next step runs (or
with the request's answer), so each result is stored before anything else happens, with one
commit per step and none extra for the last. In-process, the SDK calls `record` and `flush`
itself, and limits need no check here: this process's own SDK refuses a step over the run's
limits before it reports it. Over HTTP, the SDK posts the steps it finished to the checkpoint
API (`api_checkpoint.py`), which `admit`s each (against the run's limits, in `budget`), then
records and flushes them here; such a buffer checks with every step stored that the
request's queue item is still leased (`leased`), so a superseded request stores nothing.

A checkpoint that fails ends the request (the SDK raises it as control flow, past the user's
`except Exception`): a store error the store calls transient is first tried again a few
times; a run that has ended raises RunCancelledError; once the request is past its deadline
(`close`), every later step raises. A step recorded but not yet stored stays in `buffer`,
to be stored with the request's answer, so a failed checkpoint never loses a result.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from .._faults import fault
from .._limits import Budget
from ..errors import CheckpointError, RunCancelledError
from . import runlog
from .store import FunctionRecord, HistoryRecord, QueueItem, Store, now_ms
from .watch import Watchers

ATTEMPTS = 4  # tries of one checkpoint when the store says its error is transient
BACKOFF_S = 0.01  # before the second try; doubled for each later one, with jitter


class StepBuffer:
    def __init__(
        self,
        store: Store,
        watchers: Watchers,
        item: QueueItem,
        fn: FunctionRecord,
        budget: Budget | None = None,
        leased: bool = False,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.watchers = watchers
        self.item = item
        self.fn = fn
        #: What the run may still store (steps checkpointed over HTTP spend it).
        self.budget = budget or Budget()
        self.leased = leased
        #: The process that dispatched the request (`Store.checkpoint`), where known.
        self.owner = owner
        self.count = 0
        self.buffer: list[tuple[HistoryRecord, dict[str, Any]]] = []
        self.closed: str | None = None
        #: When the step being run began, at the latest: the request's start, then the
        #: previous step's end (an SDK that does not time its steps is timed so).
        self.since = now_ms()
        #: Two checkpoints of one request may arrive together: one stores, the other waits.
        self._flushing = asyncio.Lock()

    def close(self, why: str) -> None:
        """The request is over (`why`): a step it still reaches stops it."""
        self.closed = why

    def _check_open(self) -> None:
        if self.closed is not None:
            raise CheckpointError(f"the request of run {self.item.run_id} {self.closed}")

    def admit(self, op: dict[str, Any]) -> None:
        """Check a step an SDK sent over HTTP against the run's limits (LimitExceededError)
        and count it."""
        name = op.get("displayName") or op.get("name") or op.get("id")
        self.budget.store(f"the output of step {name!r}", op.get("data"))
        self.budget.add_steps(1)

    async def record(self, op: dict[str, Any]) -> None:
        self._check_open()
        now = now_ms()
        first = self.count == 0  # the request's wait in the queue was before its first step
        attempt = self.item.attempt if first else 0
        self.count += 1
        data = op.get("data")
        rec = HistoryRecord(
            self.item.run_id,
            op["id"],
            str(op.get("displayName") or op.get("name") or op["id"]),
            op["op"],
            attempt,
            op.get("started_at", self.since),
            now,
            data,
            queued_at=self.item.available_at if first else None,
        )
        self.since = now
        self.buffer.append((rec, {"data": data}))
        details = {
            "run_id": self.item.run_id,
            "fn_id": self.fn.fn_id,
            "step": rec.name,
            "op": op["op"],
            "data": data,
        }
        self.watchers.emit("step", details)

    async def flush(self) -> None:
        self._check_open()
        async with self._flushing:
            while self.buffer:
                rec, memo = self.buffer[0]
                if not await self._store(rec, memo):
                    raise RunCancelledError(f"run {rec.run_id} has ended; its request stops here")
                fault("checkpoint.committed")
                self.buffer.pop(0)
                runlog.tell("step_done", rec.run_id, self.fn.fn_id, rec.name)

    async def _store(self, rec: HistoryRecord, memo: dict[str, Any]) -> bool:
        for attempt in range(ATTEMPTS):
            try:
                if self.leased:
                    return await self.store.checkpoint(rec, memo, self.item.id, self.owner)
                return await self.store.checkpoint(rec, memo)
            except Exception as err:
                if attempt + 1 < ATTEMPTS and self.store.transient(err):
                    await asyncio.sleep(BACKOFF_S * 2**attempt * (1 + random.random()))
                    continue
                raise CheckpointError(
                    f"the result of step {rec.name!r} could not be stored "
                    f"({type(err).__name__}: {err}); the request ends and is retried"
                ) from err
        raise AssertionError("unreachable")
