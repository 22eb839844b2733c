"""What tracing costs per step: embedded mode on SQLite, the same 1,000-step run with tracing
off and on, in one process.

    .venv/bin/python benchmarks/bench_tracing.py            # 7 repetitions of each
    .venv/bin/python benchmarks/bench_tracing.py --quick    # 3 repetitions of each

- **off**: `Durable(...)` as most apps make it: no tracer provider set and no OTLP endpoint,
  so tracing is off (the default rule of `durable_core.tracing`).
- **on**: `Durable(..., tracing=provider)`, an OpenTelemetry SDK tracer provider exporting
  every span to memory through a simple (synchronous) span processor: the cost of making the
  spans, without the network.

Each setting has its own app and database; the repetitions alternate between the settings,
so a change in the machine's load touches both. A figure is the wall time of a function
running 1,000 trivial steps (`await ctx.step.run("s", trivial)`), divided by 1,000; the median
of the repetitions is printed, with the spread. `--only off` measures the first setting alone,
which also runs against a version of the code from before tracing existed (the comparison
that shows what the off switch itself costs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import tempfile
import time
from typing import Any

from durable_core import Context, Durable, TriggerEvent
from durable_core.orchestrator.embedded import Embedded

STEPS = 1_000


def trivial() -> int:
    return 1


def make_app(name: str, **options: Any) -> tuple[Durable, Any]:
    durable = Durable(f"bench-{name}", dev=True, **options)

    @durable.function(id="many", trigger=TriggerEvent("bench/many"), retries=0)
    async def many(ctx: Context) -> int:
        total = 0
        for _ in range(int(ctx.event.data["steps"])):
            total += await ctx.step.run("s", trivial)
        return total

    return durable, many


def settings(only: str | None) -> dict[str, dict[str, Any]]:
    chosen: dict[str, dict[str, Any]] = {"off": {}}
    if only in (None, "on"):
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        chosen["on"] = {"tracing": provider}
    if only == "on":
        del chosen["off"]
    return chosen


async def measure(reps: int, directory: str, only: str | None) -> dict[str, list[float]]:
    apps = {name: make_app(name, **opts) for name, opts in settings(only).items()}
    figures: dict[str, list[float]] = {name: [] for name in apps}
    started = []
    try:
        for name, (durable, many) in apps.items():
            emb = Embedded(durable, directory=os.path.join(directory, name))
            await emb.start()
            started.append(emb)
            await durable.invoke_async(many, {"steps": 50}, wait=True, timeout=600)  # warm-up
        for _ in range(reps):
            for name, (durable, many) in apps.items():
                t0 = time.perf_counter()
                out = await durable.invoke_async(many, {"steps": STEPS}, wait=True, timeout=600)
                figures[name].append((time.perf_counter() - t0) * 1000 / STEPS)
                assert out == STEPS, out
    finally:
        for emb in started:
            await emb.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 7")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--only", choices=["off", "on"], default=None)
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 7)
    print(
        f"machine: {os.cpu_count()} CPUs, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"Python {platform.python_version()}; {reps} repetitions of a {STEPS:,}-step run each")
    directory = tempfile.mkdtemp(prefix="durable-bench-tracing-")
    try:
        figures = asyncio.run(measure(reps, directory, args.only))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print()
    print(f"  {'tracing':<10}{'ms per step (median)':>22}{'min-max':>18}")
    for name, values in figures.items():
        spread = f"{min(values):.3f}-{max(values):.3f}"
        print(f"  {name:<10}{statistics.median(values):>22.3f}{spread:>18}")
    if "off" in figures and "on" in figures:
        extra = statistics.median(figures["on"]) - statistics.median(figures["off"])
        print(f"\n  tracing on adds {extra * 1000:.0f} us per step")


if __name__ == "__main__":
    main()
