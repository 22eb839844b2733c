"""The serve protocol through the FastAPI and Starlette adapters: introspection, execution, sync."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import SERVE_PATH, ServeFactory, UvicornServer, exec_body, step_hash
from durable_core import (
    Concurrency,
    Context,
    Debounce,
    Durable,
    NonRetriableError,
    RetryAfterError,
    SyncContext,
    Throttle,
    TriggerCron,
    TriggerEvent,
    signing,
)

KEY = "7c1f9a2b3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"
FALLBACK = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
KEY_HASH = hashlib.sha256(bytes.fromhex(KEY)).hexdigest()
RETRY_AT = dt.datetime(2031, 5, 4, 3, 2, 1, tzinfo=dt.UTC)


def double(n: int) -> int:
    return n * 2


async def on_failed(ctx: Context) -> dict[str, Any]:
    return {"handled": ctx.event.name, "function_id": ctx.event.data["function_id"]}


def make_app(durable: Durable) -> Durable:
    """Functions `f` (async, with on_failure), `g` (sync) and `p` (parallel) on `durable`."""

    @durable.function(
        id="f",
        trigger=TriggerEvent("shop/f", "event.data.go == true"),
        retries=2,
        on_failure=on_failed,
        concurrency=Concurrency(limit=3, key="event.data.user"),
        throttle=Throttle(limit=5, period="90s", burst=2),
        debounce=Debounce(period="5m", timeout="1h"),
    )
    async def f(ctx: Context) -> dict[str, Any]:
        a = await ctx.step.run("a", double, ctx.event.data.get("n", 1))
        mode = ctx.event.data.get("mode")
        if mode == "non-retriable":
            raise NonRetriableError("the order is gone")
        if mode == "retry-after":
            raise RetryAfterError("the shop is closed", RETRY_AT)
        if mode == "retry-in":
            raise RetryAfterError("the shop is closed", "30s")
        if mode == "boom":
            raise ValueError("boom")
        return {"a": a}

    @durable.function(id="g", trigger=TriggerCron("0 * * * *"))
    def g(ctx: SyncContext) -> int:
        return ctx.step.run("one", lambda: 41) + 1

    @durable.function(id="p", trigger=TriggerEvent("shop/p"))
    async def p(ctx: Context) -> list[int]:
        left, right = await ctx.step.parallel(
            lambda: ctx.step.run("left", lambda: 1), lambda: ctx.step.run("right", lambda: 2)
        )
        return [left, right]

    return durable


def dev_app() -> Durable:
    return make_app(Durable("shop", dev=True))


def hmac_hex(key: str, body: bytes, ts: str) -> str:
    raw = signing.strip_prefix(key).encode()
    return hmac.new(raw, body + ts.encode(), hashlib.sha256).hexdigest()


def assert_signed_response(body: bytes, header: str | None, key: str) -> None:
    """The response signature is an HMAC over the raw response body."""
    assert header is not None, "a signed request must get a signed response"
    parts = dict(p.split("=", 1) for p in header.split("&"))
    assert hmac.compare_digest(parts["s"], hmac_hex(key, body, parts["t"]))


def assert_sdk_headers(headers: Any) -> None:
    assert headers["x-inngest-sdk"].startswith("durable-py:v")
    assert headers["x-inngest-req-version"] == "2"


# -- introspection --------------------------------------------------------------------------


def test_get_introspection_dev(served: ServeFactory) -> None:
    s = served(dev_app())
    res = s.client.get(s.path)
    assert res.status_code == 200
    assert_sdk_headers(res.headers)
    body = res.json()
    # f, its on_failure function, g and p.
    assert body["function_count"] == 4
    assert body["mode"] == "dev"
    assert body["has_signing_key"] is False
    assert body["has_signing_key_fallback"] is False
    assert body["has_event_key"] is False


def test_get_introspection_cloud(served: ServeFactory) -> None:
    d = make_app(Durable("shop", signing_key=KEY, signing_key_fallback=FALLBACK, event_key="ek"))
    s = served(d)
    res = s.client.get(s.path)
    assert res.status_code == 200
    body = res.json()
    assert body["mode"] == "cloud"
    assert body["has_signing_key"] is True
    assert body["has_signing_key_fallback"] is True
    assert body["has_event_key"] is True
    assert "signing_key_hash" not in body, "unsigned introspection must not reveal details"


def test_get_introspection_signed_shows_details(served: ServeFactory) -> None:
    d = make_app(Durable("shop", signing_key=KEY))
    s = served(d)
    res = s.client.get(s.path, headers={"x-inngest-signature": signing.sign(b"", KEY)})
    body = res.json()
    assert body["authentication_succeeded"] is True
    assert body["app_id"] == "shop"
    assert body["signing_key_hash"] == KEY_HASH
    assert body["serve_path"] == SERVE_PATH

    forged = s.client.get(s.path, headers={"x-inngest-signature": signing.sign(b"", FALLBACK)})
    assert forged.json()["authentication_succeeded"] is False
    assert "signing_key_hash" not in forged.json()


def test_function_count_without_on_failure(served: ServeFactory) -> None:
    d = Durable("solo", dev=True)

    @d.function(id="only", trigger=TriggerEvent("solo/x"))
    async def only(ctx: Context) -> None:
        return None

    s = served(d)
    assert s.client.get(s.path).json()["function_count"] == 1


# -- execution ------------------------------------------------------------------------------


def test_new_step_answers_206_with_its_op(served: ServeFactory) -> None:
    s = served(dev_app())
    res = s.execute("shop-f", exec_body({"name": "shop/f", "data": {"n": 21}}))
    assert res.status_code == 206
    assert_sdk_headers(res.headers)
    [op] = res.json()
    assert op["op"] == "StepRun"
    assert op["id"] == step_hash("a")
    assert op["data"] == 42
    assert op["displayName"] == "a"
    assert op["userland"]["id"] == "a"


def test_memoized_step_answers_200_with_output(served: ServeFactory) -> None:
    s = served(dev_app())
    body = exec_body({"name": "shop/f", "data": {"n": 21}}, steps={step_hash("a"): {"data": 42}})
    res = s.execute("shop-f", body)
    assert res.status_code == 200
    assert_sdk_headers(res.headers)
    assert res.json() == {"a": 42}


def test_sync_function_through_adapter(served: ServeFactory) -> None:
    s = served(dev_app())
    first = s.execute("shop-g", exec_body())
    assert first.status_code == 206
    assert first.json()[0]["data"] == 41
    done = s.execute("shop-g", exec_body(steps={step_hash("one"): {"data": 41}}))
    assert (done.status_code, done.json()) == (200, 42)


def test_parallel_steps_are_planned_then_run_by_step_id(served: ServeFactory) -> None:
    s = served(dev_app())
    planned = s.execute("shop-p", exec_body({"name": "shop/p"}))
    assert planned.status_code == 206
    ops = planned.json()
    assert {(op["op"], op["id"]) for op in ops} == {
        ("StepPlanned", step_hash("left")),
        ("StepPlanned", step_hash("right")),
    }
    ran = s.execute("shop-p", exec_body({"name": "shop/p"}), step=step_hash("right"))
    assert ran.status_code == 206
    [op] = ran.json()
    assert (op["op"], op["id"], op["data"]) == ("StepRun", step_hash("right"), 2)

    steps = {step_hash("left"): {"data": 1}, step_hash("right"): {"data": 2}}
    done = s.execute("shop-p", exec_body({"name": "shop/p"}, steps=steps))
    assert (done.status_code, done.json()) == (200, [1, 2])


async def busy(turns: int, value: int) -> int:
    """An async step handler that stays busy for `turns` event-loop turns (like awaiting I/O)."""
    for _ in range(turns):
        await asyncio.sleep(0)
    return value


def late_branch_app() -> Durable:
    d = Durable("shop", dev=True)

    @d.function(id="late", trigger=TriggerEvent("shop/late"))
    async def late(ctx: Context) -> list[int]:
        async def right() -> int:
            await asyncio.sleep(0)  # reaches its step one loop turn after "left"
            return await ctx.step.run("right", busy, 100, 2)

        left, right_value = await asyncio.gather(ctx.step.run("left", busy, 100, 1), right())
        return [left, right_value]

    return d


@pytest.mark.parametrize("target", ["left", "right"])
def test_targeted_parallel_step_runs_when_its_branch_starts_late(
    served: ServeFactory, target: str
) -> None:
    s = served(late_branch_app())
    planned = s.execute("shop-late", exec_body({"name": "shop/late"}))
    assert planned.status_code == 206
    assert {op["op"] for op in planned.json()} == {"StepPlanned"}

    ran = s.execute("shop-late", exec_body({"name": "shop/late"}), step=step_hash(target))
    assert ran.status_code == 206, ran.text
    [op] = ran.json()
    assert (op["op"], op["id"], op["data"]) == (
        "StepRun",
        step_hash(target),
        {"left": 1, "right": 2}[target],
    )


def _raise_after_step(s: Any, mode: str) -> Any:
    body = exec_body(
        {"name": "shop/f", "data": {"mode": mode}}, steps={step_hash("a"): {"data": 2}}
    )
    return s.execute("shop-f", body)


def test_non_retriable_error_sets_no_retry(served: ServeFactory) -> None:
    s = served(dev_app())
    res = _raise_after_step(s, "non-retriable")
    assert res.status_code == 500
    assert_sdk_headers(res.headers)
    assert res.headers["x-inngest-no-retry"] == "true"
    body = res.json()
    assert body["name"] == "NonRetriableError"
    assert body["message"] == "the order is gone"
    assert "stack" in body


def test_retry_after_error_sets_iso_retry_after(served: ServeFactory) -> None:
    s = served(dev_app())
    res = _raise_after_step(s, "retry-after")
    assert res.status_code == 500
    assert_sdk_headers(res.headers)
    assert dt.datetime.fromisoformat(res.headers["retry-after"]) == RETRY_AT
    assert "x-inngest-no-retry" not in res.headers
    assert res.json()["name"] == "RetryAfterError"


def test_retry_after_duration_is_a_future_iso_time(served: ServeFactory) -> None:
    s = served(dev_app())
    before = dt.datetime.now(dt.UTC)
    res = _raise_after_step(s, "retry-in")
    retry_at = dt.datetime.fromisoformat(res.headers["retry-after"])
    assert retry_at.tzinfo is not None
    assert retry_at > before


def test_ordinary_exception_is_a_retriable_500(served: ServeFactory) -> None:
    s = served(dev_app())
    res = _raise_after_step(s, "boom")
    assert res.status_code == 500
    assert_sdk_headers(res.headers)
    assert "x-inngest-no-retry" not in res.headers
    assert "retry-after" not in res.headers
    body = res.json()
    assert (body["name"], body["message"]) == ("ValueError", "boom")


def test_on_failure_function_is_executable(served: ServeFactory) -> None:
    s = served(dev_app())
    event = {
        "name": "inngest/function.failed",
        "data": {"function_id": "shop-f", "run_id": "r0", "error": {"message": "boom"}},
    }
    res = s.execute("shop-f-failure", exec_body(event))
    assert res.status_code == 200
    assert res.json() == {"handled": "inngest/function.failed", "function_id": "shop-f"}


# -- bad requests ---------------------------------------------------------------------------


def _assert_error(res: Any, status: int, *needles: str) -> str:
    assert res.status_code == status, res.text
    assert_sdk_headers(res.headers)
    message = res.json()["message"]
    for needle in needles:
        assert needle in message
    return message


def test_missing_fn_id_is_400(served: ServeFactory) -> None:
    s = served(dev_app())
    res = s.client.post(s.path, json=exec_body())
    _assert_error(res, 400, "fnId")


def test_unknown_fn_id_is_404_listing_served_functions(served: ServeFactory) -> None:
    s = served(dev_app())
    res = s.execute("shop-nope", exec_body())
    _assert_error(res, 404, "shop-nope", "shop-f", "shop-g", "shop-p")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"", "body"),
        (json.dumps({"event": {"name": "x"}, "ctx": {}}).encode(), "ctx.run_id"),
        (json.dumps({"event": {"name": "x"}, "ctx": {"run_id": 5}}).encode(), "ctx.run_id"),
        (
            json.dumps({"event": {"name": "x"}, "ctx": {"run_id": "r", "attempt": "x"}}).encode(),
            "ctx.attempt",
        ),
        (json.dumps({"ctx": {"run_id": "r"}}).encode(), "event"),
        (json.dumps({"event": {"name": "x", "data": 3}, "ctx": {"run_id": "r"}}).encode(), "data"),
        (json.dumps({**exec_body(), "steps": [1, 2]}).encode(), "steps"),
        (json.dumps([1, 2]).encode(), "body"),
    ],
)
def test_malformed_body_is_400_naming_the_field(
    served: ServeFactory, body: bytes, field: str
) -> None:
    s = served(dev_app())
    res = s.client.post(s.url("shop-f"), content=body, headers={"content-type": "application/json"})
    _assert_error(res, 400, field)


def test_use_api_is_refused(served: ServeFactory) -> None:
    s = served(dev_app())
    res = s.execute("shop-f", {**exec_body(), "use_api": True})
    _assert_error(res, 400, "use_api")


# -- out-of-band sync -----------------------------------------------------------------------


@dataclasses.dataclass
class FakeOrchestrator:
    url: str
    calls: list[tuple[dict[str, str], Any, dict[str, str]]]


@pytest.fixture
def orchestrator(uvicorn_server: Callable[[Any], UvicornServer]) -> FakeOrchestrator:
    calls: list[tuple[dict[str, str], Any, dict[str, str]]] = []

    async def register(request: Request) -> JSONResponse:
        calls.append((dict(request.headers), await request.json(), dict(request.query_params)))
        return JSONResponse({"ok": True, "modified": True})

    app = Starlette(routes=[Route("/fn/register", register, methods=["POST"])])
    return FakeOrchestrator(uvicorn_server(app).base_url, calls)


def test_put_registers_with_the_orchestrator(
    served: ServeFactory, orchestrator: FakeOrchestrator
) -> None:
    s = served(make_app(Durable("shop", dev=True, orchestrator_url=orchestrator.url)))
    res = s.client.put(s.path)
    assert res.status_code == 200, res.text
    assert_sdk_headers(res.headers)
    assert res.json() == {"ok": True, "modified": True}

    [(headers, body, _query)] = orchestrator.calls
    assert "authorization" not in headers
    serve_url = str(s.client.base_url).rstrip("/") + s.path
    assert body["appname"] == "shop"
    assert body["deploy_type"] == "ping"
    assert body["framework"] == {"fastapi": "fast_api", "starlette": "starlette"}[s.framework]
    assert body["sdk"].startswith("durable-py:v")
    assert body["url"] == serve_url
    assert body["v"] == "0.1"

    functions = {fn["id"]: fn for fn in body["functions"]}
    assert set(functions) == {"shop-f", "shop-f-failure", "shop-g", "shop-p"}

    f = functions["shop-f"]
    assert f["triggers"] == [{"event": "shop/f", "expression": "event.data.go == true"}]
    step = f["steps"]["step"]
    assert step["id"] == "step"
    assert step["retries"] == {"attempts": 2}
    assert step["runtime"]["type"] == "http"
    assert step["runtime"]["url"].startswith(serve_url + "?")
    assert "fnId=shop-f" in step["runtime"]["url"]
    assert "stepId=step" in step["runtime"]["url"]
    assert f["concurrency"] == [{"limit": 3, "key": "event.data.user"}]
    assert f["throttle"] == {"limit": 5, "period": "90s", "burst": 2}
    assert f["debounce"] == {"period": "5m", "timeout": "1h"}
    assert "rateLimit" not in f, "unset options are left out"

    failure = functions["shop-f-failure"]
    assert failure["triggers"] == [
        {"event": "inngest/function.failed", "expression": "event.data.function_id == 'shop-f'"}
    ]
    assert "fnId=shop-f-failure" in failure["steps"]["step"]["runtime"]["url"]

    assert functions["shop-g"]["triggers"] == [{"cron": "0 * * * *"}]
    assert functions["shop-g"]["steps"]["step"]["retries"] == {"attempts": 4}


def test_put_forwards_deploy_id(served: ServeFactory, orchestrator: FakeOrchestrator) -> None:
    s = served(make_app(Durable("shop", dev=True, orchestrator_url=orchestrator.url)))
    assert s.client.put(s.path, params={"deployId": "dep-1"}).status_code == 200
    [(_headers, _body, query)] = orchestrator.calls
    assert query == {"deployId": "dep-1"}


@pytest.mark.parametrize("key", [KEY, "signkey-test-" + KEY])
def test_put_in_production_carries_the_hashed_key(
    served: ServeFactory, orchestrator: FakeOrchestrator, key: str
) -> None:
    origin = "https://shop.example.com"
    d = Durable("shop", signing_key=key, orchestrator_url=orchestrator.url, serve_origin=origin)
    s = served(make_app(d))
    assert s.client.put(s.path).status_code == 200
    [(headers, body, _query)] = orchestrator.calls
    assert headers["authorization"] == f"Bearer {KEY_HASH}"
    assert body["url"] == origin + s.path


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback URL where nothing listens: the port is bound but never accepts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_put_with_unreachable_orchestrator_is_a_clear_error(
    served: ServeFactory, dead_url: str
) -> None:
    s = served(make_app(Durable("shop", dev=True, orchestrator_url=dead_url)))
    res = s.client.put(s.path)
    assert res.status_code >= 500
    assert_sdk_headers(res.headers)
    message = res.json()["message"]
    assert f"{dead_url}/fn/register" in message
    assert "DURABLE_ORCHESTRATOR_URL" in message


# -- in-band sync ---------------------------------------------------------------------------


def _in_band(s: Any, payload: dict[str, Any], key: str | None) -> Any:
    raw = json.dumps(payload).encode()
    headers = {"content-type": "application/json", "x-inngest-sync-kind": "in_band"}
    if key is not None:
        headers["x-inngest-signature"] = signing.sign(raw, key, canonicalize=True)
    return s.client.put(s.path, content=raw, headers=headers)


def test_in_band_sync_returns_signed_function_configs(served: ServeFactory) -> None:
    s = served(make_app(Durable("shop", signing_key=KEY)))
    url = "https://shop.example.com/api/durable"
    res = _in_band(s, {"url": url}, KEY)
    assert res.status_code == 200, res.text
    assert_sdk_headers(res.headers)
    assert res.headers["x-inngest-sync-kind"] == "in_band"
    assert_signed_response(res.content, res.headers.get("x-inngest-signature"), KEY)
    body = res.json()
    assert body["url"] == url
    assert body["app_id"] == "shop"
    ids = {fn["id"] for fn in body["functions"]}
    assert ids == {"shop-f", "shop-f-failure", "shop-g", "shop-p"}
    for fn in body["functions"]:
        assert fn["steps"]["step"]["runtime"]["url"].startswith(url + "?fnId=")


def test_unsigned_in_band_sync_is_401(served: ServeFactory) -> None:
    s = served(make_app(Durable("shop", signing_key=KEY)))
    res = _in_band(s, {"url": "https://shop.example.com/api/durable"}, None)
    _assert_error(res, 401)
    assert "x-inngest-signature" not in res.headers


def test_in_band_sync_signed_with_another_key_is_401(served: ServeFactory) -> None:
    s = served(make_app(Durable("shop", signing_key=KEY)))
    res = _in_band(s, {"url": "https://shop.example.com/api/durable"}, FALLBACK)
    _assert_error(res, 401)
