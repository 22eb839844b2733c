"""The event model shared by triggers, waits, invokes and the send API."""

from __future__ import annotations

from typing import Any

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
