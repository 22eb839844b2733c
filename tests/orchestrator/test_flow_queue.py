"""Flow control decided when work is dispatched (concurrency, throttle, priority), on both
stores: the functions write what they did into a ledger (which run, which step, when), and the
tests check it against the runs' status, reason and timings read back from the /v1 API.

Steps that must stay in flight wait on a `threading.Event` the test sets (polling it inside the
app's step, so the event loop keeps serving); the others sleep a few milliseconds in the step.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import datetime as dt
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from durable_core import (
    Concurrency,
    Context,
    Durable,
    Priority,
    SyncContext,
    Throttle,
    TriggerEvent,
)
from durable_core.events import Event
from durable_core.orchestrator.embedded import Embedded
from durable_core.orchestrator.store import RunFilter

from .conftest import DEADLINE, FINISHED, Harness, StartFactory, wait_until

HOLD = 10.0  # the longest a held step waits for its gate before giving up
THROTTLED = re.compile(r"throttled until (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) \((.+)\)")


def app() -> Durable:
    return Durable("t", dev=True)


def ms(iso: str) -> int:
    return round(dt.datetime.fromisoformat(iso).timestamp() * 1000)


# -- the ledger -------------------------------------------------------------------------------


@dataclasses.dataclass
class Span:
    run: str  # the run id
    label: str  # what the function said it was doing (its event's `i`, a step name)
    start: float  # time.monotonic()
    end: float = math.inf  # still in flight until set
    wall_ms: int = 0  # time.time() at the start, in ms, to compare with the API's timings


class Ledger:
    """What the functions did, written from the app's side (threads included)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[Span] = []

    def begin(self, run: str, label: str) -> Span:
        span = Span(run, label, time.monotonic(), wall_ms=math.floor(time.time() * 1000))
        with self.lock:
            self.spans.append(span)
        return span

    def end(self, span: Span) -> None:
        with self.lock:
            span.end = time.monotonic()

    def snapshot(self) -> list[Span]:
        with self.lock:
            return sorted(self.spans, key=lambda s: s.start)

    def labels(self) -> list[str]:
        """The labels in the order they started."""
        return [s.label for s in self.snapshot()]

    def active(self) -> list[str]:
        return [s.label for s in self.snapshot() if s.end == math.inf]

    async def work(
        self, run: str, label: str, gate: threading.Event | None = None, seconds: float = 0.0
    ) -> str:
        """A step body: in flight until `gate` is set (if given), then for `seconds`."""
        span = self.begin(run, label)
        try:
            end = time.monotonic() + HOLD
            while gate is not None and not gate.is_set():
                if time.monotonic() > end:
                    raise TimeoutError(f"{label}: the test never opened the gate")
                await asyncio.sleep(0.005)
            await asyncio.sleep(seconds)
        finally:
            self.end(span)
        return label

    def work_sync(
        self, run: str, label: str, gate: threading.Event | None = None, seconds: float = 0.0
    ) -> str:
        """`work` for sync steps (which run in threads of their own)."""
        span = self.begin(run, label)
        try:
            if gate is not None and not gate.wait(HOLD):
                raise TimeoutError(f"{label}: the test never opened the gate")
            time.sleep(seconds)
        finally:
            self.end(span)
        return label


def max_overlap(spans: list[Span]) -> int:
    """The most spans in flight at any one moment (one ending as another starts: not both)."""
    edges = sorted([(s.start, 1) for s in spans] + [(s.end, -1) for s in spans])
    most = now = 0
    for _, delta in edges:
        now += delta
        most = max(most, now)
    return most


def gcra_violation(starts: list[int], limit: int, period_ms: int, burst: int = 0) -> Any:
    """The first pair of starts breaking the spec's throttle invariant, or None: for starts
    i<j, count(starts in [s_i, s_j]) <= floor((s_j - s_i) / (period/limit)) + limit + burst."""
    s = sorted(starts)
    for i in range(len(s)):
        for j in range(i, len(s)):
            count = bisect.bisect_right(s, s[j]) - bisect.bisect_left(s, s[i])
            allowed = math.floor((s[j] - s[i]) * limit / period_ms) + limit + burst
            if count > allowed:
                return {"from": s[i], "to": s[j], "count": count, "allowed": allowed}
    return None


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """A gate held steps wait on; opened at the end of the test whatever happens."""
    event = threading.Event()
    yield event
    event.set()


