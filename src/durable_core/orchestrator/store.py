"""The store interface: what the orchestrator keeps, and the transactions it needs.

Every state change that must survive a crash happens inside one `transaction()`. A database
is one small module implementing `Store` and `Tx` (SQLite: `sqlite_store.py`).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol


def now_ms() -> int:
    return int(time.time() * 1000)


# -- rows: both databases keep payloads as JSON text and map rows the same way ---------------

RUN_JSON_COLUMNS = frozenset({"events", "output", "error"})


class Row(Protocol):
    def __getitem__(self, key: str) -> Any: ...


def dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


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
    )


def rank(available_at: int, flow: dict[str, Any] | None) -> int:
    """Where a flow-controlled item waits in line: its due time, moved by its priority."""
    return available_at - int((flow or {}).get("p", 0))


#: SQL for the statuses a run ends in.
ENDED_SQL = "('completed','failed','cancelled','skipped')"


def wait_from_row(r: Row) -> WaitRecord:
    return WaitRecord(
        r["run_id"],
        r["step"],
        r["event_name"],
        r["expression"],
        json.loads(r["trigger_event"]),
        r["expires_at"],
    )


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


@dataclasses.dataclass(slots=True)
class RunFilter:
    fn_id: str | None = None
    status: RunStatus | None = None
    limit: int = 50
    before: int | None = None


class Tx(abc.ABC):
    """One transaction. Methods are async so a networked database fits the same shape."""

    #: Items this process leased while queueing them, to run once the transaction commits.
    taken: list[tuple[QueueItem, RunRecord]]
    #: Runs this transaction finished, as they ended.
    finished: list[RunRecord]

    # apps and functions
    @abc.abstractmethod
    async def upsert_app(self, app: AppRecord, functions: list[FunctionRecord]) -> bool: ...
    @abc.abstractmethod
    async def list_apps(self) -> list[AppRecord]: ...
    @abc.abstractmethod
    async def list_functions(self) -> list[FunctionRecord]: ...

    # events
    @abc.abstractmethod
    async def insert_event(self, event: EventRecord) -> None: ...
    @abc.abstractmethod
    async def list_events(
        self, name: str | None, limit: int, before: int | None
    ) -> list[EventRecord]: ...
    @abc.abstractmethod
    async def get_key(self, scope: str, key: str) -> int | None: ...
    @abc.abstractmethod
    async def advance_key(self, scope: str, key: str, value: int) -> bool:
        """Set a key's value if it is new or greater than the stored one; True if it was."""

    @abc.abstractmethod
    async def claim_key(self, scope: str, key: str, expires_at: int) -> bool:
        """Record an idempotency key; False if it is held and not expired."""

    # runs
    @abc.abstractmethod
    async def insert_run(self, run: RunRecord) -> None: ...
    @abc.abstractmethod
    async def get_run(self, run_id: str) -> RunRecord | None: ...
    @abc.abstractmethod
    async def lock_run(self, run_id: str) -> RunRecord | None:
        """The run, locked for the rest of the transaction (changes to one run are serialized)."""

    @abc.abstractmethod
    async def run_status(self, run_id: str) -> RunStatus | None: ...
    @abc.abstractmethod
    async def update_run(self, run_id: str, **fields: Any) -> None: ...
    @abc.abstractmethod
    async def list_runs(self, flt: RunFilter) -> list[RunRecord]: ...
    @abc.abstractmethod
    async def unfinished_runs(self) -> list[RunRecord]: ...

    # memos (first write wins) and the outstanding ops of a run
    @abc.abstractmethod
    async def put_memo(self, run_id: str, step: str, memo: Any) -> bool: ...
    @abc.abstractmethod
    async def get_memos(self, run_id: str) -> dict[str, Any]: ...
    @abc.abstractmethod
    async def add_pending(self, run_id: str, steps: list[str]) -> None: ...
    @abc.abstractmethod
    async def remove_pending(self, run_id: str, step: str) -> int:
        """Remove one outstanding op; return how many remain (-1 if it was not outstanding)."""

    @abc.abstractmethod
    async def clear_run(self, run_id: str) -> None:
        """Drop a finished run's queue items, waits, signal waits and pending ops."""

    # history
    @abc.abstractmethod
    async def add_history(self, rec: HistoryRecord) -> None: ...
    @abc.abstractmethod
    async def end_history(self, run_id: str, step: str, ended_at: int, output: Any) -> None: ...
    @abc.abstractmethod
    async def get_history(self, run_id: str) -> list[HistoryRecord]: ...

    # queue and timers
    @abc.abstractmethod
    async def enqueue(
        self,
        run_id: str,
        kind: ItemKind,
        *,
        step: str | None = None,
        attempt: int = 0,
        available_at: int | None = None,
        payload: dict[str, Any] | None = None,
        lease_until: int | None = None,
        flow: dict[str, Any] | None = None,
    ) -> int:
        """Queue an item; with `lease_until`, this process has already claimed it."""

    @abc.abstractmethod
    async def claim(self, now: int, limit: int, lease_ms: int) -> list[QueueItem]:
        """Lease up to `limit` due items without flow control, earliest first; their queued
        runs become running."""

    # flow control: items with `flow` are claimed one transaction at a time (`lock_flow`)
    @abc.abstractmethod
    async def lock_flow(self) -> None:
        """Serialize flow-controlled claims across processes until the transaction ends."""

    @abc.abstractmethod
    async def flow_leased(self, now: int) -> list[dict[str, Any]]:
        """The `flow` of every flow-controlled item leased now (requests executing)."""

    @abc.abstractmethod
    async def parked_keys(self) -> list[tuple[str, dict[str, Any]]]:
        """Each concurrency key items are parked on, with the `flow` of one of them."""

    @abc.abstractmethod
    async def unpark(self, key: str, count: int) -> None:
        """Put the first `count` items parked on `key` (by rank) back in line."""

    @abc.abstractmethod
    async def flow_items(self, now: int, limit: int) -> list[QueueItem]:
        """Due, unleased, unparked flow-controlled items, by rank."""

    @abc.abstractmethod
    async def park(self, item: QueueItem, key: str) -> None:
        """Hold `item` until a slot of `key` frees (it keeps its place in line)."""

    @abc.abstractmethod
    async def delay_item(self, item: QueueItem, at: int) -> None: ...
    @abc.abstractmethod
    async def lease_items(self, items: list[QueueItem], now: int, until: int) -> None:
        """Lease flow-controlled items; their queued runs become running."""

    @abc.abstractmethod
    async def get_state(self, key: str) -> Any:
        """A flow-control state (None if unset), locked for the rest of the transaction."""

    @abc.abstractmethod
    async def set_state(self, key: str, value: Any) -> None:
        """Store a flow-control state; None deletes it."""

    @abc.abstractmethod
    async def extend_lease(self, item_id: int, until: int) -> None: ...
    @abc.abstractmethod
    async def delete_item(self, item_id: int) -> bool:
        """Consume a queue item; False if it was gone (another worker consumed it)."""

    @abc.abstractmethod
    async def next_available_at(self) -> int | None: ...
    @abc.abstractmethod
    async def release_leases(self) -> int:
        """On start: free leases no live process can hold (all of them, for a one-owner store)."""

    # waits for events, and waits for signals
    @abc.abstractmethod
    async def add_wait(self, wait: WaitRecord, index: tuple[str, str] | None) -> None: ...
    @abc.abstractmethod
    async def candidate_waits(self, event: dict[str, Any]) -> list[WaitRecord]: ...
    @abc.abstractmethod
    async def remove_wait(self, run_id: str, step: str) -> bool: ...
    @abc.abstractmethod
    async def add_signal(self, signal: str, run_id: str, step: str, replace: bool) -> bool:
        """Register a signal wait; False if another run waits for it and `replace` is off."""

    @abc.abstractmethod
    async def take_signal(self, signal: str) -> tuple[str, str] | None: ...
    @abc.abstractmethod
    async def remove_signal(self, run_id: str, step: str) -> bool: ...


