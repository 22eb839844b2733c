"""The event model shared by triggers, waits, invokes and the send API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import pydantic


class Event(pydantic.BaseModel):
    """An event: `name`, `data`, an optional idempotency `id`, and `ts` in ms since the epoch."""

    model_config = pydantic.ConfigDict(extra="allow")

    name: str
    data: dict[str, Any] = pydantic.Field(default_factory=dict)
    id: str = ""
    ts: int = pydantic.Field(default=0, ge=0, lt=2**63)
    v: str | None = None

    @pydantic.field_validator("data", mode="before")
    @classmethod
    def _null_data_is_empty(cls, value: object) -> object:
        return {} if value is None else value

    @pydantic.field_validator("name")
    @classmethod
    def _name_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("an event needs a non-empty name, like 'shop/order.created'")
        if "\x00" in value:
            raise ValueError("an event name cannot contain a NUL character")
        return value

    @pydantic.field_validator("id")
    @classmethod
    def _id_without_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("an event id cannot contain a NUL character")
        return value

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class Signal(pydantic.BaseModel):
    """What `wait_for_signal` returns when the signal arrives."""

    signal: str
    data: Any = None


Events: TypeAlias = Event | dict[str, Any] | Sequence[Event | dict[str, Any]]
"""One event or several, as `Event` objects or plain dicts."""


def as_events(events: Events) -> list[Event]:
    """The events of `events` as a list of validated `Event` objects."""
    items = [events] if isinstance(events, Event | dict) else list(events)
    return [e if isinstance(e, Event) else Event.model_validate(e) for e in items]


__all__ = ["Event", "Events", "Signal", "as_events"]
