"""What the orchestrator keeps: the records a store reads and writes, and how rows map to them.

Both databases keep payloads as JSON text (`dump`, `load`) and return rows that are read by
column name, so one set of mapping functions serves both.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from typing import Any, Protocol, TypedDict


def now_ms() -> int:
    return int(time.time() * 1000)


def dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def rank(available_at: int, flow: dict[str, Any] | None) -> int:
    """Where a flow-controlled item waits in line: its due time, moved by its priority."""
    return available_at - int((flow or {}).get("p", 0))


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SLEEPING = "sleeping"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # flow control decided the event starts no run (the reason says why)

    @property
    def finished(self) -> bool:
        return self in (
            RunStatus.COMPLETED,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
            RunStatus.SKIPPED,
        )


class ItemKind(enum.StrEnum):
    DISCOVERY = "discovery"  # call the function (stepId=step)
    STEP = "step"  # run one planned step (stepId=<hashed id>)
    RESUME = "resume"  # a timer: store `payload.memo` for `step` unless already resolved
    FLUSH = "flush"  # a timer: start a debounced or batched run if its time has come
    TIMEOUT = "timeout"  # a timer: cancel a run past its `timeouts.start` or `timeouts.finish`
    GATEWAY = "gateway"  # make the HTTP request of `step.ai.infer` or `step.fetch` (`gateway.py`)


@dataclasses.dataclass(slots=True)
class AppRecord:
    app_id: str
    url: str
    sdk: str
    framework: str
    updated_at: int


@dataclasses.dataclass(slots=True)
class FunctionRecord:
    fn_id: str
    app_id: str
    name: str
    config: dict[str, Any]

    @property
    def url(self) -> str:
        return str(self.config["steps"]["step"]["runtime"]["url"])

    @property
    def retries(self) -> int:
        retries = self.config["steps"]["step"].get("retries") or {}
        return int(retries.get("attempts", 4))


@dataclasses.dataclass(slots=True)
class EventRecord:
    internal_id: str
    name: str
    data: dict[str, Any]
    event_id: str
    ts: int
    received_at: int
    raw: dict[str, Any]


@dataclasses.dataclass(slots=True)
class RunRecord:
    run_id: str
    fn_id: str
    app_id: str
    status: RunStatus
    events: list[dict[str, Any]]
    created_at: int
    started_at: int | None = None
    ended_at: int | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    parent_run_id: str | None = None
    parent_step: str | None = None
    reason: str | None = None
    batch_parallel: bool = False


@dataclasses.dataclass(slots=True)
class QueueItem:
    id: int
    run_id: str
    kind: ItemKind
    step: str | None
    attempt: int
    available_at: int
    payload: dict[str, Any] | None = None
    #: Flow control of a discovery or step request: `c` concurrency keys [key, limit, label],
    #: `t` throttle [key, limit, period ms, burst, label], `p` priority in ms, `w` set once the
    #: item has waited (its run's reason then says why).
    flow: dict[str, Any] | None = None
    #: Until when a worker holds it (None: not leased).
    lease_until: int | None = None

    def leased(self, now: int) -> bool:
        return self.lease_until is not None and self.lease_until >= now


@dataclasses.dataclass(slots=True)
class WaitRecord:
    run_id: str
    step: str
    event_name: str
    expression: str | None
    trigger_event: dict[str, Any]
    expires_at: int


@dataclasses.dataclass(slots=True)
class HistoryRecord:
    run_id: str
    step: str
    name: str
    op: str
    attempt: int
    started_at: int
    ended_at: int | None
    output: Any = None
    error: dict[str, Any] | None = None
    id: int | None = None
    #: When the request that ran this attempt was due (ms): it waited in the queue until
    #: `started_at`. None where unknown.
    queued_at: int | None = None


class ItemOptions(TypedDict, total=False):
    """A queue item's fields besides its run and kind (`Tx.enqueue`)."""

    step: str | None  # the planned step a STEP request runs, or the step a timer resumes
    attempt: int  # from 0, per step
    available_at: int | None  # ms; now when None
    payload: dict[str, Any] | None
    lease_until: int | None  # already claimed by this process, until then
    flow: dict[str, Any] | None  # the flow control it carries (`flow_options.request_flow`)


