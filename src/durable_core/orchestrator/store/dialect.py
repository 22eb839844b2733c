"""What SQLite and PostgreSQL do differently, as far as the store's statements are concerned.

The defaults are SQLite's: one writer at a time, so nothing needs a row lock. PostgreSQL's
dialect (in `postgres.py`) turns on the locks a store shared by several processes needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from .records import Row


@dataclasses.dataclass(frozen=True, slots=True)
class Dialect:
    name: str = "sqlite"
    #: Several orchestrator processes share the database: leases left on start belong to live
    #: processes, and a transaction locks the rows it is about to change.
    shared: bool = False
    #: Appended to a SELECT of rows the transaction goes on to change.
    for_update: str = ""
    #: Appended to the SELECT of queue items a claim takes (others' claims pass them by).
    skip_locked: str = ""
    #: The SQL function giving the larger of two values.
    greatest: str = "max"
    #: A statement serializing flow-controlled claims until the transaction ends, if needed.
    flow_lock: str | None = None
    #: A query whose `alive` column says whether the process owning leases `?` still runs.
    owner_alive: str | None = None
    #: Whether a `WITH` may hold DELETEs (several deletes in one round trip).
    delete_in_with: bool = False
    #: Whether a list binds as one array parameter (`= ANY(?)`), not one `?` per element.
    array_params: bool = False

    # Schema words (see `schema.py`).
    #: Milliseconds and other 64-bit integers.
    bigint: str = "INTEGER"
    #: A generated primary key.
    serial: str = "INTEGER PRIMARY KEY"
    #: A boolean column, false unless set.
    flag: str = "INTEGER NOT NULL DEFAULT 0"
    #: The memo column (SQLite's was created without NOT NULL; a memo is never NULL).
    memo: str = "TEXT"
    #: After a table whose whole row is its primary key.
    key_only: str = " WITHOUT ROWID"
    #: Whether a deleted row's `serial` id may be handed out again unless the table says
    #: AUTOINCREMENT (SQLite's rowid tables); migration 3 makes queue ids unique for good.
    reuses_ids: bool = True

    @property
    def first_event_id(self) -> str:
        """The `id` of a run's first (triggering) event, as an indexable expression."""
        if self.name == "sqlite":
            return "json_extract(events, '$[0].id')"
        return "((events::json)->0->>'id')"

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        """A condition that `column` is one of `values`, with its parameters."""
        if self.array_params:
            return f"{column} = ANY(?)", (list(values),)
        return f"{column} IN ({','.join('?' * len(values))})", tuple(values)


class Conn(Protocol):
    """One database connection, as a transaction's statements use it."""

    async def rows(self, sql: str, args: Sequence[Any] = ()) -> Sequence[Row]:
        """Run a statement that returns rows (a SELECT, or anything with RETURNING)."""

    async def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        """The first row of a statement that returns rows (None if there is none)."""

    async def insert(self, sql: str, args: Sequence[Any]) -> int:
        """Run an INSERT of one row into a table with an `id` column; the new row's id."""

    async def count(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run a statement; how many rows it changed."""

    async def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per row of parameters."""
