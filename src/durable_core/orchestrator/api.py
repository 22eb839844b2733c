"""The orchestrator's HTTP API (a Starlette app).

    POST /fn/register                      an app's function configs
    POST /e/{event_key}                    one event or an array
    GET  /v1/apps, /v1/functions
    GET  /v1/runs?function_id=&status=&limit=&before=
    GET  /v1/runs/{run_id}                 the run with its steps, outputs, errors, attempts, timings
    POST /v1/runs/{run_id}/cancel, /v1/runs/{run_id}/rerun
    GET  /v1/events?name=&limit=&before=;  POST /v1/events
    POST /v1/functions/{function_id}/invoke   {"data": {...}, "wait": bool, "timeout": seconds}
    POST /v1/signals                       {"signal": name, "data": ...}

Bad ids give 404 and bad bodies 400, each with `{"error": "..."}` naming the problem. With a
signing key configured, /fn/register and /v1 need `Authorization: Bearer <hashed key>` and
/e/ needs a known event key.
"""

from __future__ import annotations

import datetime as _dt
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import signing
from .api_input import (
    InvokeIn,
    Problem,
    RegisterIn,
    SignalIn,
    check_function,
    parse_events,
    refuse_nul,
    validation,
)
from .service import Orchestrator
from .store import HistoryRecord, RunFilter, RunRecord, RunStatus

MAX_BODY = 10 * 1024 * 1024


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC).isoformat(timespec="milliseconds")


def _duration(start: int | None, end: int | None) -> int | None:
    return None if start is None or end is None else end - start


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
                "output": s.output,
                "error": s.error,
            }
            for s in steps
        ]
    return out


