"""The API's operator actions and summaries, as the dashboard and the CLI use them.

    POST /v1/runs/{run_id}/rerun   optional body {"from_step": "<step id or name>", "output": <any>}
    POST /v1/runs/cancel           {"function_id", "status", "since", "before", "limit"}: bulk
    POST /v1/runs/replay           the same filter: a new run of each matching run
    GET  /v1/functions/stats       per function: runs by status, p50/p95 duration, failure rate

A bulk filter needs at least one of `function_id`, `status`, `since`, `before` (times in ms
since the epoch; `since` inclusive, `before` exclusive) and acts on at most `limit` runs
(default 100, at most 1000), newest first; the answer says how many matched and were acted on.
Function statistics are computed over each function's last 500 runs, at most once every
5 seconds (a dashboard polls them).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import _bounded_json
from .api_http import JsonAnswer, read_body
from .api_input import Problem, no_nul, validation
from .insight import recent_runs
from .rerun import NO_OUTPUT, UnknownStep
from .service import Orchestrator
from .store import RunFilter, RunRecord, RunStatus

__all__ = ["STATS_WINDOW", "OpsApi"]

Handler = Callable[[Request], Awaitable[Response]]
STATS_WINDOW = 500
STATS_FRESH_S = 5.0
BULK_MAX = 1000


class RerunIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    from_step: str | None = pydantic.Field(default=None, min_length=1, max_length=1024)
    output: Any = None


class BulkIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    function_id: str | None = pydantic.Field(default=None, min_length=1, max_length=1024)
    status: RunStatus | None = None
    since: int | None = pydantic.Field(default=None, ge=0)
    before: int | None = pydantic.Field(default=None, ge=0)
    limit: int = pydantic.Field(default=100, ge=1, le=BULK_MAX)


async def _optional_body(request: Request, model: type[pydantic.BaseModel], what: str) -> Any:
    raw = await read_body(request)
    if not raw.strip():
        return model()
    try:
        return model.model_validate(_bounded_json.loads(raw, allow_nul=False))
    except _bounded_json.BadJson as err:
        raise Problem(err.status, f"{what}: {err.where()}") from None
    except pydantic.ValidationError as err:
        raise validation(err, what) from None


def _percentile(sorted_values: list[int], p: float) -> int | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, round(p * (len(sorted_values) - 1)))
    return sorted_values[index]


class OpsApi:
    def __init__(
        self,
        orch: Orchestrator,
        authorize: Callable[[Request], None],
        guard: Callable[[Handler], Handler],
    ) -> None:
        self.orch = orch
        self.authorize = authorize
        self.guard = guard
        self._stats: tuple[float, dict[str, Any]] | None = None

    def routes(self) -> list[Route]:
        return [
            Route("/v1/runs/cancel", self.guard(self.bulk_cancel), methods=["POST"]),
            Route("/v1/runs/replay", self.guard(self.bulk_replay), methods=["POST"]),
            Route("/v1/runs/{run_id}/rerun", self.guard(self.rerun), methods=["POST"]),
            Route("/v1/functions/stats", self.guard(self.stats), methods=["GET"]),
        ]

    async def rerun(self, request: Request) -> Response:
        self.authorize(request)
        run_id = no_nul(str(request.path_params["run_id"]), "run id")
        body: RerunIn = await _optional_body(request, RerunIn, "rerun")
        has_output = "output" in body.model_fields_set
        if has_output and body.from_step is None:
            raise Problem(400, "rerun: `output` replaces a step's result: name it in `from_step`")
        step = no_nul(body.from_step, "from_step")
        try:
            new = await self.orch.rerun(run_id, step, body.output if has_output else NO_OUTPUT)
        except UnknownStep as err:
            raise Problem(400, f"rerun: from_step: {err}") from None
        if new is None:
            raise Problem(404, f"no run {run_id!r}, or its function is no longer registered")
        return JsonAnswer({"run_id": new}, status_code=202)

    async def _matching(self, request: Request) -> tuple[BulkIn, list[RunRecord]]:
        self.authorize(request)
        body: BulkIn = await _optional_body(request, BulkIn, "filter")
        if not body.model_fields_set - {"limit"}:
            raise Problem(400, "filter: give at least one of function_id, status, since, before")
        flt = RunFilter(
            fn_id=no_nul(body.function_id, "function_id"),
            status=body.status,
            limit=body.limit,
            before=body.before,
            since=body.since,
        )
        async with self.orch.store.snapshot() as tx:
            return body, await tx.list_runs(flt)

    async def bulk_cancel(self, request: Request) -> Response:
        body, runs = await self._matching(request)
        cancelled = 0
        for run in runs:
            if run.status.finished:
                continue
            after = await self.orch.cancel(run.run_id, "cancelled in bulk through the API")
            cancelled += after is not None and after.status is RunStatus.CANCELLED
        return JsonAnswer(
            {"matched": len(runs), "cancelled": cancelled, "capped": len(runs) == body.limit}
        )

    async def bulk_replay(self, request: Request) -> Response:
        body, runs = await self._matching(request)
        started = [new for run in runs if (new := await self.orch.rerun(run.run_id))]
        return JsonAnswer({
            "matched": len(runs), "replayed": len(started), "run_ids": started,
            "capped": len(runs) == body.limit,
        }, status_code=202)  # fmt: skip

    async def stats(self, request: Request) -> Response:
        self.authorize(request)
        now = time.monotonic()
        if self._stats is None or now - self._stats[0] > STATS_FRESH_S:
            out = []
            for fn in self.orch.functions.all():
                async with self.orch.store.snapshot() as tx:
                    runs = await recent_runs(tx, fn.fn_id, STATS_WINDOW)
                out.append({"function_id": fn.fn_id, **_summary(runs)})
            self._stats = (now, {"data": out, "window": STATS_WINDOW})
        return JsonAnswer(self._stats[1])


def _summary(runs: list[Any]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    durations = sorted(
        r.ended_at - r.created_at
        for r in runs
        if r.ended_at is not None and r.status in ("completed", "failed")
    )
    ended = counts.get("completed", 0) + counts.get("failed", 0)
    return {
        "runs": len(runs),
        "by_status": counts,
        "p50_ms": _percentile(durations, 0.5),
        "p95_ms": _percentile(durations, 0.95),
        "failure_rate": counts.get("failed", 0) / ended if ended else None,
    }
