"""`Function`: one durable function, its handler, its options and what it registers."""

from __future__ import annotations

import logging
import urllib.parse
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from . import _serialize
from .options import FunctionOptions
from .protocol import SystemEvent
from .types import Handler

if TYPE_CHECKING:
    from .tracing import Tracing

T = TypeVar("T")


class App(Protocol):
    """What a function needs from the app that declared it (a `Durable`)."""

    @property
    def app_id(self) -> str: ...
    @property
    def logger(self) -> logging.Logger: ...
    @property
    def tracing(self) -> Tracing: ...
    def find(self, fn_id: str) -> tuple[Function[Any], Handler] | None: ...


class Function(Generic[T]):
    """A durable function: a handler plus its options. Serve it with an adapter."""

    def __init__(
        self,
        app: App,
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

    @property
    def max_attempts(self) -> int:
        """Requests a run of the main handler gets: the first one plus its retries."""
        return self.options.retries + 1

    def attempts_of(self, handler: Handler) -> int:
        """The default attempts for `handler`: `on_failure` handlers are not retried."""
        return self.max_attempts if handler is self.handler else 1

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
                    # No flow control of its own, spelt as inngest-py spells it.
                    "cancel": [],
                    "concurrency": [],
                    "triggers": [
                        {
                            "event": SystemEvent.FUNCTION_FAILED,
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


__all__ = ["App", "Function"]
