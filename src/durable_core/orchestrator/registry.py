"""The functions this orchestrator knows, indexed the ways intake, dispatch and the API ask."""

from __future__ import annotations

from collections.abc import Iterable

from . import flow_options, wildcards
from .store import FunctionRecord

Triggered = list[tuple[FunctionRecord, str | None]]


class Registry:
    """Functions by id, by trigger event (exact names, and wildcard prefixes) and by cron
    schedule. Changed only by registration (and reloads on a shared store); read by
    everything else."""

    def __init__(self, functions: Iterable[FunctionRecord] = ()) -> None:
        self._functions: dict[str, FunctionRecord] = {}
        self.by_event: dict[str, Triggered] = {}
        self.by_prefix: dict[str, Triggered] = {}
        #: Functions whose config cannot work (registered before it was checked, or from a
        #: store written by an older version), with what is wrong: their runs fail at once.
        self.problems: dict[str, str] = {}
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

    def triggered_by(self, event_name: str) -> Triggered:
        """The functions (with their trigger's filter) an event of this name triggers: exact
        triggers first, then wildcards from the shortest prefix."""
        found = list(self.by_event.get(event_name, ()))
        if self.by_prefix:
            for prefix in wildcards.prefixes(event_name):
                found.extend(self.by_prefix.get(prefix, ()))
        return found

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
        exact: dict[str, Triggered] = {}
        prefixed: dict[str, Triggered] = {}
        problems: dict[str, str] = {}
        for fn in self._functions.values():
            problem = flow_options.check(fn.config)
            if problem is not None:
                problems[fn.fn_id] = problem
            for trig in fn.config.get("triggers") or []:
                name = trig.get("event")
                if not isinstance(name, str):
                    continue
                prefix = wildcards.prefix(name)
                index = exact if prefix is None else prefixed
                index.setdefault(prefix or name, []).append((fn, trig.get("expression")))
        self.by_event, self.by_prefix, self.problems = exact, prefixed, problems
        self.has_flow = self.has_flow or any(
            flow_options.has_queue_flow(fn) for fn in self._functions.values()
        )
