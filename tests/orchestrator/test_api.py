"""The orchestrator's HTTP API: the /v1 contract through the embedded app's /durable prefix,
the intake endpoints (/e/{key}, /fn/register) against bad input, and production auth.

Each test runs on both stores, except the ones marked `@validation`: they check input that is
refused before anything is read or written, so they run on SQLite only."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from durable_core import Context, Durable, NonRetriableError, TriggerEvent
from durable_core.orchestrator.api import MAX_BODY, Api
from durable_core.orchestrator.service import Orchestrator
from durable_core.orchestrator.store import (
    EventRecord,
    RunRecord,
    RunStatus,
    open_store,
)
from durable_core.signing import hashed_signing_key

from .conftest import API, Harness, StartFactory, sqlite_only

validation = sqlite_only  # bad input refused before the store is touched

KEY = "signkey-test-" + "3f" * 32


def ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


@contextlib.contextmanager
def standalone(database_url: str, **options: Any) -> Iterator[TestClient]:
    """The API of an orchestrator of its own (as `durable start` serves it), started and stopped."""
    orch = Orchestrator(open_store(database_url), **options)

    app = Api(orch).served()
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def h(embedded: StartFactory) -> Harness:
    d = Durable("t", dev=True)

    @d.function(id="ok", trigger=TriggerEvent("t/ok"))
    async def ok(ctx: Context) -> dict[str, Any]:
        a = await ctx.step.run("a", lambda: 1)
        b = await ctx.step.run("b", lambda: a + 1)
        return {"b": b, "input": ctx.event.data}

    @d.function(id="fail", trigger=TriggerEvent("t/fail"))
    async def fail(ctx: Context) -> None:
        raise NonRetriableError("refused")

    @d.function(id="hold", trigger=TriggerEvent("t/hold"))
    async def hold(ctx: Context) -> None:
        await ctx.step.wait_for_signal("hold", signal="release", timeout="1h")

    return embedded(d)


def error_of(res: Any, status: int) -> str:
    assert res.status_code == status, (res.status_code, res.text)
    body = res.json()
    assert body == {"error": body.get("error"), "status": status}, body
    assert isinstance(body["error"], str) and body["error"].strip(), body
    return str(body["error"])


# -- runs -------------------------------------------------------------------------------------


def test_runs_are_listed_newest_first_and_filtered(h: Harness) -> None:
    for n in range(2):
        h.send("t/ok", {"n": n})
    h.send("t/fail")
    for run in h.wait_runs("ok", 2) + h.wait_runs("fail"):
        h.finish(run["run_id"])

    everything = h.runs()
    assert len(everything) == 3
    created = [ms(r["created_at"]) for r in everything]
    assert created == sorted(created, reverse=True)

    ok = h.runs("ok")
    assert {r["function_id"] for r in ok} == {"t-ok"} and len(ok) == 2
    assert [r["event"]["data"] for r in ok] == [{"n": 1}, {"n": 0}]
    failed = h.runs(status="failed")
    assert [(r["function_id"], r["status"]) for r in failed] == [("t-fail", "failed")]
    assert failed[0]["error"]["message"] == "refused"
    assert h.runs("fail", status="completed") == []
    assert [r["run_id"] for r in h.runs(limit=1)] == [everything[0]["run_id"]]
    before = h.runs(before=created[-1])
    assert all(ms(r["created_at"]) < created[-1] for r in before)
    assert everything[-1]["run_id"] not in [r["run_id"] for r in before]


def fill_one_millisecond(database_url: str, count: int) -> None:
    """`count` runs and events, all created (received) in the same millisecond."""

    async def fill() -> None:
        store = open_store(database_url)
        await store.open()
        try:
            async with store.transaction() as tx:
                for i in range(count):
                    await tx.insert_run(
                        RunRecord(f"R{i:04}", "t-ok", "t", RunStatus.COMPLETED, [{"name": "t/ok"}], 1_700_000_000_000)
                    )  # fmt: skip
                    raw = {"name": "t/ok", "data": {}}
                    event = EventRecord(f"E{i:04}", "t/ok", {}, f"e{i}", 1, 1_700_000_000_000, raw)
                    await tx.insert_event(event)
        finally:
            await store.close()

    asyncio.run(fill())


def page_through(client: TestClient, path: str, key: str) -> list[str]:
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 50}
    for _ in range(100):
        res = client.get(path, params=params)
        assert res.status_code == 200, res.text
        page = res.json()
        seen += [row[key] for row in page["data"]]
        if "next_cursor" not in page:
            return seen
        params["cursor"] = page["next_cursor"]
    raise AssertionError(f"{path}: no last page after 100 pages")


def test_paging_with_the_cursor_lists_every_row_once_even_within_one_millisecond(
    database_url: str,
) -> None:
    fill_one_millisecond(database_url, 230)
    with standalone(database_url) as client:
        runs = page_through(client, "/v1/runs", "run_id")
        events = page_through(client, "/v1/events", "internal_id")
        bad = client.get("/v1/runs", params={"cursor": "yesterday"})
    assert runs == [f"R{i:04}" for i in reversed(range(230))]
    assert events == [f"E{i:04}" for i in reversed(range(230))]
    assert "cursor" in error_of(bad, 400)


@validation
@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"status": "bogus"}, ["bogus", "completed"]),
        ({"limit": "many"}, ["limit"]),
        ({"limit": "0"}, ["limit"]),
        ({"limit": "1.5"}, ["limit"]),
        ({"before": "yesterday"}, ["before"]),
    ],
)
def test_bad_run_filters_are_400_naming_the_parameter(
    h: Harness, params: dict[str, str], names: list[str]
) -> None:
    message = error_of(h.get("/v1/runs", **params), 400)
    for name in names:
        assert name in message


def test_run_shows_steps_attempts_and_timings(h: Harness) -> None:
    h.send("t/ok", {"n": 9})
    run = h.only_run("ok")
    assert run["status"] == "completed"
    assert run["output"] == {"b": 2, "input": {"n": 9}}
    assert run["function_id"] == "t-ok" and run["app_id"] == "t"
    assert run["event"]["name"] == "t/ok" and run["events"] == [run["event"]]
    assert run["error"] is None and run["parent_run_id"] is None
    assert ms(run["created_at"]) <= ms(run["started_at"]) <= ms(run["ended_at"])
    assert run["duration_ms"] == ms(run["ended_at"]) - ms(run["created_at"])
    assert [(s["name"], s["op"], s["attempt"], s["output"]) for s in run["steps"]] == [
        ("a", "StepRun", 0, 1),
        ("b", "StepRun", 0, 2),
    ]
    for s in run["steps"]:
        assert set(s) == {
            "id", "name", "op", "attempt", "started_at", "ended_at", "duration_ms", "output", "error",
            "queued_at", "queue_delay_ms",
        }  # fmt: skip
        assert len(s["id"]) == 40 and s["error"] is None
        assert s["duration_ms"] == ms(s["ended_at"]) - ms(s["started_at"]) >= 0
        if s["queued_at"] is not None:  # when its request was due: it waited until it started
            assert s["queue_delay_ms"] == ms(s["started_at"]) - ms(s["queued_at"]) >= 0


def test_unknown_run_is_404(h: Harness) -> None:
    assert "NOPE" in error_of(h.get("/v1/runs/NOPE"), 404)
    assert "NOPE" in error_of(h.post("/v1/runs/NOPE/cancel"), 404)
    assert "NOPE" in error_of(h.post("/v1/runs/NOPE/rerun"), 404)


def test_cancel_through_the_api(h: Harness) -> None:
    h.send("t/hold")
    run_id = h.wait_runs("hold")[0]["run_id"]
    assert h.wait_status(run_id, "waiting")["reason"]
    res = h.post(f"/v1/runs/{run_id}/cancel")
    assert res.status_code == 200, res.text
    assert res.json()["status"] == "cancelled"
    assert [r["run_id"] for r in h.runs(status="cancelled")] == [run_id]
    # The signal it waited for is no longer taken.
    assert error_of(h.post("/v1/signals", {"signal": "release"}), 404)
    # Cancelling a finished run changes nothing.
    again = h.post(f"/v1/runs/{run_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    h.send("t/ok")
    done = h.only_run("ok")
    res = h.post(f"/v1/runs/{done['run_id']}/cancel")
    assert res.status_code == 200 and res.json()["status"] == "completed"


# -- events -----------------------------------------------------------------------------------


def test_events_are_posted_and_listed(h: Harness) -> None:
    res = h.post(
        "/v1/events",
        [{"name": "t/ok", "data": {"n": 1}, "id": "mine"}, {"name": "t/other", "data": {}}],
    )
    assert res.status_code == 200, res.text
    ids = res.json()["ids"]
    assert len(ids) == 2
    listed = h.events("t/ok")
    assert [(e["internal_id"], e["id"], e["data"]) for e in listed] == [(ids[0], "mine", {"n": 1})]
    other = h.events("t/other")
    assert [(e["internal_id"], e["id"]) for e in other] == [(ids[1], ids[1])]
    h.only_run("ok")
    finished = h.events("inngest/function.finished")
    assert [e["data"]["function_id"] for e in finished] == ["t-ok"]
    assert len(h.get("/v1/events", limit=1).json()["data"]) == 1
    assert "limit" in error_of(h.get("/v1/events", limit="x"), 400)


def test_events_are_listed_with_their_data_as_sent(h: Harness) -> None:
    data = {
        "text": "é ☃ 😀",
        "big": 2**53 - 1,
        "small": -(2**53 - 1),
        "float": 0.1,
        "one": 1.0,
        "huge": 1e300,
        "tiny": 1e-300,
        "list": [1, None, True, {"x": []}],
    }
    h.send("t/other", data)
    [listed] = h.events("t/other")
    assert listed["data"] == data
    assert {k: type(v) for k, v in listed["data"].items()} == {k: type(v) for k, v in data.items()}


@validation
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([{"name": "t/ok"}, {"data": {}}], "events[1].name"),
        ([{"name": "t/ok"}, {"name": "   "}], "events[1].name"),
        ({"name": "t/ok", "data": [1, 2]}, "event.data"),
        ({"name": "t/ok", "id": 5}, "event.id"),
        ({"name": "t/ok", "ts": 2**63}, "event.ts"),
        ([{"name": "t/ok"}, 3], "events[1]"),
        ([], "no events"),
        ("t/ok", "event"),
    ],
)
@pytest.mark.parametrize("path", ["/e/any-key", "/v1/events"])
def test_bad_event_is_400_naming_the_field(h: Harness, path: str, body: Any, field: str) -> None:
    assert field in error_of(h.post(path, body), 400)
    assert h.runs() == []


@validation
@pytest.mark.parametrize("path", ["/e/any-key", "/v1/events", "/fn/register", "/v1/signals"])
def test_non_json_body_is_400(h: Harness, path: str) -> None:
    assert "JSON" in error_of(h.post(path, content=b"{not json"), 400)
    assert "JSON" in error_of(h.post(path, content=b""), 400)
    assert "JSON" in error_of(h.post(path, content=b"\xff\xfe"), 400)


@pytest.mark.parametrize(
    "raw", [b'{"name": "t/\\ud800"}', b'{"name": "t/ok", "data": {"k": "\\udfff"}}']
)
def test_event_with_a_lone_surrogate_is_refused(h: Harness, raw: bytes) -> None:
    assert "not valid Unicode" in error_of(h.post("/e/any-key", content=raw), 400)
    assert h.get("/v1/events").json()["data"] == []
    assert h.get("/v1/runs").status_code == 200


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"name": "t/a\u0000b"}, "event.name"),
        ({"name": "t/ok", "data": {"k": "a\u0000b"}}, "event.data.k"),
        ({"name": "t/ok", "data": {"k\u0000": 1}}, "event.data["),
        ({"name": "t/ok", "id": "id\u0000"}, "event.id"),
        (
            [{"name": "t/ok"}, {"name": "t/ok", "data": {"l": ["", "\u0000"]}}],
            "events[1].data.l[1]",
        ),
    ],
    ids=["name", "data-value", "data-key", "id", "second-event"],
)
def test_event_with_a_nul_character_is_refused_on_every_store(
    h: Harness, event: Any, field: str
) -> None:
    """JSON allows U+0000 in any string; PostgreSQL text does not, and flow-control keys and
    wait terms are computed from event data: the API refuses it everywhere, on every store."""
    message = error_of(h.post("/e/any-key", event), 400)
    assert field in message and "NUL" in message
    assert h.get("/v1/events").json()["data"] == []
    assert h.runs() == []


@validation
def test_body_over_the_limit_is_413(h: Harness) -> None:
    big = json.dumps({"name": "t/ok", "data": {"blob": "x" * (MAX_BODY + 1)}}).encode()
    assert "too large" in error_of(h.post("/e/any-key", content=big), 413)


# -- invoke and signals -----------------------------------------------------------------------


def test_invoke_through_the_api(h: Harness) -> None:
    res = h.post("/v1/functions/t-ok/invoke", {"data": {"n": 3}, "wait": True, "timeout": 10})
    assert res.status_code == 200, res.text
    run = res.json()
    assert run["status"] == "completed"
    assert run["output"] == {"b": 2, "input": {"n": 3}}
    assert run["event"]["name"] == "inngest/function.invoked"

    res = h.post("/v1/functions/t-ok/invoke", {"data": {"n": 4}})
    assert res.status_code == 202, res.text
    assert h.finish(res.json()["run_id"])["output"] == {"b": 2, "input": {"n": 4}}

    # A run still unfinished when the wait times out is answered 202 as it stands then (on a
    # busy machine it may not have reached its wait yet).
    res = h.post("/v1/functions/t-hold/invoke", {"wait": True, "timeout": 0.2})
    assert res.status_code == 202, res.text
    assert res.json()["status"] in ("queued", "running", "waiting")
    h.wait_status(res.json()["run_id"], "waiting")


def test_invoke_unknown_function_is_404_listing_the_known_ones(h: Harness) -> None:
    message = error_of(h.post("/v1/functions/t-nope/invoke", {"data": {}}), 404)
    assert "t-nope" in message and "t-ok" in message
    assert h.runs() == []


@validation
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"data": "not an object"}, "data"),
        ({"data": {}, "wait": "sometimes"}, "wait"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 99999}, "timeout"),
        ({"data": {}, "extra": 1}, "extra"),
        ([1, 2], "invoke"),
    ],
)
def test_invoke_bad_body_is_400_naming_the_field(h: Harness, body: Any, field: str) -> None:
    assert field in error_of(h.post("/v1/functions/t-ok/invoke", body), 400)
    assert h.runs() == []


@validation
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "signal"),
        ({"signal": ""}, "signal"),
        ({"signal": 3}, "signal"),
        ({"signal": "s", "x": 1}, "x"),
    ],
)
def test_signal_bad_body_is_400(h: Harness, body: Any, field: str) -> None:
    assert field in error_of(h.post("/v1/signals", body), 400)


# -- apps, functions and registration ---------------------------------------------------------


def _register_body(**changes: Any) -> dict[str, Any]:
    fn = {
        "id": "other-f",
        "name": "f",
        "triggers": [{"event": "other/go"}],
        "steps": {
            "step": {
                "id": "step",
                "name": "step",
                "runtime": {"type": "http", "url": "http://127.0.0.1:9/api/durable?fnId=other-f"},
            }
        },
    }
    fn.update(changes.pop("function", {}))
    body = {"appname": "other", "url": "http://127.0.0.1:9/api/durable", "functions": [fn]}
    body.update(changes)
    return body


def test_apps_and_functions_are_listed(h: Harness) -> None:
    apps = h.get("/v1/apps").json()["data"]
    assert [(a["app_id"], a["framework"]) for a in apps] == [("t", "embedded")]
    fns = h.get("/v1/functions").json()["data"]
    assert [f["function_id"] for f in fns] == ["t-fail", "t-hold", "t-ok"]
    assert fns[2]["triggers"] == [{"event": "t/ok"}]

    res = h.post("/fn/register", _register_body())
    assert res.status_code == 200, res.text
    assert res.json() == {"ok": True, "modified": True}
    assert h.post("/fn/register", _register_body()).json()["modified"] is False
    assert [a["app_id"] for a in h.get("/v1/apps").json()["data"]] == ["other", "t"]
    assert "other-f" in [f["function_id"] for f in h.get("/v1/functions").json()["data"]]


@validation
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"functions": []}, "appname"),
        (_register_body(appname=""), "appname"),
        (_register_body(functions="none"), "functions"),
        (_register_body(function={"steps": {"step": {"id": "step"}}}), "steps.step.runtime.url"),
        (_register_body(function={"steps": {}}), "steps.step.runtime.url"),
        (_register_body(function={"triggers": []}), "trigger"),
        (_register_body(function={"triggers": [{"event": 5}]}), "triggers[0]"),
        (
            _register_body(
                function={"triggers": [{"event": "a", "expression": "event.data.x =="}]}
            ),
            "triggers[0].expression",
        ),
        (_register_body(function={"id": ""}), "id"),
        ([1], "registration"),
    ],
)
def test_bad_registration_is_400_naming_the_field(h: Harness, body: Any, field: str) -> None:
    assert field in error_of(h.post("/fn/register", body), 400)
    assert [a["app_id"] for a in h.get("/v1/apps").json()["data"]] == ["t"]


def test_registration_with_non_integer_retries_is_refused(h: Harness) -> None:
    body = _register_body()
    body["functions"][0]["steps"]["step"]["retries"] = {"attempts": "many"}
    assert "retries" in error_of(h.post("/fn/register", body), 400)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/fn/register", _register_body(appname="other\u0000")),
        ("/fn/register", _register_body(function={"name": "f\u0000"})),
        ("/v1/signals", {"signal": "s\u0000"}),
    ],
    ids=["app-name", "function-name", "signal"],
)
def test_nul_characters_in_registrations_and_signals_are_no_server_error(
    h: Harness, path: str, body: Any
) -> None:
    res = h.post(path, body)
    assert res.status_code in (200, 400, 404), res.text
    assert h.get("/v1/apps").status_code == 200
    assert h.get("/v1/functions").status_code == 200


# -- no input gives a server error ------------------------------------------------------------

# Text includes lone surrogates (sent as JSON escapes); integers include ones past 64 bits.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
integers = st.integers() | st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 10**30])
scalars = (
    st.none()
    | st.booleans()
    | integers
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(any_text, json_values, max_size=3)


def well_typed_or_not(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly values of the right type (so bodies get past validation), sometimes any JSON."""
    return st.integers(0, 9).flatmap(lambda i: json_values if i == 0 else strategy)


