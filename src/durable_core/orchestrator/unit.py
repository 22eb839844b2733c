"""A unit of work: one store transaction that decides, and the effects it returns.

Every decision of the orchestrator (an event arrives, an answer comes back, a timer fires, a
run is cancelled) runs as one unit. The unit changes the store and collects what must happen
*after* the commit: runs this process leased to start at once, runs that finished, and events
to emit. The service carries them out once the transaction has committed; nothing in a unit
calls back into the service or hangs state on the store's transaction.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from ..events import Event
from . import runlog
from .registry import Registry
from .store import QueueItem, RunRecord, Tx


class Capacity(Protocol):
    """Room in this process for a run started at once (direct dispatch)."""

    def reserve(self) -> int | None:
        """A lease deadline for one more request taken now, or None when there is no room."""
        ...


@dataclasses.dataclass
class Effects:
    #: Requests leased in the unit, to be processed by this process after the commit.
    taken: list[tuple[QueueItem, RunRecord]] = dataclasses.field(default_factory=list)
    #: Runs that reached a final status in the unit, as they were left.
    finished: list[RunRecord] = dataclasses.field(default_factory=list)
    #: System events emitted by the unit (stored and matched before it commits).
    emitted: list[Event] = dataclasses.field(default_factory=list)
    #: Changes of run states, logged after the commit (`runlog.py`).
    changes: list[runlog.Change] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Unit:
    tx: Tx
    functions: Registry
    backoff: tuple[float, ...]
    capacity: Capacity | None = None
    effects: Effects = dataclasses.field(default_factory=Effects)

    def note(
        self, event: str, run_id: str, fn_id: str, step: str | None = None, **fields: Any
    ) -> None:
        """Log a change of a run's state once the unit commits (`runlog.py`)."""
        runlog.note(self.effects.changes, event, run_id, fn_id, step, **fields)

    def finished_run(self, run_id: str) -> RunRecord | None:
        return next((r for r in self.effects.finished if r.run_id == run_id), None)