# -- helpers ----------------------------------------------------------------------------------


def send_all(h: Harness, name: str, datas: list[dict[str, Any]]) -> None:
    res = h.post("/e/test-key", [{"name": name, "data": d} for d in datas])
    assert res.status_code == 200, res.text


def by_label(h: Harness, local_id: str) -> dict[str, dict[str, Any]]:
    """The function's runs by their event's `i`."""
    return {r["event"]["data"]["i"]: r for r in h.runs(local_id, limit=1000)}


def all_finished(h: Harness, local_id: str, count: int, deadline: float = DEADLINE) -> list[Any]:
    """Every run of the function once `count` runs exist and all have finished."""

    def probe() -> list[Any] | None:
        runs = h.runs(local_id, limit=1000)
        done = len(runs) == count and all(r["status"] in FINISHED for r in runs)
        if not done:
            time.sleep(0.05)  # listing hundreds of runs: do not hammer the store
        return runs if done else None

    return list(wait_until(f"{count} finished run(s) of {local_id}", probe, deadline))


def reasons_become(h: Harness, local_id: str, labels: list[str], reason: str) -> None:
    """Wait until each named run of the function shows `reason`."""

    def probe() -> bool:
        runs = by_label(h, local_id)
        return all((runs.get(i) or {}).get("reason") == reason for i in labels)

    wait_until(f"runs {labels} to show {reason!r}", probe)


# -- concurrency ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_concurrency_limit_caps_overlap_and_every_run_completes(
    kind: str, embedded: StartFactory, gate: threading.Event
) -> None:
    """With concurrency 2, two steps run at once and no more (the first ones are held in flight
    until the others show they wait for the limit), and all queued runs complete."""
    d, ledger = app(), Ledger()
    if kind == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"), concurrency=2)
        async def f(ctx: Context) -> str:
            i = ctx.event.data["i"]
            return await ctx.step.run("work", lambda: ledger.work(ctx.run_id, i, gate, 0.01))
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"), concurrency=2)
        def f_sync(ctx: SyncContext) -> str:
            i = ctx.event.data["i"]
            return ctx.step.run("work", lambda: ledger.work_sync(ctx.run_id, i, gate, 0.01))

    h = embedded(d)
    labels = [str(n) for n in range(10)]
    send_all(h, "t/go", [{"i": i} for i in labels])
    wait_until("two runs to be in flight", lambda: len(ledger.active()) == 2)
    held = ledger.active()
    waiting = [i for i in labels if i not in held]
    reasons_become(h, "f", waiting, f'concurrency limit 2 on function "{h.fn_id("f")}"')
    assert sorted(ledger.labels()) == sorted(held)  # nothing else started meanwhile
    gate.set()
    runs = all_finished(h, "f", 10)
    assert {r["status"] for r in runs} == {"completed"}, runs
    assert sorted(ledger.labels()) == sorted(labels)
    assert max_overlap(ledger.snapshot()) == 2, ledger.snapshot()


def test_concurrency_one_starts_runs_in_send_order_and_explains_the_wait(
    embedded: StartFactory, gate: threading.Event
) -> None:
    """With concurrency 1, waiting runs say why and then start in the order their events came."""
    d, ledger = app(), Ledger()

    @d.function(id="f", trigger=TriggerEvent("t/go"), concurrency=1)
    async def f(ctx: Context) -> str:
        i = ctx.event.data["i"]
        held = gate if i == "0" else None
        return await ctx.step.run("work", lambda: ledger.work(ctx.run_id, i, held, 0.005))

    h = embedded(d)
    h.send("t/go", {"i": "0"})
    wait_until("run 0 to start", lambda: ledger.active() == ["0"])
    later = [str(n) for n in range(1, 6)]
    for i in later:
        h.send("t/go", {"i": i})
    reasons_become(h, "f", later, f'concurrency limit 1 on function "{h.fn_id("f")}"')
    assert ledger.labels() == ["0"]  # nothing else started while the slot was taken
    gate.set()
    runs = all_finished(h, "f", 6)
    assert {r["status"] for r in runs} == {"completed"}, runs
    assert ledger.labels() == ["0", *later]
    assert max_overlap(ledger.snapshot()) == 1


