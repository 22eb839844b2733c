"""`Durable`, the app object, and `Function`, one durable function with its options."""

from __future__ import annotations

import inspect
import logging
import os
import urllib.parse
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Generic, Protocol, TypeVar

import httpx
import pydantic

from . import _serialize
from ._steps import Events, _as_events
from .config import (
    Batch,
    Cancel,
    Concurrency,
    Debounce,
    FunctionOptions,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
    Trigger,
    TriggerCron,
    TriggerEvent,
)
from .errors import ConfigError, DurableError
from .events import Event
from .signing import hashed_signing_key

T = TypeVar("T")
Handler = Callable[[Any], Any]

FAILED_EVENT = "inngest/function.failed"
DEFAULT_ORCHESTRATOR_URL = "http://127.0.0.1:8288"
SDK_NAME = "durable-py"
SDK_VERSION = "0.1.0"


def _env_flag(name: str) -> bool | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: use 1/true/yes or 0/false/no")


class Function(Generic[T]):
    """A durable function: a handler plus its options. Serve it with an adapter."""

    def __init__(
        self,
        app: Durable,
        options: FunctionOptions,
        handler: Handler,
        on_failure: Handler | None = None,
        output_type: Any = None,
    ) -> None:
        self.app = app
        self.options = options
        self.handler = handler
        self.on_failure = on_failure
        self.output_type = (
            output_type if output_type is not None else _serialize.return_type(handler)
        )
        self.route_path: str | None = None  # set for route workflows: the route serves it

    @property
    def local_id(self) -> str:
        return self.options.id

    @property
    def id(self) -> str:
        return f"{self.app.app_id}-{self.options.id}"

    @property
    def failure_id(self) -> str | None:
        return f"{self.id}-failure" if self.on_failure is not None else None

    @property
    def name(self) -> str:
        return self.options.name or self.options.id

    def handler_for(self, fn_id: str) -> Handler | None:
        if fn_id == self.id:
            return self.handler
        if self.on_failure is not None and fn_id == self.failure_id:
            return self.on_failure
        return None

    def configs(self, serve_url: str) -> list[dict[str, Any]]:
        """The FunctionConfig objects registered for this function (and its on_failure)."""
        if self.route_path and serve_url.startswith(("http://", "https://")):
            parts = urllib.parse.urlsplit(serve_url)
            serve_url = urllib.parse.urlunsplit(
                (parts.scheme, parts.netloc, self.route_path, "", "")
            )
        opts = self.options.to_wire()
        retries = opts.pop("retries")
        opts.pop("id")
        main: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            **opts,
            "steps": _steps_config(serve_url, self.id, retries),
        }
        out = [main]
        if self.failure_id is not None:
            out.append(
                {
                    "id": self.failure_id,
                    "name": f"{self.name} (failure)",
                    "triggers": [
                        {
                            "event": FAILED_EVENT,
                            "expression": f"event.data.function_id == '{self.id}'",
                        }
                    ],
                    "steps": _steps_config(serve_url, self.failure_id, 0),
                }
            )
        return out


def _steps_config(serve_url: str, fn_id: str, retries: int) -> dict[str, Any]:
    query = urllib.parse.urlencode({"fnId": fn_id, "stepId": "step"})
    return {
        "step": {
            "id": "step",
            "name": "step",
            "retries": {"attempts": retries},
            "runtime": {"type": "http", "url": f"{serve_url}?{query}"},
        }
    }


