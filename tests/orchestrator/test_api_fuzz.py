"""Every endpoint, on each store, against generated requests: a standalone orchestrator in
production mode (`durable start`'s API) and an app serving functions, both under uvicorn.

Bodies nest thousands of levels deep, hold integers of thousands of digits, NaN, NUL
characters, lone surrogates, wrong types, random bytes or long strings; ids and query
parameters are odd; signatures, bearers, event keys and Host headers are wrong or missing.
Whatever arrives, no answer is a 5xx (beyond the serve protocol's "the function raised"), every
4xx is JSON naming the problem, nothing hangs, and afterwards a normal run completes and the
listings answer.

`DURABLE_FUZZ_EXAMPLES=3000 pytest -s -k fuzz` runs a longer session and prints the statuses.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
from fastapi import FastAPI
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from adapters.fastapi import Serve
from durable_core import Context, Durable, TriggerEvent
from durable_core._bounded_json import MAX_BODY
from durable_core.errors import ServeErrorCode
from durable_core.orchestrator.api import Api
from durable_core.orchestrator.service import FAST_BACKOFF, Orchestrator
from durable_core.orchestrator.store import open_store
from durable_core.signing import hashed_signing_key, sign

from .conftest import UvicornApp, wait_until

KEY = "5c" * 32
EVENT_KEY = "fuzz-key"
APP = "fz"
BEARER = f"Bearer {hashed_signing_key(KEY)}"
EXAMPLES = int(os.environ.get("DURABLE_FUZZ_EXAMPLES", "250"))
ANSWER_DEADLINE = 10.0  # seconds; a request settles in milliseconds, so this means a hang


@dataclasses.dataclass
class Call:
    target: str  # "orch" or "app"
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str | bytes]
    body: bytes

    def __repr__(self) -> str:
        shown = self.body if len(self.body) < 300 else self.body[:300] + b"..."
        return f"{self.method} {self.target}{self.path}?{self.query} {self.headers} {shown!r}"


# -- bodies -----------------------------------------------------------------------------------

# Text includes NUL and lone surrogates (json.dumps writes them as escapes); a URL cannot
# carry a lone surrogate, so query parameters are drawn without them.
text = st.text(st.characters(codec=None, exclude_categories=()), max_size=10)
url_text = st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=10)
names = st.sampled_from(["fz/echo", "fz/other", "inngest/function.failed", ""]) | text
integers = st.integers() | st.sampled_from([2**53 - 1, 2**53, -(2**53), 2**63, 10**30])
scalars = st.none() | st.booleans() | integers | st.floats() | text  # floats: NaN, ±Infinity
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=16,
)


def either(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `good` (so bodies get past the first checks), sometimes any JSON value."""
    return st.integers(0, 4).flatmap(lambda i: json_values if i == 0 else good)


events = st.fixed_dictionaries(
    {"name": either(names)},
    optional={
        "data": either(st.dictionaries(text, json_values, max_size=3)),
        "id": either(text),
        "ts": either(integers),
        "extra": json_values,
    },
)
urls = st.sampled_from(
    ["http://127.0.0.1:9/api/durable", "", "not a url", "ftp://127.0.0.1:9/x", "http://[::1"]
)
functions = st.fixed_dictionaries(
    {
        "id": either(st.sampled_from(["fz-other-f", ""]) | text),
        "triggers": either(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "event": either(names),
                        "expression": either(
                            text | st.sampled_from(["event.data.n == 1", "1 +", "x" * 5000])
                        ),
                        "cron": either(text | st.just("* * * * *")),
                    },
                ),
                max_size=2,
            )
        ),
        "steps": either(
            st.fixed_dictionaries(
                {"step": st.fixed_dictionaries({"runtime": st.fixed_dictionaries({"url": urls})})},
                optional={"retries": json_values},
            )
        ),
    },
    optional={
        "name": either(text),
        "concurrency": json_values,
        "throttle": json_values,
        "debounce": json_values,
        "rateLimit": json_values,
        "batchEvents": json_values,
        "cancel": json_values,
        "timeouts": json_values,
    },
)
registrations = st.fixed_dictionaries(
    {
        # Never the app under test: a fuzzed registration must not replace its functions.
        "appname": either(st.sampled_from(["fz-other", ""]) | text.map(lambda t: f"x{t}")),
        "functions": either(st.lists(functions, max_size=2)),
    },
    optional={"url": either(urls), "sdk": json_values, "framework": json_values},
)
signals = st.fixed_dictionaries(
    {"signal": either(text | st.just("fz-signal"))}, optional={"data": json_values}
)
invokes = st.fixed_dictionaries(
    {},
    optional={
        "data": either(st.dictionaries(text, json_values, max_size=3)),
        "wait": either(st.just(False)),  # a waiting invoke is not a hang: it is asked for
        "timeout": either(st.floats(0, 1)),
    },
)


