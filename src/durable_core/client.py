"""`Client`: how an app talks to its orchestrator (send events, invoke functions).

Over HTTP to `orchestrator_url`, or straight to an orchestrator in this process (embedded
mode, `local`). `Durable`, the app, is a client.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Coroutine
from typing import Any, Protocol, TypedDict, TypeVar, Unpack

import httpx

from .errors import (
    ConfigError,
    DurableError,
    FunctionNotFoundError,
    RunFailedError,
    WaitTimeoutError,
)
from .events import Event, Events, as_events
from .function import Function
from .signing import hashed_signing_key
from .types import Handler, JSONObject

T = TypeVar("T")

DEFAULT_ORCHESTRATOR_URL = "http://127.0.0.1:8288"


class LocalOrchestrator(Protocol):
    """What an orchestrator in this process offers the client calls (embedded mode)."""

    async def send(self, events: list[Event]) -> list[str]: ...
    async def invoke(self, fn_id: str, body: dict[str, Any]) -> dict[str, Any]: ...
    async def signal(self, name: str, data: Any) -> str | None: ...
    def call_blocking(self, coro: Coroutine[Any, Any, T]) -> T: ...


def env_flag(name: str) -> bool | None:
    """A boolean environment variable; None when unset or empty."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: use 1/true/yes or 0/false/no")


class Invoke(TypedDict, total=False):
    """How `invoke` waits: `wait` for the run to finish (default True), for at most `timeout`
    seconds (default 30)."""

    wait: bool
    timeout: float


