"""The orchestrator's store: what it keeps (`records`), the transactions it needs
(`interface`), their statements written once (`sql`, `sql_queue`) for the two databases
(`sqlite`, `postgres`), the schema (`schema`), and `open_store(url)` to pick one."""

from __future__ import annotations

from . import records
from .interface import Notify, Store, Tx
from .records import *  # noqa: F403 - the records, enums and row helpers
from .url import open_store

__all__ = [*records.__all__, "Notify", "Store", "Tx", "open_store"]
