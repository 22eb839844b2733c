"""PostgreSQL: embedded mode against DBOS on the same server, and throughput with several processes.

    .venv/bin/python benchmarks/bench_postgres.py            # the full run (two to three minutes)
    .venv/bin/python benchmarks/bench_postgres.py --quick    # a smaller run (under a minute)

The server is the one at --url (default $DURABLE_BENCH_POSTGRES_URL, else
postgresql://postgres@127.0.0.1:5432/test). Every system and every set-up gets a fresh schema,
dropped at the end. Two parts:

1. Ours in embedded mode (the orchestrator in this process, its store in PostgreSQL through
   DURABLE_DATABASE_URL) against DBOS with its system database on the same server: ms per step
   of a 1,000-step function, one-step runs per second, start latency. The measurements are
   those of bench_sqlite.py, reused as they are; only the database differs.
2. One-step runs per second with 1, 2 and 4 processes on one schema, in two set-ups: app
   processes each running an embedded orchestrator (`embedded`), and `durable start`
   orchestrators calling one app process over HTTP (`standalone`). N events are sent at once,
   spread over the processes; the time runs until the last run has completed.

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import psycopg
from starlette.types import ASGIApp

from durable_core import Context, Durable, TriggerEvent

HERE = Path(__file__).resolve().parent
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
APP_ID = "benchpg"
EVENT = f"{APP_ID}/one"
EVENT_KEY = "bench-event-key"
SERVE_PATH = "/api/durable"
START_DEADLINE = 30.0
RUN_DEADLINE = 300.0


# -- the app of part 2, served by uvicorn in subprocesses (`--factory`) ------------------------


def create_app() -> ASGIApp:
    """One function with one trivial step, embedded or served to `durable start` (BENCH_MODE)."""
    from fastapi import FastAPI

    from adapters.fastapi import Serve

    embedded = os.environ["BENCH_MODE"] == "embedded"
    if embedded:
        durable = Durable(APP_ID, dev=True)  # the store: DURABLE_DATABASE_URL
    else:
        durable = Durable(
            APP_ID,
            signing_key=os.environ["BENCH_SIGNING_KEY"],
            event_key=EVENT_KEY,
            orchestrator_url=os.environ["BENCH_ORCHESTRATOR_URL"],
        )

    def trivial() -> int:
        return 1

    @durable.function(id="one", trigger=TriggerEvent(EVENT), retries=0)
    async def one(ctx: Context) -> int:
        return await ctx.step.run("s", trivial)

    app = FastAPI()
    Serve(app, durable, path=SERVE_PATH, embedded=embedded)
    return app


# -- schemas and processes --------------------------------------------------------------------


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


class Schemas:
    """Fresh schema names, every one dropped at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.names: list[str] = []

    def fresh(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.names.append(name)
        return name

    def drop_all(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            for name in self.names:
                conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DURABLE_", "BENCH_"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


@dataclasses.dataclass
class Cluster:
    """Processes serving one schema; `targets` are the URLs events are posted to."""

    schema: str
    directory: Path
    procs: list[tuple[subprocess.Popen[bytes], Path]] = dataclasses.field(default_factory=list)
    targets: list[str] = dataclasses.field(default_factory=list)

    def start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.directory / f"proc-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((proc, log))
        return proc

    def wait_answers(self, client: httpx.Client, url: str, headers: dict[str, str]) -> None:
        end = time.monotonic() + START_DEADLINE
        while time.monotonic() < end:
            for proc, log in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a process exited:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url, headers=headers).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{url} did not answer within {START_DEADLINE} s")

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def uvicorn_args(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(HERE),
        "bench_postgres:create_app", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip


@contextlib.contextmanager
def embedded_cluster(url: str, schema: str, n: int, directory: Path) -> Iterator[Cluster]:
    """`n` app processes, each with an embedded orchestrator on the schema."""
    cluster = Cluster(schema, directory)
    try:
        with httpx.Client(timeout=10, trust_env=False) as client:
            for i in range(n):
                port = free_port()
                env = child_env(
                    BENCH_MODE="embedded",
                    DURABLE_DATABASE_URL=with_schema(url, schema),
                    DURABLE_DIR=str(directory / f"app{i}"),
                )
                cluster.start(uvicorn_args(port), env)
                base = f"http://127.0.0.1:{port}/durable"
                # One at a time: the first creates the schema.
                cluster.wait_answers(client, f"{base}/v1/functions", {})
                cluster.targets.append(f"{base}/e/{EVENT_KEY}")
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def standalone_cluster(url: str, schema: str, n: int, directory: Path) -> Iterator[Cluster]:
    """`n` `durable start` processes on the schema and one app process, synced to the first."""
    cluster = Cluster(schema, directory)
    key = secrets.token_hex(32)
    from durable_core.signing import hashed_signing_key

    auth = {"authorization": f"Bearer {hashed_signing_key(key)}"}
    cli = str(Path(sys.executable).with_name("durable"))
    try:
        with httpx.Client(timeout=30, trust_env=False) as client:
            orchestrators = []
            for i in range(n):
                port = free_port()
                args = [
                    cli, "start", "--database", with_schema(url, schema), "--host", "127.0.0.1",
                    "--port", str(port), "--signing-key", key, "--event-key", EVENT_KEY,
                    "--log-level", "warning",
                ]  # fmt: skip
                cluster.start(args, child_env())
                orchestrators.append(f"http://127.0.0.1:{port}")
                if i == 0:  # the first creates the schema; the others start together
                    cluster.wait_answers(client, f"{orchestrators[0]}/health", {})
            for base in orchestrators:
                cluster.wait_answers(client, f"{base}/health", {})
            app_port = free_port()
            env = child_env(
                BENCH_MODE="standalone",
                BENCH_SIGNING_KEY=key,
                BENCH_ORCHESTRATOR_URL=orchestrators[0],
                # An unsigned sync in production registers only the configured origin.
                DURABLE_SERVE_ORIGIN=f"http://127.0.0.1:{app_port}",
            )
            cluster.start(uvicorn_args(app_port), env)
            app_url = f"http://127.0.0.1:{app_port}{SERVE_PATH}"
            cluster.wait_answers(client, app_url, {})
            res = client.put(app_url)
            if res.status_code != 200:
                raise RuntimeError(f"sync failed: {res.status_code} {res.text}")
            for base in orchestrators:  # every orchestrator has loaded the functions
                end = time.monotonic() + START_DEADLINE
                while f"{APP_ID}-one" not in client.get(f"{base}/v1/functions", headers=auth).text:
                    if time.monotonic() > end:
                        raise RuntimeError(f"{base} does not know the app's functions")
                    time.sleep(0.05)
            cluster.targets = [f"{base}/e/{EVENT_KEY}" for base in orchestrators]
        yield cluster
    finally:
        cluster.stop()


def completed(conn: psycopg.Connection[Any], schema: str) -> tuple[int, int | None, int]:
    """(completed runs, last ended_at in ms, runs ended otherwise) in the schema."""
    row = conn.execute(
        f"SELECT count(*) FILTER (WHERE status='completed'), max(ended_at),"
        f" count(*) FILTER (WHERE status IN ('failed','cancelled')) FROM {schema}.runs"
    ).fetchone()
    assert row is not None
    return int(row[0]), row[1], int(row[2])


def send_spread(targets: list[str], count: int, chunks: int, tag: str) -> None:
    """`count` events in `chunks` posts, spread over the targets, all posted at once."""
    events = [{"name": EVENT, "data": {"i": i, "tag": tag}} for i in range(count)]
    parts = [events[i::chunks] for i in range(chunks)]

    def post(i: int) -> None:
        with httpx.Client(timeout=120, trust_env=False) as client:
            res = client.post(targets[i % len(targets)], json=parts[i])
            if res.status_code != 200:
                raise RuntimeError(f"send failed: {res.status_code} {res.text[:300]}")

    with concurrent.futures.ThreadPoolExecutor(chunks) as pool:
        for done in [pool.submit(post, i) for i in range(chunks)]:
            done.result()


def throughput(url: str, cluster: Cluster, runs: int, warmup: int = 20) -> float:
    """One-step runs per second: `runs` events sent at once, until the last run completed."""
    chunks = 4
    with psycopg.connect(url, autocommit=True) as conn:

        def wait_for(total: int) -> int:
            end = time.monotonic() + RUN_DEADLINE
            while True:
                done, last, bad = completed(conn, cluster.schema)
                if bad:  # say why: the schema is dropped when the benchmark ends
                    rows = conn.execute(
                        f"SELECT run_id, status, error, reason FROM {cluster.schema}.runs"
                        " WHERE status IN ('failed','cancelled') LIMIT 5"
                    ).fetchall()
                    raise RuntimeError(f"{bad} runs failed, for example: {rows}")
                if done >= total:
                    assert last is not None
                    return last
                if time.monotonic() > end:
                    raise RuntimeError(f"{done} of {total} runs completed in {RUN_DEADLINE} s")
                time.sleep(0.02)

        send_spread(cluster.targets, warmup, min(chunks, warmup), "warm-up")
        wait_for(warmup)
        t0 = time.time()
        send_spread(cluster.targets, runs, chunks, "measured")
        last_ms = wait_for(warmup + runs)
    return runs / (last_ms / 1000 - t0)


# -- part 1: embedded mode against DBOS -------------------------------------------------------


def ours_embedded(bench: Any, settings: Any, url: str, schema: str, directory: str) -> Any:
    """bench_sqlite's measurement of ours, with the store in PostgreSQL."""
    os.environ["DURABLE_DATABASE_URL"] = with_schema(url, schema)
    try:
        return asyncio.run(bench.ours(settings, directory, None))
    finally:
        del os.environ["DURABLE_DATABASE_URL"]


def dbos_postgres(bench: Any, settings: Any, url: str, schema: str) -> Any:
    """bench_sqlite's DBOS workflows and measurements, on PostgreSQL (DBOS's system schema)."""
    from dbos import DBOS

    figures = bench.Figures()
    DBOS(
        config={
            "name": "bench",
            "system_database_url": url,
            "dbos_system_schema": schema,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    try:
        DBOS.start_workflow(bench.dbos_many, 50).get_result()  # warm-up

        for _ in range(settings.reps):
            t0 = time.perf_counter()
            out = DBOS.start_workflow(bench.dbos_many, bench.STEPS).get_result()
            figures.ms_per_step.append((time.perf_counter() - t0) * 1000 / bench.STEPS)
            assert out == bench.STEPS, out

        t0 = time.perf_counter()
        handles = [DBOS.start_workflow(bench.dbos_one, i) for i in range(settings.runs)]
        for handle in handles:
            assert handle.get_result() == 1
        figures.runs_per_s = settings.runs / (time.perf_counter() - t0)

        for i in range(settings.events):
            key = f"dbos-{i}"
            t0 = time.perf_counter()
            DBOS.start_workflow(bench.dbos_ping, key).get_result()
            figures.latency_ms.append((bench.STARTED.pop(key) - t0) * 1000)
    finally:
        DBOS.destroy()
    return figures


def timed(label: str, fn: Callable[[], Any]) -> Any:
    print(f"running {label} ...", end=" ", flush=True)
    t0 = time.perf_counter()
    value = fn()
    print(f"{time.perf_counter() - t0:.1f} s", flush=True)
    return value


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("DURABLE_BENCH_POSTGRES_URL", DEFAULT_URL))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, runs and events")
    parser.add_argument("--reps", type=int, help="repetitions of the 1,000-step run")
    parser.add_argument("--runs", type=int, help="one-step runs started at once (part 1)")
    parser.add_argument("--events", type=int, help="sequential events for the start latency")
    parser.add_argument("--cluster-runs", type=int, help="runs per set-up in part 2")
    parser.add_argument(
        "--procs", default="1,2,4", help="process counts for part 2 (default 1,2,4)"
    )
    parser.add_argument(
        "--setups",
        default="embedded,standalone",
        help="part 2 set-ups: embedded, standalone, or both (default), or none",
    )
    parser.add_argument("--skip-dbos", action="store_true", help="only part 2")
    args = parser.parse_args()

    sys.path.insert(0, str(HERE))
    import bench_sqlite as bench  # its app, DBOS workflows, measurements and report

    base = bench.QUICK if args.quick else bench.FULL
    settings = bench.Settings(
        reps=args.reps or base.reps, runs=args.runs or base.runs, events=args.events or base.events
    )
    cluster_runs = args.cluster_runs or (300 if args.quick else 1000)
    procs = [int(p) for p in args.procs.split(",") if p.strip()]
    setups = [s for s in args.setups.split(",") if s.strip() and s != "none"]

    with psycopg.connect(args.url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        server = row[0] if row else "?"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, load average {load}")
    print(
        f"Python {platform.python_version()}, PostgreSQL {server}, psycopg {psycopg.__version__}, "
        f"dbos {metadata.version('dbos')}"
    )
    print(
        f"part 1: {settings.reps} repetitions of {bench.STEPS:,} steps, {settings.runs} concurrent "
        f"one-step runs, {settings.events} sequential events; part 2: {cluster_runs} runs with "
        f"{', '.join(map(str, procs))} processes ({', '.join(setups) or 'skipped'})"
    )

    schemas = Schemas(args.url)
    root = Path(tempfile.mkdtemp(prefix="durable-bench-pg-"))
    figures: dict[str, Any] = {}
    rates: dict[str, dict[int, float]] = {}
    try:
        if not args.skip_dbos:
            ours_dir = root / "ours"
            ours_dir.mkdir()
            figures["ours"] = timed(
                "ours (embedded, PostgreSQL)",
                lambda: ours_embedded(
                    bench, settings, args.url, schemas.fresh("bench_ours"), str(ours_dir)
                ),
            )
            figures["DBOS"] = timed(
                "DBOS (PostgreSQL)",
                lambda: dbos_postgres(bench, settings, args.url, schemas.fresh("bench_dbos")),
            )
        starters = {"embedded": embedded_cluster, "standalone": standalone_cluster}
        for setup in setups:
            rates[setup] = {}
            for n in procs:
                directory = root / f"{setup}-{n}"
                directory.mkdir()
                schema = schemas.fresh(f"bench_{setup}{n}")

                def measure(
                    setup: str = setup,
                    n: int = n,
                    directory: Path = directory,
                    schema: str = schema,
                ) -> float:
                    with starters[setup](args.url, schema, n, directory) as cluster:
                        return throughput(args.url, cluster, cluster_runs)

                rates[setup][n] = timed(f"{setup} x{n}", measure)
    finally:
        schemas.drop_all()
        shutil.rmtree(root, ignore_errors=True)

    if figures:
        bench.report(figures, settings)
    if rates:
        print()
        print(f"  one-step runs per second, {cluster_runs} runs, by number of processes")
        print(bench.row("", [f"{n} process{'es' if n > 1 else ''}" for n in procs]))
        for setup, by_n in rates.items():
            print(bench.row(setup, [f"{by_n[n]:.0f}" for n in procs]))
        dbos = figures.get("DBOS")
        if dbos is not None:  # the same measurement as part 1's, in this same run
            print(bench.row(f"DBOS, in-process (N={settings.runs})", [f"{dbos.runs_per_s:.0f}"]))
            for setup, by_n in rates.items():
                ratios = [f"{by_n[n] / dbos.runs_per_s:.2f}" for n in procs]
                print(bench.row(f"{setup} / DBOS (target >= 1)", ratios))


if __name__ == "__main__":
    main()
