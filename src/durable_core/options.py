"""Typed function options. Each serializes to the FunctionConfig fields of the serve protocol."""

from __future__ import annotations

import datetime as _dt
from typing import Annotated, Any, Literal

import pydantic

from ._durations import DurationLike, format_duration, to_timedelta


def _to_td(value: object) -> _dt.timedelta:
    if isinstance(value, str | int | float | _dt.timedelta):
        return to_timedelta(value)
    raise TypeError("a duration must be a string like '5m', a timedelta or seconds")


Duration = Annotated[
    _dt.timedelta,
    pydantic.BeforeValidator(_to_td),
    pydantic.PlainSerializer(format_duration, return_type=str),
]


class _Option(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class TriggerEvent(_Option):
    """Run on every event named `event`; `expression` is an optional CEL filter on `event`."""

    event: str
    expression: str | None = None

    def __init__(self, event: str, expression: str | None = None) -> None:
        super().__init__(**{"event": event, "expression": expression})


class TriggerCron(_Option):
    """Run on a 5-field cron schedule, optionally prefixed `TZ=Area/City `."""

    cron: str

    def __init__(self, cron: str) -> None:
        super().__init__(**{"cron": cron})

    @pydantic.field_validator("cron")
    @classmethod
    def _valid(cls, value: str) -> str:
        from .orchestrator.cron import parse

        parse(value)
        return value


Trigger = TriggerEvent | TriggerCron


class Concurrency(_Option):
    """At most `limit` requests of the scope (and `key`) executing at once; 0 = no limit.
    `scope`: "fn" (default, per function), "app" (the functions of one app), "env"/"account"
    (every function on the orchestrator)."""

    limit: int = pydantic.Field(ge=0)
    key: str | None = None
    scope: Literal["fn", "app", "env", "account"] | None = None


class Throttle(_Option):
    limit: int = pydantic.Field(ge=1)
    period: Duration
    burst: int | None = pydantic.Field(default=None, ge=0)
    key: str | None = None


class RateLimit(_Option):
    limit: int = pydantic.Field(ge=1)
    period: Duration
    key: str | None = None


class Debounce(_Option):
    period: Duration
    key: str | None = None
    timeout: Duration | None = None


class Batch(_Option):
    max_size: int = pydantic.Field(ge=1, alias="maxSize")
    timeout: Duration
    key: str | None = None


class Cancel(_Option):
    event: str
    if_: str | None = pydantic.Field(default=None, alias="if")
    timeout: Duration | None = None


class Priority(_Option):
    run: str


class Singleton(_Option):
    mode: Literal["skip", "cancel"]
    key: str | None = None


class Timeouts(_Option):
    start: Duration | None = None
    finish: Duration | None = None


class FunctionOptions(_Option):
    """Every option a function can carry; the orchestrator enforces them."""

    id: str = pydantic.Field(min_length=1)
    name: str | None = None
    triggers: list[Trigger] = pydantic.Field(min_length=1)
    retries: int = pydantic.Field(default=4, ge=0, le=20)
    concurrency: list[Concurrency] | None = pydantic.Field(default=None, max_length=2)
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = pydantic.Field(default=None, alias="rateLimit")
    debounce: Debounce | None = None
    batch_events: Batch | None = pydantic.Field(default=None, alias="batchEvents")
    cancel: list[Cancel] | None = None
    priority: Priority | None = None
    idempotency: str | None = None
    singleton: Singleton | None = None
    timeouts: Timeouts | None = None

    @pydantic.field_validator("id")
    @classmethod
    def _id_is_slug(cls, value: str) -> str:
        if any(c.isspace() for c in value):
            raise ValueError(f"function id {value!r} must not contain spaces; use '-' instead")
        return value


__all__ = [
    "Batch",
    "Cancel",
    "Concurrency",
    "Debounce",
    "Duration",
    "DurationLike",
    "FunctionOptions",
    "Priority",
    "RateLimit",
    "Singleton",
    "Throttle",
    "Timeouts",
    "Trigger",
    "TriggerCron",
    "TriggerEvent",
]