class Api:
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch

    def routes(self) -> list[Route]:
        return [
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
            Route("/v1/runs/{run_id}/rerun", self._guarded(self.rerun), methods=["POST"]),
            Route("/v1/events", self._guarded(self.events), methods=["GET", "POST"]),
            Route("/v1/signals", self._guarded(self.signal), methods=["POST"]),
            Route("/health", self._guarded(self.health), methods=["GET"]),
        ]

    def app(self) -> Starlette:
        return Starlette(routes=self.routes())

    # -- helpers ----------------------------------------------------------------------------

    async def _json(self, request: Request) -> Any:
        body = await request.body()
        if len(body) > MAX_BODY:
            raise Problem(413, f"body too large ({len(body)} bytes; the limit is {MAX_BODY})")
        if not body.strip():
            raise Problem(400, "empty body: send JSON")
        try:
            value = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise Problem(400, f"body is not valid JSON: {err}") from None
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError as err:
            bad = err.object[err.start : err.end]
            raise Problem(
                400, f"body holds text that is not valid Unicode ({err.reason}): {bad!r}"
            ) from None
        return value

    def _authorize(self, request: Request) -> None:
        key = self.orch.signing_key
        if key is None:
            return
        expected = f"Bearer {signing.hashed_signing_key(key)}"
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Problem(
                401, "missing or wrong Authorization: send 'Bearer <sha256 of the signing key>'"
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

    @staticmethod
    def _guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except Problem as problem:
                return JSONResponse({"error": str(problem)}, status_code=problem.status)

        return endpoint

    # -- endpoints --------------------------------------------------------------------------

    async def register(self, request: Request) -> Response:
        self._authorize(request)
        try:
            raw = await self._json(request)
            body = RegisterIn.model_validate(raw)
        except pydantic.ValidationError as err:
            raise validation(err, "registration") from None
        refuse_nul(raw, "registration")
        for fn in body.functions:
            check_function(fn)
        modified = await self.orch.register(body.model_dump(mode="json"))
        return JSONResponse({"ok": True, "modified": modified})

    async def events_in(self, request: Request) -> Response:
        keys = self.orch.event_keys
        if keys is not None and request.path_params["event_key"] not in keys:
            raise Problem(
                401, "unknown event key: use one of the keys the orchestrator was started with"
            )
        return await self._send(request)

    async def _send(self, request: Request) -> Response:
        try:
            events = parse_events(await self._json(request))
        except ValueError as err:
            raise Problem(400, str(err)) from None
        ids = await self.orch.send(events)
        return JSONResponse({"ids": ids, "status": 200})

    async def apps(self, request: Request) -> Response:
        self._authorize(request)
        async with self.orch.store.snapshot() as tx:
            apps = await tx.list_apps()
        return JSONResponse({"data": [
            {"app_id": a.app_id, "url": a.url, "sdk": a.sdk, "framework": a.framework, "updated_at": _iso(a.updated_at)}
            for a in apps
        ]})  # fmt: skip

    async def functions(self, request: Request) -> Response:
        self._authorize(request)
        fns = self.orch.functions.all()
        return JSONResponse({"data": [
            {"function_id": f.fn_id, "app_id": f.app_id, "name": f.name, "triggers": f.config.get("triggers"), "config": f.config}
            for f in fns
        ]})  # fmt: skip

    async def invoke(self, request: Request) -> Response:
        self._authorize(request)
        fn_id = request.path_params["function_id"]
        try:
            body = InvokeIn.model_validate(await self._json(request))
        except pydantic.ValidationError as err:
            raise validation(err, "invoke") from None
        try:
            run_id = await self.orch.invoke(fn_id, body.data)
        except KeyError:
            known = ", ".join(self.orch.functions.ids()) or "none"
            raise Problem(404, f"no function {fn_id!r} (registered: {known})") from None
        if not body.wait:
            return JSONResponse({"run_id": run_id}, status_code=202)
        run = await self.orch.wait_for_run(run_id, body.timeout)
        assert run is not None
        return JSONResponse(run_json(run), status_code=200 if run.status.finished else 202)

    async def runs(self, request: Request) -> Response:
        self._authorize(request)
        status = request.query_params.get("status")
        if status is not None and status not in RunStatus.__members__.values():
            names = ", ".join(s.value for s in RunStatus)
            raise Problem(400, f"unknown status {status!r}: use one of {names}")
        flt = RunFilter(
            fn_id=request.query_params.get("function_id") or None,
            status=RunStatus(status) if status else None,
            limit=self._int(request, "limit", 50, 1, 1000) or 50,
            before=self._int(request, "before", None),
        )
        async with self.orch.store.snapshot() as tx:
            runs = await tx.list_runs(flt)
        return JSONResponse({"data": [run_json(r) for r in runs]})

    async def _get_run(self, run_id: str) -> tuple[RunRecord, list[HistoryRecord]]:
        async with self.orch.store.snapshot() as tx:
            run = await tx.get_run(run_id)
            history = await tx.get_history(run_id) if run else []
        if run is None:
            raise Problem(404, f"no run {run_id!r}")
        return run, history

    async def run(self, request: Request) -> Response:
        self._authorize(request)
        run, history = await self._get_run(request.path_params["run_id"])
        return JSONResponse(run_json(run, history))

    async def cancel(self, request: Request) -> Response:
        self._authorize(request)
        run_id = request.path_params["run_id"]
        run = await self.orch.cancel(run_id)
        if run is None:
            raise Problem(404, f"no run {run_id!r}")
        return JSONResponse(run_json(run))

    async def rerun(self, request: Request) -> Response:
        self._authorize(request)
        run_id = request.path_params["run_id"]
        new = await self.orch.rerun(run_id)
        if new is None:
            raise Problem(404, f"no run {run_id!r}, or its function is no longer registered")
        return JSONResponse({"run_id": new}, status_code=202)

    async def events(self, request: Request) -> Response:
        self._authorize(request)
        if request.method == "POST":
            return await self._send(request)
        limit = self._int(request, "limit", 50, 1, 1000) or 50
        async with self.orch.store.snapshot() as tx:
            rows = await tx.list_events(
                request.query_params.get("name"), limit, self._int(request, "before", None)
            )
        return JSONResponse({"data": [
            {"internal_id": e.internal_id, "id": e.event_id, "name": e.name, "data": e.data, "ts": e.ts, "received_at": _iso(e.received_at)}
            for e in rows
        ]})  # fmt: skip

    async def signal(self, request: Request) -> Response:
        self._authorize(request)
        try:
            body = SignalIn.model_validate(await self._json(request))
        except pydantic.ValidationError as err:
            raise validation(err, "signal") from None
        refuse_nul(body.signal, "signal")
        run_id = await self.orch.signal(body.signal, body.data)
        if run_id is None:
            raise Problem(404, f"no run is waiting for signal {body.signal!r}")
        return JSONResponse({"run_id": run_id})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})
