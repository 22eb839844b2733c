"""Flow control decided when an event arrives, as a user sees it through the /durable API:
triggers, idempotency, rate limits, singletons, debounce, batching, timeouts and cancel_on, on
both stores (two orchestrators sharing a store: PostgreSQL only). Functions note what they did
in a ledger, so a test tells runs the app never saw from runs it ran; `settle` waits for a probe
run that sleeps past the fast retry backoff, so a wrong retry would show."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from durable_core import (
    Batch,
    Cancel,
    Concurrency,
    Context,
    Debounce,
    Durable,
    RateLimit,
    Singleton,
    SyncContext,
    Timeouts,
    TriggerCron,
    TriggerEvent,
)
from durable_core.events import Event
from durable_core.orchestrator.embedded import Embedded
from durable_core.orchestrator.service import Orchestrator
from durable_core.orchestrator.store import RunFilter, RunRecord

from .conftest import DEADLINE, Harness, StartFactory, wait_until

pg_only = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def app() -> Durable:
    d = Durable("t", dev=True)

    @d.function(id="probe", trigger=TriggerEvent("t/probe"))
    async def probe(ctx: Context) -> str:
        await ctx.step.sleep("nap", "300ms")
        return "done"

    return d


def noting(d: Durable, ledger: list[int], fn_id: str = "f", **options: Any) -> None:
    """Function `fn_id`: notes its event's `n` in the ledger (once, as a step) and returns it."""

    @d.function(id=fn_id, **options)
    async def f(ctx: Context) -> int:
        n = int(ctx.event.data["n"])
        return await ctx.step.run("note", lambda: ledger.append(n) or n)


def holding(d: Durable, ledger: list[int], fn_id: str = "f", **options: Any) -> None:
    """Function `fn_id`: notes its event's `n`, then (unless `data.hold` is false) waits for a
    `t/release` event with the same `data.key`, and returns `n`."""

    @d.function(id=fn_id, **options)
    async def f(ctx: Context) -> int:
        n = int(ctx.event.data["n"])
        await ctx.step.run("note", lambda: ledger.append(n))
        if ctx.event.data.get("hold", True):
            cond = "async.data.key == event.data.key"
            await ctx.step.wait_for_event("hold", event="t/release", if_=cond, timeout="30s")
        return n


def collecting(d: Durable, ledger: list[int], **options: Any) -> None:
    """Function `f`: notes its event's `n` and returns it with the `n` of each of its events."""

    @d.function(id="f", trigger=TriggerEvent("t/go"), **options)
    async def f(ctx: Context) -> Any:
        ledger.append(ctx.event.data["n"])
        return {"first": ctx.event.data["n"], "events": [e.data["n"] for e in ctx.events]}


def settle(h: Harness) -> None:
    """Let the orchestrator work a while: a run started now sleeps 300ms and completes."""
    before = {r["run_id"] for r in h.runs("probe")}
    h.send("t/probe")
    new = wait_until(
        "the probe run", lambda: [r for r in h.runs("probe") if r["run_id"] not in before]
    )
    assert h.finish(new[0]["run_id"])["status"] == "completed"


def by_n(h: Harness, local_id: str) -> dict[Any, dict[str, Any]]:
    """The runs of a function keyed by their event's data `n`."""
    return {r["event"]["data"].get("n"): r for r in h.runs(local_id)}


def wait_count(h: Harness, local_id: str, count: int) -> dict[Any, dict[str, Any]]:
    probe = lambda: len(r := by_n(h, local_id)) == count and r  # noqa: E731
    return dict(wait_until(f"{count} runs of {local_id}", probe))


def until(reason: str, prefix: str) -> dt.datetime:
    """The moment named at the end of a reason like `debounced until <iso>`."""
    assert reason is not None and reason.startswith(prefix), reason
    return dt.datetime.fromisoformat(reason.removeprefix(prefix))


def outputs(h: Harness, runs: dict[Any, dict[str, Any]], *ns: Any) -> list[Any]:
    return [h.finish(runs[n]["run_id"])["output"] for n in ns]


# -- triggers ---------------------------------------------------------------------------------