def test_concurrency_key_limits_each_key_on_its_own(
    embedded: StartFactory, gate: threading.Event
) -> None:
    """Limit 1 per user: two users run side by side, a second run of one user waits for it."""
    d, ledger = app(), Ledger()

    @d.function(
        id="f",
        trigger=TriggerEvent("t/go"),
        concurrency=Concurrency(limit=1, key="event.data.user"),
    )
    async def f(ctx: Context) -> str:
        i = ctx.event.data["i"]
        return await ctx.step.run("work", lambda: ledger.work(ctx.run_id, i, gate))

    h = embedded(d)
    h.send("t/go", {"user": "u1", "i": "u1-a"})
    h.send("t/go", {"user": "u2", "i": "u2-a"})
    h.send("t/go", {"user": "u1", "i": "u1-b"})
    wait_until("both users' first runs to be in flight", lambda: len(ledger.active()) == 2)
    assert sorted(ledger.active()) == ["u1-a", "u2-a"]
    reasons_become(h, "f", ["u1-b"], 'concurrency limit 1 on key "u1"')
    assert "u1-b" not in ledger.labels()
    gate.set()
    runs = all_finished(h, "f", 3)
    assert {r["status"] for r in runs} == {"completed"}, runs
    spans = ledger.snapshot()
    assert max_overlap(spans) == 2
    assert max_overlap([s for s in spans if s.label.startswith("u1")]) == 1, spans


def test_a_sleeping_run_holds_no_concurrency_slot(embedded: StartFactory) -> None:
    """With concurrency 1, another run completes while the first sleeps."""
    d, ledger = app(), Ledger()

    @d.function(id="f", trigger=TriggerEvent("t/go"), concurrency=1)
    async def f(ctx: Context) -> str:
        i = ctx.event.data["i"]
        await ctx.step.run("before", lambda: ledger.work(ctx.run_id, f"{i}:before"))
        if ctx.event.data["nap"]:
            await ctx.step.sleep("nap", "1s")
        return await ctx.step.run("after", lambda: ledger.work(ctx.run_id, f"{i}:after"))

    h = embedded(d)
    h.send("t/go", {"i": "a", "nap": True})
    a_run = h.wait_runs("f")[0]["run_id"]
    h.wait_status(a_run, "sleeping")
    h.send("t/go", {"i": "b", "nap": False})
    b_run = wait_until("run b", lambda: by_label(h, "f").get("b"))["run_id"]
    assert h.finish(b_run)["status"] == "completed"
    assert h.run(a_run)["status"] == "sleeping"  # b did not wait for a's nap to end
    assert h.finish(a_run)["status"] == "completed"
    order = ledger.labels()
    assert order.index("b:after") < order.index("a:after"), order


@pytest.mark.parametrize(
    ("scope", "key", "reason"),
    [
        ("app", "event.data.k", 'concurrency limit 1 on key "x"'),
        ("env", "event.data.k", 'concurrency limit 1 on key "x"'),
        ("app", None, 'concurrency limit 1 on app "t"'),
        ("env", None, "concurrency limit 1 across all functions"),
    ],
)
def test_a_shared_scope_limits_two_functions_together(
    scope: Any, key: str | None, reason: str, embedded: StartFactory, gate: threading.Event
) -> None:
    """Scope app/env: two functions share one limit, and the waiting run says which."""
    d, ledger = app(), Ledger()
    limit = Concurrency(limit=1, key=key, scope=scope)

    async def body(ctx: Context) -> str:
        i = ctx.event.data["i"]
        held = gate if ctx.event.data.get("hold") else None
        return await ctx.step.run("work", lambda: ledger.work(ctx.run_id, i, held, 0.005))

    d.function(id="f", trigger=TriggerEvent("t/f"), concurrency=limit)(body)
    d.function(id="g", trigger=TriggerEvent("t/g"), concurrency=limit)(body)

    h = embedded(d)
    h.send("t/f", {"k": "x", "i": "f0", "hold": True})
    wait_until("f0 to be in flight", lambda: ledger.active() == ["f0"])
    h.send("t/g", {"k": "x", "i": "g0"})
    if key is not None:  # another key is not held up
        h.send("t/g", {"k": "y", "i": "g1"})
        g1 = wait_until("run g1", lambda: by_label(h, "g").get("g1"))
        assert h.finish(g1["run_id"])["status"] == "completed"
    reasons_become(h, "g", ["g0"], reason)
    assert "g0" not in ledger.labels()
    gate.set()
    for local_id in ("f", "g"):
        for run in h.runs(local_id):
            assert h.finish(run["run_id"])["status"] == "completed", run
    x_spans = [s for s in ledger.snapshot() if s.label in ("f0", "g0")]
    assert len(x_spans) == 2 and max_overlap(x_spans) == 1, x_spans


