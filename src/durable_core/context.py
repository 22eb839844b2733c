"""What a function receives: the event(s), run id, attempt, step API and a replay-aware logger."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ._engine import Replay
from ._steps import Step, SyncStep
from .events import Event


class ReplayAwareLogger(logging.LoggerAdapter[logging.Logger]):
    """Logs only while the function runs new code, so replays do not repeat log lines."""

    def __init__(self, logger: logging.Logger, replay: Replay, extra: dict[str, Any]) -> None:
        super().__init__(logger, extra)
        self._replay = replay

    def isEnabledFor(self, level: int) -> bool:
        return not self._replay.replaying and self.logger.isEnabledFor(level)


@dataclasses.dataclass(slots=True)
class _ContextBase:
    event: Event
    events: list[Event]
    run_id: str
    fn_id: str
    attempt: int
    logger: ReplayAwareLogger


@dataclasses.dataclass(slots=True)
class Context(_ContextBase):
    """The context of an async function: `await ctx.step.run(...)`."""

    step: Step


@dataclasses.dataclass(slots=True)
class SyncContext(_ContextBase):
    """The context of a sync function: `ctx.step.run(...)` returns the value directly."""

    step: SyncStep