def test_trigger_expression_starts_runs_only_for_matching_events(embedded: StartFactory) -> None:
    """A CEL trigger expression lets matching events start runs and drops the others."""
    d, ledger = app(), []
    noting(d, ledger, trigger=TriggerEvent("t/go", expression="event.data.amount > 100"))
    h = embedded(d)
    for n, amount in enumerate([50, 150, 100, 500], start=1):
        h.send("t/go", {"n": n, "amount": amount})
    h.send("t/go", {"n": 5})  # no amount: the expression does not match
    runs = wait_count(h, "f", 2)
    assert sorted(runs) == [2, 4]
    assert outputs(h, runs, 2, 4) == [2, 4]
    settle(h)
    assert sorted(ledger) == [2, 4] and len(h.runs("f")) == 2


def test_each_of_several_event_triggers_starts_the_function(embedded: StartFactory) -> None:
    """A function with two event triggers runs on either event."""
    d, ledger = app(), []
    noting(d, ledger, trigger=[TriggerEvent("t/a"), TriggerEvent("t/b")])
    h = embedded(d)
    for n, name in enumerate(["t/a", "t/b", "t/c"], start=1):
        h.send(name, {"n": n})
    runs = wait_count(h, "f", 2)
    assert outputs(h, runs, 1, 2) == [1, 2]
    assert [runs[n]["event"]["name"] for n in (1, 2)] == ["t/a", "t/b"]


def test_event_matching_two_triggers_starts_one_run(embedded: StartFactory) -> None:
    """One event matching two triggers of a function starts exactly one run of it."""
    d, ledger = app(), []
    triggers = [
        TriggerEvent("t/go", expression="event.data.n > 1"),
        TriggerEvent("t/go", expression="event.data.n < 10"),
        TriggerEvent("t/go"),
    ]
    noting(d, ledger, trigger=triggers)
    h = embedded(d)
    h.send("t/go", {"n": 5})  # matches all three
    h.send("t/go", {"n": 20})  # matches two
    runs = wait_count(h, "f", 2)
    assert sorted(runs) == [5, 20]
    assert outputs(h, runs, 5, 20) == [5, 20]
    settle(h)
    assert sorted(ledger) == [5, 20] and len(h.runs("f")) == 2


def test_function_with_event_and_cron_triggers_runs_on_its_event(embedded: StartFactory) -> None:
    """A function with an event trigger and a cron trigger still runs when the event arrives."""
    d, ledger = app(), []
    noting(d, ledger, trigger=[TriggerCron("0 0 1 1 *"), TriggerEvent("t/go")])
    h = embedded(d)
    h.send("t/go", {"n": 1})
    run = h.only_run("f")
    assert run["status"] == "completed", run
    assert run["output"] == 1 and run["event"]["name"] == "t/go"
    assert ledger == [1]


# -- idempotency ------------------------------------------------------------------------------


def test_idempotency_key_skips_a_second_event_with_the_same_key(embedded: StartFactory) -> None:
    """A second event with a used idempotency key gives a skipped run naming the key."""
    d, ledger = app(), []
    noting(d, ledger, trigger=TriggerEvent("t/go"), idempotency="event.data.order_id")
    h = embedded(d)
    for n, order in [(1, "o-1"), (2, "o-1"), (3, "o-2")]:
        h.send("t/go", {"n": n, "order_id": order})
    runs = wait_count(h, "f", 3)
    assert outputs(h, runs, 1, 3) == [1, 3]
    skipped = h.wait_status(runs[2]["run_id"], "skipped")
    assert skipped["reason"] == 'idempotency key "o-1" was already used in the last 24h'
    assert skipped["output"] is None and skipped["steps"] == []
    settle(h)
    assert sorted(ledger) == [1, 3]
    finished = {e["data"]["run_id"] for e in h.events("inngest/function.finished")}
    assert skipped["run_id"] not in finished
    assert {runs[1]["run_id"], runs[3]["run_id"]} <= finished