checkpoint_steps = st.lists(
    st.fixed_dictionaries(
        {
            "id": text | st.sampled_from(["s1", "s2"]),
            "op": st.sampled_from(["StepRun", "StepFailed", "StepError", "RunComplete", "Sleep"])
            | text,
        },
        optional={"name": text, "data": json_values, "error": json_values},
    ),
    max_size=3,
)
endpoint_runs = st.fixed_dictionaries(
    {
        "run_id": text | st.sampled_from(["r1", "r2"]),
        "event": st.fixed_dictionaries(
            {"name": st.just("inngest/http.request") | text},
            optional={"data": st.fixed_dictionaries({"domain": text, "path": text}) | json_values},
        ),
        "steps": checkpoint_steps,
    }
)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity as their (non-JSON) tokens


def deep(levels: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * levels + b"]" * levels
    return b'{"a":' * levels + b"1" + b"}" * levels


def in_event(raw: bytes) -> bytes:
    return b'{"name": "fz/echo", "data": {"n": ' + raw + b"}}"


hostile = st.one_of(
    st.builds(deep, st.integers(1, 3000), st.sampled_from(["list", "object"])),
    st.integers(1, 6000).map(lambda n: b"9" * n),
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"9007199254740993"]),
    st.integers(0, 200_000).map(lambda n: dumps("x" * n)),  # long text, within the limit
)
any_body = st.one_of(
    json_values.map(dumps),
    st.binary(max_size=300),
    hostile,
    hostile.map(in_event),
    hostile.map(lambda raw: b"[" + in_event(raw) + b"]"),
)


def body_for(good: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.integers(0, 3).flatmap(lambda i: any_body if i == 0 else good.map(dumps))


# -- requests ---------------------------------------------------------------------------------

odd_ids = text | st.sampled_from(["\x00", "%00", "..", "a/b", "x" * 3000, "01J" + "0" * 23])
auth = st.sampled_from([BEARER] * 6 + ["", "Bearer nope", KEY, BEARER + "x"])


def orch_call(
    method: str, path: str, body: bytes = b"", query: list[tuple[str, str]] | None = None
) -> st.SearchStrategy[Call]:
    return auth.map(
        lambda token: Call(
            "orch", method, path, query or [], {"authorization": token} if token else {}, body
        )
    )


def quoted(value: str) -> str:
    return urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")


query_values = url_text | st.sampled_from(["", "\x00", "-1", "0", "1001", "9" * 5000, "50"])
orchestrator_calls = st.one_of(
    st.tuples(st.sampled_from([EVENT_KEY] * 4 + ["nope", "", "\x00"]), body_for(events)).map(
        lambda kb: Call("orch", "POST", f"/e/{quoted(kb[0])}" if kb[0] else "/e/", [], {}, kb[1])
    ),
    body_for(events).flatmap(lambda b: orch_call("POST", "/v1/events", b)),
    body_for(registrations).flatmap(lambda b: orch_call("POST", "/fn/register", b)),
    body_for(signals).flatmap(lambda b: orch_call("POST", "/v1/signals", b)),
    body_for(endpoint_runs).flatmap(lambda b: orch_call("POST", "/v1/checkpoint", b)),
    st.tuples(
        odd_ids | st.sampled_from(["r1", "r2"]),
        body_for(st.fixed_dictionaries({"steps": checkpoint_steps})),
    ).flatmap(lambda ib: orch_call("POST", f"/v1/checkpoint/{quoted(ib[0])}/steps", ib[1])),
    st.tuples(st.sampled_from([f"{APP}-echo"]) | odd_ids, body_for(invokes)).flatmap(
        lambda fb: orch_call("POST", f"/v1/functions/{quoted(fb[0])}/invoke", fb[1])
    ),
    st.tuples(odd_ids, st.sampled_from(["", "/cancel", "/rerun"])).flatmap(
        lambda ia: orch_call("GET" if not ia[1] else "POST", f"/v1/runs/{quoted(ia[0])}{ia[1]}")
    ),
    st.tuples(
        st.sampled_from(["/v1/runs", "/v1/events"]),
        st.lists(
            st.tuples(
                st.sampled_from(["function_id", "status", "limit", "before", "name"]) | url_text,
                query_values,
            ),
            max_size=3,
        ),
    ).flatmap(lambda pq: orch_call("GET", pq[0], query=pq[1])),
    st.sampled_from(["/v1/apps", "/v1/functions", "/health"]).flatmap(
        lambda p: orch_call("GET", p)
    ),
    st.tuples(
        st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]),
        st.sampled_from(["/", "/v1", "/v1/runs/x/y", "/e", "/fn/register", "/v1/signals"])
        | text.map(lambda t: "/" + quoted(t)),
        any_body,
    ).flatmap(lambda mpb: orch_call(mpb[0], mpb[1], mpb[2])),
)