def test_scope_fn_keeps_two_functions_apart(embedded: StartFactory, gate: threading.Event) -> None:
    """Scope fn (the default): the same key in two functions does not share a limit."""
    d, ledger = app(), Ledger()
    limit = Concurrency(limit=1, key="event.data.k")

    async def body(ctx: Context) -> str:
        i = ctx.event.data["i"]
        return await ctx.step.run("work", lambda: ledger.work(ctx.run_id, i, gate))

    d.function(id="f", trigger=TriggerEvent("t/f"), concurrency=limit)(body)
    d.function(id="g", trigger=TriggerEvent("t/g"), concurrency=limit)(body)

    h = embedded(d)
    h.send("t/f", {"k": "x", "i": "f0"})
    h.send("t/g", {"k": "x", "i": "g0"})
    wait_until("both functions in flight", lambda: sorted(ledger.active()) == ["f0", "g0"])
    gate.set()
    for local_id in ("f", "g"):
        assert h.only_run(local_id)["status"] == "completed"


# -- throttle ---------------------------------------------------------------------------------


def test_throttle_delays_starts_without_dropping_any(embedded: StartFactory) -> None:
    """Throttle 2 per 1s: all 6 runs complete, starts follow GCRA, delayed runs say until when."""
    d = app()

    @d.function(id="f", trigger=TriggerEvent("t/go"), throttle=Throttle(limit=2, period="1s"))
    async def f(ctx: Context) -> str:
        return await ctx.step.run("work", lambda: ctx.event.data["i"])

    h = embedded(d)
    send_all(h, "t/go", [{"i": str(n)} for n in range(6)])
    seen: dict[str, str] = {}  # run id -> a throttle reason it showed while queued

    def probe() -> list[Any] | None:
        runs = h.runs("f")
        for r in runs:
            if r["status"] == "queued" and r["reason"] and r["run_id"] not in seen:
                seen[r["run_id"]] = r["reason"]
        done = len(runs) == 6 and all(r["status"] in FINISHED for r in runs)
        return runs if done else None

    runs = wait_until("6 throttled runs to finish", probe)
    assert {r["status"] for r in runs} == {"completed"}, runs
    runs.sort(key=lambda r: ms(r["started_at"]))
    starts = [ms(r["started_at"]) for r in runs]
    assert gcra_violation(starts, 2, 1000) is None, starts
    for run in runs[2:]:  # the delayed ones said so, and did not start before they said
        found = THROTTLED.fullmatch(seen.get(run["run_id"], ""))
        assert found and found[2] == "2 per 1s", (run, seen.get(run["run_id"]))
        assert ms(run["started_at"]) >= ms(found[1]) - 1, (run, found[0])


