"""The dashboard's API reads with 100,000 runs in the store (SQLite, or PostgreSQL with --pg).

    .venv/bin/python benchmarks/bench_dashboard.py [--runs 100000] [--pg postgresql://...]

Fills a fresh store with runs of 20 functions (a tenth failed, some sleeping, each with a few
history rows), then times each read the dashboard makes on a refresh, through the API app in
process (no sockets): the median of 20 calls, in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from typing import Any

import httpx

from durable_core.orchestrator.api import Api
from durable_core.orchestrator.service import Orchestrator
from durable_core.orchestrator.store import HistoryRecord, RunRecord, RunStatus, open_store

FUNCTIONS = 20


def _status(i: int) -> RunStatus:
    if i % 10 == 0:
        return RunStatus.FAILED
    return RunStatus.SLEEPING if i % 997 == 0 else RunStatus.COMPLETED


async def fill(orch: Orchestrator, count: int) -> None:
    start = int(time.time() * 1000) - count * 10
    batch = 2000
    for first in range(0, count, batch):
        async with orch.store.transaction() as tx:
            for i in range(first, min(first + batch, count)):
                at = start + i * 10
                run_id = f"run-{i:08d}"
                event = {"name": "bench/go", "data": {"n": i}, "id": f"ev-{i:08d}", "ts": at}
                status = _status(i)
                ended = None if status is RunStatus.SLEEPING else at + 50 + i % 400
                rec = RunRecord(run_id, f"bench-f{i % FUNCTIONS}", "bench", status, [event], at,
                                at, ended)  # fmt: skip
                await tx.insert_run(rec)
                for n in range(3):
                    await tx.add_history(HistoryRecord(run_id, f"s{n}", f"step-{n}", "StepRun",
                                                       0, at + n, at + n + 5, n))  # fmt: skip


async def timed(client: httpx.AsyncClient, path: str, repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = await client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        assert res.status_code == 200, (path, res.text)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--pg", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = (
            args.pg + f"?schema=bench_{uuid.uuid4().hex[:8]}"
            if args.pg
            else f"sqlite:///{tmp}/b.db"
        )
        orch = Orchestrator(open_store(url))
        await orch.store.open()
        t0 = time.perf_counter()
        await fill(orch, args.runs)
        print(f"filled {args.runs} runs in {time.perf_counter() - t0:.1f} s ({url.split(':')[0]})")
        configs: list[dict[str, Any]] = [
            {"id": f"bench-f{f}", "triggers": [{"event": "bench/go"}],
             "steps": {"step": {"runtime": {"url": "http://x"}}}}
            for f in range(FUNCTIONS)
        ]  # fmt: skip
        await orch.register({"appname": "bench", "functions": configs})
        transport = httpx.ASGITransport(app=Api(orch).app())
        old = f"ev-{args.runs // 2:08d}"
        since = int(time.time() * 1000) - 3_600_000
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for path in [
                "/v1/runs?limit=50",
                "/v1/runs?limit=50&status=failed",
                "/v1/runs?limit=50&status=sleeping",
                "/v1/runs?limit=50&function_id=bench-f3",
                f"/v1/runs?limit=50&since={since}",
                f"/v1/runs?limit=50&event_id=ev-{args.runs - 5:08d}",
                f"/v1/runs?limit=50&event_id={old}",
                "/v1/runs/run-00050000",
                "/v1/functions/stats",
            ]:
                print(f"{await timed(client, path):8.2f} ms  GET {path}")
        await orch.store.close()


if __name__ == "__main__":
    asyncio.run(main())
