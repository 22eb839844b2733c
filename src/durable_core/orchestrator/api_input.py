"""What the API accepts: request bodies parsed and checked, each problem a 400 naming it."""

from __future__ import annotations

from typing import Any, overload

import pydantic

from ..events import Event
from . import cron, expressions, flow_options, limits

MAX_EVENTS = 5000


class Problem(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FunctionIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    id: str = pydantic.Field(min_length=1)
    name: str | None = None
    triggers: list[dict[str, Any]]
    steps: dict[str, dict[str, Any]]

    @pydantic.model_validator(mode="before")
    @classmethod
    def _one_concurrency_form(cls, data: Any) -> Any:
        """`concurrency` as a list of limits: the TypeScript SDK sends what its user wrote,
        a number or one limit as well as a list."""
        if isinstance(data, dict):
            conc = data.get("concurrency")
            if isinstance(conc, int) and not isinstance(conc, bool):
                data = {**data, "concurrency": [{"limit": conc}]}
            elif isinstance(conc, dict):
                data = {**data, "concurrency": [conc]}
        return data


class RegisterIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    # `appName` is how the TypeScript SDK spells it.
    appname: str = pydantic.Field(
        min_length=1, validation_alias=pydantic.AliasChoices("appname", "appName")
    )
    url: str = ""
    functions: list[FunctionIn]


class InvokeIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    data: dict[str, Any] = pydantic.Field(default_factory=dict)
    wait: bool = False
    timeout: float = pydantic.Field(default=30.0, gt=0, le=3600)


class SignalIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    signal: str = pydantic.Field(min_length=1)
    data: Any = None


def validation(err: pydantic.ValidationError, what: str) -> Problem:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or what
    return Problem(400, f"{what}: {where}: {first['msg']}")


@overload
def no_nul(value: str, what: str) -> str: ...
@overload
def no_nul(value: str | None, what: str) -> str | None: ...
def no_nul(value: str | None, what: str) -> str | None:
    """`value` (an id or a query parameter), refused when it holds a NUL character: no store
    keeps one in text (PostgreSQL refuses it), so no id or name can hold one."""
    if value is not None and "\x00" in value:
        raise Problem(
            400, f"{what} {value!r} holds a NUL character (U+0000), which no id or name can hold"
        )
    return value


def make_cursor(at: int, row_id: str) -> str:
    """Where the next page of a newest-first listing starts: after the row (`at`, `row_id`)."""
    return f"{at}:{row_id}"


def parse_cursor(text: str | None) -> tuple[int, str] | None:
    """A listing's `cursor` parameter, as `make_cursor` wrote it; a 400 naming it otherwise."""
    if text is None:
        return None
    at, _, row_id = text.partition(":")
    if not (at.isascii() and at.isdigit() and len(at) <= 15) or not row_id or "\x00" in row_id:
        raise Problem(
            400, f"cursor {text[:100]!r} is not one this API gave: pass `next_cursor` as it came"
        )
    return int(at), row_id


def check_function(fn: FunctionIn) -> None:
    runtime = fn.steps.get("step", {}).get("runtime")
    if not isinstance(runtime, dict) or not isinstance(runtime.get("url"), str):
        raise Problem(400, f"function {fn.id}: steps.step.runtime.url is required")
    retries = fn.steps["step"].get("retries")
    if retries is not None:
        attempts = retries.get("attempts") if isinstance(retries, dict) else None
        if not isinstance(attempts, int) or isinstance(attempts, bool) or not 0 <= attempts <= 20:
            raise Problem(
                400,
                f"function {fn.id}: steps.step.retries.attempts must be an integer from 0 to 20",
            )
    if not fn.triggers:
        raise Problem(400, f"function {fn.id}: needs at least one trigger")
    for i, trig in enumerate(fn.triggers):
        if not isinstance(trig.get("event"), str) and not isinstance(trig.get("cron"), str):
            raise Problem(400, f"function {fn.id}: triggers[{i}] needs an 'event' or a 'cron'")
        if isinstance(trig.get("cron"), str):
            try:
                cron.check(trig["cron"])
            except Exception as err:
                raise Problem(400, f"function {fn.id}: triggers[{i}].cron: {err}") from None
        expr = trig.get("expression")
        if expr is not None:
            try:
                expressions.check(str(expr))
            except Exception as err:
                raise Problem(400, f"function {fn.id}: triggers[{i}].expression: {err}") from None
    config = fn.model_dump(mode="json")
    problem = flow_options.check(config) or limits.check(config)
    if problem is not None:
        raise Problem(400, f"function {fn.id}: {problem}")


def parse_events(body: Any) -> list[Event]:
    """Events from a request body (one object or a list), or ValueError naming the bad field."""
    items = body if isinstance(body, list) else [body]
    if not items:
        raise ValueError("no events: send one event object or a non-empty array")
    if len(items) > MAX_EVENTS:
        raise ValueError(
            f"{len(items)} events in one request: the limit is {MAX_EVENTS}; send them in batches"
        )
    events = []
    for i, raw in enumerate(items):
        where = f"events[{i}]" if isinstance(body, list) else "event"
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: must be a JSON object with a 'name'")
        try:
            events.append(Event.model_validate(raw))
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "event"
            raise ValueError(f"{where}.{field}: {first['msg']}") from None
    return events