def test_throttle_keys_do_not_delay_each_other(embedded: StartFactory) -> None:
    """Throttle 1 per 1m per user: u2 starts at once while u1's second run waits, saying why."""
    d = app()
    throttle = Throttle(limit=1, period="1m", key="event.data.user")

    @d.function(id="f", trigger=TriggerEvent("t/go"), throttle=throttle)
    async def f(ctx: Context) -> str:
        return await ctx.step.run("work", lambda: ctx.event.data["i"])

    h = embedded(d)
    h.send("t/go", {"user": "u1", "i": "u1-a"})
    h.send("t/go", {"user": "u1", "i": "u1-b"})
    h.send("t/go", {"user": "u2", "i": "u2-a"})
    for i in ("u1-a", "u2-a"):
        run = wait_until(f"run {i}", lambda i=i: by_label(h, "f").get(i))
        assert h.finish(run["run_id"])["status"] == "completed"
    waiting = wait_until(
        "u1-b to show its throttle", lambda: (by_label(h, "f").get("u1-b") or {}).get("reason")
    )
    run = by_label(h, "f")["u1-b"]
    assert run["status"] == "queued" and run["started_at"] is None, run
    found = THROTTLED.fullmatch(waiting)
    assert found and found[2] == '1 per 1m on key "u1"', waiting
    assert ms(found[1]) >= ms(by_label(h, "f")["u1-a"]["started_at"]) + 59_000, waiting


# -- priority ---------------------------------------------------------------------------------


def test_priority_reorders_runs_waiting_for_concurrency(
    embedded: StartFactory, gate: threading.Event
) -> None:
    """Concurrency 1: runs queued behind a busy slot start by priority 100, 0, -100."""
    d, ledger = app(), Ledger()

    @d.function(
        id="f",
        trigger=TriggerEvent("t/go"),
        concurrency=1,
        priority=Priority(run="event.data.p"),
    )
    async def f(ctx: Context) -> str:
        i = ctx.event.data["i"]
        held = gate if i == "first" else None
        return await ctx.step.run("work", lambda: ledger.work(ctx.run_id, i, held))

    h = embedded(d)
    h.send("t/go", {"i": "first", "p": 0})
    wait_until("the first run to be in flight", lambda: ledger.active() == ["first"])
    for i, p in (("low", -100), ("mid", 0), ("high", 100)):
        h.send("t/go", {"i": i, "p": p})
    reasons_become(
        h, "f", ["low", "mid", "high"], f'concurrency limit 1 on function "{h.fn_id("f")}"'
    )
    gate.set()
    runs = all_finished(h, "f", 4)
    assert {r["status"] for r in runs} == {"completed"}, runs
    assert ledger.labels() == ["first", "high", "mid", "low"]


# -- load -------------------------------------------------------------------------------------


def test_load_concurrency_three_over_200_runs(
    embedded: StartFactory, gate: threading.Event
) -> None:
    """200 runs of two steps under concurrency 3: 3 steps at once and never more, each once.
    The first steps are held in flight until the limit is reached."""
    d, ledger = app(), Ledger()

    @d.function(id="f", trigger=TriggerEvent("t/go"), concurrency=3)
    async def f(ctx: Context) -> list[str]:
        a = await ctx.step.run("a", lambda: ledger.work(ctx.run_id, "a", gate, 0.005))
        b = await ctx.step.run("b", lambda: ledger.work(ctx.run_id, "b", seconds=0.005))
        return [a, b]

    h = embedded(d)
    send_all(h, "t/go", [{"i": str(n)} for n in range(200)])
    wait_until("three steps to be in flight", lambda: len(ledger.active()) == 3)
    gate.set()
    runs = all_finished(h, "f", 200, deadline=60)
    assert {r["status"] for r in runs} == {"completed"}, [
        r for r in runs if r["status"] != "completed"
    ]
    spans = ledger.snapshot()
    assert (most := max_overlap(spans)) == 3, f"{most} steps ran at once"
    ran = sorted((s.run, s.label) for s in spans)
    assert ran == sorted({(r["run_id"], step) for r in runs for step in "ab"}), "a step ran twice"