Notify = Callable[[str], None]


class Store(abc.ABC):
    #: Whether several orchestrator processes may share this store.
    shared: bool = False

    def transient(self, err: BaseException) -> bool:
        """Whether a failed transaction may simply be run again (a deadlock, say)."""
        return False

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and migrate (stores that need I/O to open)."""

    async def subscribe(self, on_notify: Notify) -> None:  # noqa: B027 - optional hook
        """Call `on_notify("queue" | "functions")` when another process changes them."""

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Tx]: ...

    @abc.abstractmethod
    async def checkpoint(self, rec: HistoryRecord, memo: Any) -> bool:
        """Store one finished step (memo, first write wins, and its history) on its own, at
        once; False if the run has ended (or is gone)."""

    @abc.abstractmethod
    def snapshot(self) -> AbstractAsyncContextManager[Tx]:
        """Reads only, each statement on its own (no transaction to open, lock or commit)."""

    @abc.abstractmethod
    async def close(self) -> None: ...


__all__ = [
    "AppRecord",
    "AsyncIterator",
    "EventRecord",
    "FunctionRecord",
    "HistoryRecord",
    "ItemKind",
    "Notify",
    "QueueItem",
    "RunFilter",
    "RunRecord",
    "RunStatus",
    "Store",
    "Tx",
    "WaitRecord",
    "item_from_row",
    "now_ms",
    "rank",
]