def test_resent_event_id_starts_nothing_and_records_no_run(embedded: StartFactory) -> None:
    """An event re-sent with the same id starts no run and leaves no skipped run behind."""
    d, ledger = app(), []
    noting(d, ledger, trigger=TriggerEvent("t/go"))
    h = embedded(d)
    h.send("t/go", {"n": 1}, id="evt-1")
    h.send("t/go", {"n": 2}, id="evt-1")
    assert h.only_run("f")["output"] == 1
    h.send("t/go", {"n": 3}, id="evt-2")
    assert outputs(h, wait_count(h, "f", 2), 3) == [3]
    settle(h)
    assert sorted(ledger) == [1, 3]
    assert sorted(by_n(h, "f")) == [1, 3]
    assert all(r["status"] == "completed" for r in h.runs("f"))


# -- rate limit -------------------------------------------------------------------------------


def test_rate_limit_skips_events_over_the_limit_per_key(embedded: StartFactory) -> None:
    """With a limit of 1 per minute per key, a second event for a key is skipped; others run."""
    d, ledger = app(), []
    limit = RateLimit(limit=1, period="1m", key="event.data.user")
    noting(d, ledger, trigger=TriggerEvent("t/go"), rate_limit=limit)
    h = embedded(d)
    for n, user in [(1, "ann"), (2, "ann"), (3, "bob")]:
        h.send("t/go", {"n": n, "user": user})
    runs = wait_count(h, "f", 3)
    skipped = h.wait_status(runs[2]["run_id"], "skipped")
    assert skipped["reason"] == 'rate limited: 1 per 1m on key "ann"'
    assert outputs(h, runs, 1, 3) == [1, 3]
    settle(h)
    assert sorted(ledger) == [1, 3]


def test_rate_limit_of_two_lets_two_runs_start_and_skips_the_third(embedded: StartFactory) -> None:
    """With a limit of 2 per minute and no key, two events run and the third is skipped."""
    d, ledger = app(), []
    noting(d, ledger, trigger=TriggerEvent("t/go"), rate_limit=RateLimit(limit=2, period="1m"))
    h = embedded(d)
    for n in (1, 2, 3):
        h.send("t/go", {"n": n})
    runs = wait_count(h, "f", 3)
    assert outputs(h, runs, 1, 2) == [1, 2]
    skipped = h.wait_status(runs[3]["run_id"], "skipped")
    assert skipped["reason"] == "rate limited: 2 per 1m"
    settle(h)
    assert sorted(ledger) == [1, 2]


# -- singleton --------------------------------------------------------------------------------


def test_singleton_skip_skips_while_a_run_for_the_key_is_unfinished(embedded: StartFactory) -> None:
    """Singleton skip: a new event for a key with an unfinished run is skipped; after it, runs run."""
    d, ledger = app(), []
    singleton = Singleton(mode="skip", key="event.data.key")
    holding(d, ledger, trigger=TriggerEvent("t/go"), singleton=singleton)
    h = embedded(d)
    h.send("t/go", {"n": 1, "key": "ann"})
    first = h.wait_status(h.wait_runs("f")[0]["run_id"], "waiting")["run_id"]
    h.send("t/go", {"n": 2, "key": "ann"})
    h.send("t/go", {"n": 3, "key": "bob"})
    runs = wait_count(h, "f", 3)
    skipped = h.wait_status(runs[2]["run_id"], "skipped")
    assert skipped["reason"] == f'singleton: run {first} is still running for key "ann"'
    h.wait_status(runs[3]["run_id"], "waiting")

    h.send("t/release", {"key": "ann"})
    assert h.finish(first)["output"] == 1
    h.send("t/go", {"n": 4, "key": "ann"})
    again = h.wait_status(wait_count(h, "f", 4)[4]["run_id"], "waiting")["run_id"]
    h.send("t/release", {"key": "ann"})
    h.send("t/release", {"key": "bob"})
    assert h.finish(again)["output"] == 4
    assert h.finish(runs[3]["run_id"])["output"] == 3
    assert sorted(ledger) == [1, 3, 4]


def test_singleton_cancel_replaces_the_unfinished_run(embedded: StartFactory) -> None:
    """Singleton cancel: a new event cancels the unfinished run, naming the new run, which completes."""
    d, ledger = app(), []
    holding(d, ledger, trigger=TriggerEvent("t/go"), singleton=Singleton(mode="cancel"))
    h = embedded(d)
    h.send("t/go", {"n": 1, "key": "k"})
    old = h.wait_status(h.wait_runs("f")[0]["run_id"], "waiting")["run_id"]
    h.send("t/go", {"n": 2, "hold": False})
    new = wait_count(h, "f", 2)[2]["run_id"]
    assert h.finish(new)["output"] == 2
    cancelled = h.wait_status(old, "cancelled")
    assert cancelled["reason"] == f"singleton: replaced by run {new}"
    h.send("t/go", {"n": 3, "hold": False})
    assert h.finish(wait_count(h, "f", 3)[3]["run_id"])["output"] == 3
    assert ledger == [1, 2, 3]


