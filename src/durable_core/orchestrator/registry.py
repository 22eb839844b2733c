"""The functions this orchestrator knows, indexed the ways intake, dispatch and the API ask."""

from __future__ import annotations

from collections.abc import Iterable

from . import flow_options
from .store import FunctionRecord


class Registry:
    """Functions by id, by trigger event and by cron schedule. Changed only by registration
    (and reloads on a shared store); read by everything else."""

    def __init__(self, functions: Iterable[FunctionRecord] = ()) -> None:
        self._functions: dict[str, FunctionRecord] = {}
        self.by_event: dict[str, list[tuple[FunctionRecord, str | None]]] = {}
        #: Whether flow-controlled queue items may exist (then claims look for them too).
        self.has_flow = False
        self.replace_all(functions)

    def get(self, fn_id: str) -> FunctionRecord | None:
        return self._functions.get(fn_id)

    def __contains__(self, fn_id: str) -> bool:
        return fn_id in self._functions

    def all(self) -> list[FunctionRecord]:
        return sorted(self._functions.values(), key=lambda f: f.fn_id)

    def ids(self) -> list[str]:
        return sorted(self._functions)

    def replace_all(self, functions: Iterable[FunctionRecord]) -> None:
        self._functions = {f.fn_id: f for f in functions}
        self._reindex()

    def replace_app(self, app_id: str, functions: Iterable[FunctionRecord]) -> None:
        """An app synced: its functions are now exactly `functions`."""
        kept = [f for f in self._functions.values() if f.app_id != app_id]
        self.replace_all([*kept, *functions])

    def cron_triggers(self) -> list[tuple[FunctionRecord, str]]:
        return [
            (fn, str(trig["cron"]))
            for fn in self._functions.values()
            for trig in fn.config.get("triggers") or []
            if "cron" in trig
        ]

    def _reindex(self) -> None:
        index: dict[str, list[tuple[FunctionRecord, str | None]]] = {}
        for fn in self._functions.values():
            for trig in fn.config.get("triggers") or []:
                if "event" in trig:
                    index.setdefault(trig["event"], []).append((fn, trig.get("expression")))
        self.by_event = index
        self.has_flow = self.has_flow or any(
            flow_options.has_queue_flow(fn) for fn in self._functions.values()
        )
