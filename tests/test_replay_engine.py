"""Recorded run histories, replayed request by request against the scenario functions.

Each `tests/histories/<name>.json` is one complete run of a scenario, recorded by driving the
function the way the orchestrator does (discovery, targeted requests for planned steps, retries
with `attempt + 1`, memos for sleeps, waits and invokes). Replaying a history sends every
recorded request again, to the async function and to its sync twin, and checks that each
response is the recorded one and that only the recorded step handlers ran.

One history is deliberately replayed against changed code: it was recorded with the steps
"fetch" then "charge", and the code now calls "fetch" then "charge-card".

Re-record after an intended change of behaviour, then review the diff:

    .venv/bin/python tests/test_replay_engine.py            # every history
    .venv/bin/python tests/test_replay_engine.py parallel   # one
"""

import asyncio
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import pathlib
import sys
from typing import Any

import pytest

from durable_core import (
    Context,
    Durable,
    Event,
    StepError,
    SyncContext,
    TriggerEvent,
    parse_duration,
)
from durable_core._execute import ExecutionRequest, Wire, execute, to_wire

HISTORIES = pathlib.Path(__file__).parent / "histories"

app = Durable("histories", dev=True)

# A request that has not answered by then hangs (each one takes milliseconds).
REQUEST_DEADLINE = 5

# Names of the step handlers that ran during one request, in order.
CALLS: list[str] = []

ORDER_EVENT = {
    "name": "shop/order.created",
    "data": {"order_id": "o-1", "skus": ["apple", "pear", "plum"], "total": 42},
    "id": "evt-1",
    "ts": 1_700_000_000_000,
}
PAYMENT_EVENT = {
    "name": "shop/payment.received",
    "data": {"order_id": "o-1", "amount": 42},
    "id": "evt-2",
    "ts": 1_700_000_060_000,
}


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


# -- step handlers -----------------------------------------------------------------------------


def load_order(order_id: str) -> dict[str, Any]:
    CALLS.append("load-order")
    return {"id": order_id, "lines": 3}


def reserve(sku: str) -> str:
    CALLS.append(f"reserve {sku}")
    return f"held-{sku}"


def charge(amount: int) -> dict[str, Any]:
    CALLS.append("charge")
    return {"receipt": "r-1", "amount": amount}


async def charge_async(amount: int) -> dict[str, Any]:
    await asyncio.sleep(0)
    return charge(amount)


def fetch_user() -> dict[str, str]:
    CALLS.append("fetch-user")
    return {"name": "Ada"}


def fetch_cart() -> list[str]:
    CALLS.append("fetch-cart")
    return ["apple", "pear"]


def checkout(user: dict[str, str], cart: list[str]) -> str:
    CALLS.append("checkout")
    return f"{user['name']} bought {len(cart)}"


def ship_parcel(n: int) -> str:
    CALLS.append(f"ship-parcel {n}")
    return f"parcel-{n}"


def decline(amount: int) -> dict[str, Any]:
    CALLS.append("charge-card")
    raise ValueError(f"card declined for {amount}")


def notify_failure(reason: str) -> str:
    CALLS.append("notify-failure")
    return f"told the customer: {reason}"


def fetch() -> int:
    CALLS.append("fetch")
    return 42


def charge_amount(amount: int) -> str:
    CALLS.append("charge")
    return f"charged {amount}"


def charge_card(amount: int) -> str:
    CALLS.append("charge-card")
    return f"charged {amount} to the card"


# -- scenario functions: each async function has a sync twin -----------------------------------

ORDER = TriggerEvent("shop/order.created")


@app.function(id="sequential", trigger=ORDER, retries=2)
async def sequential(ctx: Context) -> dict[str, Any]:
    order = await ctx.step.run("load-order", load_order, ctx.event.data["order_id"])
    held = await ctx.step.run("reserve", reserve, ctx.event.data["skus"][0])
    paid = await ctx.step.run("charge", charge_async, ctx.event.data["total"])
    return {"order": order["id"], "held": held, "receipt": paid["receipt"]}


@app.function(id="sequential-sync", trigger=ORDER, retries=2)
def sequential_sync(ctx: SyncContext) -> dict[str, Any]:
    order = ctx.step.run("load-order", load_order, ctx.event.data["order_id"])
    held = ctx.step.run("reserve", reserve, ctx.event.data["skus"][0])
    paid = ctx.step.run("charge", charge, ctx.event.data["total"])
    return {"order": order["id"], "held": held, "receipt": paid["receipt"]}