# -- debounce ---------------------------------------------------------------------------------


def test_debounce_starts_one_run_with_the_last_event(embedded: StartFactory) -> None:
    """Three events in quick succession make one run, pending as `debounced until`, with the last event."""
    d, ledger = app(), []
    collecting(d, ledger, debounce=Debounce(period="1s"))
    h = embedded(d)
    h.send("t/go", {"n": 1})
    h.send("t/go", {"n": 2})
    last_sent = time.monotonic()
    h.send("t/go", {"n": 3})
    pending = h.runs("f")
    assert len(pending) == 1, pending
    seen = h.run(pending[0]["run_id"])
    if time.monotonic() - last_sent < 0.9:  # within the period: the run cannot have started
        assert seen["status"] == "queued", seen
        until(seen["reason"], "debounced until ")
        assert [e["data"]["n"] for e in seen["events"]] == [3]
        assert ledger == []
    run = h.finish(seen["run_id"])
    assert run["status"] == "completed", run
    assert run["output"] == {"first": 3, "events": [3]}
    settle(h)
    assert ledger == [3] and len(h.runs("f")) == 1


def test_debounce_keys_debounce_separately(embedded: StartFactory) -> None:
    """Events with different debounce keys make one run per key, each with its key's last event."""
    d, ledger = app(), []
    debounce = Debounce(period="500ms", key="event.data.user")
    noting(d, ledger, trigger=TriggerEvent("t/go"), debounce=debounce)
    h = embedded(d)
    for n, user in enumerate(["ann", "bob", "ann", "bob", "ann"], start=1):
        h.send("t/go", {"n": n, "user": user})
    runs = h.wait_runs("f", 2)
    assert sorted(h.finish(r["run_id"])["output"] for r in runs) == [4, 5]
    settle(h)
    assert sorted(ledger) == [4, 5] and len(h.runs("f")) == 2


def test_debounce_timeout_starts_a_run_while_events_keep_coming(embedded: StartFactory) -> None:
    """Debounce timeout: with events every 100ms (less than the period), a run still starts."""
    d, ledger = app(), []
    debounce = Debounce(period="500ms", timeout="1s")
    noting(d, ledger, trigger=TriggerEvent("t/go"), debounce=debounce)
    h = embedded(d)
    sent = 0
    end = time.monotonic() + DEADLINE
    while not ledger and time.monotonic() < end:
        sent += 1
        h.send("t/go", {"n": sent})
        time.sleep(0.1)  # the pace of the events, below the debounce period
    assert ledger, f"no run started while {sent} events kept coming every 100ms"
    assert 1 <= ledger[0] <= sent
    # The events sent after that run started are debounced into a later run, ending with the last.
    last = wait_until("a run with the last event", lambda: by_n(h, "f").get(sent))
    assert h.finish(last["run_id"])["output"] == sent
    assert {h.finish(r["run_id"])["status"] for r in h.runs("f")} == {"completed"}


# -- batching ---------------------------------------------------------------------------------


def test_batch_runs_full_batches_then_the_rest_after_the_timeout(embedded: StartFactory) -> None:
    """Seven events with max_size 3 run as batches of 3, 3 and, after the timeout, 1, in order."""
    d, ledger = app(), []
    collecting(d, ledger, batch_events=Batch(max_size=3, timeout="1s"))
    h = embedded(d)
    for n in range(1, 7):
        h.send("t/go", {"n": n})
    opened = time.monotonic()
    h.send("t/go", {"n": 7})
    runs = wait_count(h, "f", 3)
    assert sorted(runs) == [1, 4, 7]
    rest = h.run(runs[7]["run_id"])
    if time.monotonic() - opened < 0.9:  # within the timeout: the batch is still collecting
        assert rest["status"] == "queued", rest
        until(rest["reason"], "batching 1 of 3 events until ")
    assert outputs(h, runs, 1, 4, 7) == [
        {"first": 1, "events": [1, 2, 3]},
        {"first": 4, "events": [4, 5, 6]},
        {"first": 7, "events": [7]},
    ]
    assert [e["data"]["n"] for e in h.run(runs[4]["run_id"])["events"]] == [4, 5, 6]
    settle(h)
    assert sorted(ledger) == [1, 4, 7] and len(h.runs("f")) == 3


