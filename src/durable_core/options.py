"""Typed function options. Each serializes to the FunctionConfig fields of the serve protocol."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic

from . import _limits
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


Size = Annotated[int, pydantic.BeforeValidator(_limits.parse_size)]
"""Bytes: an int, or a string like "4MB" or "512KB" (KB = 1024 bytes)."""


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
    """Up to `max_size` events (per `key`) start one run, or fewer once `timeout` passes; with
    `if_`, only events matching that expression are batched, the others start runs alone."""

    max_size: int = pydantic.Field(ge=1, alias="maxSize")
    timeout: Duration
    key: str | None = None
    if_: str | None = pydantic.Field(default=None, alias="if")


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


class Limits(_Option):
    """What one run may store. A field left None keeps the orchestrator's setting, whose
    defaults are 4 MB per output (`step_output`: each step's output, the function's output, an
    error), 32 MB for all of a run's stored step results (`run_output_total`) and 20,000 steps
    per run (`steps`). Going over fails the run at once with a `LimitExceededError`.

    On a function (`limits=Limits(step_output="16MB")`) they apply to its runs; on an
    orchestrator (`Orchestrator(limits=...)`) to every function that does not set its own."""

    step_output: Size | None = pydantic.Field(default=None, alias="stepOutput")
    run_output_total: Size | None = pydantic.Field(default=None, alias="runOutputTotal")
    steps: int | None = pydantic.Field(default=None, ge=1)

    def __init__(
        self,
        *,
        step_output: int | str | None = None,
        run_output_total: int | str | None = None,
        steps: int | None = None,
    ) -> None:
        super().__init__(
            **{"step_output": step_output, "run_output_total": run_output_total, "steps": steps}
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Limits | None:
        """The limits the `DURABLE_MAX_*` variables set (None if none is set)."""
        values: dict[str, Any] = {}
        for field, setting in _limits.SETTINGS.items():
            text = environ.get(setting.env, "").strip()
            if not text:
                continue
            try:
                values[field] = int(text) if field == "steps" else _limits.parse_size(text)
                cls(**values)
            except (ValueError, pydantic.ValidationError):
                example = "20000" if field == "steps" else '"8MB"'
                raise ValueError(f"{setting.env}={text!r}: use a value like {example}") from None
        return cls(**values) if values else None

    def over(self, base: _limits.RunLimits) -> _limits.RunLimits:
        """`base` with the limits set here in place of its own."""
        return base.replace(
            step_output=self.step_output,
            run_output_total=self.run_output_total,
            steps=self.steps,
        )


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
    limits: Limits | None = None

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
    "Limits",
    "Priority",
    "RateLimit",
    "Singleton",
    "Size",
    "Throttle",
    "Timeouts",
    "Trigger",
    "TriggerCron",
    "TriggerEvent",
]
