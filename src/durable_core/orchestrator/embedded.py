"""Embedded mode: the orchestrator runs inside the app's process, on SQLite under `.durable/`,
calling the app's functions in-process. Adapters start and stop it with the app.

`DURABLE_DIR` moves the directory; `DURABLE_DATABASE_URL` (`postgresql://...`) puts the store in
PostgreSQL instead, where every worker process of the app can run its own orchestrator; `DURABLE_FAST_RETRIES=1` shrinks the retry backoff to
50 ms, 100 ms, ... for development and tests.

Without a signing key and without dev mode, a key is generated once and kept in
`.durable/signing-key`, so the app's endpoint still refuses unsigned requests.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from starlette.types import Receive, Scope, Send

from ..errors import ConfigError, DurableError
from ..events import Event
from ..function import Durable
from .api import Api, run_json
from .core import DEFAULT_BACKOFF, FAST_BACKOFF
from .runtime import Orchestrator
from .sqlite_store import SqliteStore
from .stores import open_store

T = TypeVar("T")
_log = logging.getLogger("durable.orchestrator")
DEFAULT_DIRECTORY = ".durable"
API_PATH = "/durable"


def load_or_create_key(directory: str) -> str:
    path = os.path.join(directory, "signing-key")
    if os.path.exists(path):
        with open(path) as fh:
            return fh.read().strip()
    os.makedirs(directory, exist_ok=True)
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


class Embedded:
    """The orchestrator of one app, in the app's process."""

    def __init__(
        self,
        durable: Durable,
        *,
        directory: str | None = None,
        backoff: Sequence[float] | None = None,
        concurrency: int = 64,
        database: str | None = None,
    ) -> None:
        self.durable = durable
        self.database = database or os.environ.get("DURABLE_DATABASE_URL") or None
        self.directory = directory or os.environ.get("DURABLE_DIR") or DEFAULT_DIRECTORY
        fast = os.environ.get("DURABLE_FAST_RETRIES", "").lower() in ("1", "true", "yes")
        self.backoff = backoff if backoff is not None else FAST_BACKOFF if fast else DEFAULT_BACKOFF
        self.concurrency = concurrency
        if not durable.dev and not durable.signing_key:
            durable.signing_key = load_or_create_key(self.directory)
        self.orchestrator: Orchestrator | None = None
        self._asgi: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._hosted: threading.Thread | None = None

    @property
    def db_path(self) -> str:
        return os.path.join(self.directory, "durable.db")

    async def start(self) -> Orchestrator:
        d = self.durable
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        production = not d.dev
        store = open_store(self.database) if self.database else SqliteStore(self.db_path)
        orch = Orchestrator(
            store,
            signing_key=d.signing_key if production else None,
            event_keys=([d.event_key] if d.event_key else []) if production else None,
            backoff=self.backoff,
            concurrency=self.concurrency,
        )
        url = orch.inproc.add(d)
        configs = [cfg for fn in d.functions for cfg in fn.configs(url)]
        await orch.start()
        await orch.register(
            {
                "appname": d.app_id,
                "url": url,
                "sdk": "durable-py",
                "framework": "embedded",
                "functions": configs,
            }
        )
        self.orchestrator = orch
        self._asgi = Api(orch).app()
        d.local = self
        _log.info("embedded orchestrator started (%s, %d functions)", self.db_path, len(configs))
        return orch

    async def stop(self) -> None:
        if self.orchestrator is not None:
            await self.orchestrator.stop()
            self.orchestrator = None
        self._asgi = None
        if self.durable.local is self:
            self.durable.local = None

    # -- hosted on a thread of its own (WSGI apps: Flask, Django) ----------------------------

    def start_in_thread(self, timeout: float = 30.0) -> bool:
        """Run the orchestrator on a daemon thread with its own event loop.

        Returns False when another process of the app already hosts it (one process owns the
        SQLite file); this process then serves requests and takes over if that one stops.
        """
        if self._loop is not None:
            return self.orchestrator is not None
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as err:
                failure.append(err)
            finally:
                ready.set()
            loop.run_forever()

        self._hosted = threading.Thread(target=main, name="durable-orchestrator", daemon=True)
        self._hosted.start()
        ready.wait(timeout)
        self._loop = loop
        if failure:
            if not isinstance(failure[0], ConfigError):
                raise failure[0]
            _log.warning(
                "%s; this process serves requests and will take over if it stops", failure[0]
            )
            self.durable.local = self
            asyncio.run_coroutine_threadsafe(self._take_over(), loop)
            return False
        atexit.register(self.stop_thread)
        return True

    async def _take_over(self, every: float = 2.0) -> None:
        while self.orchestrator is None:
            await asyncio.sleep(every)
            try:
                await self.start()
            except ConfigError:
                continue
            _log.info("this process now hosts the embedded orchestrator")
            atexit.register(self.stop_thread)

    def stop_thread(self) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._hosted is not None:
            self._hosted.join(10)
        self._loop = None

    def call_api(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Answer a request to the orchestrator's API from sync code (path below /durable)."""
        return self.call_blocking(self._asgi_call(method, path, query, headers, body))

    async def _asgi_call(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method.upper(),
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": query.encode(),
            "headers": [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
            ],
            "client": None,
            "server": None,
        }
        sent = False
        status, out_headers, chunks = 500, list[tuple[str, str]](), list[bytes]()

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await (
                    asyncio.Event().wait()
                )  # no more body: wait for the disconnect that never comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                out_headers.extend(
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in message.get("headers", [])
                )
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self(scope, receive, send)  # type: ignore[arg-type]
        return status, out_headers, b"".join(chunks)

    # -- the client calls of `Durable` ------------------------------------------------------

    def _orch(self) -> Orchestrator:
        if self.orchestrator is None:
            raise DurableError(
                "the embedded orchestrator is not running in this process (not started yet, or "
                f"another process of the app hosts it on {self.db_path}); send from that process, "
                "run a single worker, or run `durable dev` and set DURABLE_ORCHESTRATOR_URL"
            )
        return self.orchestrator

    async def send(self, events: list[Event]) -> list[str]:
        return await self._orch().send(events)

    async def invoke(self, fn_id: str, body: dict[str, Any]) -> dict[str, Any]:
        orch = self._orch()
        try:
            run_id = await orch.invoke(fn_id, body.get("data") or {})
        except KeyError:
            raise DurableError(f"no function {fn_id!r} is registered") from None
        if not body.get("wait"):
            return {"run_id": run_id}
        run = await orch.wait_for_run(run_id, float(body.get("timeout", 30.0)))
        assert run is not None
        return run_json(run)

    def call_blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise DurableError("the embedded orchestrator is not running: start the app first")
        if threading.get_ident() == self._thread:
            coro.close()
            raise DurableError(
                "this blocking call would stall the event loop: in async code use "
                "`await durable.send_async(...)` / `await durable.invoke_async(...)`"
            )
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- the API, mounted in the app --------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._asgi is None:
            if scope["type"] != "http":
                return
            body = json.dumps({"error": "the embedded orchestrator is not running yet"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self._asgi(scope, receive, send)