def test_batch_key_collects_separate_batches(embedded: StartFactory) -> None:
    """A batch key keeps one batch per key; a partial batch waits as `batching N of 3 events`."""
    d, ledger = app(), []
    collecting(d, ledger, batch_events=Batch(max_size=3, timeout="1s", key="event.data.user"))
    h = embedded(d)
    opened = 0.0
    for n, user in enumerate(["ann", "bob", "ann", "bob", "ann"], start=1):
        opened = opened or (time.monotonic() if user == "bob" else 0.0)
        h.send("t/go", {"n": n, "user": user})
    runs = wait_count(h, "f", 2)
    assert sorted(runs) == [1, 2]
    bob = h.run(runs[2]["run_id"])
    if time.monotonic() - opened < 0.9:  # within the timeout: bob's batch is still collecting
        assert bob["status"] == "queued", bob
        until(bob["reason"], "batching 2 of 3 events until ")
    assert outputs(h, runs, 1, 2) == [
        {"first": 1, "events": [1, 3, 5]},
        {"first": 2, "events": [2, 4]},
    ]
    assert sorted(ledger) == [1, 2]


def test_batch_if_batches_only_matching_events(embedded: StartFactory) -> None:
    """With `if_`, an event it does not match starts a run of its own at once; the matching
    ones are batched."""
    d, ledger = app(), []
    batch = Batch(max_size=2, timeout="30s", if_="event.data.bulk == true")
    collecting(d, ledger, batch_events=batch)
    h = embedded(d)
    for n, bulk in enumerate([True, False, True], start=1):
        h.send("t/go", {"n": n, "bulk": bulk})
    runs = wait_count(h, "f", 2)
    assert outputs(h, runs, 1, 2) == [
        {"first": 1, "events": [1, 3]},
        {"first": 2, "events": [2]},
    ]
    assert sorted(ledger) == [1, 2]


# -- timeouts ---------------------------------------------------------------------------------


def blocking(d: Durable, ledger: list[Any], release: threading.Event, **options: Any) -> None:
    """Sync function `f`: step `block` notes `n` and blocks until `release`; then step `after`."""

    def block(n: int) -> int:
        ledger.append(n)
        release.wait(DEADLINE)
        return n

    @d.function(id="f", trigger=TriggerEvent("t/go"), **options)
    def f(ctx: SyncContext) -> int:
        n = ctx.step.run("block", lambda: block(ctx.event.data["n"]))
        return ctx.step.run("after", lambda: ledger.append("after") or n)


def test_start_timeout_cancels_a_run_waiting_for_a_concurrency_slot(embedded: StartFactory) -> None:
    """timeouts.start cancels a run that waited longer than `start` for a concurrency slot."""
    d, ledger, release = app(), [], threading.Event()
    blocking(d, ledger, release, concurrency=Concurrency(limit=1), timeouts=Timeouts(start="300ms"))
    h = embedded(d)
    try:
        h.send("t/go", {"n": 1})
        wait_until("the first run's step to be in flight", lambda: ledger == [1])
        h.send("t/go", {"n": 2})
        late = wait_count(h, "f", 2)[2]["run_id"]
        cancelled = h.wait_status(late, "cancelled", "completed", "failed")
    finally:
        release.set()
    assert cancelled["status"] == "cancelled", cancelled
    assert cancelled["reason"] == "timed out: not started within 300ms (timeouts.start)"
    assert cancelled["started_at"] is None
    assert outputs(h, wait_count(h, "f", 2), 1) == [1]
    settle(h)
    assert ledger == [1, "after"]
    assert h.run(late)["status"] == "cancelled"


