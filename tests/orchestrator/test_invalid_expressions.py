"""An invalid expression is refused where it is written (registration answers 400 naming the
function and the option) and, if one gets in anyway (a function stored by an older version, a
wait sent by another SDK), it affects only its own function or wait: the event is stored,
every other function runs, and the broken one's run or step says what is wrong."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from durable_core import Context, Durable, Event, TriggerEvent
from durable_core.orchestrator import expressions

from .conftest import Harness, StartFactory, UvicornApp

BAD = "event.data.id === async.data.id"


def error_of(res: Any, status: int) -> str:
    assert res.status_code == status, res.text
    return str(res.json()["error"])


def _register_body(url: str, **config: Any) -> dict[str, Any]:
    fn = {
        "id": "other-f",
        "name": "f",
        "triggers": [{"event": "other/go"}],
        "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "http", "url": url}}},
    }
    fn.update(config)
    return {"appname": "other", "url": url, "functions": [fn]}


# -- registration -----------------------------------------------------------------------------

WIRE_OPTIONS = {
    "triggers[0].expression": {"triggers": [{"event": "other/go", "expression": BAD}]},
    "concurrency[0].key": {"concurrency": [{"limit": 1, "key": BAD}]},
    "throttle.key": {"throttle": {"limit": 1, "period": "1s", "key": BAD}},
    "rateLimit.key": {"rateLimit": {"limit": 1, "period": "1s", "key": BAD}},
    "debounce.key": {"debounce": {"period": "1s", "key": BAD}},
    "batchEvents.key": {"batchEvents": {"maxSize": 2, "timeout": "1s", "key": BAD}},
    "batchEvents.if": {"batchEvents": {"maxSize": 2, "timeout": "1s", "if": BAD}},
    "cancel[0].if": {"cancel": [{"event": "other/stop", "if": BAD}]},
    "priority.run": {"priority": {"run": BAD}},
    "idempotency": {"idempotency": BAD},
    "singleton.key": {"singleton": {"mode": "skip", "key": BAD}},
}


@pytest.mark.parametrize("where", list(WIRE_OPTIONS))
def test_registration_refuses_an_invalid_expression_naming_function_and_option(
    where: str, embedded: StartFactory
) -> None:
    h = embedded(Durable("t", dev=True))
    body = _register_body("http://127.0.0.1:9/api/durable", **WIRE_OPTIONS[where])
    error = error_of(h.post("/fn/register", body), 400)
    assert "other-f" in error and where in error, error


@pytest.mark.parametrize(
    ("config", "what"),
    [
        ({"triggers": [{"event": "other/go", "expression": "evnt.data.x == 1"}]}, "'evnt'"),
        ({"idempotency": "async.data.x"}, "'async'"),
        ({"triggers": [{"event": "other/*/go"}]}, "'app/*'"),
    ],
)
def test_registration_refuses_unknown_variables_and_unsupported_wildcards(
    config: dict[str, Any], what: str, embedded: StartFactory
) -> None:
    h = embedded(Durable("t", dev=True))
    body = _register_body("http://127.0.0.1:9/api/durable", **config)
    error = error_of(h.post("/fn/register", body), 400)
    assert "other-f" in error and what in error, error


# -- intake -----------------------------------------------------------------------------------


def test_a_function_stored_with_an_invalid_expression_fails_alone_at_intake(
    embedded: StartFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Functions registered unchecked (as by an older version) on the same event as a healthy
    one: the event is stored, the healthy function runs, each broken one gets a failed run
    naming its option."""
    monkeypatch.setattr("durable_core.app._problem", lambda options: None)
    d = Durable("t", dev=True)

    @d.function(id="bad-filter", trigger=TriggerEvent("t/go", expression=BAD))
    async def bad_filter(ctx: Context) -> str:
        return "ran"

    @d.function(id="bad-key", trigger=TriggerEvent("t/go"), idempotency="event.data.(")
    async def bad_key(ctx: Context) -> str:
        return "ran"

    @d.function(id="ok", trigger=TriggerEvent("t/go"))
    async def ok(ctx: Context) -> str:
        return "ran"

    h = embedded(d)
    for n in range(2):  # every event, not only the first
        h.send("t/go", {"n": n})
    assert len(h.events("t/go")) == 2
    assert [r["output"] for r in map(h.finish, _ids(h, "ok", 2))] == ["ran", "ran"]
    for local_id, where in (("bad-filter", "triggers[0].expression"), ("bad-key", "idempotency")):
        for run in map(h.finish, _ids(h, local_id, 2)):
            assert run["status"] == "failed", run
            assert run["error"]["name"] == "InvalidFunctionConfig", run["error"]
            assert h.fn_id(local_id) in run["error"]["message"]
            assert where in run["error"]["message"], run["error"]


