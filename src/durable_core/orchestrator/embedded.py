"""Embedded mode: the orchestrator runs inside the app's process, on SQLite under `.durable/`,
calling the app's functions in-process. Adapters start and stop it with the app.

`DURABLE_DIR` moves the directory; `DURABLE_DATABASE_URL` (`postgresql://...`) puts the store in
PostgreSQL instead, where every worker process of the app runs an orchestrator of its own;
`DURABLE_FAST_RETRIES=1` shrinks the retry backoff to 50 ms, 100 ms, ... for development.
`DURABLE_MAX_STEP_OUTPUT`, `DURABLE_MAX_RUN_OUTPUT_TOTAL` and `DURABLE_MAX_STEPS` change the
limits of every function's runs (`durable_core.Limits`).

On SQLite one process of the app owns the store and hosts the orchestrator; the other worker
processes of a multi-process server forward events, invokes and API requests to it over a Unix
socket, and one of them takes over if the host stops.

Without a signing key and without dev mode, a key is generated once and kept in
`.durable/signing-key`, so the app's endpoint still refuses unsigned requests.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
import logging
import os
import secrets
import tempfile
import threading
import weakref
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import httpx
from starlette.types import Receive, Scope, Send

from .. import _bounded_json
from .._execute import run_coroutine_blocking
from ..app import Durable
from ..errors import ConfigError, DurableError, FunctionNotFoundError, StoreLockedError
from ..events import Event
from ..options import Limits
from ..protocol import SDK_NAME
from . import local_socket
from .api import Api, run_json
from .service import DEFAULT_BACKOFF, FAST_BACKOFF, Orchestrator
from .store import open_store
from .store.sqlite import SqliteStore

T = TypeVar("T")
_log = logging.getLogger("durable.orchestrator")
DEFAULT_DIRECTORY = ".durable"
API_PATH = "/durable"
# The host process is gone (its socket refuses, or the connection drops): answer "retry".
_HOST_GONE = (OSError, httpx.TransportError)


def _answer(status: int, message: str) -> local_socket.Answer:
    body = json.dumps({"error": message, "status": status}).encode()
    return status, [("content-type", "application/json")], body


def _checked(data: Any, where: str, doing: str) -> None:
    """Refuse, as the HTTP intake does, what no store keeps: integers beyond +-(2^53-1), NaN,
    nesting past 64 levels, NUL characters."""
    try:
        _bounded_json.check_value(data, max_depth=_bounded_json.MAX_DEPTH - 1, allow_nul=False)
    except _bounded_json.BadJson as err:
        raise DurableError(f"cannot {doing} it: {err.where(where)}") from None


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
    """The orchestrator of one app, in the app's process (or forwarded to the process hosting it)."""

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
        try:
            self.limits = Limits.from_env(os.environ)  # DURABLE_MAX_STEP_OUTPUT, ...
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not durable.dev and not durable.signing_key:
            durable.signing_key = load_or_create_key(self.directory)
        self._reset()
        reset = weakref.WeakMethod(self._reset)
        os.register_at_fork(after_in_child=lambda: (m := reset()) and m())  # a fork starts afresh

    def _reset(self) -> None:
        self.orchestrator: Orchestrator | None = None
        self.forwarding = False  # another process hosts it; this one forwards to its socket
        self._asgi: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._hosted: threading.Thread | None = None
        self._socket: asyncio.AbstractServer | None = None
        self._taking_over: asyncio.Future[None] | None = None

    @property
    def db_path(self) -> str:
        return os.path.join(self.directory, "durable.db")

    @property
    def socket_path(self) -> str:
        digest = hashlib.sha1(os.path.abspath(self.db_path).encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), f"durable-{digest}.sock")

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
            limits=self.limits,
        )
        url = orch.inproc.add(d)
        configs = [cfg for fn in d.functions for cfg in fn.configs(url)]
        await orch.start()
        try:
            await self._register(orch, url, configs)
            if not store.shared:
                self._socket = await local_socket.serve(self.socket_path, self)
        except BaseException:  # leave nothing running: no pool, listener or dispatcher
            await orch.stop()
            raise
        self.orchestrator = orch
        self.forwarding = False
        self._asgi = Api(orch).app()
        d.local = self
        _log.info(
            "embedded orchestrator started (%s, %d functions)",
            self.database or self.db_path,
            len(configs),
        )
        return orch

    async def _register(self, orch: Orchestrator, url: str, configs: list[dict[str, Any]]) -> None:
        await orch.register(
            {
                "appname": self.durable.app_id,
                "url": url,
                "sdk": SDK_NAME,
                "framework": "embedded",
                "functions": configs,
            }
        )

    async def start_or_forward(self) -> bool:
        """Start here, or, if another process owns the SQLite file, forward to it (and take
        over when it stops). True when this process hosts the orchestrator."""
        try:
            await self.start()
        except StoreLockedError:
            self._forward()
            self._taking_over = asyncio.ensure_future(self._take_over())
            return False
        return True

    def _forward(self) -> None:
        _log.info(
            "another process of app %r hosts the embedded orchestrator (%s); this process "
            "forwards events and API requests to it, and takes over if it stops",
            self.durable.app_id,
            self.db_path,
        )
        self.forwarding = True
        self.durable.local = self

    async def stop(self) -> None:
        if self._taking_over is not None:
            self._taking_over.cancel()
            self._taking_over = None
        if self._socket is not None:
            self._socket.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            self._socket = None
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
        SQLite file); this process then forwards to it, and takes over if that one stops.
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
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._hosted = threading.Thread(target=main, name="durable-orchestrator", daemon=True)
        self._hosted.start()
        ready.wait(timeout)
        self._loop = loop
        if failure:
            if not isinstance(failure[0], StoreLockedError):
                raise failure[0]
            self._forward()
            asyncio.run_coroutine_threadsafe(self._take_over(), loop)
            return False
        atexit.register(self.stop_thread)
        return True

    async def _take_over(self, every: float = 2.0) -> None:
        while self.orchestrator is None:
            await asyncio.sleep(every)
            try:
                await self.start()
            except StoreLockedError:
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
    ) -> local_socket.Answer:
        """Answer a request to the orchestrator's API from sync code (path below /durable)."""
        if self.orchestrator is None and self.forwarding:
            return self._forwarded(method, path, query, headers, body)
        return self.call_blocking(local_socket.call_asgi(self, method, path, query, headers, body))

    def _forwarded(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> local_socket.Answer:
        if len(body) > _bounded_json.MAX_BODY:
            return _answer(
                413, f"body too large ({len(body)} bytes; the limit is {_bounded_json.MAX_BODY})"
            )
        try:
            return local_socket.forward(self.socket_path, method, path, query, headers, body)
        except _HOST_GONE as err:
            return self._unreachable(err)

    def _unreachable(self, err: Exception) -> local_socket.Answer:
        msg = f"the process hosting the embedded orchestrator does not answer ({type(err).__name__}: {err}); one of this app's processes takes over within seconds: retry"
        status, headers, body = _answer(503, msg)
        return status, [*headers, ("retry-after", "2")], body

    # -- the client calls of `Durable` ------------------------------------------------------

    def _orch(self) -> Orchestrator:
        if self.orchestrator is None:
            raise DurableError(
                "the embedded orchestrator is not running in this process: start the app first, "
                "or run `durable dev` and set DURABLE_ORCHESTRATOR_URL"
            )
        return self.orchestrator

    async def _forward_json(self, path: str, body: Any, missing: Any = ...) -> Any:
        headers = {"content-type": "application/json", **self.durable.api_headers()}
        try:
            status, _, raw = await local_socket.forward_async(
                self.socket_path, "POST", path, "", headers, json.dumps(body).encode()
            )
        except _HOST_GONE as err:
            raise DurableError(json.loads(self._unreachable(err)[2])["error"]) from None
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"error": raw.decode("utf-8", "replace")[:500]}
        if status == 404 and missing is not ...:
            return missing
        if status >= 400:
            raise DurableError(
                f"the orchestrator answered HTTP {status}: {answer.get('error', answer)}"
            )
        return answer

    async def send(self, events: list[Event]) -> list[str]:
        for i, event in enumerate(events):
            _checked(event.data, f"events[{i}].data" if len(events) > 1 else "event.data", "send")
        if self.orchestrator is None and self.forwarding:
            answer = await self._forward_json("/v1/events", [e.to_wire() for e in events])
            return [str(i) for i in answer["ids"]]
        return await self._orch().send(events)

    async def invoke(self, fn_id: str, body: dict[str, Any]) -> dict[str, Any]:
        _checked(body.get("data"), "data", "invoke")
        if self.orchestrator is None and self.forwarding:
            answer: dict[str, Any] = await self._forward_json(f"/v1/functions/{fn_id}/invoke", body)
            return answer
        orch = self._orch()
        try:
            run_id = await orch.invoke(fn_id, body.get("data") or {})
        except KeyError:
            raise FunctionNotFoundError(f"no function {fn_id!r} is registered") from None
        if not body.get("wait"):
            return {"run_id": run_id}
        run = await orch.wait_for_run(run_id, float(body.get("timeout", 30.0)))
        assert run is not None
        return run_json(run)

    async def signal(self, name: str, data: Any) -> str | None:
        _checked(data, "data", "signal")
        if self.orchestrator is None and self.forwarding:
            answer = await self._forward_json("/v1/signals", {"signal": name, "data": data}, {})
            run_id = answer.get("run_id")
            return None if run_id is None else str(run_id)
        return await self._orch().signal(name, data)

    def call_blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:  # never started here (a forked worker before its first request)
            return run_coroutine_blocking(coro)
        if threading.get_ident() == self._thread:
            coro.close()
            raise DurableError(
                "this blocking call would stall the event loop: in async code use "
                "`await durable.send_async(...)` / `await durable.invoke_async(...)`"
            )
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- the API, mounted in the app --------------------------------------------------------

    async def _forward_asgi(self, scope: Scope, receive: Receive) -> local_socket.Answer:
        chunks: list[bytes] = []
        size, limit = 0, _bounded_json.MAX_BODY
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return _answer(413, f"body too large (over {limit} bytes; the limit is {limit})")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode("latin-1")
        try:
            return await local_socket.forward_async(
                self.socket_path, scope["method"], scope["path"], query, headers, b"".join(chunks)
            )
        except _HOST_GONE as err:
            return self._unreachable(err)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._asgi is not None:
            await self._asgi(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        if self.forwarding:
            status, out, payload = await self._forward_asgi(scope, receive)
        else:
            message = "the embedded orchestrator is not running yet: it starts with the app"
            status, out, payload = _answer(503, message)
        raw = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in out
            if k.lower() != "content-length"
        ]
        raw.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})