hosts = st.sampled_from(
    ["attacker.example:8443", "[::1", "a:b:c", "127.0.0.1:99999", "x" * 300, "", "localhost"]
)


FIRST = hashlib.sha1(b"first").hexdigest()  # the hashed id of the echo function's step


@st.composite
def app_calls(draw: st.DrawFn) -> Call:
    """Mostly executions of the served function (signed or not, valid or not), then syncs,
    introspection and odd queries."""
    kind = draw(st.integers(0, 9))
    if kind < 6:
        method = "POST"
        query = [("fnId", f"{APP}-echo"), ("stepId", draw(st.sampled_from(["step", FIRST])))]
        body = draw(execution_requests if kind < 4 else any_body)
    else:
        method = draw(st.sampled_from(["POST", "GET", "PUT"]))  # what the adapter routes
        query = draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["fnId", "stepId", "probe", "deployId"]) | url_text,
                    st.sampled_from([f"{APP}-echo", "step", "trust", ""]) | url_text,
                ),
                max_size=3,
            )
        )
        body = draw(execution_requests | any_body)
    headers: dict[str, str | bytes] = {}
    how = draw(st.sampled_from(["signed"] * 4 + ["unsigned", "garbage", "stale", "other"]))
    if how == "signed":
        headers["x-inngest-signature"] = sign(body, KEY)
    elif how == "garbage":
        headers["x-inngest-signature"] = draw(  # any bytes a header value may hold
            st.binary(max_size=80).map(
                lambda b: bytes(c for c in b if c >= 0x21 and c != 0x7F) or b"x"
            )
        )
    elif how == "stale":
        headers["x-inngest-signature"] = sign(body, KEY, int(time.time()) - 3600)
    elif how == "other":
        headers["x-inngest-signature"] = sign(body, "77" * 32)
    if draw(st.integers(0, 3)) == 0:
        headers["host"] = draw(hosts)
    if draw(st.integers(0, 5)) == 0:
        headers["x-inngest-sync-kind"] = "in_band"
    return Call("app", method, "/api/durable", query, headers, body)


def _execution(event: Any, steps: Any) -> bytes:
    return dumps(
        {
            "event": event,
            "events": [event],
            "steps": steps,
            "ctx": {"run_id": "01FUZZ", "attempt": 0, "max_attempts": 1},
            "use_api": False,
            "version": 2,
        }
    )


execution_requests = st.builds(
    _execution,
    either(
        st.fixed_dictionaries(
            {"name": st.just("fz/echo"), "data": either(st.dictionaries(text, json_values))}
        )
    ),
    either(
        st.dictionaries(
            st.just(FIRST) | text,
            st.fixed_dictionaries({"data": json_values}) | json_values,
            max_size=2,
        )
    ),
)
calls = st.integers(0, 2).flatmap(lambda i: app_calls() if i == 0 else orchestrator_calls)


# -- the servers ------------------------------------------------------------------------------


@dataclasses.dataclass
class Stack:
    orch: httpx.Client
    app: httpx.Client
    statuses: collections.Counter[tuple[str, int, str]]


def make_app(orchestrator_url: str) -> tuple[Durable, FastAPI]:
    d = Durable(APP, signing_key=KEY, event_key=EVENT_KEY, orchestrator_url=orchestrator_url)

    @d.function(id="echo", trigger=TriggerEvent("fz/echo"), retries=0)
    async def echo(ctx: Context) -> Any:
        first = await ctx.step.run("first", lambda: ctx.event.data.get("n"))
        return {"first": first, "data": ctx.event.data}

    web = FastAPI()
    Serve(web, d, embedded=False)
    return d, web