def test_finish_timeout_cancels_a_sleeping_run(embedded: StartFactory) -> None:
    """timeouts.finish cancels a run still sleeping `finish` after it started."""
    d = app()
    after: list[int] = []

    @d.function(id="f", trigger=TriggerEvent("t/go"), timeouts=Timeouts(finish="300ms"))
    async def f(ctx: Context) -> None:
        await ctx.step.sleep("nap", "10s")
        await ctx.step.run("after", lambda: after.append(1))

    h = embedded(d)
    h.send("t/go")
    run = h.wait_status(h.wait_runs("f")[0]["run_id"], "cancelled", "completed", "failed")
    assert run["status"] == "cancelled", run
    assert run["reason"] == "timed out: not finished within 300ms of starting (timeouts.finish)"
    assert after == []
    assert [e["data"]["run_id"] for e in h.events("inngest/function.cancelled")] == [run["run_id"]]


def test_finish_timeout_does_not_retry_the_request_in_flight(embedded: StartFactory) -> None:
    """A run cancelled by timeouts.finish mid-step is not retried, and its late answer leaves other runs be."""
    d, ledger, release = app(), [], threading.Event()
    blocking(d, ledger, release, timeouts=Timeouts(finish="300ms"))
    h = embedded(d)
    try:
        h.send("t/go", {"n": 1})
        run_id = h.wait_runs("f")[0]["run_id"]
        wait_until("the step to be in flight", lambda: ledger == [1])
        run = h.wait_status(run_id, "cancelled", "completed", "failed")
        h.send("t/probe")  # another run goes to sleep while the cancelled run's step still runs
        napping = h.wait_status(h.wait_runs("probe")[0]["run_id"], "sleeping")
    finally:
        release.set()
    assert run["status"] == "cancelled", run
    assert run["reason"] == "timed out: not finished within 300ms of starting (timeouts.finish)"
    assert h.finish(napping["run_id"])["status"] == "completed"
    settle(h)
    assert ledger == [1]
    run = h.run(run_id)
    assert run["status"] == "cancelled"
    assert "after" not in [s["name"] for s in run["steps"]]


# -- cancel_on --------------------------------------------------------------------------------


def test_cancel_on_event_cancels_waiting_and_sleeping_runs(embedded: StartFactory) -> None:
    """A matching cancel event cancels waiting and sleeping runs; a non-matching one does not."""
    d, ledger = app(), []
    cancel = Cancel(event="t/cancel", if_="async.data.key == event.data.key")
    holding(d, ledger, "waiter", trigger=TriggerEvent("t/order"), cancel=cancel)

    @d.function(id="sleeper", trigger=TriggerEvent("t/order"), cancel=cancel)
    async def sleeper(ctx: Context) -> str:
        await ctx.step.sleep("nap", "30s")
        return "woke"

    h = embedded(d)
    h.send("t/order", {"n": 1, "key": "o-1"})
    h.send("t/order", {"n": 2, "key": "o-2"})
    waiters, sleepers = wait_count(h, "waiter", 2), wait_count(h, "sleeper", 2)
    for run in (*waiters.values(), *sleepers.values()):
        h.wait_status(run["run_id"], "waiting", "sleeping")

    h.send("t/cancel", {"key": "o-3"})
    settle(h)
    assert {h.run(r["run_id"])["status"] for r in waiters.values()} == {"waiting"}
    assert {h.run(r["run_id"])["status"] for r in sleepers.values()} == {"sleeping"}

    [event_id] = h.send("t/cancel", {"key": "o-1"})
    for run in (waiters[1], sleepers[1]):
        cancelled = h.wait_status(run["run_id"], "cancelled")
        assert cancelled["reason"] == f'cancelled by event "t/cancel" (id {event_id})'
    assert h.run(sleepers[2]["run_id"])["status"] == "sleeping"
    h.send("t/release", {"key": "o-2"})
    assert h.finish(waiters[2]["run_id"])["output"] == 2