event_like = st.fixed_dictionaries(
    {"name": well_typed_or_not(any_text | st.just("t/ok"))},
    optional={
        "data": well_typed_or_not(objects),
        "id": well_typed_or_not(any_text),
        "ts": well_typed_or_not(integers),
        "v": well_typed_or_not(any_text),
        "extra": json_values,
    },
)
event_bodies = st.one_of(event_like, st.lists(event_like, max_size=3), json_values)
trigger_like = st.fixed_dictionaries(
    {},
    optional={
        "event": well_typed_or_not(any_text),
        "expression": well_typed_or_not(
            any_text | st.sampled_from(["event.data.x == 1", "event.data.", "'\\u0000", "1 +"])
        ),
        "cron": well_typed_or_not(any_text),
    },
)
function_like = st.fixed_dictionaries(
    {
        "id": well_typed_or_not(any_text),
        "triggers": well_typed_or_not(st.lists(trigger_like, min_size=1, max_size=2)),
        "steps": well_typed_or_not(
            st.fixed_dictionaries(
                {
                    "step": st.fixed_dictionaries(
                        {"runtime": well_typed_or_not(st.fixed_dictionaries({"url": any_text}))},
                        optional={"retries": st.fixed_dictionaries({"attempts": json_values})},
                    )
                }
            )
        ),
    },
    optional={"name": well_typed_or_not(any_text), "extra": json_values},
)
register_bodies = st.one_of(
    st.fixed_dictionaries(
        {
            "appname": well_typed_or_not(any_text),
            "functions": well_typed_or_not(st.lists(function_like, max_size=3)),
        },
        optional={
            "url": well_typed_or_not(any_text),
            "sdk": json_values,
            "framework": json_values,
        },
    ),
    json_values,
)