class Client:
    """Sends events and invokes functions for app `app_id`. Arguments win over `DURABLE_*`."""

    def __init__(
        self,
        app_id: str,
        *,
        signing_key: str | None = None,
        event_key: str | None = None,
        orchestrator_url: str | None = None,
        dev: bool | None = None,
    ) -> None:
        if not app_id or any(c.isspace() for c in app_id):
            raise ConfigError(f"app_id {app_id!r} must be a non-empty string without spaces")
        self.app_id = app_id
        self.signing_key = signing_key or os.environ.get("DURABLE_SIGNING_KEY") or None
        self.event_key = event_key or os.environ.get("DURABLE_EVENT_KEY") or None
        url = orchestrator_url or os.environ.get("DURABLE_ORCHESTRATOR_URL") or None
        self.orchestrator_url_configured = url is not None
        self.orchestrator_url = (url or DEFAULT_ORCHESTRATOR_URL).rstrip("/")
        env_dev = env_flag("DURABLE_DEV")
        self.dev = dev if dev is not None else bool(env_dev)
        self.local: LocalOrchestrator | None = None

    def find(self, fn_id: str) -> tuple[Function[Any], Handler] | None:
        """The function of this app registered under a full id; the app knows them."""
        return None

    # -- plumbing ---------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.orchestrator_url}{path}"

    def _event_path(self) -> str:
        key = self.event_key or ("dev" if self.dev or self.local is not None else None)
        if key is None:
            raise ConfigError(
                "cannot send events without an event key: set DURABLE_EVENT_KEY, or use dev mode"
            )
        return f"/e/{urllib.parse.quote(key, safe='')}"

    def api_headers(self) -> dict[str, str]:
        """How the app authenticates to the orchestrator's `/v1` API."""
        if not self.signing_key:
            return {}
        return {"authorization": f"Bearer {hashed_signing_key(self.signing_key)}"}

    @staticmethod
    def _answer(response: httpx.Response, fn_id: str | None = None) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text}
        if response.status_code >= 400:
            message = body.get("error") if isinstance(body, dict) else body
            text = f"the orchestrator answered HTTP {response.status_code}: {message}"
            if fn_id is not None and response.status_code == 404:
                raise FunctionNotFoundError(text)
            raise DurableError(text)
        return body

    async def _post(self, path: str, body: Any, fn_id: str | None = None) -> Any:
        async with httpx.AsyncClient(timeout=None) as client:
            response = await client.post(self._url(path), json=body, headers=self.api_headers())
            return self._answer(response, fn_id)

    def _post_sync(self, path: str, body: Any, fn_id: str | None = None) -> Any:
        with httpx.Client(timeout=None) as client:
            response = client.post(self._url(path), json=body, headers=self.api_headers())
            return self._answer(response, fn_id)

    # -- events -----------------------------------------------------------------------------

    async def send_async(self, events: Events) -> list[str]:
        """Send one event or several; returns their ids."""
        batch = as_events(events)
        if self.local is not None:
            return await self.local.send(batch)
        answer = await self._post(self._event_path(), [e.to_wire() for e in batch])
        return [str(i) for i in answer["ids"]]

    def send(self, events: Events) -> list[str]:
        """Send one event or several from sync code; returns their ids."""
        batch = as_events(events)
        if self.local is not None:
            return self.local.call_blocking(self.local.send(batch))
        answer = self._post_sync(self._event_path(), [e.to_wire() for e in batch])
        return [str(i) for i in answer["ids"]]

    # -- signals ----------------------------------------------------------------------------

    def _signaled(self, response: httpx.Response) -> str | None:
        if response.status_code == 404 and "waiting for signal" in response.text:
            return None
        return str(self._answer(response)["run_id"])

    async def signal_async(self, name: str, data: Any = None) -> str | None:
        """Resume the run waiting for signal `name` (`ctx.step.wait_for_signal`) with `data`;
        returns its run id, or None when no run waits for it."""
        if self.local is not None:
            return await self.local.signal(name, data)
        async with httpx.AsyncClient(timeout=None) as client:
            body = {"signal": name, "data": data}
            url, headers = self._url("/v1/signals"), self.api_headers()
            return self._signaled(await client.post(url, json=body, headers=headers))

    def signal(self, name: str, data: Any = None) -> str | None:
        """`signal_async` for sync code."""
        if self.local is not None:
            return self.local.call_blocking(self.local.signal(name, data))
        with httpx.Client(timeout=None) as client:
            body = {"signal": name, "data": data}
            url, headers = self._url("/v1/signals"), self.api_headers()
            return self._signaled(client.post(url, json=body, headers=headers))

    # -- invokes ----------------------------------------------------------------------------

    def _invoke_args(
        self, function: Function[Any] | str, data: JSONObject | None, how: Invoke
    ) -> tuple[str, dict[str, Any], bool]:
        fn_id = function.id if isinstance(function, Function) else function
        if not fn_id.startswith(f"{self.app_id}-") and self.find(f"{self.app_id}-{fn_id}"):
            fn_id = f"{self.app_id}-{fn_id}"
        wait = how.get("wait", True)
        return fn_id, {"data": data or {}, "wait": wait, "timeout": how.get("timeout", 30.0)}, wait

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
        raise WaitTimeoutError(
            f"run {answer.get('run_id')} did not finish in time (status {status})"
        )

    async def invoke_async(
        self, function: Function[Any] | str, data: JSONObject | None = None, **how: Unpack[Invoke]
    ) -> Any:
        """Start a run of `function` with `data`: its output when `wait`, else the run id.

        Raises FunctionNotFoundError when the orchestrator has no such function, RunFailedError
        when the run fails, and WaitTimeoutError when it does not finish within `timeout`.
        """
        fn_id, body, wait = self._invoke_args(function, data, how)
        if self.local is not None:
            return self._invoked(await self.local.invoke(fn_id, body), wait)
        path = f"/v1/functions/{fn_id}/invoke"
        return self._invoked(await self._post(path, body, fn_id), wait)

    def invoke(
        self, function: Function[Any] | str, data: JSONObject | None = None, **how: Unpack[Invoke]
    ) -> Any:
        """`invoke_async` for sync code."""
        fn_id, body, wait = self._invoke_args(function, data, how)
        if self.local is not None:
            return self._invoked(self.local.call_blocking(self.local.invoke(fn_id, body)), wait)
        path = f"/v1/functions/{fn_id}/invoke"
        return self._invoked(self._post_sync(path, body, fn_id), wait)


__all__ = ["DEFAULT_ORCHESTRATOR_URL", "Client", "LocalOrchestrator", "env_flag"]