@app.function(id="loop", trigger=ORDER, retries=2)
async def loop(ctx: Context) -> list[str]:
    held = [await ctx.step.run("reserve", reserve, sku) for sku in ctx.event.data["skus"]]
    await ctx.step.run("charge", charge, ctx.event.data["total"])
    return held


@app.function(id="loop-sync", trigger=ORDER, retries=2)
def loop_sync(ctx: SyncContext) -> list[str]:
    held = [ctx.step.run("reserve", reserve, sku) for sku in ctx.event.data["skus"]]
    ctx.step.run("charge", charge, ctx.event.data["total"])
    return held


@app.function(id="parallel-gather", trigger=ORDER, retries=2)
async def parallel_gather(ctx: Context) -> str:
    user, cart = await asyncio.gather(
        ctx.step.run("fetch-user", fetch_user), ctx.step.run("fetch-cart", fetch_cart)
    )
    return await ctx.step.run("checkout", checkout, user, cart)


@app.function(id="parallel-explicit", trigger=ORDER, retries=2)
async def parallel_explicit(ctx: Context) -> str:
    user, cart = await ctx.step.parallel(
        lambda: ctx.step.run("fetch-user", fetch_user),
        lambda: ctx.step.run("fetch-cart", fetch_cart),
    )
    return await ctx.step.run("checkout", checkout, user, cart)


@app.function(id="parallel-sync", trigger=ORDER, retries=2)
def parallel_sync(ctx: SyncContext) -> str:
    user, cart = ctx.step.parallel(
        lambda: ctx.step.run("fetch-user", fetch_user),
        lambda: ctx.step.run("fetch-cart", fetch_cart),
    )
    return ctx.step.run("checkout", checkout, user, cart)


@app.function(id="fanout", trigger=ORDER, retries=2)
async def fanout(ctx: Context) -> list[str]:
    return list(
        await asyncio.gather(*(ctx.step.run("ship-parcel", ship_parcel, n) for n in range(3)))
    )


@app.function(id="fanout-sync", trigger=ORDER, retries=2)
def fanout_sync(ctx: SyncContext) -> list[str]:
    calls = [functools.partial(ctx.step.run, "ship-parcel", ship_parcel, n) for n in range(3)]
    return list(ctx.step.parallel(*calls))


@app.function(id="ship-order", trigger=TriggerEvent("shop/ship"))
async def ship_order(ctx: Context) -> dict[str, str]:
    return {"tracking": "T-" + ctx.event.data["order_id"]}


@app.function(id="sleep-wait-invoke", trigger=ORDER, retries=2)
async def sleep_wait_invoke(ctx: Context) -> dict[str, Any]:
    await ctx.step.sleep("cool-off", "5m")
    paid = await ctx.step.wait_for_event(
        "await-payment",
        event="shop/payment.received",
        if_="async.data.order_id == event.data.order_id",
        timeout="1h",
    )
    if paid is None:
        return {"status": "unpaid"}
    shipped = await ctx.step.invoke(
        "ship", function=ship_order, data={"order_id": ctx.event.data["order_id"]}
    )
    return {"status": "shipped", "amount": paid.data["amount"], "shipment": shipped}


@app.function(id="sleep-wait-invoke-sync", trigger=ORDER, retries=2)
def sleep_wait_invoke_sync(ctx: SyncContext) -> dict[str, Any]:
    ctx.step.sleep("cool-off", dt.timedelta(minutes=5))
    paid = ctx.step.wait_for_event(
        "await-payment",
        event="shop/payment.received",
        if_="async.data.order_id == event.data.order_id",
        timeout=dt.timedelta(hours=1),
    )
    if paid is None:
        return {"status": "unpaid"}
    shipped = ctx.step.invoke(
        "ship", function=ship_order, data={"order_id": ctx.event.data["order_id"]}
    )
    return {"status": "shipped", "amount": paid.data["amount"], "shipment": shipped}


@app.function(id="step-error", trigger=ORDER, retries=2)
async def step_error(ctx: Context) -> dict[str, Any]:
    try:
        await ctx.step.run("charge-card", decline, ctx.event.data["total"])
    except StepError as err:
        told = await ctx.step.run("notify-failure", notify_failure, f"{err.name}: {err.message}")
        return {"charged": False, "error": err.name, "told": told}
    return {"charged": True}