@dataclasses.dataclass(slots=True)
class RunFilter:
    fn_id: str | None = None
    status: RunStatus | None = None
    limit: int = 50
    before: int | None = None
    #: Only runs listed after this (created_at, run_id) in the newest-first order: a cursor.
    after: tuple[int, str] | None = None
    #: Only runs created at or after this time (ms).
    since: int | None = None
    #: Only runs whose first (triggering) event has this id (its `id`, as sent or given).
    event_id: str | None = None


@dataclasses.dataclass(slots=True)
class EventFilter:
    name: str | None = None
    limit: int = 50
    before: int | None = None
    #: Only events listed after this (received_at, internal_id), newest first: a cursor.
    after: tuple[int, str] | None = None


# -- rows --------------------------------------------------------------------------------------

#: The columns of `runs` that hold JSON.
RUN_JSON_COLUMNS = frozenset({"events", "output", "error"})

#: SQL for the statuses a run ends in.
ENDED_SQL = "(" + ",".join(f"'{s.value}'" for s in RunStatus if s.finished) + ")"


class Row(Protocol):
    def __getitem__(self, key: str) -> Any: ...


def app_from_row(r: Row) -> AppRecord:
    return AppRecord(r["app_id"], r["url"], r["sdk"], r["framework"], r["updated_at"])


def function_from_row(r: Row) -> FunctionRecord:
    return FunctionRecord(r["fn_id"], r["app_id"], r["name"], json.loads(r["config"]))


def event_from_row(r: Row) -> EventRecord:
    return EventRecord(
        r["internal_id"],
        r["name"],
        json.loads(r["data"]),
        r["event_id"],
        r["ts"],
        r["received_at"],
        json.loads(r["raw"]),
    )


def run_from_row(r: Row) -> RunRecord:
    return RunRecord(
        run_id=r["run_id"],
        fn_id=r["fn_id"],
        app_id=r["app_id"],
        status=RunStatus(r["status"]),
        events=json.loads(r["events"]),
        created_at=r["created_at"],
        started_at=r["started_at"],
        ended_at=r["ended_at"],
        output=load(r["output"]),
        error=load(r["error"]),
        parent_run_id=r["parent_run_id"],
        parent_step=r["parent_step"],
        reason=r["reason"],
        batch_parallel=bool(r["batch_parallel"]),
    )


def item_from_row(r: Row) -> QueueItem:
    return QueueItem(
        r["id"],
        r["run_id"],
        ItemKind(r["kind"]),
        r["step"],
        r["attempt"],
        r["available_at"],
        load(r["payload"]),
        load(r["flow"]),
        r["lease_until"],
    )


def wait_from_row(r: Row) -> WaitRecord:
    return WaitRecord(
        r["run_id"],
        r["step"],
        r["event_name"],
        r["expression"],
        json.loads(r["trigger_event"]),
        r["expires_at"],
    )


def history_from_row(r: Row) -> HistoryRecord:
    return HistoryRecord(
        run_id=r["run_id"], step=r["step"], name=r["name"], op=r["op"], attempt=r["attempt"],
        started_at=r["started_at"], ended_at=r["ended_at"], output=load(r["output"]),
        error=load(r["error"]), id=r["id"], queued_at=r["queued_at"],
    )  # fmt: skip


__all__ = [
    "ENDED_SQL",
    "RUN_JSON_COLUMNS",
    "AppRecord",
    "EventFilter",
    "EventRecord",
    "FunctionRecord",
    "HistoryRecord",
    "ItemKind",
    "ItemOptions",
    "QueueItem",
    "Row",
    "RunFilter",
    "RunRecord",
    "RunStatus",
    "WaitRecord",
    "app_from_row",
    "dump",
    "event_from_row",
    "function_from_row",
    "history_from_row",
    "item_from_row",
    "load",
    "now_ms",
    "rank",
    "run_from_row",
    "wait_from_row",
]