class Durable:
    """The app: its functions, keys and mode. Arguments win over `DURABLE_*` environment variables.

    - `signing_key` / `DURABLE_SIGNING_KEY`, `signing_key_fallback` / `DURABLE_SIGNING_KEY_FALLBACK`
    - `event_key` / `DURABLE_EVENT_KEY`
    - `orchestrator_url` / `DURABLE_ORCHESTRATOR_URL`
    - `dev` / `DURABLE_DEV`: dev mode skips signature checks; it must be asked for explicitly.
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
    ) -> None:
        if not app_id or any(c.isspace() for c in app_id):
            raise ConfigError(f"app_id {app_id!r} must be a non-empty string without spaces")
        self.app_id = app_id
        self.signing_key = signing_key or os.environ.get("DURABLE_SIGNING_KEY") or None
        self.signing_key_fallback = (
            signing_key_fallback or os.environ.get("DURABLE_SIGNING_KEY_FALLBACK") or None
        )
        self.event_key = event_key or os.environ.get("DURABLE_EVENT_KEY") or None
        url = orchestrator_url or os.environ.get("DURABLE_ORCHESTRATOR_URL") or None
        self.orchestrator_url_configured = url is not None
        self.orchestrator_url = (url or DEFAULT_ORCHESTRATOR_URL).rstrip("/")
        env_dev = _env_flag("DURABLE_DEV")
        self.dev = dev if dev is not None else bool(env_dev)
        self.serve_origin = serve_origin or os.environ.get("DURABLE_SERVE_ORIGIN") or None
        self.logger = logger or logging.getLogger("durable")
        self._functions: dict[str, Function[Any]] = {}
        self.local: LocalOrchestrator | None = None

    @property
    def functions(self) -> list[Function[Any]]:
        return list(self._functions.values())

    def function(
        self,
        *,
        id: str,
        trigger: Trigger | Sequence[Trigger] | None = None,
        name: str | None = None,
        retries: int = 4,
        concurrency: int | Concurrency | Sequence[Concurrency] | None = None,
        throttle: Throttle | None = None,
        rate_limit: RateLimit | None = None,
        debounce: Debounce | None = None,
        batch_events: Batch | None = None,
        cancel: Cancel | Sequence[Cancel] | None = None,
        priority: Priority | None = None,
        idempotency: str | None = None,
        singleton: Singleton | None = None,
        timeouts: Timeouts | None = None,
        on_failure: Handler | None = None,
        output_type: Any = None,
    ) -> Callable[[Callable[..., Any]], Function[Any]]:
        """Declare a durable function. Async handlers take a `Context`, sync ones a `SyncContext`."""
        if trigger is None:
            raise ConfigError(
                f"function {id!r} needs a trigger: TriggerEvent('app/event.name') or "
                "TriggerCron('0 * * * *'); use TriggerEvent with a name you invoke it by if it is "
                "only invoked"
            )
        triggers = [trigger] if isinstance(trigger, TriggerEvent | TriggerCron) else trigger
        if isinstance(concurrency, int):
            concurrency = [Concurrency(limit=concurrency)]
        elif isinstance(concurrency, Concurrency):
            concurrency = [concurrency]
        try:
            options = FunctionOptions(
                id=id,
                name=name,
                triggers=list(triggers),
                retries=retries,
                concurrency=list(concurrency) if concurrency is not None else None,
                throttle=throttle,
                rate_limit=rate_limit,
                debounce=debounce,
                batch_events=batch_events,
                cancel=[cancel] if isinstance(cancel, Cancel) else cancel,
                priority=priority,
                idempotency=idempotency,
                singleton=singleton,
                timeouts=timeouts,
            )
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"function {id!r}: {where}: {first['msg']}") from None

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
        on_failure: Handler | None = None,
    ) -> Callable[[Callable[..., Any]], Function[Any]]:
        """Declare a route workflow served at `path` (a handler taking a workflow context).

        Adapters route `path` to it: `@serve.post(path)` (FastAPI, Starlette),
        `@blueprint.workflow(path)` (Flask), `workflow_view(fn)` (Django).
        """
        from .workflow import WORKFLOW_EVENT, workflow_id, wrap

        def decorate(handler: Callable[..., Any]) -> Function[Any]:
            fn_id = id or workflow_id(path)
            fn = self.function(
                id=fn_id,
                trigger=TriggerEvent(f"{WORKFLOW_EVENT}/{fn_id}"),
                retries=retries,
                on_failure=on_failure,
                output_type=_serialize.return_type(handler),
            )(wrap(handler))
            fn.route_path = path
            return fn

        return decorate

    def find(self, fn_id: str) -> tuple[Function[Any], Handler] | None:
        """The function (and handler: main or on_failure) registered under a full id."""
        for fn in self._functions.values():
            handler = fn.handler_for(fn_id)
            if handler is not None:
                return fn, handler
        return None

    # -- client calls -----------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.orchestrator_url}{path}"

    def _event_path(self) -> str:
        key = self.event_key or ("dev" if self.dev or self.local is not None else None)
        if key is None:
            raise ConfigError(
                "cannot send events without an event key: set DURABLE_EVENT_KEY, or use dev mode"
            )
        return f"/e/{urllib.parse.quote(key, safe='')}"

    def _api_headers(self) -> dict[str, str]:
        if not self.signing_key:
            return {}
        return {"authorization": f"Bearer {hashed_signing_key(self.signing_key)}"}

    @staticmethod
    def _answer(response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text}
        if response.status_code >= 400:
            message = body.get("error") if isinstance(body, dict) else body
            raise DurableError(f"the orchestrator answered HTTP {response.status_code}: {message}")
        return body

    async def _post(self, path: str, body: Any) -> Any:
        async with httpx.AsyncClient(timeout=None) as client:
            return self._answer(
                await client.post(self._url(path), json=body, headers=self._api_headers())
            )

    def _post_sync(self, path: str, body: Any) -> Any:
        with httpx.Client(timeout=None) as client:
            return self._answer(
                client.post(self._url(path), json=body, headers=self._api_headers())
            )

    async def send_async(self, events: Events) -> list[str]:
        """Send one event or several; returns their ids."""
        batch = _as_events(events)
        if self.local is not None:
            return await self.local.send(batch)
        answer = await self._post(self._event_path(), [e.to_wire() for e in batch])
        return [str(i) for i in answer["ids"]]

    def send(self, events: Events) -> list[str]:
        """Send one event or several from sync code; returns their ids."""
        batch = _as_events(events)
        if self.local is not None:
            return self.local.call_blocking(self.local.send(batch))
        answer = self._post_sync(self._event_path(), [e.to_wire() for e in batch])
        return [str(i) for i in answer["ids"]]

    def _invoke_args(
        self, function: Function[Any] | str, data: dict[str, Any] | None, wait: bool, timeout: float
    ) -> tuple[str, dict[str, Any]]:
        fn_id = function.id if isinstance(function, Function) else function
        if not fn_id.startswith(f"{self.app_id}-") and self.find(f"{self.app_id}-{fn_id}"):
            fn_id = f"{self.app_id}-{fn_id}"
        return fn_id, {"data": data or {}, "wait": wait, "timeout": timeout}

    @staticmethod
    def _invoked(answer: dict[str, Any], wait: bool) -> Any:
        if not wait:
            return answer["run_id"]
        status = answer.get("status")
        if status == "completed":
            return answer.get("output")
        if status in ("failed", "cancelled"):
            error = answer.get("error") or {}
            raise RunFailedError(answer["run_id"], status, error)
        raise TimeoutError(f"run {answer.get('run_id')} did not finish in time (status {status})")

    async def invoke_async(
        self,
        function: Function[Any] | str,
        data: dict[str, Any] | None = None,
        *,
        wait: bool = True,
        timeout: float = 30.0,
    ) -> Any:
        """Start a run of `function` with `data`: its output when `wait`, else the run id."""
        fn_id, body = self._invoke_args(function, data, wait, timeout)
        if self.local is not None:
            return self._invoked(await self.local.invoke(fn_id, body), wait)
        return self._invoked(await self._post(f"/v1/functions/{fn_id}/invoke", body), wait)

    def invoke(
        self,
        function: Function[Any] | str,
        data: dict[str, Any] | None = None,
        *,
        wait: bool = True,
        timeout: float = 30.0,
    ) -> Any:
        """`invoke_async` for sync code."""
        fn_id, body = self._invoke_args(function, data, wait, timeout)
        if self.local is not None:
            return self._invoked(self.local.call_blocking(self.local.invoke(fn_id, body)), wait)
        return self._invoked(self._post_sync(f"/v1/functions/{fn_id}/invoke", body), wait)


class RunFailedError(DurableError):
    """An invoked run failed or was cancelled; `error` is its error payload."""

    retriable = False

    def __init__(self, run_id: str, status: str, error: dict[str, Any]) -> None:
        super().__init__(
            f"run {run_id} {status}: {error.get('name', 'Error')}: {error.get('message', '')}"
        )
        self.run_id = run_id
        self.status = status
        self.error = error


class LocalOrchestrator(Protocol):
    """What an orchestrator in this process offers the client calls (embedded mode)."""

    async def send(self, events: list[Event]) -> list[str]: ...
    async def invoke(self, fn_id: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def call_blocking(self, coro: Coroutine[Any, Any, T]) -> T: ...


def is_async(handler: Handler) -> bool:
    target: Any = handler
    while hasattr(target, "func"):
        target = target.func
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004
    )


__all__ = ["Durable", "Event", "Function"]
