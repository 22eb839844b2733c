"""Checkpoints of one request that arrive together (an SDK's post tried again while the first
is still being stored, say) store each step once, and neither fails."""

from __future__ import annotations

import asyncio
from typing import Any

from durable_core.orchestrator.checkpoints import StepBuffer
from durable_core.orchestrator.store import FunctionRecord, HistoryRecord, ItemKind, QueueItem
from durable_core.orchestrator.watch import Watchers

from .conftest import sqlite_only

pytestmark = sqlite_only  # no store: the one it uses is a stand-in


class SlowStore:
    """Stores a step after giving every other task a turn, as a database round trip does."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    def transient(self, err: BaseException) -> bool:
        return False

    async def checkpoint(self, rec: HistoryRecord, memo: Any, *_: Any) -> bool:
        await asyncio.sleep(0.01)
        self.stored.append(rec.step)
        return True


async def test_two_flushes_at_once_store_each_step_once() -> None:
    store = SlowStore()
    item = QueueItem(1, "r1", ItemKind.DISCOVERY, None, 0, 0)
    fn = FunctionRecord("app-f", "app", "f", {})
    steps = StepBuffer(store, Watchers(), item, fn)  # type: ignore[arg-type]
    await steps.record({"id": "a", "op": "StepRun", "data": 1})
    await steps.record({"id": "b", "op": "StepRun", "data": 2})

    await asyncio.gather(steps.flush(), steps.flush())

    assert store.stored == ["a", "b"]
    assert steps.buffer == []
