"""The limits of what the API takes in, on each store: bodies nested too deep, integers beyond
+-(2^53-1), NaN and Infinity, NUL characters in ids and parameters. Each is a 4xx JSON error
naming the problem, never a 5xx, and what was refused leaves the listings answering."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from durable_core import Context, Durable, TriggerEvent
from durable_core.events import Event
from durable_core.orchestrator.api import Api
from durable_core.orchestrator.service import Orchestrator
from durable_core.orchestrator.store import open_store

from .conftest import Harness, StartFactory, sqlite_only
from .test_api import _register_body, error_of

RANGE = "is outside the exactly representable range \u00b1(2^53\u22121)"
DEEP = b"[" * 2000 + b"]" * 2000


@pytest.fixture
def h(embedded: StartFactory) -> Harness:
    d = Durable("t", dev=True)

    @d.function(id="ok", trigger=TriggerEvent("t/ok"))
    async def ok(ctx: Context) -> Any:
        return await ctx.step.run("echo", lambda: ctx.event.data)

    return embedded(d)


def listings_answer(h: Harness) -> None:
    for listing in ("/v1/events", "/v1/runs", "/v1/functions", "/v1/apps"):
        res = h.get(listing)
        assert res.status_code == 200, (listing, res.text)


BODY_PATHS = [
    "/e/any-key",
    "/v1/events",
    "/v1/signals",
    "/v1/functions/t-ok/invoke",
    "/fn/register",
]


@pytest.mark.parametrize("path", BODY_PATHS)
@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (DEEP, "deeper than the limit of 64 levels"),
        (b'{"name": "t/ok", "data": {"x": ' + b"[" * 900 + b"]" * 900 + b"}}", "64 levels"),
        (b'{"data": {"n": ' + b"1" * 5000 + b"}}", "(5000 digits) " + RANGE),
        (b'{"name": "t/ok", "data": {"x": NaN}}', "NaN is not JSON"),
        (b'{"name": "t/ok", "data": {"x": -Infinity}}', "-Infinity is not JSON"),
        (b'{"name": "t/ok", "data": {"x": 1e400}}', "too large for a 64-bit float"),
    ],
    ids=["deep", "deep-data", "5000-digits", "nan", "infinity", "overflow"],
)
def test_bodies_past_the_limits_are_400_naming_the_problem(
    h: Harness, path: str, raw: bytes, problem: str
) -> None:
    assert problem in error_of(h.post(path, content=raw), 400)
    assert h.runs() == []
    listings_answer(h)


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/e/any-key",
            [{"name": "t/ok", "data": {"amount": 2**53 + 1}}],
            f"events[0].data.amount: integer 9007199254740993 {RANGE}",
        ),
        (
            "/v1/events",
            {"name": "t/ok", "data": {"list": [1, -(2**53)]}},
            f"event.data.list[1]: integer -9007199254740992 {RANGE}",
        ),
        ("/v1/signals", {"signal": "s", "data": {"n": 2**64}}, "signal: data.n: integer"),
        ("/v1/functions/t-ok/invoke", {"data": {"n": 2**53}}, "invoke: data.n: integer"),
        (
            "/fn/register",
            _register_body(function={"steps": {"step": {"retries": {"attempts": 2**70}}}}),
            "registration: functions[0].steps.step.retries.attempts: integer",
        ),
    ],
    ids=["events", "event", "signal", "invoke", "register"],
)
def test_integers_beyond_2_53_are_refused_naming_the_field(
    h: Harness, path: str, body: Any, message: str
) -> None:
    answer = error_of(h.post(path, body), 400)
    assert answer.startswith(message), answer
    assert h.runs() == []
    assert h.get("/v1/events").json()["data"] == []


def test_the_largest_exact_integers_are_kept(h: Harness) -> None:
    data = {"top": 2**53 - 1, "bottom": -(2**53 - 1)}
    h.send("t/ok", data)
    run = h.only_run("ok")
    assert run["status"] == "completed", run
    assert run["output"] == data


def test_nan_is_refused_and_the_listings_keep_answering(h: Harness) -> None:
    message = error_of(h.post("/e/k", content=b'[{"name": "t/ok", "data": {"x": NaN}}]'), 400)
    assert message.startswith("events[0].data.x: NaN is not JSON"), message
    listings_answer(h)
    assert h.get("/v1/events").json()["data"] == []


@contextlib.contextmanager
def orchestrator_api(database_url: str) -> Iterator[tuple[Orchestrator, TestClient]]:
    orch = Orchestrator(open_store(database_url))

    with TestClient(Api(orch).served(), raise_server_exceptions=False) as client:
        yield orch, client


def test_a_nan_stored_before_it_was_refused_is_listed_as_null(database_url: str) -> None:
    with orchestrator_api(database_url) as (orch, client):
        client.portal.call(orch.send, [Event(name="old/nan", data={"x": float("nan"), "y": 1})])
        res = client.get("/v1/events")
        assert res.status_code == 200, res.text
        assert [e["data"] for e in res.json()["data"]] == [{"x": None, "y": 1}]


@pytest.mark.parametrize(
    ("method", "path", "what"),
    [
        ("GET", "/v1/runs/%00", "run id"),
        ("GET", "/v1/runs/a%00b", "run id"),
        ("POST", "/v1/runs/%00/cancel", "run id"),
        ("POST", "/v1/runs/%00/rerun", "run id"),
        ("GET", "/v1/runs?function_id=%00", "function_id"),
        ("GET", "/v1/events?name=x%00", "name"),
        ("POST", "/v1/functions/t-ok%00/invoke", "function id"),
    ],
)
def test_a_nul_in_an_id_or_a_parameter_is_400_on_every_store(
    h: Harness, method: str, path: str, what: str
) -> None:
    res = h.client.request(method, "/durable" + path, json={} if method == "POST" else None)
    message = error_of(res, 400)
    assert message.startswith(what) and "NUL" in message, message
    listings_answer(h)


@sqlite_only
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nowhere", 404), ("DELETE", "/v1/runs", 405), ("GET", "/e/k", 405)],
)
def test_unknown_paths_and_methods_are_json_errors(
    database_url: str, method: str, path: str, status: int
) -> None:
    with orchestrator_api(database_url) as (_orch, client):
        res = client.request(method, path)
        assert res.status_code == status
        assert res.json()["status"] == status and res.json()["error"]


@sqlite_only
def test_too_many_events_in_one_request_are_refused(database_url: str) -> None:
    with orchestrator_api(database_url) as (_orch, client):
        body = json.dumps([{"name": "many"}] * 5001)
        res = client.post("/e/k", content=body)
        assert res.status_code == 400 and "limit is 5000" in res.json()["error"], res.text
        assert client.get("/v1/events").json()["data"] == []