@contextlib.contextmanager
def serving(database_url: str) -> Iterator[Stack]:
    orch = Orchestrator(
        open_store(database_url), signing_key=KEY, event_keys=[EVENT_KEY], backoff=FAST_BACKOFF
    )

    orch_server = UvicornApp(Api(orch).served())
    durable, web = make_app(orch_server.base_url)
    app_server = UvicornApp(web)
    durable.serve_origin = app_server.base_url
    orch_server.start()
    app_server.start()
    timeout = httpx.Timeout(ANSWER_DEADLINE)
    try:
        with (
            httpx.Client(base_url=orch_server.base_url, timeout=timeout) as orch_http,
            httpx.Client(base_url=app_server.base_url, timeout=timeout) as app_http,
        ):
            synced = app_http.put("/api/durable")
            assert synced.status_code == 200, synced.text
            yield Stack(orch_http, app_http, collections.Counter())
    finally:
        app_server.stop()
        orch_server.stop()


# -- the checks -------------------------------------------------------------------------------


def send(stack: Stack, call: Call) -> httpx.Response:
    client = stack.orch if call.target == "orch" else stack.app
    try:
        return client.request(
            call.method, call.path, params=call.query, headers=call.headers, content=call.body
        )
    except httpx.TimeoutException:
        raise AssertionError(f"no answer within {ANSWER_DEADLINE} s: {call!r}") from None


def check_answer(call: Call, res: httpx.Response) -> None:
    if 300 <= res.status_code < 400:  # /v1/runs/ -> /v1/runs
        return
    dashboard = ("text/html", "text/javascript", "text/css", "image/svg+xml")
    if res.status_code == 200 and res.headers.get("content-type", "").startswith(dashboard):
        assert call.method in ("GET", "HEAD"), call  # the dashboard's pages and files
        return
    body = res.json()  # every other answer is JSON
    function_error = (
        res.status_code >= 400
        and call.target == "app"
        and call.method == "POST"
        and isinstance(body, dict)
        and body.get("code") not in set(ServeErrorCode)
    )
    if function_error:  # the serve protocol's "the function raised": 4xx or 5xx
        assert isinstance(body.get("name"), str) and isinstance(body.get("message"), str), res.text
        return
    assert res.status_code < 500, (res.status_code, res.text, call)
    if res.status_code >= 400:
        assert isinstance(body, dict), (res.text, call)
        assert isinstance(body.get("error"), str) and body["error"].strip(), (res.text, call)
        assert body.get("status") == res.status_code, (res.text, call)


def check_still_serving(stack: Stack) -> None:
    headers = {"authorization": BEARER}
    event = {"name": "fz/echo", "data": {"n": 7, "after": "fuzz"}}
    res = stack.orch.post(f"/e/{EVENT_KEY}", json=event)
    assert res.status_code == 200, res.text
    [event_id] = res.json()["ids"]

    def finished() -> dict[str, Any] | None:
        runs = stack.orch.get(
            "/v1/runs", params={"function_id": f"{APP}-echo", "limit": 1000}, headers=headers
        )
        assert runs.status_code == 200, runs.text
        for run in runs.json()["data"]:
            data = (run.get("event") or {}).get("data") or {}
            if data.get("after") == "fuzz" and run["status"] in ("completed", "failed"):
                return dict(run)
        return None

    run = wait_until(f"the run of event {event_id}", finished, deadline=30.0)
    assert run["status"] == "completed", run
    assert run["output"] == {"first": 7, "data": event["data"]}
    for listing in ("/v1/runs", "/v1/events", "/v1/functions", "/v1/apps"):
        assert stack.orch.get(listing, headers=headers).status_code == 200, listing


def test_fuzz_every_endpoint(database_url: str) -> None:
    with serving(database_url) as stack:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(call=calls)
        @example(call=Call("orch", "POST", f"/e/{EVENT_KEY}", [], {}, b"[" * 2000 + b"]" * 2000))
        @example(call=Call("orch", "POST", f"/e/{EVENT_KEY}", [], {}, b"x" * (MAX_BODY + 1)))
        @example(call=Call("app", "POST", "/api/durable", [], {}, b"[" * 2000 + b"]" * 2000))
        def check(call: Call) -> None:
            note(repr(call))
            res = send(stack, call)
            note(f"{res.status_code} {res.headers} {res.text[:500]}")
            what = res.json().get("name") if res.status_code >= 500 else None  # function errors
            stack.statuses[(call.target, res.status_code, what or "")] += 1
            check_answer(call, res)

        check()
        print(f"\nstatuses ({database_url.split(':')[0]}):", dict(sorted(stack.statuses.items())))
        check_still_serving(stack)
