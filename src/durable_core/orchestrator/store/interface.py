"""The store interface: the transactions the orchestrator needs.

Every state change that must survive a crash happens inside one `transaction()`. Both
databases share one implementation of `Tx` (`sql.py`); `sqlite.py` and `postgres.py` connect,
migrate, open transactions and lock.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Unpack

from .records import (
    AppRecord,
    EventFilter,
    EventRecord,
    FunctionRecord,
    HistoryRecord,
    ItemKind,
    ItemOptions,
    QueueItem,
    RunFilter,
    RunRecord,
    RunStatus,
    WaitRecord,
)


class Tx(abc.ABC):
    """One transaction. Methods are async so a networked database fits the same shape."""

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
    async def list_events(self, flt: EventFilter) -> list[EventRecord]:
        """Newest first."""

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
    async def memo_usage(self, run_id: str) -> tuple[int, int]:
        """How many step results the run has stored, and their size (`_limits.Usage`),
        counted by the database."""

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
    async def enqueue(self, run_id: str, kind: ItemKind, **item: Unpack[ItemOptions]) -> int:
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
    async def get_item(self, item_id: int) -> QueueItem | None: ...
    @abc.abstractmethod
    async def reset_attempt(self, item_id: int) -> None:
        """A step of the item's request finished: its answer counts attempts afresh."""

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
    #: The tag of this process's leases, where several processes share the store.
    owner: str | None = None

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
    async def checkpoint(
        self, rec: HistoryRecord, memo: Any, leased: int | None = None, owner: str | None = None
    ) -> bool:
        """Store one finished step (memo, first write wins, and its history) on its own, at
        once; False if the run has ended (or is gone), or with `leased`, if that queue item
        of the run is gone or its request was superseded: with `owner` (the process that
        dispatched it), the item is now another process's or released; without, its lease
        has run out. A lease that ran out while its owner still holds the item is no sign of
        a superseded request (a renewal that came late), so the owner is the test."""

    @abc.abstractmethod
    def snapshot(self) -> AbstractAsyncContextManager[Tx]:
        """Reads only, each statement on its own (no transaction to open, lock or commit)."""

    @abc.abstractmethod
    async def close(self) -> None: ...
