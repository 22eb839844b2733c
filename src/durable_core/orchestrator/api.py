"""The orchestrator's HTTP API (a Starlette app).

    POST /fn/register                      an app's function configs
    POST /e/{event_key}                    one event or an array
    GET  /v1/apps, /v1/functions
    GET  /v1/runs?function_id=&status=&limit=&cursor=   (`next_cursor` of the page before)
    GET  /v1/runs/{run_id}                 the run with its steps, outputs, errors, attempts, timings
    POST /v1/runs/{run_id}/cancel
    POST /v1/runs/{run_id}/rerun, /v1/runs/cancel, /v1/runs/replay; GET /v1/functions/stats
                                           operator actions (`api_ops.py`)
    GET  /, /static/..., POST /login       the dashboard (`dashboard.py`)
    GET  /v1/events?name=&limit=&cursor=;  POST /v1/events
    POST /v1/functions/{function_id}/invoke   {"data": {...}, "wait": bool, "timeout": seconds}
    POST /v1/signals                       {"signal": name, "data": ...}
    POST /v1/checkpoint, /v1/checkpoint/{run_id}/steps   runs of durable endpoints (`api_endpoints`)
    POST /v1/checkpoint/{run_id}/async     steps of a request in flight (`api_checkpoint.py`)

Every error is JSON, `{"error": "...", "status": N}` naming the problem: 400 for a bad body or
parameter, 413 for a body over 10 MiB, 404 for an unknown id, 401 without the right key, 503
(with `retry-after`) while the database cannot be reached. With a signing key configured,
/fn/register and /v1 need `Authorization: Bearer <hashed key>` (or the dashboard's session
cookie) and /e/ needs a known event
key; both are checked before the body is read. Bodies are read within the limits of
`_bounded_json` (size, 64 levels of nesting, integers within +-(2^53-1), no NaN, no NUL in any
text), and ids and query parameters holding a NUL character are refused (400) on every store.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import pydantic
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import signing
from .api_checkpoint import CheckpointApi
from .api_endpoints import EndpointCheckpoints
from .api_http import MAX_BODY, JsonAnswer, guarded, http_exception, read_json
from .api_input import (
    InvokeIn,
    Problem,
    RegisterIn,
    SignalIn,
    check_function,
    make_cursor,
    no_nul,
    parse_cursor,
    parse_events,
    validation,
)
from .api_ops import OpsApi
from .dashboard import Dashboard, session_problem
from .insight import children, waiting_on
from .service import Orchestrator
from .store import EventFilter, HistoryRecord, RunFilter, RunRecord, RunStatus
from .sync_problems import SyncProblems, named_app

__all__ = ["MAX_BODY", "Api", "run_json"]


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC).isoformat(timespec="milliseconds")


def _duration(start: int | None, end: int | None) -> int | None:
    return None if start is None or end is None else end - start


def _queue_delay(queued: int | None, started: int) -> int | None:
    return None if queued is None else max(0, started - queued)


def run_json(run: RunRecord, steps: list[HistoryRecord] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "run_id": run.run_id,
        "function_id": run.fn_id,
        "app_id": run.app_id,
        "status": run.status.value,
        "reason": run.reason,
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "ended_at": _iso(run.ended_at),
        "duration_ms": _duration(run.created_at, run.ended_at),
        "event": run.events[0] if run.events else None,
        "output": run.output,
        "error": run.error,
        "parent_run_id": run.parent_run_id,
    }
    if steps is not None:
        out["events"] = run.events
        out["steps"] = [
            {
                "id": s.step,
                "name": s.name,
                "op": s.op,
                "attempt": s.attempt,
                "started_at": _iso(s.started_at),
                "ended_at": _iso(s.ended_at),
                "duration_ms": _duration(s.started_at, s.ended_at),
                "queued_at": _iso(s.queued_at),
                "queue_delay_ms": _queue_delay(s.queued_at, s.started_at),
                "output": s.output,
                "error": s.error,
            }
            for s in steps
        ]
    return out


M = TypeVar("M", bound=pydantic.BaseModel)


async def read_model(request: Request, model: type[M], what: str) -> M:
    """The body as `model`, or a 400 naming `what` and the first field that does not fit."""
    try:
        return model.model_validate(await read_json(request, what))
    except pydantic.ValidationError as err:
        raise validation(err, what) from None


class Api:
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        #: Registrations stored, and why the last one was refused (for `durable dev`, whose
        #: sync cannot trust an SDK's answer: some answer 200 after a refused registration).
        self.registrations = 0
        self.last_refusal: str | None = None
        self.sync_problems = SyncProblems()

    def routes(self) -> list[Route]:
        return [
            # First: an app posts one checkpoint per step, and routes are matched in order.
            *CheckpointApi(self.orch, self._authorize).routes(),
            *OpsApi(self.orch, self._authorize, self._guarded).routes(),
            Route("/fn/register", self._guarded(self.register), methods=["POST"]),
            Route("/e/{event_key}", self._guarded(self.events_in), methods=["POST"]),
            Route("/v1/apps", self._guarded(self.apps), methods=["GET"]),
            Route("/v1/functions", self._guarded(self.functions), methods=["GET"]),
            Route(
                "/v1/functions/{function_id}/invoke", self._guarded(self.invoke), methods=["POST"]
            ),
            Route("/v1/runs", self._guarded(self.runs), methods=["GET"]),
            Route("/v1/runs/{run_id}", self._guarded(self.run), methods=["GET"]),
            Route("/v1/runs/{run_id}/cancel", self._guarded(self.cancel), methods=["POST"]),
            Route("/v1/events", self._guarded(self.events), methods=["GET", "POST"]),
            Route("/v1/signals", self._guarded(self.signal), methods=["POST"]),
            Route("/health", self._guarded(self.health), methods=["GET"]),
            *EndpointCheckpoints(self.orch, self._authorize, self._guarded).routes(),
            *Dashboard(self.orch.signing_key, self._guarded).routes(),
        ]

    def app(
        self, lifespan: Callable[[Any], AbstractAsyncContextManager[None]] | None = None
    ) -> Starlette:
        """The API as an app of its own: unknown paths and methods answered as JSON too."""
        return Starlette(
            routes=self.routes(),
            exception_handlers={HTTPException: http_exception},
            lifespan=lifespan,
        )

    def served(self, beside: Callable[[], Coroutine[Any, Any, None]] | None = None) -> Starlette:
        """The API as `durable dev` and `durable start` serve it: the orchestrator starts and
        stops with the app, and `beside()` (if given) runs while it serves."""
        orch = self.orch

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            await orch.start()
            task = asyncio.create_task(beside()) if beside is not None else None
            try:
                yield
            finally:
                if task is not None:
                    task.cancel()
                await orch.stop()

        return self.app(lifespan=lifespan)

    # -- helpers ----------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        key = self.orch.signing_key
        if key is None:
            return
        expected = f"Bearer {signing.hashed_signing_key(key)}"
        given = request.headers.get("authorization", "")
        if hmac.compare_digest(given.encode(), expected.encode()):
            return
        if not given and (problem := session_problem(request, key)) != "no session":
            if problem is None:
                return
            raise Problem(403 if "header" in problem else 401, problem)
        raise Problem(
            401,
            "missing or wrong Authorization: send 'Bearer <sha256 of the signing key>'"
            " (or log in to the dashboard)",
        )

    @staticmethod
    def _int(
        request: Request, name: str, default: int | None, lo: int = 0, hi: int = 10**15
    ) -> int | None:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise Problem(400, f"query parameter {name}={raw!r} must be an integer") from None
        if not lo <= value <= hi:
            raise Problem(400, f"query parameter {name}={value} must be between {lo} and {hi}")
        return value

    def _guarded(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        return guarded(self.orch.store, handler)

    # -- endpoints --------------------------------------------------------------------------

    async def register(self, request: Request) -> Response:
        self._authorize(request)
        raw: Any = None
        try:
            raw = await read_json(request, "registration")
            try:
                body = RegisterIn.model_validate(raw)
            except pydantic.ValidationError as err:
                raise validation(err, "registration") from None
            for fn in body.functions:
                check_function(fn)
        except Problem as problem:
            self.last_refusal = str(problem)
            self.sync_problems.failed(named_app(raw), str(problem))
            raise
        modified = await self.orch.register(body.model_dump(mode="json"))
        self.registrations += 1
        self.sync_problems.cleared(body.appname, body.url)
        return JsonAnswer({"ok": True, "modified": modified})

    async def events_in(self, request: Request) -> Response:
        keys = self.orch.event_keys
        if keys is not None and request.path_params["event_key"] not in keys:
            raise Problem(
                401, "unknown event key: use one of the keys the orchestrator was started with"
            )
        return await self._send(request)

    async def _send(self, request: Request) -> Response:
        try:
            events = parse_events(await read_json(request, None))
        except ValueError as err:
            raise Problem(400, str(err)) from None
        ids = await self.orch.send(events)
        return JsonAnswer({"ids": ids, "status": 200})

    async def apps(self, request: Request) -> Response:
        self._authorize(request)
        async with self.orch.store.snapshot() as tx:
            apps = await tx.list_apps()
        return JsonAnswer({"data": [
            {"app_id": a.app_id, "url": a.url, "sdk": a.sdk, "framework": a.framework, "updated_at": _iso(a.updated_at)}
            for a in apps
        ], "last_sync_error": self.last_refusal, "sync_errors": [
            {"app": app, "error": why, "at": _iso(at)} for app, why, at in self.sync_problems.listing()
        ]})  # fmt: skip

    async def functions(self, request: Request) -> Response:
        self._authorize(request)
        fns = self.orch.functions.all()
        return JsonAnswer({"data": [
            {"function_id": f.fn_id, "app_id": f.app_id, "name": f.name, "triggers": f.config.get("triggers"), "config": f.config}
            for f in fns
        ]})  # fmt: skip

    async def invoke(self, request: Request) -> Response:
        self._authorize(request)
        fn_id = no_nul(request.path_params["function_id"], "function id")
        body = await read_model(request, InvokeIn, "invoke")
        try:
            run_id = await self.orch.invoke(fn_id, body.data)
        except KeyError:
            known = ", ".join(self.orch.functions.ids()) or "none"
            raise Problem(404, f"no function {fn_id!r} (registered: {known})") from None
        if not body.wait:
            return JsonAnswer({"run_id": run_id}, status_code=202)
        run = await self.orch.wait_for_run(run_id, body.timeout)
        assert run is not None
        return JsonAnswer(run_json(run), status_code=200 if run.status.finished else 202)

    async def runs(self, request: Request) -> Response:
        self._authorize(request)
        status = request.query_params.get("status")
        if status is not None and status not in RunStatus.__members__.values():
            names = ", ".join(s.value for s in RunStatus)
            raise Problem(400, f"unknown status {status!r}: use one of {names}")
        flt = RunFilter(
            fn_id=no_nul(request.query_params.get("function_id"), "function_id") or None,
            status=RunStatus(status) if status else None,
            limit=self._int(request, "limit", 50, 1, 1000) or 50,
            before=self._int(request, "before", None),
            after=parse_cursor(request.query_params.get("cursor")),
            since=self._int(request, "since", None),
            event_id=no_nul(request.query_params.get("event_id"), "event_id") or None,
        )
        async with self.orch.store.snapshot() as tx:
            runs = await tx.list_runs(flt)
        page: dict[str, Any] = {"data": [run_json(r) for r in runs]}
        if len(runs) == flt.limit:  # a full page: there may be more
            page["next_cursor"] = make_cursor(runs[-1].created_at, runs[-1].run_id)
        return JsonAnswer(page)

    async def _get_run(self, run_id: str) -> tuple[RunRecord, list[HistoryRecord]]:
        async with self.orch.store.snapshot() as tx:
            run = await tx.get_run(run_id)
            history = await tx.get_history(run_id) if run else []
        if run is None:
            raise Problem(404, f"no run {run_id!r}")
        return run, history

    def _run_id(self, request: Request) -> str:
        """The authorized request's run id (from its path)."""
        self._authorize(request)
        return no_nul(str(request.path_params["run_id"]), "run id")

    async def run(self, request: Request) -> Response:
        run, history = await self._get_run(self._run_id(request))
        out = run_json(run, history)
        async with self.orch.store.snapshot() as tx:
            out["waiting_on"] = [] if run.status.finished else await waiting_on(tx, run.run_id)
            out["children"] = await children(tx, run.run_id)
        return JsonAnswer(out)

    async def cancel(self, request: Request) -> Response:
        run_id = self._run_id(request)
        if (run := await self.orch.cancel(run_id)) is None:
            raise Problem(404, f"no run {run_id!r}")
        return JsonAnswer(run_json(run))

    async def events(self, request: Request) -> Response:
        self._authorize(request)
        if request.method == "POST":
            return await self._send(request)
        limit = self._int(request, "limit", 50, 1, 1000) or 50
        name = no_nul(request.query_params.get("name"), "name")
        before = self._int(request, "before", None)
        after = parse_cursor(request.query_params.get("cursor"))
        async with self.orch.store.snapshot() as tx:
            rows = await tx.list_events(EventFilter(name, limit, before, after))
        page: dict[str, Any] = {"data": [
            {"internal_id": e.internal_id, "id": e.event_id, "name": e.name, "data": e.data, "ts": e.ts, "received_at": _iso(e.received_at)}
            for e in rows
        ]}  # fmt: skip
        if len(rows) == limit:
            page["next_cursor"] = make_cursor(rows[-1].received_at, rows[-1].internal_id)
        return JsonAnswer(page)

    async def signal(self, request: Request) -> Response:
        self._authorize(request)
        body = await read_model(request, SignalIn, "signal")
        run_id = await self.orch.signal(body.signal, body.data)
        if run_id is None:
            raise Problem(404, f"no run is waiting for signal {body.signal!r}")
        # `data.run_id` too: the TypeScript SDK's `step.sendSignal` reads it there.
        return JsonAnswer({"run_id": run_id, "data": {"run_id": run_id}})

    async def health(self, request: Request) -> Response:
        return JsonAnswer({"ok": True})