def test_triggering_event_does_not_cancel_its_own_run(embedded: StartFactory) -> None:
    """A run is not cancelled by its own trigger event, though a later one of the same name cancels it."""
    d, ledger = app(), []
    holding(d, ledger, trigger=TriggerEvent("t/go"), cancel=Cancel(event="t/go"))
    h = embedded(d)
    h.send("t/go", {"n": 1, "key": "k"})
    first = h.wait_status(h.wait_runs("f")[0]["run_id"], "waiting")["run_id"]
    [second_event] = h.send("t/go", {"n": 2, "key": "k"})
    second = wait_count(h, "f", 2)[2]["run_id"]
    cancelled = h.wait_status(first, "cancelled")
    assert cancelled["reason"] == f'cancelled by event "t/go" (id {second_event})'
    h.wait_status(second, "waiting")
    h.send("t/release", {"key": "k"})
    run = h.finish(second)
    assert run["status"] == "completed" and run["output"] == 2


def test_cancel_on_timeout_stops_listening_after_it(embedded: StartFactory) -> None:
    """cancel_on with a timeout: a cancel event within it cancels, one after it does not."""
    d, ledger = app(), []
    holding(d, ledger, trigger=TriggerEvent("t/go"), cancel=Cancel(event="t/cancel", timeout="1s"))
    h = embedded(d)
    h.send("t/go", {"n": 1, "key": "k"})
    early = h.wait_runs("f")[0]
    [cancel_id] = h.send("t/cancel")
    cancelled = h.wait_status(early["run_id"], "cancelled")
    assert cancelled["reason"] == f'cancelled by event "t/cancel" (id {cancel_id})'

    h.send("t/go", {"n": 2, "key": "k"})
    late = wait_count(h, "f", 2)[2]
    h.wait_status(late["run_id"], "waiting")
    created = dt.datetime.fromisoformat(late["created_at"]).timestamp()
    wait_until("the cancel listener to time out", lambda: time.time() > created + 1.2)
    h.send("t/cancel")
    settle(h)
    assert h.run(late["run_id"])["status"] == "waiting"
    h.send("t/release", {"key": "k"})
    run = h.finish(late["run_id"])
    assert run["status"] == "completed" and run["output"] == 2


# -- several orchestrators --------------------------------------------------------------------


def shared_app(ledger: list[int]) -> Durable:
    d = Durable("t", dev=True)
    limit = RateLimit(limit=1, period="1m")
    noting(d, ledger, "limited", trigger=TriggerEvent("t/go"), rate_limit=limit)
    holding(d, ledger, "single", trigger=TriggerEvent("t/go"), singleton=Singleton(mode="skip"))
    return d


async def poll(what: str, probe: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        if value := await probe(*args):
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def stored_runs(orch: Orchestrator, fn_id: str, count: int) -> list[RunRecord] | None:
    async with orch.store.snapshot() as tx:
        runs = await tx.list_runs(RunFilter(fn_id=fn_id))
    return list(runs) if len(runs) == count else None


async def status_is(orch: Orchestrator, run_id: str, status: str) -> bool:
    async with orch.store.snapshot() as tx:
        run = await tx.get_run(run_id)
    return run is not None and run.status.value == status


@pg_only
async def test_rate_limit_and_singleton_hold_across_orchestrators(
    database_url: str, tmp_path: Path
) -> None:
    """Events sent at once to two orchestrators sharing a store start one run per limit."""
    ledger: list[int] = []
    hosts = [
        Embedded(shared_app(ledger), database=database_url, directory=str(tmp_path / name))
        for name in ("a", "b")
    ]
    orchs = [await host.start() for host in hosts]
    try:
        sends = [
            orchs[n % 2].send([Event(name="t/go", data={"n": n, "key": "k"})]) for n in range(10)
        ]
        await asyncio.gather(*sends)
        kept: dict[str, RunRecord] = {}
        for local, status in (("limited", "completed"), ("single", "waiting")):
            runs = await poll(f"10 runs of {local}", stored_runs, orchs[0], f"t-{local}", 10)
            [kept[local]] = [r for r in runs if r.status.value != "skipped"]
            run_id = kept[local].run_id
            await poll(f"{local} to be {status}", status_is, orchs[1], run_id, status)
            reasons = {r.reason for r in runs if r.status.value == "skipped"}
            if local == "limited":
                assert reasons == {"rate limited: 1 per 1m"}
            else:
                assert reasons == {f"singleton: run {run_id} is still running"}
        assert sorted(ledger) == sorted(run.events[0]["data"]["n"] for run in kept.values())
    finally:
        for host in hosts:
            await host.stop()