@app.function(id="step-error-sync", trigger=ORDER, retries=2)
def step_error_sync(ctx: SyncContext) -> dict[str, Any]:
    try:
        ctx.step.run("charge-card", decline, ctx.event.data["total"])
    except StepError as err:
        told = ctx.step.run("notify-failure", notify_failure, f"{err.name}: {err.message}")
        return {"charged": False, "error": err.name, "told": told}
    return {"charged": True}


@app.function(id="fetch-charge", trigger=ORDER, retries=2)
async def fetch_charge(ctx: Context) -> str:
    amount = await ctx.step.run("fetch", fetch)
    return await ctx.step.run("charge", charge_amount, amount)


@app.function(id="fetch-charge-sync", trigger=ORDER, retries=2)
def fetch_charge_sync(ctx: SyncContext) -> str:
    amount = ctx.step.run("fetch", fetch)
    return ctx.step.run("charge", charge_amount, amount)


# The code deployed after the run above started: the step "charge" was renamed.
@app.function(id="fetch-charge-card", trigger=ORDER, retries=2)
async def fetch_charge_card(ctx: Context) -> str:
    amount = await ctx.step.run("fetch", fetch)
    return await ctx.step.run("charge-card", charge_card, amount)


@app.function(id="fetch-charge-card-sync", trigger=ORDER, retries=2)
def fetch_charge_card_sync(ctx: SyncContext) -> str:
    amount = ctx.step.run("fetch", fetch)
    return ctx.step.run("charge-card", charge_card, amount)


# -- scenarios -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scenario:
    about: str
    flavours: dict[str, Any]  # flavour name -> Function; the first one records
    # memos the orchestrator stores for waits and invokes, by user step id
    world: dict[str, Any] = dataclasses.field(default_factory=dict)
    # sleeps given as a duration: their op name is the wake time, recorded as "now+<duration>"
    relative_sleeps: dict[str, str] = dataclasses.field(default_factory=dict)


SCENARIOS: dict[str, Scenario] = {
    "sequential": Scenario(
        "three steps in a row; each request runs the next one, the last returns the output",
        {"async": sequential, "sync": sequential_sync},
    ),
    "loop_reused_ids": Scenario(
        "one step id used in a loop: hashed as 'reserve', 'reserve:1', 'reserve:2'",
        {"async": loop, "sync": loop_sync},
    ),
    "parallel": Scenario(
        "two steps found together are planned, each runs in its own targeted request, then "
        "one discovery request continues with both memos",
        {
            "async-gather": parallel_gather,
            "async-parallel": parallel_explicit,
            "sync": parallel_sync,
        },
    ),
    "fanout_reused_ids": Scenario(
        "one step id fanned out in parallel: three planned steps with hashed ids 'ship-parcel', "
        "'ship-parcel:1', 'ship-parcel:2'",
        {"async": fanout, "sync": fanout_sync},
    ),
    "sleep_wait_invoke": Scenario(
        "a sleep, a wait for an event that arrives and matches, then an invoke of a child function",
        {"async": sleep_wait_invoke, "sync": sleep_wait_invoke_sync},
        world={"await-payment": PAYMENT_EVENT, "ship": {"data": {"tracking": "T-o-1"}}},
        relative_sleeps={"cool-off": "5m"},
    ),
    "step_error_caught": Scenario(
        "a step fails on every attempt: StepError twice, StepFailed on the last attempt, then the "
        "function catches the StepError and runs a compensating step",
        {"async": step_error, "sync": step_error_sync},
    ),
    "diverging_rename": Scenario(
        "recorded with steps 'fetch' then 'charge'; the current code calls 'fetch' then "
        "'charge-card', and replaying the history must stop with a NonDeterminismError",
        {"async": fetch_charge, "sync": fetch_charge_sync},
    ),
}

RENAMED = {"async": fetch_charge_card, "sync": fetch_charge_card_sync}


# -- sending one request -----------------------------------------------------------------------


async def _no_sender(events: list[Event]) -> list[str]:
    raise AssertionError("the scenarios send no events")


def _no_sync_sender(events: list[Event]) -> list[str]:
    raise AssertionError("the scenarios send no events")


