"""Embedded mode on SQLite against DBOS on its SQLite system database, doing the same work.

    .venv/bin/python benchmarks/bench_sqlite.py            # the full run (one to two minutes)
    .venv/bin/python benchmarks/bench_sqlite.py --quick    # a smaller run (about ten seconds)
    .venv/bin/python benchmarks/bench_sqlite.py --profile  # also profile our 1,000-step run

Each system gets a fresh database in a new temporary directory, removed at the end. Four
measurements, in one process, one system after the other:

1. ms per step: the wall time of a function running 1,000 trivial steps, divided by 1,000
   (median of several repetitions).
2. runs per second: N one-step runs started at once, until the last one has completed; then
   the same with a concurrency limit of 8 (DBOS: a queue with that global concurrency).
3. start latency: from sending an event (DBOS: calling `start_workflow`) to the first step's
   body running, over sequential runs; p50 and p95.

DBOS runs with the storage settings of our store (WAL, synchronous=NORMAL), the like-for-like
comparison, and, except with --quick, as shipped (SQLite's rollback journal, synchronous=FULL:
an fsync per commit). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import io
import math
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from durable_core import Context, Durable, TriggerEvent
from durable_core.orchestrator.embedded import Embedded

try:
    import sqlalchemy as sa
    from dbos import DBOS
except ImportError:  # pragma: no cover - printed for people running the script
    sys.exit("DBOS is not installed: .venv/bin/python -m pip install -e '.[bench]'")

STEPS = 1_000
TARGET = 0.5
LIMIT = 8  # the concurrency limit of the flow-controlled runs


@dataclasses.dataclass
class Settings:
    reps: int
    runs: int
    events: int


FULL = Settings(reps=5, runs=500, events=200)
QUICK = Settings(reps=2, runs=100, events=50)


@dataclasses.dataclass
class Figures:
    ms_per_step: list[float] = dataclasses.field(default_factory=list)
    runs_per_s: float = 0.0
    limited_runs_per_s: float = 0.0
    latency_ms: list[float] = dataclasses.field(default_factory=list)

    @property
    def step_median(self) -> float:
        return statistics.median(self.ms_per_step)

    @property
    def ms_per_run(self) -> float:
        return 1000.0 / self.runs_per_s

    @property
    def ms_per_limited_run(self) -> float:
        """NaN when this set-up did not measure limited runs (PostgreSQL has no such row)."""
        return 1000.0 / self.limited_runs_per_s if self.limited_runs_per_s else math.nan

    def latency(self, q: float) -> float:
        ordered = sorted(self.latency_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# Written by the first step of the latency functions of both systems: key -> perf_counter().
STARTED: dict[str, float] = {}


def trivial() -> int:
    return 1


def mark(key: str) -> int:
    STARTED[key] = time.perf_counter()
    return 1


# -- ours: embedded mode ----------------------------------------------------------------------

durable = Durable("bench", dev=True)


@durable.function(id="many", trigger=TriggerEvent("bench/many"), retries=0)
async def many(ctx: Context) -> int:
    total = 0
    for _ in range(int(ctx.event.data["steps"])):
        total += await ctx.step.run("s", trivial)
    return total


@durable.function(id="one", trigger=TriggerEvent("bench/one"), retries=0)
async def one(ctx: Context) -> int:
    return await ctx.step.run("s", trivial)


@durable.function(id="limited", trigger=TriggerEvent("bench/limited"), retries=0, concurrency=LIMIT)
async def limited(ctx: Context) -> int:
    return await ctx.step.run("s", trivial)


@durable.function(id="ping", trigger=TriggerEvent("bench/ping"), retries=0)
async def ping(ctx: Context) -> int:
    return await ctx.step.run("s", mark, str(ctx.event.data["key"]))


class Finished:
    """Futures resolved when a given number of runs of a function have finished."""

    def __init__(self) -> None:
        self.waiting: dict[str, tuple[int, asyncio.Future[None]]] = {}
        self.failed: list[Any] = []

    def expect(self, fn_id: str, count: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[fn_id] = (count, fut)
        return fut

    def __call__(self, kind: str, details: dict[str, Any]) -> None:
        if kind != "run" or details["fn_id"] not in self.waiting:
            return
        if details["status"] != "completed":
            self.failed.append(details)
        left, fut = self.waiting[details["fn_id"]]
        if left <= 1:
            del self.waiting[details["fn_id"]]
            if not fut.done():
                fut.set_result(None)
        else:
            self.waiting[details["fn_id"]] = (left - 1, fut)


async def ours(settings: Settings, directory: str, profile: cProfile.Profile | None) -> Figures:
    figures = Figures()
    emb = Embedded(durable, directory=directory)
    orch = await emb.start()
    finished = Finished()
    orch.on_change(finished)
    try:
        # Warm-up: first queries, imports and caches.
        await durable.invoke_async(many, {"steps": 50}, wait=True, timeout=600)

        for _ in range(settings.reps):
            t0 = time.perf_counter()
            out = await durable.invoke_async(many, {"steps": STEPS}, wait=True, timeout=600)
            figures.ms_per_step.append((time.perf_counter() - t0) * 1000 / STEPS)
            assert out == STEPS, out

        done = finished.expect(one.id, settings.runs)
        t0 = time.perf_counter()
        await durable.send_async(
            [{"name": "bench/one", "data": {"i": i}} for i in range(settings.runs)]
        )
        await asyncio.wait_for(done, 600)
        figures.runs_per_s = settings.runs / (time.perf_counter() - t0)

        done = finished.expect(limited.id, settings.runs)
        t0 = time.perf_counter()
        await durable.send_async(
            [{"name": "bench/limited", "data": {"i": i}} for i in range(settings.runs)]
        )
        await asyncio.wait_for(done, 600)
        figures.limited_runs_per_s = settings.runs / (time.perf_counter() - t0)

        for i in range(settings.events):
            key = f"ours-{i}"
            done = finished.expect(ping.id, 1)
            t0 = time.perf_counter()
            await durable.send_async({"name": "bench/ping", "data": {"key": key}})
            await asyncio.wait_for(done, 60)
            figures.latency_ms.append((STARTED.pop(key) - t0) * 1000)

        if finished.failed:
            raise RuntimeError(f"runs failed: {finished.failed[:3]}")

        if profile is not None:
            profile.enable()
            await durable.invoke_async(many, {"steps": STEPS}, wait=True, timeout=600)
            profile.disable()
    finally:
        await emb.stop()
    return figures


# -- DBOS -------------------------------------------------------------------------------------

# Set while the like-for-like variant runs: DBOS's own connection set-up runs, then these.
_MATCHED_PRAGMAS = False


@sa.event.listens_for(sa.engine.Engine, "connect")
def _storage_settings(dbapi_conn: Any, _record: Any) -> None:
    if _MATCHED_PRAGMAS and isinstance(dbapi_conn, sqlite3.Connection):
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")


@DBOS.step()
def dbos_trivial() -> int:
    return 1


@DBOS.step()
def dbos_mark(key: str) -> int:
    return mark(key)


@DBOS.workflow()
def dbos_many(steps: int) -> int:
    total = 0
    for _ in range(steps):
        total += dbos_trivial()
    return total


@DBOS.workflow()
def dbos_one(i: int) -> int:
    return dbos_trivial()


@DBOS.workflow()
def dbos_ping(key: str) -> int:
    return dbos_mark(key)


def dbos(settings: Settings, directory: str, matched: bool) -> Figures:
    global _MATCHED_PRAGMAS
    _MATCHED_PRAGMAS = matched
    figures = Figures()
    DBOS(
        config={
            "name": "bench",
            "system_database_url": f"sqlite:///{directory}/dbos.sqlite",
            "run_admin_server": False,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    try:
        DBOS.start_workflow(dbos_many, 50).get_result()  # warm-up

        for _ in range(settings.reps):
            t0 = time.perf_counter()
            out = DBOS.start_workflow(dbos_many, STEPS).get_result()
            figures.ms_per_step.append((time.perf_counter() - t0) * 1000 / STEPS)
            assert out == STEPS, out

        t0 = time.perf_counter()
        handles = [DBOS.start_workflow(dbos_one, i) for i in range(settings.runs)]
        for handle in handles:
            assert handle.get_result() == 1
        figures.runs_per_s = settings.runs / (time.perf_counter() - t0)

        # DBOS's own concurrency control: a queue, polled every 10 ms (its default is 1 s).
        queue = DBOS.register_queue("limited", global_concurrency=LIMIT, polling_interval_sec=0.01)
        t0 = time.perf_counter()
        handles = [queue.enqueue(dbos_one, i) for i in range(settings.runs)]
        for handle in handles:
            assert handle.get_result() == 1
        figures.limited_runs_per_s = settings.runs / (time.perf_counter() - t0)

        for i in range(settings.events):
            key = f"dbos-{i}"
            t0 = time.perf_counter()
            DBOS.start_workflow(dbos_ping, key).get_result()
            figures.latency_ms.append((STARTED.pop(key) - t0) * 1000)
    finally:
        DBOS.destroy()
        _MATCHED_PRAGMAS = False
    return figures


# -- the report -------------------------------------------------------------------------------


def row(label: str, values: list[str]) -> str:
    return f"  {label:<36}" + "".join(f"{v:>16}" for v in values)


def report(figures: dict[str, Figures], settings: Settings) -> None:
    absolute: list[tuple[str, Callable[[Figures], str]]] = [
        (f"ms per step ({STEPS:,}-step run, median)", lambda f: f"{f.step_median:.3f}"),
        ("  min-max", lambda f: f"{min(f.ms_per_step):.3f}-{max(f.ms_per_step):.3f}"),
        (f"one-step runs per s (N={settings.runs})", lambda f: f"{f.runs_per_s:.0f}"),
        ("  ms per run", lambda f: f"{f.ms_per_run:.2f}"),
        (
            f"runs per s, concurrency {LIMIT}",
            lambda f: f"{f.limited_runs_per_s:.0f}" if f.limited_runs_per_s else "n/a",
        ),
        (f"start latency p50 ms ({settings.events} runs)", lambda f: f"{f.latency(0.5):.2f}"),
        ("start latency p95 ms", lambda f: f"{f.latency(0.95):.2f}"),
    ]
    print()
    print(row("", list(figures)))
    for label, cell in absolute:
        print(row(label, [cell(f) for f in figures.values()]))

    ours_figures = figures["ours"]
    others = {name: f for name, f in figures.items() if name != "ours"}
    ratios: list[tuple[str, Callable[[Figures], float]]] = [
        ("ours/DBOS time per step", lambda f: ours_figures.step_median / f.step_median),
        ("ours/DBOS time per run", lambda f: ours_figures.ms_per_run / f.ms_per_run),
        (
            "ours/DBOS time per limited run",
            lambda f: ours_figures.ms_per_limited_run / f.ms_per_limited_run,
        ),
        ("ours/DBOS start latency p50", lambda f: ours_figures.latency(0.5) / f.latency(0.5)),
    ]
    print()
    print(f"  ratios (lower is better; target <= {TARGET})")
    print(row("", list(others)))
    for label, ratio in ratios:
        cells = []
        for f in others.values():
            value = ratio(f)
            if math.isnan(value):
                cells.append("n/a")  # not measured on this set-up
                continue
            cells.append(f"{value:.3f}" + (" ok" if value <= TARGET else " !!"))
        print(row(label, cells))


def print_profile(profile: cProfile.Profile, limit: int = 25) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats("durable_core", limit)
    print(f"\nprofile of one {STEPS:,}-step run (ours):")
    print(out.getvalue())


def timed(label: str, fn: Callable[[], Figures]) -> Figures:
    print(f"running {label} ...", end=" ", flush=True)
    t0 = time.perf_counter()
    figures = fn()
    print(f"{time.perf_counter() - t0:.1f} s", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, runs and events")
    parser.add_argument("--reps", type=int, help="repetitions of the 1,000-step run")
    parser.add_argument("--runs", type=int, help="one-step runs started at once")
    parser.add_argument("--events", type=int, help="sequential events for the start latency")
    parser.add_argument(
        "--dir", help="where to make the temporary directory (default: system temp)"
    )
    parser.add_argument(
        "--dbos-default",
        action=argparse.BooleanOptionalAction,
        help="also run DBOS as shipped (default: yes, except with --quick)",
    )
    parser.add_argument("--profile", action="store_true", help="profile our 1,000-step run")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    settings = Settings(
        reps=args.reps or base.reps, runs=args.runs or base.runs, events=args.events or base.events
    )

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, load average {load}")
    print(
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"dbos {metadata.version('dbos')}, SQLAlchemy {sa.__version__}"
    )
    print(
        f"settings: {settings.reps} repetitions of {STEPS:,} steps, {settings.runs} concurrent "
        f"one-step runs, {settings.events} sequential events"
    )
    print(
        "storage: ours = WAL, synchronous=NORMAL; DBOS (WAL) = the same; "
        "DBOS (default) = as shipped: rollback journal, synchronous=FULL"
    )

    root = tempfile.mkdtemp(prefix="durable-bench-", dir=args.dir)
    profile = cProfile.Profile() if args.profile else None
    figures: dict[str, Figures] = {}
    try:

        def fresh(name: str) -> str:
            path = os.path.join(root, name)
            os.makedirs(path)
            return path

        figures["ours"] = timed("ours", lambda: asyncio.run(ours(settings, fresh("ours"), profile)))
        figures["DBOS (WAL)"] = timed(
            "DBOS (WAL)", lambda: dbos(settings, fresh("dbos-wal"), matched=True)
        )
        if args.dbos_default if args.dbos_default is not None else not args.quick:
            figures["DBOS (default)"] = timed(
                "DBOS (default)", lambda: dbos(settings, fresh("dbos-default"), matched=False)
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    report(figures, settings)
    if profile is not None:
        print_profile(profile)


if __name__ == "__main__":
    main()
