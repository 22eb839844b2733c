"""`Durable`, the app: it declares the functions and route workflows, and is their client."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pydantic

from . import _serialize, logs, routes
from . import options as opt
from .client import Client
from .errors import ConfigError
from .function import Function
from .orchestrator import expressions, wildcards
from .tracing import Tracing
from .types import Handler

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider


class Durable(Client):
    """The app: its functions, keys and mode. Arguments win over `DURABLE_*` environment variables.

    - `signing_key` / `DURABLE_SIGNING_KEY`, `signing_key_fallback` / `DURABLE_SIGNING_KEY_FALLBACK`
    - `event_key` / `DURABLE_EVENT_KEY`
    - `orchestrator_url` / `DURABLE_ORCHESTRATOR_URL`
    - `dev` / `DURABLE_DEV`: dev mode skips signature checks; it must be asked for explicitly.
    - `tracing` / `DURABLE_TRACING`: OpenTelemetry traces of runs; True, False, a
      `TracerProvider`, or None to trace once a tracer provider or OTLP endpoint is set
      (see `durable_core.tracing`).
    """

    def __init__(
        self,
        app_id: str,
        *,
        signing_key: str | None = None,
        signing_key_fallback: str | None = None,
        event_key: str | None = None,
        orchestrator_url: str | None = None,
        dev: bool | None = None,
        serve_origin: str | None = None,
        logger: logging.Logger | None = None,
        tracing: bool | TracerProvider | None = None,
    ) -> None:
        super().__init__(
            app_id,
            signing_key=signing_key,
            event_key=event_key,
            orchestrator_url=orchestrator_url,
            dev=dev,
        )
        self.signing_key_fallback = (
            signing_key_fallback or os.environ.get("DURABLE_SIGNING_KEY_FALLBACK") or None
        )
        self.serve_origin = serve_origin or os.environ.get("DURABLE_SERVE_ORIGIN") or None
        self.logger = logger or logging.getLogger("durable")
        self.tracing = Tracing(app_id, tracing)
        logs.show_by_default()
        self._functions: dict[str, Function[Any]] = {}

    @property
    def functions(self) -> list[Function[Any]]:
        return list(self._functions.values())

    def find(self, fn_id: str) -> tuple[Function[Any], Handler] | None:
        """The function (and handler: main or on_failure) registered under a full id."""
        for fn in self._functions.values():
            handler = fn.handler_for(fn_id)
            if handler is not None:
                return fn, handler
        return None

    def function(
        self,
        *,
        id: str,
        trigger: opt.Trigger | Sequence[opt.Trigger] | None = None,
        name: str | None = None,
        retries: int = 4,
        concurrency: int | opt.Concurrency | Sequence[opt.Concurrency] | None = None,
        throttle: opt.Throttle | None = None,
        rate_limit: opt.RateLimit | None = None,
        debounce: opt.Debounce | None = None,
        batch_events: opt.Batch | None = None,
        cancel: opt.Cancel | Sequence[opt.Cancel] | None = None,
        priority: opt.Priority | None = None,
        idempotency: str | None = None,
        singleton: opt.Singleton | None = None,
        timeouts: opt.Timeouts | None = None,
        limits: opt.Limits | None = None,
        on_failure: Handler | None = None,
        output_type: Any = None,
    ) -> Callable[[Callable[..., Any]], Function[Any]]:
        """Declare a durable function. Async handlers take a `Context`, sync ones a `SyncContext`.

        `limits` raises (or lowers) what its runs may store: see `Limits`."""
        if trigger is None:
            raise ConfigError(
                f"function {id!r} needs a trigger: TriggerEvent('app/event.name') or "
                "TriggerCron('0 * * * *'); use TriggerEvent with a name you invoke it by if it is "
                "only invoked"
            )
        triggers = [trigger] if isinstance(trigger, opt.TriggerEvent | opt.TriggerCron) else trigger
        if isinstance(concurrency, int):
            concurrency = [opt.Concurrency(limit=concurrency)]
        elif isinstance(concurrency, opt.Concurrency):
            concurrency = [concurrency]
        options = _options(
            id=id,
            name=name,
            triggers=list(triggers),
            retries=retries,
            concurrency=list(concurrency) if concurrency is not None else None,
            throttle=throttle,
            rate_limit=rate_limit,
            debounce=debounce,
            batch_events=batch_events,
            cancel=[cancel] if isinstance(cancel, opt.Cancel) else cancel,
            priority=priority,
            idempotency=idempotency,
            singleton=singleton,
            timeouts=timeouts,
            limits=limits,
        )

        def decorate(handler: Callable[..., Any]) -> Function[Any]:
            if not callable(handler):
                raise ConfigError(f"function {id!r}: the decorated object is not callable")
            if options.id in self._functions:
                raise ConfigError(
                    f"function id {options.id!r} is already used in app {self.app_id!r}"
                )
            fn: Function[Any] = Function(self, options, handler, on_failure, output_type)
            self._functions[options.id] = fn
            return fn

        return decorate

    def workflow(
        self,
        path: str,
        *,
        id: str | None = None,
        retries: int = 4,
        limits: opt.Limits | None = None,
        on_failure: Handler | None = None,
    ) -> Callable[[Callable[..., Any]], Function[Any]]:
        """Declare a route workflow served at `path` (a handler taking a workflow context).

        Adapters route `path` to it: `@serve.post(path)` (FastAPI, Starlette),
        `@blueprint.workflow(path)` (Flask), `workflow_view(fn)` (Django).
        """

        def decorate(handler: Callable[..., Any]) -> Function[Any]:
            fn_id = id or routes.workflow_id(path)
            fn = self.function(
                id=fn_id,
                trigger=opt.TriggerEvent(f"{routes.WORKFLOW_EVENT}/{fn_id}"),
                retries=retries,
                limits=limits,
                on_failure=on_failure,
                output_type=_serialize.return_type(handler),
            )(routes.wrap(handler))
            fn.route_path = path
            return fn

        return decorate


def _options(**fields: Any) -> opt.FunctionOptions:
    """Validated options, or a ConfigError naming the first bad field."""
    try:
        options = opt.FunctionOptions(**fields)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"function {fields['id']!r}: {where}: {first['msg']}") from None
    problem = _problem(options)
    if problem is not None:
        raise ConfigError(f"function {options.id!r}: {problem}")
    return options


# The Python names of the options whose wire names differ, for messages.
_PYTHON_NAMES = (
    ("triggers[", "trigger["),
    ("rateLimit", "rate_limit"),
    ("batchEvents", "batch_events"),
    (".if", ".if_"),
)


def _problem(options: opt.FunctionOptions) -> str | None:
    """What the orchestrator would refuse: a wildcard it does not support, or an expression
    that does not compile or uses a variable it does not see (the option named)."""
    for i, trig in enumerate(options.triggers):
        if isinstance(trig, opt.TriggerEvent) and (bad := wildcards.problem(trig.event)):
            return f"trigger[{i}].{bad}"
    for i, cancel in enumerate(options.cancel or []):
        if "*" in cancel.event:
            return f"cancel[{i}].event {cancel.event!r}: a cancel event cannot be a wildcard"
    for where, source, sees in expressions.in_config(options.to_wire()):
        bad = expressions.problem(source, sees)
        if bad is not None:
            for wire, python in _PYTHON_NAMES:
                where = where.replace(wire, python)
            return f"{where}: {bad}"
    return None


__all__ = ["Durable"]
