"""HTTP mode: a standalone orchestrator (`durable dev`, SQLite) calling an app under uvicorn.

    .venv/bin/python benchmarks/bench_http.py            # about a minute
    .venv/bin/python benchmarks/bench_http.py --quick    # fewer repetitions, no 5,000-step run

One function of N trivial steps (`await ctx.step.run("s", trivial)` N times), N = 100, 1,000
and 5,000, for our SDK; the same function written with inngest-py 0.5.19 (a dev dependency)
on the same orchestrator at N = 100 and 1,000, for comparison. Each figure is a run's own
duration as the orchestrator recorded it (created to ended) divided by N, the median of the
repetitions. Then one-step runs per second for our SDK: 500 events sent in one request to a
function of one step, from the first run created to the last ended.

Targets (the script exits 1 when one is missed): ours at most 1.5 ms per step at 1,000 steps,
and a 5,000-step run at most 6 times a 1,000-step run (HTTP mode is linear: with checkpoints
over HTTP, a chain of steps is one request, each step one checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
SERVE_PATH = "/api/bench"
START_DEADLINE = 30.0
OURS, THEIRS = "bench-ours", "bench-inngest"
TARGET_MS_PER_STEP = 1.5
TARGET_RATIO = 6.0


# -- the apps, served by uvicorn in subprocesses (`--factory`) ---------------------------------


def create_app() -> Any:
    """Our SDK: `steps` (N trivial steps, N from the event) and `one` (one step)."""
    from fastapi import FastAPI

    from adapters.fastapi import Serve
    from durable_core import Context, Durable, TriggerEvent

    durable = Durable(OURS, dev=True, orchestrator_url=os.environ["BENCH_ORCHESTRATOR_URL"])

    def trivial() -> int:
        return 1

    @durable.function(id="steps", trigger=TriggerEvent("bench/ours"), retries=0)
    async def steps(ctx: Context) -> int:
        total = 0
        for _ in range(int(ctx.event.data["n"])):
            total += await ctx.step.run("s", trivial)
        return total

    @durable.function(id="one", trigger=TriggerEvent("bench/one"), retries=0)
    async def one(ctx: Context) -> int:
        return await ctx.step.run("s", trivial)

    app = FastAPI()
    Serve(app, durable, path=SERVE_PATH)
    return app


def create_inngest_app() -> Any:
    """The same `steps` function, written with inngest-py."""
    from fastapi import FastAPI
    from pydantic.warnings import PydanticDeprecatedSince20

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PydanticDeprecatedSince20)
        import inngest
        import inngest.fast_api

    url = os.environ["BENCH_ORCHESTRATOR_URL"]
    client = inngest.Inngest(
        app_id=THEIRS, is_production=False, api_base_url=url, event_api_base_url=url
    )

    def trivial() -> int:
        return 1

    @client.create_function(fn_id="steps", trigger=inngest.TriggerEvent(event="bench/inngest"))
    async def steps(ctx: inngest.Context) -> int:
        total = 0
        for _ in range(int(ctx.event.data["n"])):  # type: ignore[arg-type]
            total += await ctx.step.run("s", trivial)
        return total

    app = FastAPI()
    inngest.fast_api.serve(app, client, [steps], serve_path=SERVE_PATH)
    return app


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DURABLE_", "BENCH_"))}
    env = {k: v for k, v in env.items() if not k.startswith("INNGEST_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


class Procs:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, args: list[str], env: dict[str, str]) -> None:
        log = self.directory / f"proc-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((proc, log))

    def wait_answers(self, client: httpx.Client, url: str) -> None:
        end = time.monotonic() + START_DEADLINE
        while time.monotonic() < end:
            for proc, log in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a process exited:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
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


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes have used so far (Linux; 0 elsewhere)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def uvicorn_args(factory: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(HERE),
        f"bench_http:{factory}", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip


@contextlib.contextmanager
def setup(directory: Path, client: httpx.Client) -> Iterator[tuple[str, list[int]]]:
    """`durable dev` on a fresh SQLite file, with both apps synced: its URL, and the pids of
    the orchestrator and our app."""
    procs = Procs(directory)
    port = free_port()
    orch = f"http://127.0.0.1:{port}"
    cli = str(Path(sys.executable).with_name("durable"))
    args = [cli, "dev", "--port", str(port), "--db", str(directory / "dev.db")]
    try:
        procs.start([*args, "--log-level", "warning"], child_env())
        procs.wait_answers(client, f"{orch}/health")
        for factory in ("create_app", "create_inngest_app"):
            app_port = free_port()
            procs.start(uvicorn_args(factory, app_port), child_env(BENCH_ORCHESTRATOR_URL=orch))
            app_url = f"http://127.0.0.1:{app_port}{SERVE_PATH}"
            procs.wait_answers(client, app_url)
            res = client.put(app_url)
            if res.status_code != 200:
                raise RuntimeError(f"sync of {factory} failed: {res.status_code} {res.text}")
        yield orch, [procs.procs[0][0].pid, procs.procs[1][0].pid]
    finally:
        procs.stop()


# -- measuring ----------------------------------------------------------------------------------


def _ms(text: str) -> float:
    return _dt.datetime.fromisoformat(text).timestamp() * 1000


def completed_runs(client: httpx.Client, orch: str, fn_id: str) -> list[dict[str, Any]]:
    params = {"function_id": fn_id, "status": "completed", "limit": 1000}
    return list(client.get(f"{orch}/v1/runs", params=params).json()["data"])


def wait_completed(
    client: httpx.Client, orch: str, fn_id: str, count: int, deadline: float, every: float = 0.02
) -> list[dict[str, Any]]:
    """The completed runs once there are `count`, polled `every` seconds (the figures come from
    the runs' own times, so polling less often only loads the orchestrator less)."""
    end = time.monotonic() + deadline
    while True:
        runs = completed_runs(client, orch, fn_id)
        if len(runs) >= count:
            return runs
        failed = client.get(f"{orch}/v1/runs", params={"function_id": fn_id, "status": "failed"})
        if failed.json()["data"]:
            raise RuntimeError(f"a run of {fn_id} failed: {failed.json()['data'][0]}")
        if time.monotonic() > end:
            raise RuntimeError(f"{count} runs of {fn_id} did not complete within {deadline} s")
        time.sleep(every)


def ms_per_step(client: httpx.Client, orch: str, sdk: str, n: int, reps: int) -> list[float]:
    app_id, event = (OURS, "bench/ours") if sdk == "ours" else (THEIRS, "bench/inngest")
    fn_id = f"{app_id}-steps"
    figures = []
    for _ in range(reps):
        done = len(completed_runs(client, orch, fn_id))
        res = client.post(f"{orch}/e/key", json={"name": event, "data": {"n": n}})
        res.raise_for_status()
        runs = wait_completed(client, orch, fn_id, done + 1, deadline=max(60.0, n * 0.1))
        newest = max(runs, key=lambda r: _ms(r["created_at"]))
        if newest["output"] != n:
            raise RuntimeError(f"a run of {n} steps returned {newest['output']!r}")
        figures.append((_ms(newest["ended_at"]) - _ms(newest["created_at"])) / n)
    return figures


def one_step_runs_per_second(client: httpx.Client, orch: str, count: int) -> float:
    fn_id = f"{OURS}-one"
    done = len(completed_runs(client, orch, fn_id))
    events = [{"name": "bench/one", "data": {}} for _ in range(count)]
    client.post(f"{orch}/e/key", json=events).raise_for_status()
    runs = wait_completed(client, orch, fn_id, done + count, deadline=120.0, every=0.5)
    runs = sorted(runs, key=lambda r: _ms(r["created_at"]))[-count:]
    first = min(_ms(r["created_at"]) for r in runs)
    last = max(_ms(r["ended_at"]) for r in runs)
    return count / max((last - first) / 1000, 1e-9)


# -- the report ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition; no 5,000-step run")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of ours (default 3)")
    parser.add_argument("--runs", type=int, default=500, help="one-step runs (max 1000)")
    parser.add_argument("--no-inngest", action="store_true", help="skip inngest-py")
    opts = parser.parse_args()
    reps = 1 if opts.quick else opts.reps
    sizes = [100, 1000] if opts.quick else [100, 1000, 5000]
    print(
        f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
        f"Python {platform.python_version()}"
    )
    ours: dict[int, float] = {}
    theirs: dict[int, float] = {}
    cpu_ms: dict[int, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-http-") as tmp,
        httpx.Client(timeout=60, trust_env=False) as client,
        setup(Path(tmp), client) as (orch, pids),
    ):
        ms_per_step(client, orch, "ours", 20, 1)  # warm-up, not measured
        for n in sizes:
            cpu = cpu_seconds(pids)
            ours[n] = statistics.median(ms_per_step(client, orch, "ours", n, reps))
            cpu_ms[n] = (cpu_seconds(pids) - cpu) * 1000 / (n * reps)
        if not opts.no_inngest:
            ms_per_step(client, orch, "inngest", 10, 1)
            for n in (100, 1000):
                theirs[n] = statistics.median(ms_per_step(client, orch, "inngest", n, 1))
        one_step_runs_per_second(client, orch, 50)  # warm-up
        per_second = one_step_runs_per_second(client, orch, min(opts.runs, 1000))
    misses = report(ours, theirs, per_second, opts.runs)
    print(
        "CPU ms per step (orchestrator + our app):",
        ", ".join(f"{n:,}: {v:.3f}" for n, v in sorted(cpu_ms.items())),
    )
    sys.exit(1 if misses else 0)


def report(ours: dict[int, float], theirs: dict[int, float], per_second: float, runs: int) -> int:
    print()
    print(f"{'steps':>7} | {'ours ms/step':>12} | {'inngest-py ms/step':>18}")
    print(f"{'-' * 7}-+-{'-' * 12}-+-{'-' * 18}")
    for n in sorted(ours):
        other = f"{theirs[n]:.3f}" if n in theirs else "-"
        print(f"{n:>7,} | {ours[n]:>12.3f} | {other:>18}")
    print(f"\none-step runs/s (ours, {runs} runs): {per_second:.0f}")
    misses = 0
    at_1000 = ours[1000]
    ok = at_1000 <= TARGET_MS_PER_STEP
    misses += not ok
    print(
        f"target: <= {TARGET_MS_PER_STEP} ms/step at 1,000 steps: {at_1000:.3f} "
        f"{'ok' if ok else 'MISSED'}"
    )
    if 5000 in ours:
        ratio = ours[5000] * 5000 / (at_1000 * 1000)
        ok = ratio <= TARGET_RATIO
        misses += not ok
        print(
            f"target: a 5,000-step run <= {TARGET_RATIO:g}x a 1,000-step run: {ratio:.2f}x "
            f"{'ok' if ok else 'MISSED'}"
        )
    return misses


if __name__ == "__main__":
    main()