def _request(history: dict[str, Any], rec: dict[str, Any]) -> ExecutionRequest:
    ctx = {"run_id": history["run_id"], **rec["ctx"], "stack": {"stack": [], "current": 0}}
    body = {
        "event": history["event"],
        "events": [history["event"]],
        "steps": rec["steps"],
        "ctx": ctx,
        "use_api": False,
        "version": 2,
    }
    return ExecutionRequest.model_validate_json(json.dumps(body))


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _normalize(
    wire: Wire, relative_sleeps: dict[str, str], started: dt.datetime, ended: dt.datetime
) -> dict[str, Any]:
    """The parts of a response a recording pins down: no stacks, and sleeps measured from now."""
    if wire.status == 200:
        return {"status": 200, "output": wire.body}
    if wire.status == 206:
        ops = []
        for raw in wire.body:
            op = dict(raw)
            if "error" in op:
                op["error"] = {"name": op["error"]["name"], "message": op["error"]["message"]}
            duration = relative_sleeps.get(op["userland"]["id"])
            if op["op"] == "Sleep" and duration is not None:
                wake = _utc(op["name"]) - parse_duration(duration)
                # the wake time is "now + duration", with "now" read during the request (ms precision)
                if started - dt.timedelta(milliseconds=1) <= wake <= ended:
                    op["name"] = f"now+{duration}"
            ops.append(op)
        return {"status": 206, "ops": ops}
    body = wire.body
    return {
        "status": wire.status,
        "error": {"name": body["name"], "code": body["code"], "message": body["message"]},
        "no_retry": wire.headers.get("x-inngest-no-retry") == "true",
    }


