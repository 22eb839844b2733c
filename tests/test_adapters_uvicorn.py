"""The FastAPI and Starlette adapters under real uvicorn: runs driven to completion over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from conftest import FRAMEWORKS, SERVE_PATH, UvicornServer, build_app, exec_body
from durable_core import Context, Durable, SyncContext, TriggerEvent

RUNS = 20
# Each request settles in milliseconds; the timeout only turns a hang into a failure.
HTTP_TIMEOUT = 5.0


async def double_later(n: int) -> int:
    await asyncio.sleep(0)
    return n * 2


def make_durable() -> Durable:
    d = Durable("loop", dev=True)

    @d.function(id="triple", trigger=TriggerEvent("loop/triple"))
    async def triple(ctx: Context) -> dict[str, Any]:
        n = ctx.event.data["n"]
        first = await ctx.step.run("first", double_later, n)
        left, right = await asyncio.gather(
            ctx.step.run("left", lambda: first + 1),
            ctx.step.run("right", double_later, first),
        )
        return {"n": n, "total": left + right, "run_id": ctx.run_id}

    @d.function(id="triple-sync", trigger=TriggerEvent("loop/triple-sync"))
    def triple_sync(ctx: SyncContext) -> dict[str, Any]:
        n = ctx.event.data["n"]
        first = ctx.step.run("first", lambda: n * 3)
        left, right = ctx.step.parallel(
            lambda: ctx.step.run("left", lambda: first + 1),
            lambda: ctx.step.run("right", lambda: first + 2),
        )
        return {"n": n, "total": left + right, "run_id": ctx.run_id}

    return d


EXPECTED_TOTAL: dict[str, Callable[[int], int]] = {
    # first = 2n; left = 2n + 1; right = 4n
    "loop-triple": lambda n: 6 * n + 1,
    # first = 3n; left = 3n + 1; right = 3n + 2
    "loop-triple-sync": lambda n: 6 * n + 3,
}


class MiniOrchestrator:
    """Drives one run the way the orchestrator does: discover, run planned steps, memoize."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url

    async def _post(self, fn_id: str, step: str, body: dict[str, Any]) -> httpx.Response:
        res = await self.client.post(self.url, params={"fnId": fn_id, "stepId": step}, json=body)
        assert res.headers["x-inngest-req-version"] == "2"
        return res

    async def _run_planned(
        self, fn_id: str, op: dict[str, Any], body: dict[str, Any]
    ) -> tuple[str, Any]:
        res = await self._post(fn_id, op["id"], body)
        assert res.status_code == 206, res.text
        [ran] = res.json()
        assert (ran["op"], ran["id"]) == ("StepRun", op["id"])
        return ran["id"], {"data": ran["data"]}

    async def run(self, fn_id: str, n: int, run_id: str) -> tuple[Any, int]:
        event = {"name": "loop/x", "data": {"n": n}}
        steps: dict[str, Any] = {}
        for requests in range(1, 20):
            body = exec_body(event, steps=steps, run_id=run_id)
            res = await self._post(fn_id, "step", body)
            if res.status_code == 200:
                return res.json(), requests
            assert res.status_code == 206, res.text
            ops = res.json()
            planned = [op for op in ops if op["op"] == "StepPlanned"]
            for op in ops:
                if op["op"] == "StepRun":
                    steps[op["id"]] = {"data": op["data"]}
                else:
                    assert op["op"] == "StepPlanned", op
            done = await asyncio.gather(*(self._run_planned(fn_id, op, body) for op in planned))
            steps.update(done)
        raise AssertionError(f"run {run_id} did not finish")


@pytest.fixture(params=FRAMEWORKS)
def base_url(request: pytest.FixtureRequest, uvicorn_server: Callable[[Any], UvicornServer]) -> str:
    return uvicorn_server(build_app(request.param, make_durable())).base_url


@pytest.mark.parametrize("fn_id", sorted(EXPECTED_TOTAL))
async def test_one_run_over_http(base_url: str, fn_id: str) -> None:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        intro = await client.get(base_url + SERVE_PATH)
        assert intro.status_code == 200
        assert intro.json()["function_count"] == 2
        output, requests = await MiniOrchestrator(client, base_url + SERVE_PATH).run(
            fn_id, 7, "run-one"
        )
    assert output == {"n": 7, "total": EXPECTED_TOTAL[fn_id](7), "run_id": "run-one"}
    # Run "first"; plan "left" and "right"; return.
    assert requests == 3


@pytest.mark.parametrize("fn_id", sorted(EXPECTED_TOTAL))
async def test_concurrent_runs_over_http(base_url: str, fn_id: str) -> None:
    limits = httpx.Limits(max_connections=RUNS * 2)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=limits) as client:
        orchestrator = MiniOrchestrator(client, base_url + SERVE_PATH)
        results = await asyncio.gather(
            *(orchestrator.run(fn_id, n, f"run-{n}") for n in range(RUNS))
        )
    for n, (output, _requests) in enumerate(results):
        assert output == {"n": n, "total": EXPECTED_TOTAL[fn_id](n), "run_id": f"run-{n}"}


async def test_both_kinds_interleaved_over_http(base_url: str) -> None:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        orchestrator = MiniOrchestrator(client, base_url + SERVE_PATH)
        jobs = [(fn_id, n) for n in range(RUNS // 2) for fn_id in sorted(EXPECTED_TOTAL)]
        results = await asyncio.gather(
            *(orchestrator.run(fn_id, n, f"{fn_id}-{n}") for fn_id, n in jobs)
        )
    for (fn_id, n), (output, _requests) in zip(jobs, results, strict=True):
        assert output == {"n": n, "total": EXPECTED_TOTAL[fn_id](n), "run_id": f"{fn_id}-{n}"}


@pytest.mark.parametrize("fn_id", sorted(EXPECTED_TOTAL))
async def test_unreached_step_id_answers_instead_of_hanging(base_url: str, fn_id: str) -> None:
    """A stepId the replay never reaches (changed code, stale plan) is a non-retriable 500."""
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        res = await client.post(
            base_url + SERVE_PATH,
            params={"fnId": fn_id, "stepId": "0" * 40},
            json=exec_body({"name": "loop/x", "data": {"n": 1}}),
        )
    assert res.status_code == 500
    assert res.headers["x-inngest-no-retry"] == "true"
    assert res.json()["name"] == "NonDeterminismError"