def _ids(h: Harness, local_id: str, count: int) -> list[str]:
    return [r["run_id"] for r in h.wait_runs(local_id, count)]


def test_a_wait_stored_with_an_invalid_condition_fails_only_its_step(
    embedded: StartFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait stored unchecked (as by an older version): the event that reaches it resolves
    its step with an error the function sees, and does everything else it should."""
    d = Durable("t", dev=True)

    @d.function(id="broken", trigger=TriggerEvent("t/start-broken"))
    async def broken(ctx: Context) -> Any:
        await ctx.step.wait_for_event("paid", event="t/paid", timeout="1h", if_=BAD)
        return "matched"

    @d.function(id="healthy", trigger=TriggerEvent("t/start-healthy"))
    async def healthy(ctx: Context) -> Any:
        got = await ctx.step.wait_for_event(
            "paid", event="t/paid", timeout="1h", if_="async.data.id == event.data.id"
        )
        return None if got is None else got.data

    @d.function(id="on-paid", trigger=TriggerEvent("t/paid"))
    async def on_paid(ctx: Context) -> str:
        return "ran"

    h = embedded(d)
    with monkeypatch.context() as patched:  # no check while the broken wait is stored
        patched.setattr(expressions, "problem", lambda *args, **kwargs: None)
        h.send("t/start-broken", {"id": 1})
        broken_id = h.wait_runs("broken")[0]["run_id"]
        h.wait_status(broken_id, "waiting")
    h.send("t/start-healthy", {"id": 1})
    healthy_id = h.wait_runs("healthy")[0]["run_id"]
    h.wait_status(healthy_id, "waiting")

    h.send("t/paid", {"id": 1})
    assert h.finish(healthy_id)["output"] == {"id": 1}
    assert h.only_run("on-paid")["output"] == "ran"
    run = h.finish(broken_id)
    [paid] = [step for step in run["steps"] if step["name"] == "paid"]
    assert paid["output"]["error"]["name"] == "InvalidExpression", paid
    assert BAD in paid["output"]["error"]["message"]
    # This SDK then refuses the condition itself, when the function replays the wait.
    assert run["status"] == "failed", run
    assert run["error"]["name"] == "InvalidStepError", run["error"]


# -- a wait sent by another SDK -----------------------------------------------------------------


def _other_sdk() -> Starlette:
    """An app in another SDK: its function waits with an invalid `if`, then returns the memo
    it got for that step."""
    wait_id = hashlib.sha1(b"paid").hexdigest()

    async def serve(request: Request) -> JSONResponse:
        body = await request.json()
        if wait_id in (body.get("steps") or {}):
            return JSONResponse(body["steps"][wait_id])
        op = {
            "op": "WaitForEvent",
            "id": wait_id,
            "name": "t/paid",
            "displayName": "paid",
            "opts": {"event": "t/paid", "if": BAD, "timeout": "1h"},
        }
        return JSONResponse([op], status_code=206)

    return Starlette(routes=[Route("/api/inngest", serve, methods=["POST"])])


@pytest.fixture
def other_sdk() -> Iterator[str]:
    app = UvicornApp(_other_sdk())
    app.start()
    yield f"{app.base_url}/api/inngest"
    app.stop()


def test_a_wait_op_with_an_invalid_condition_resolves_its_step_with_an_error(
    embedded: StartFactory, other_sdk: str
) -> None:
    h = embedded(Durable("t", dev=True))
    body = _register_body(f"{other_sdk}?fnId=other-f&stepId=step")
    assert h.post("/fn/register", body).status_code == 200
    h.send("other/go", {"id": 1})
    run = h.finish(h.get("/v1/runs", function_id="other-f").json()["data"][0]["run_id"])
    assert run["status"] == "completed", run
    error = run["output"]["error"]
    assert error["name"] == "InvalidExpression", error
    assert "'paid'" in error["message"] and BAD in error["message"], error
    h.send("t/paid", {"id": 1})  # no broken wait was stored for it to trip over
    assert [e["name"] for e in h.events("t/paid")] == ["t/paid"]


def test_send_from_a_step_is_stored_even_when_a_function_on_it_is_broken(
    embedded: StartFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("durable_core.app._problem", lambda options: None)
    d = Durable("t", dev=True)

    @d.function(id="sender", trigger=TriggerEvent("t/go"))
    async def sender(ctx: Context) -> list[str]:
        return await ctx.step.send_event("notify", Event(name="t/notified"))

    @d.function(id="bad", trigger=TriggerEvent("t/notified", expression="event.data.x =="))
    async def bad(ctx: Context) -> str:
        return "ran"

    h = embedded(d)
    h.send("t/go")
    assert h.only_run("sender")["status"] == "completed"
    assert h.only_run("bad")["status"] == "failed"