async def send(
    fn: Any, history: dict[str, Any], rec: dict[str, Any], relative_sleeps: dict[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """Send one recorded request to `fn`; the normalized response and the handlers that ran."""
    found = app.find(fn.id)
    assert found is not None
    step_id = rec["query"]["stepId"]
    target = None if step_id == "step" else step_id
    CALLS.clear()
    started = dt.datetime.now(dt.UTC)
    try:
        async with asyncio.timeout(REQUEST_DEADLINE):
            outcome = await execute(
                found[0], found[1], _request(history, rec), target,
                sender=_no_sender, sync_sender=_no_sync_sender,
            )  # fmt: skip
    except TimeoutError:
        pytest.fail(f"{fn.id}: no response to {rec['query']} within {REQUEST_DEADLINE} s")
    ended = dt.datetime.now(dt.UTC)
    ran = list(CALLS)
    return _normalize(to_wire(fn, outcome), relative_sleeps, started, ended), ran


# -- recording -----------------------------------------------------------------------------------


async def record(name: str) -> dict[str, Any]:
    """Run scenario `name` to its end as the orchestrator would, and return the history."""
    scenario = SCENARIOS[name]
    fn = next(iter(scenario.flavours.values()))
    history: dict[str, Any] = {
        "scenario": name,
        "about": scenario.about,
        "run_id": f"run-{name.replace('_', '-')}",
        "event": ORDER_EVENT,
        "requests": [],
    }
    max_attempts = fn.options.retries + 1
    steps: dict[str, Any] = {}
    planned: list[str] = []
    query, attempt = "step", 0
    for _ in range(50):
        rec: dict[str, Any] = {
            "query": {"stepId": query},
            "ctx": {
                "attempt": attempt,
                "max_attempts": max_attempts,
                "disable_immediate_execution": False,
            },
            "steps": dict(steps),
        }
        response, ran = await send(fn, history, rec, scenario.relative_sleeps)
        rec["ran"] = ran
        rec["response"] = response
        history["requests"].append(rec)
        if response["status"] != 206:
            assert query == "step", f"a targeted request ended the run: {response}"
            return history
        retry = False
        for op in response["ops"]:
            kind, hashed, user_id = op["op"], op["id"], op["userland"]["id"]
            if kind == "StepRun":
                steps[hashed] = {"data": op["data"]}
            elif kind == "StepError":
                retry = True
            elif kind == "StepFailed":
                err = op["error"]
                steps[hashed] = {"error": {**err, "stack": f"{err['name']}: {err['message']}"}}
            elif kind == "StepPlanned":
                planned.append(hashed)
            elif kind == "Sleep":
                steps[hashed] = None
            else:
                steps[hashed] = scenario.world[user_id]
        if retry:
            attempt += 1
            continue
        attempt = 0
        query = planned.pop(0) if planned else "step"
    raise AssertionError(f"scenario {name} did not finish in 50 requests")


def write(name: str, history: dict[str, Any]) -> None:
    HISTORIES.mkdir(exist_ok=True)
    text = json.dumps(history, indent=2, ensure_ascii=False) + "\n"
    (HISTORIES / f"{name}.json").write_text(text)


def load(name: str) -> dict[str, Any]:
    return json.loads((HISTORIES / f"{name}.json").read_text())


# -- tests ---------------------------------------------------------------------------------------

CASES = [
    pytest.param(name, flavour, id=f"{name}-{flavour}")
    for name, scenario in SCENARIOS.items()
    for flavour in scenario.flavours
]


def test_every_scenario_has_a_checked_in_history() -> None:
    on_disk = {p.stem for p in HISTORIES.glob("*.json")}
    assert on_disk == set(SCENARIOS)
    for name in SCENARIOS:
        history = load(name)
        assert history["scenario"] == name
        assert history["requests"], name


@pytest.mark.parametrize(("name", "flavour"), CASES)
async def test_history_replays_identically(name: str, flavour: str) -> None:
    history = load(name)
    scenario = SCENARIOS[name]
    fn = scenario.flavours[flavour]
    for i, rec in enumerate(history["requests"]):
        response, ran = await send(fn, history, rec, scenario.relative_sleeps)
        assert response == rec["response"], f"{name} request {i} ({rec['query']})"
        assert ran == rec["ran"], f"{name} request {i}: step handlers run"


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_recording_again_gives_the_checked_in_history(name: str) -> None:
    assert await record(name) == load(name)


def _ops(history: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for rec in history["requests"] for op in rec["response"].get("ops", [])]


def test_sequential_history_runs_one_step_per_request() -> None:
    history = load("sequential")
    runs = [rec["response"]["ops"] for rec in history["requests"][:-1]]
    assert [[(op["op"], op["userland"]["id"]) for op in ops] for ops in runs] == [
        [("StepRun", "load-order")],
        [("StepRun", "reserve")],
        [("StepRun", "charge")],
    ]
    assert [rec["ran"] for rec in history["requests"]] == [
        ["load-order"], ["reserve apple"], ["charge"], []
    ]  # fmt: skip
    assert history["requests"][-1]["response"] == {
        "status": 200,
        "output": {"order": "o-1", "held": "held-apple", "receipt": "r-1"},
    }


def test_loop_history_hashes_reused_ids_with_a_counter() -> None:
    ops = [op for op in _ops(load("loop_reused_ids")) if op["userland"]["id"] == "reserve"]
    assert [op["id"] for op in ops] == [sha1("reserve"), sha1("reserve:1"), sha1("reserve:2")]
    assert [op["userland"]["index"] for op in ops] == [None, 1, 2]
    assert [op["data"] for op in ops] == ["held-apple", "held-pear", "held-plum"]
    assert {op["name"] for op in ops} == {"reserve"}


def test_parallel_history_plans_then_targets_then_discovers() -> None:
    requests = load("parallel")["requests"]
    first = requests[0]
    assert [(op["op"], op["userland"]["id"]) for op in first["response"]["ops"]] == [
        ("StepPlanned", "fetch-user"),
        ("StepPlanned", "fetch-cart"),
    ]
    assert first["ran"] == []
    targeted = requests[1:3]
    assert [rec["query"]["stepId"] for rec in targeted] == [sha1("fetch-user"), sha1("fetch-cart")]
    assert [rec["ran"] for rec in targeted] == [["fetch-user"], ["fetch-cart"]]
    discovery = requests[3]
    assert discovery["query"]["stepId"] == "step"
    assert set(discovery["steps"]) == {sha1("fetch-user"), sha1("fetch-cart")}
    assert [op["op"] for op in discovery["response"]["ops"]] == ["StepRun"]
    assert requests[-1]["response"] == {"status": 200, "output": "Ada bought 2"}


def test_fanout_history_plans_reused_ids() -> None:
    first = load("fanout_reused_ids")["requests"][0]["response"]["ops"]
    assert [(op["op"], op["id"], op["userland"]["index"]) for op in first] == [
        ("StepPlanned", sha1("ship-parcel"), None),
        ("StepPlanned", sha1("ship-parcel:1"), 1),
        ("StepPlanned", sha1("ship-parcel:2"), 2),
    ]


def test_sleep_wait_invoke_history_ops() -> None:
    history = load("sleep_wait_invoke")
    ops = {op["op"]: op for op in _ops(history)}
    assert ops["Sleep"]["name"] == "now+5m"
    assert ops["WaitForEvent"]["name"] == "shop/payment.received"
    assert ops["WaitForEvent"]["opts"] == {
        "if": "async.data.order_id == event.data.order_id",
        "timeout": "1h",
    }
    assert ops["InvokeFunction"]["opts"]["function_id"] == "histories-ship-order"
    assert ops["InvokeFunction"]["opts"]["payload"]["data"] == {"order_id": "o-1"}
    assert history["requests"][-1]["response"]["output"] == {
        "status": "shipped",
        "amount": 42,
        "shipment": {"tracking": "T-o-1"},
    }


def test_step_error_history_spends_the_retries_then_the_function_catches() -> None:
    requests = load("step_error_caught")["requests"]
    tries = [(rec["ctx"]["attempt"], rec["response"]["ops"][0]) for rec in requests[:3]]
    assert [(attempt, op["op"]) for attempt, op in tries] == [
        (0, "StepError"),
        (1, "StepError"),
        (2, "StepFailed"),
    ]
    for _, op in tries:
        assert op["error"] == {"name": "ValueError", "message": "card declined for 42"}
    assert requests[3]["steps"][sha1("charge-card")]["error"]["name"] == "ValueError"
    assert requests[-1]["response"]["output"] == {
        "charged": False,
        "error": "ValueError",
        "told": "told the customer: ValueError: card declined for 42",
    }


# -- the diverging history ---------------------------------------------------------------------


@pytest.mark.parametrize("flavour", list(RENAMED))
async def test_renamed_step_stops_replay_with_a_non_determinism_error(flavour: str) -> None:
    history = load("diverging_rename")
    last = history["requests"][-1]
    assert set(last["steps"]) == {sha1("fetch"), sha1("charge")}
    assert last["response"] == {"status": 200, "output": "charged 42"}

    response, ran = await send(RENAMED[flavour], history, last, {})

    assert ran == [], "the renamed step must not run while stored steps are unaccounted for"
    assert response["status"] == 500
    assert response["no_retry"] is True
    assert response["error"]["name"] == "NonDeterminismError"
    message = response["error"]["message"]
    assert "replay diverged" in message
    assert "'charge-card'" in message
    assert "1 stored step(s)" in message
    assert "Keep step ids and order stable" in message


@pytest.mark.parametrize("flavour", list(RENAMED))
async def test_renamed_step_before_its_memo_exists_is_new_work(flavour: str) -> None:
    # With only "fetch" stored, nothing tells the SDK that "charge" was expected: the renamed step
    # is reported as new work, under a different hashed id than the one recorded.
    history = load("diverging_rename")
    second = history["requests"][1]
    assert set(second["steps"]) == {sha1("fetch")}
    response, ran = await send(RENAMED[flavour], history, second, {})
    assert ran == ["charge-card"]
    [op] = response["ops"]
    assert (op["op"], op["id"]) == ("StepRun", sha1("charge-card"))
    assert op["id"] != second["response"]["ops"][0]["id"]


@pytest.mark.parametrize("flavour", list(RENAMED))
async def test_targeted_request_for_a_step_the_code_never_reaches(flavour: str) -> None:
    history = load("diverging_rename")
    rec = {**history["requests"][1], "query": {"stepId": sha1("charge")}}

    response, ran = await send(RENAMED[flavour], history, rec, {})

    assert ran == []
    assert response["status"] == 500
    assert response["no_retry"] is True
    assert response["error"]["name"] == "NonDeterminismError"
    assert sha1("charge") in response["error"]["message"]
    assert "same steps" in response["error"]["message"]


@pytest.mark.parametrize("flavour", list(RENAMED))
async def test_targeted_request_after_the_function_returns(flavour: str) -> None:
    history = load("diverging_rename")
    rec = {**history["requests"][-1], "query": {"stepId": sha1("refund")}}
    rec["steps"] = {sha1("fetch"): {"data": 42}, sha1("charge-card"): {"data": "charged 42"}}

    response, ran = await send(RENAMED[flavour], history, rec, {})

    assert ran == []
    assert response["status"] == 500
    assert response["no_retry"] is True
    assert response["error"]["name"] == "NonDeterminismError"
    assert sha1("refund") in response["error"]["message"]
    assert "without reaching it" in response["error"]["message"]


def _record_files(names: list[str]) -> None:
    for name in names or list(SCENARIOS):
        write(name, asyncio.run(record(name)))
        print(f"recorded {HISTORIES / name}.json")


if __name__ == "__main__":
    _record_files(sys.argv[1:])