def test_load_throttle_50_per_second_over_200_runs(embedded: StartFactory) -> None:
    """200 runs throttled 50 per 1s: all complete, starts follow GCRA, no body runs early."""
    d, ledger = app(), Ledger()

    @d.function(id="f", trigger=TriggerEvent("t/go"), throttle=Throttle(limit=50, period="1s"))
    async def f(ctx: Context) -> str:
        if not any(s.run == ctx.run_id for s in ledger.snapshot()):
            ledger.end(ledger.begin(ctx.run_id, "body"))  # the body's first start
        return await ctx.step.run("work", lambda: ctx.event.data["i"])

    h = embedded(d)
    send_all(h, "t/go", [{"i": str(n)} for n in range(200)])
    runs = all_finished(h, "f", 200, deadline=60)
    assert {r["status"] for r in runs} == {"completed"}, [
        r for r in runs if r["status"] != "completed"
    ]
    starts = {r["run_id"]: ms(r["started_at"]) for r in runs}
    assert gcra_violation(list(starts.values()), 50, 1000) is None, sorted(starts.values())
    first = {s.run: s.wall_ms for s in ledger.snapshot()}
    assert first.keys() == starts.keys()
    early = {r: (first[r], starts[r]) for r in starts if first[r] < starts[r]}
    assert not early, f"bodies ran before their run started: {early}"


# -- several orchestrators on one store ---------------------------------------------------------


def shared_app(ledger: Ledger, host: str, gate: threading.Event) -> Durable:
    durable = app()

    @durable.function(id="f", trigger=TriggerEvent("t/go"), concurrency=2)
    async def f(ctx: Context) -> str:
        run, held = ctx.run_id, gate if ctx.event.data["i"] == "0" else None
        return await ctx.step.run("work", lambda: ledger.work(run, host, held, 0.02))

    return durable


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # SQLite has one host
async def test_concurrency_holds_across_orchestrators_sharing_a_store(
    database_url: str, tmp_path: Path, gate: threading.Event
) -> None:
    """Two orchestrators on one PostgreSQL schema: 60 runs, 2 steps at once and never more,
    and both orchestrators run steps.

    Orchestrator a runs one request at a time. It starts alone and takes the first run, whose
    step is held in flight; then b starts (its own capacity is 64), and the other 59 events go
    to both. While a's step is held the limit leaves one slot, which only b can use: b runs
    steps one at a time, never two, until the test opens the gate.
    """
    ledger = Ledger()
    a = Embedded(
        shared_app(ledger, "a", gate), database=database_url, directory=str(tmp_path / "a"),
        concurrency=1,
    )  # fmt: skip
    b = Embedded(
        shared_app(ledger, "b", gate), database=database_url, directory=str(tmp_path / "b")
    )

    async def until(what: str, probe: Callable[[], Awaitable[Any]], deadline: float = 60) -> Any:
        end = time.monotonic() + deadline
        while not (found := await probe()):
            assert time.monotonic() < end, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)
        return found

    async def held_on_a() -> bool:
        return [(s.label, s.end) for s in ledger.snapshot()] == [("a", math.inf)]

    async def done_on_b() -> bool:
        return sum(s.label == "b" and s.end < math.inf for s in ledger.snapshot()) >= 3

    orchs = [await a.start()]
    try:
        await orchs[0].send([Event(name="t/go", data={"i": "0"})])
        await until("the first run's step to be in flight on a", held_on_a)
        orchs.append(await b.start())
        for n in range(1, 60):  # half the events reach each orchestrator
            await orchs[n % 2].send([Event(name="t/go", data={"i": str(n)})])
        await until("b to run steps while a's is held", done_on_b)
        assert ledger.active().count("a") == 1 and len(ledger.active()) <= 2, ledger.snapshot()
        gate.set()

        async def finished() -> list[Any] | None:
            async with orchs[1].store.snapshot() as tx:
                runs = await tx.list_runs(RunFilter(fn_id="t-f", limit=1000))
            return runs if len(runs) == 60 and all(r.status.finished for r in runs) else None

        runs = await until("60 runs to finish", finished)
    finally:
        for host in (a, b):
            await host.stop()
    assert {r.status.value for r in runs} == {"completed"}
    spans = ledger.snapshot()
    assert len(spans) == 60 and len({s.run for s in spans}) == 60
    assert (most := max_overlap(spans)) == 2, f"{most} steps ran at once: {spans}"
    first = spans[0]
    assert first.label == "a", spans
    beside = [s for s in spans[1:] if s.start < first.end]
    assert beside and {s.label for s in beside} == {"b"}, f"in flight beside a's: {beside}"
