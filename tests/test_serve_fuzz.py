"""Property tests: whatever is POSTed, the serve handler answers, and only valid runs can 5xx."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from conftest import FRAMEWORKS, SERVE_PATH, build_app, exec_body, exec_query, step_hash
from durable_core import (
    Context,
    Durable,
    Request,
    Response,
    ServeHandler,
    SignatureError,
    TriggerEvent,
    signing,
)
from durable_core._execute import ExecutionRequest

FN_ID = "fuzz-echo"
URL = f"http://testserver{SERVE_PATH}"
# A request settles in milliseconds; past this deadline the handler is taken to hang.
ANSWER_DEADLINE = 5.0

FAST = settings(max_examples=200, deadline=None, database=None)
FEW = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def make_durable(d: Durable | None = None) -> Durable:
    d = d or Durable("fuzz", dev=True)

    @d.function(id="echo", trigger=TriggerEvent("fuzz/echo"))
    async def echo(ctx: Context) -> Any:
        first = await ctx.step.run("first", lambda: ctx.event.data.get("n", 0))
        return {"first": first, "data": ctx.event.data}

    return d


HANDLER = ServeHandler(make_durable())
KEY = "3b6f0c1d2e4a5b6c7d8e9f00112233445566778899aabbccddeeff0011223344"
PROD_HANDLER = ServeHandler(make_durable(Durable("fuzz", signing_key=KEY)))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

# Bodies close to a valid request: a real body with one field replaced by an arbitrary value.
FIELDS = [
    ("event",),
    ("event", "name"),
    ("event", "data"),
    ("event", "ts"),
    ("event", "id"),
    ("events",),
    ("steps",),
    ("ctx",),
    ("ctx", "run_id"),
    ("ctx", "attempt"),
    ("ctx", "max_attempts"),
    ("ctx", "disable_immediate_execution"),
    ("ctx", "stack"),
    ("use_api",),
    ("version",),
]


@st.composite
def near_valid_bodies(draw: st.DrawFn) -> bytes:
    body = exec_body({"name": "fuzz/echo", "data": {"n": 1}})
    if draw(st.booleans()):
        body["steps"] = {step_hash("first"): draw(json_values)}
    path = draw(st.sampled_from(FIELDS))
    target: dict[str, Any] = body
    for part in path[:-1]:
        target = target[part]
    if draw(st.booleans()):
        target[path[-1]] = draw(json_values)
    else:
        target.pop(path[-1], None)
    return json.dumps(body).encode()


def is_valid_request(body: bytes) -> bool:
    try:
        req = ExecutionRequest.model_validate_json(body)
    except pydantic.ValidationError:
        return False
    return not req.use_api


async def answer(req: Request, handler: ServeHandler = HANDLER) -> Response:
    try:
        return await asyncio.wait_for(handler.handle(req), ANSWER_DEADLINE)
    except TimeoutError:
        raise AssertionError(
            f"no answer within {ANSWER_DEADLINE} s to POST ?{req.query} {req.body!r}"
        ) from None


def call(
    body: bytes,
    query: dict[str, str],
    headers: dict[str, str] | None = None,
    handler: ServeHandler = HANDLER,
) -> Response:
    req = Request(method="POST", body=body, headers=headers or {}, query=query, url=URL)
    return asyncio.run(answer(req, handler))


def check(status: int, raw: bytes, body: bytes, fn_id: str | None) -> None:
    if status >= 500:
        assert fn_id == FN_ID and is_valid_request(body), (status, raw)
    if 400 <= status < 500:
        answer = json.loads(raw)
        assert isinstance(answer, dict)
        assert isinstance(answer.get("message"), str)
        assert answer["message"].strip()


@FAST
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes(body: bytes) -> None:
    res = call(body, {"fnId": FN_ID, "stepId": "step"})
    check(res.status, res.body, body, FN_ID)
    assert res.status < 500


@FAST
@given(value=json_values)
def test_arbitrary_json_values(value: Any) -> None:
    body = json.dumps(value).encode()
    res = call(body, {"fnId": FN_ID, "stepId": "step"})
    check(res.status, res.body, body, FN_ID)


@FAST
@given(body=near_valid_bodies(), step=st.sampled_from(["step", "", step_hash("first")]))
def test_near_valid_bodies(body: bytes, step: str) -> None:
    res = call(body, {"fnId": FN_ID, "stepId": step})
    check(res.status, res.body, body, FN_ID)
    if res.status in (200, 206):
        json.loads(res.body)


@FAST
@given(
    query=st.dictionaries(
        st.sampled_from(["fnId", "stepId", "probe", "deployId"]) | st.text(max_size=6),
        st.text(max_size=20) | st.just(FN_ID),
        max_size=4,
    ),
    valid=st.booleans(),
)
@example(query={"fnId": FN_ID, "stepId": "0" * 40}, valid=True)
def test_arbitrary_query_params(query: dict[str, str], valid: bool) -> None:
    body = json.dumps(exec_body({"name": "fuzz/echo"})).encode() if valid else b"{}"
    res = call(body, query)
    check(res.status, res.body, body, query.get("fnId"))
    if query.get("fnId") not in (None, "", FN_ID) and query.get("probe") != "trust":
        assert res.status == 404


@FAST
@given(
    signature=st.text(max_size=120)
    | st.builds(lambda t, s: f"t={t}&s={s}", st.integers(), st.text(max_size=70)),
    body=st.binary(max_size=200) | near_valid_bodies(),
)
def test_production_rejects_any_forged_signature(signature: str, body: bytes) -> None:
    res = call(body, {"fnId": FN_ID}, {"x-inngest-signature": signature}, PROD_HANDLER)
    assert res.status == 401
    check(res.status, res.body, body, FN_ID)
    assert "x-inngest-signature" not in res.headers


@FAST
@given(value=json_values | near_valid_bodies().map(json.loads), fn_id=st.sampled_from([FN_ID, "x"]))
def test_production_signed_json_is_never_refused_or_a_server_error(value: Any, fn_id: str) -> None:
    body = json.dumps(value).encode()
    try:
        signature = signing.sign(body, KEY, canonicalize=True)
    except SignatureError:
        assume(False)  # not expressible as JCS (e.g. an integer beyond 2**53): nobody can sign it
    res = call(body, {"fnId": fn_id}, {"x-inngest-signature": signature}, PROD_HANDLER)
    assert res.status != 401, res.body
    check(res.status, res.body, body, fn_id)
    # The response is signed over its raw bytes.
    ts = res.headers["x-inngest-signature"].split("&")[0].removeprefix("t=")
    assert res.headers["x-inngest-signature"] == signing.sign(res.body, KEY, int(ts))


@pytest.mark.parametrize("framework", FRAMEWORKS)
@FEW
@given(
    body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
    fn_id=st.sampled_from([FN_ID, "fuzz-other", ""]),
)
def test_through_the_adapters(framework: str, body: bytes, fn_id: str) -> None:
    with TestClient(build_app(framework, make_durable()), raise_server_exceptions=True) as client:
        res = client.post(
            f"{SERVE_PATH}?{exec_query(fn_id)}",
            content=body,
            headers={"content-type": "application/json"},
        )
    check(res.status_code, res.content, body, fn_id)
    assert res.headers["x-inngest-req-version"] == "2"
