"""Who watches runs from inside the process: change listeners (progress output) and callers
waiting for a run to finish."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

_log = logging.getLogger("durable.orchestrator")

Listener = Callable[[str, dict[str, Any]], None]


class Watchers:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._run_waiters: dict[str, list[asyncio.Future[None]]] = {}

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, kind: str, details: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                listener(kind, details)
            except Exception:
                _log.exception("a change listener failed")

    def expect(self, run_id: str) -> asyncio.Future[None]:
        """A future set once `run_id` settles (call `forget` when done with it)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._run_waiters.setdefault(run_id, []).append(fut)
        return fut

    def forget(self, run_id: str, fut: asyncio.Future[None]) -> None:
        waiters = self._run_waiters.get(run_id, [])
        if fut in waiters:
            waiters.remove(fut)
        if not waiters:
            self._run_waiters.pop(run_id, None)

    def settled(self, run_id: str) -> None:
        for fut in self._run_waiters.pop(run_id, []):
            if not fut.done():
                fut.set_result(None)
