"""The store's hot paths on their own: microseconds per transaction of enqueue, claim,
lock_run + update_run, put_memo and checkpoint, on SQLite (a file, and in memory) and PostgreSQL.

    .venv/bin/python benchmarks/bench_store.py            # all three stores
    .venv/bin/python benchmarks/bench_store.py --stores sqlite,memory --cpu

Each figure is the median (and the minimum) over the repetitions; `--cpu` measures this
process's CPU time instead of wall time, which a busy machine disturbs less.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

from durable_core.orchestrator.store import (
    HistoryRecord,
    ItemKind,
    RunRecord,
    RunStatus,
    Store,
    now_ms,
    open_store,
)

LEASE = 30_000
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"

Body = Callable[[int], Awaitable[object]]


def bodies(store: Store, runs: list[str]) -> dict[str, Body]:
    async def enqueue(i: int) -> None:
        async with store.transaction() as tx:
            await tx.enqueue(runs[i], ItemKind.STEP, step=f"s{i}", payload={"n": i})

    async def claim(_: int) -> None:
        async with store.transaction() as tx:
            await tx.claim(now_ms(), 1, LEASE)

    async def lock_update(i: int) -> None:
        async with store.transaction() as tx:
            await tx.lock_run(runs[i])
            await tx.update_run(runs[i], status=RunStatus.RUNNING, reason=None)

    async def put_memo(i: int) -> None:
        async with store.transaction() as tx:
            await tx.put_memo(runs[i], "s", {"data": i})

    async def checkpoint(i: int) -> None:
        now = now_ms()
        rec = HistoryRecord(runs[i], "c", "c", "StepRun", 0, now, now, {"data": i})
        await store.checkpoint(rec, {"data": i})

    return {
        "enqueue": enqueue,
        "claim": claim,
        "lock_run+update_run": lock_update,
        "put_memo": put_memo,
        "checkpoint": checkpoint,
    }


async def one_round(store: Store, n: int, tag: str, clock: Callable[[], float]) -> dict[str, float]:
    runs = [f"{tag}-r{i}" for i in range(n)]
    async with store.transaction() as tx:
        for run_id in runs:
            run = RunRecord(run_id, "app-f", "app", RunStatus.RUNNING, [{"name": "x"}], now_ms())
            await tx.insert_run(run)
    figures = {}
    for name, body in bodies(store, runs).items():
        t0 = clock()
        for i in range(n):
            await body(i)
        figures[name] = (clock() - t0) * 1e6 / n
    async with store.transaction() as tx:  # claimed items left leased would slow later claims
        for run_id in runs:
            await tx.clear_run(run_id)
    return figures


async def measure(
    url: str, n: int, reps: int, clock: Callable[[], float]
) -> dict[str, list[float]]:
    store = open_store(url)
    await store.open()
    figures: dict[str, list[float]] = {}
    try:
        await one_round(store, 50, "warm-up", clock)
        for rep in range(reps):
            for name, us in (await one_round(store, n, f"rep{rep}", clock)).items():
                figures.setdefault(name, []).append(us)
    finally:
        await store.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", default="sqlite,memory,postgres")
    parser.add_argument("--n", type=int, default=1000, help="transactions per figure and round")
    parser.add_argument("--reps", type=int, default=5, help="rounds")
    parser.add_argument("--cpu", action="store_true", help="CPU time, not wall time")
    parser.add_argument("--url", default=os.environ.get("DURABLE_BENCH_POSTGRES_URL", DEFAULT_PG))
    args = parser.parse_args()
    clock = time.process_time if args.cpu else time.perf_counter
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for kind in args.stores.split(","):
        root = tempfile.mkdtemp(prefix="durable-bench-store-")
        schema = f"bench_store_{uuid.uuid4().hex[:8]}"
        urls = {"sqlite": f"sqlite:///{root}/bench.db", "memory": ":memory:"}
        url = urls.get(kind, f"{args.url}{'&' if '?' in args.url else '?'}schema={schema}")
        try:
            figures = asyncio.run(measure(url, args.n, args.reps, clock))
        finally:
            shutil.rmtree(root, ignore_errors=True)
            if kind == "postgres":
                import psycopg

                with psycopg.connect(args.url, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        print(f"{kind}: µs per transaction, median (min) of {args.reps} x {args.n}")
        for name, values in figures.items():
            print(f"  {name:22} {statistics.median(values):8.1f} ({min(values):.1f})")


if __name__ == "__main__":
    main()
