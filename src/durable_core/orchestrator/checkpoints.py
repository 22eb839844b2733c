"""The steps one in-process request finishes, made durable one by one.

Each step is recorded when it finishes and made durable just before the next step runs (or
with the request's answer), so each result is stored before anything else happens, with one
commit per step and none extra for the last. Limits need no check here: the steps come from
this process's own SDK, which refuses a step over the run's limits before it reports it.

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
from ..errors import CheckpointError, RunCancelledError
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
    ) -> None:
        self.store = store
        self.watchers = watchers
        self.item = item
        self.fn = fn
        self.count = 0
        self.buffer: list[tuple[HistoryRecord, dict[str, Any]]] = []
        self.closed: str | None = None

    def close(self, why: str) -> None:
        """The request is over (`why`): a step it still reaches stops it."""
        self.closed = why

    def _check_open(self) -> None:
        if self.closed is not None:
            raise CheckpointError(f"the request of run {self.item.run_id} {self.closed}")

    async def record(self, op: dict[str, Any]) -> None:
        self._check_open()
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
        self._check_open()
        while self.buffer:
            rec, memo = self.buffer[0]
            if not await self._store(rec, memo):
                raise RunCancelledError(f"run {rec.run_id} has ended; its request stops here")
            fault("checkpoint.committed")
            self.buffer.pop(0)

    async def _store(self, rec: HistoryRecord, memo: dict[str, Any]) -> bool:
        for attempt in range(ATTEMPTS):
            try:
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