@pytest.mark.parametrize(
    ("path", "bodies"), [("/e/any-key", event_bodies), ("/fn/register", register_bodies)]
)
def test_arbitrary_json_never_gives_a_server_error(
    database_url: str, path: str, bodies: st.SearchStrategy[Any]
) -> None:
    # On both stores: PostgreSQL refuses some strings (U+0000 in text) that SQLite keeps.
    with standalone(database_url) as client:

        @settings(
            max_examples=200,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(body=bodies)
        def check(body: Any) -> None:
            res = client.post(path, content=json.dumps(body))
            assert res.status_code < 500, (res.status_code, res.text)
            assert res.status_code in (200, 400), res.text
            # What was accepted can be read back.
            for listing in ("/v1/events", "/v1/apps", "/v1/functions"):
                assert client.get(listing).status_code == 200, listing

        check()


# -- production mode --------------------------------------------------------------------------


def test_production_api_needs_the_hashed_signing_key(database_url: str) -> None:
    good = {"authorization": f"Bearer {hashed_signing_key(KEY)}"}
    with standalone(database_url, signing_key=KEY, event_keys=["k1"]) as client:
        for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": KEY}):
            assert "Authorization" in error_of(client.get("/v1/runs", headers=headers), 401)
            assert error_of(client.get("/v1/functions", headers=headers), 401)
            assert error_of(client.post("/v1/events", json={"name": "x"}, headers=headers), 401)
            assert error_of(
                client.post("/fn/register", json=_register_body(), headers=headers), 401
            )
        assert client.get("/v1/runs", headers=good).json() == {"data": []}
        assert client.post("/fn/register", json=_register_body(), headers=good).status_code == 200

        assert "event key" in error_of(client.post("/e/unknown", json={"name": "x"}), 401)
        res = client.post("/e/k1", json={"name": "x"})
        assert res.status_code == 200 and len(res.json()["ids"]) == 1
        listed = client.get("/v1/events", headers=good).json()["data"]
        assert [e["name"] for e in listed] == ["x"]


def test_embedded_production_api_needs_the_hashed_signing_key(embedded: StartFactory) -> None:
    d = Durable("t", signing_key=KEY, event_key="k1")

    @d.function(id="ok", trigger=TriggerEvent("t/ok"))
    async def ok(ctx: Context) -> str:
        return "ok"

    h = embedded(d)
    assert error_of(h.get("/v1/runs"), 401)
    assert error_of(h.post("/e/dev", {"name": "t/ok"}), 401)
    assert h.post("/e/k1", {"name": "t/ok"}).status_code == 200
    assert d.send({"name": "t/ok"})
    good = {"authorization": f"Bearer {hashed_signing_key(KEY)}"}
    runs = h.client.get(API + "/v1/runs", headers=good).json()["data"]
    assert len(runs) == 2
