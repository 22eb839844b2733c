"""Request and response signatures: production apps only run signed requests, and sign answers."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import rfc8785
from inngest._internal import net, server_lib
from starlette.testclient import TestClient

from conftest import (
    FRAMEWORKS,
    SERVE_PATH,
    ServeFactory,
    UvicornServer,
    build_app,
    exec_body,
    exec_query,
    step_hash,
)
from durable_core import ConfigError, Context, Durable, SignatureError, TriggerEvent, signing

KEY = "5a9c0e1f2b3d4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6"
FALLBACK = "e1d2c3b4a5968778695a4b3c2d1e0f1e1d2c3b4a5968778695a4b3c2d1e0f1e"
OTHER = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


def hmac_sig(key: str, payload: bytes, ts: int) -> str:
    """An independent signer: HMAC-SHA256 over `payload + str(ts)` with the unprefixed key."""
    mac = hmac.new(key.encode(), payload + str(ts).encode(), hashlib.sha256)
    return f"t={ts}&s={mac.hexdigest()}"


def jcs(raw: bytes) -> bytes:
    return bytes(rfc8785.dumps(json.loads(raw)))


def add_app(durable: Durable) -> Durable:
    @durable.function(id="add", trigger=TriggerEvent("math/add"))
    async def add(ctx: Context) -> dict[str, int]:
        total = await ctx.step.run("sum", lambda: ctx.event.data["a"] + ctx.event.data["b"])
        return {"total": total}

    return durable


def prod_app(signing_key: str = KEY) -> Durable:
    return add_app(Durable("calc", signing_key=signing_key, signing_key_fallback=FALLBACK))


def done_body() -> bytes:
    body = exec_body(
        {"name": "math/add", "data": {"a": 2, "b": 3}}, steps={step_hash("sum"): {"data": 5}}
    )
    return jcs(json.dumps(body).encode())


def post(s: Any, raw: bytes, signature: str | None) -> Any:
    headers = {"content-type": "application/json"}
    if signature is not None:
        headers["x-inngest-signature"] = signature
    return s.client.post(f"{s.path}?{exec_query('calc-add')}", content=raw, headers=headers)


def response_key(res: Any) -> str | None:
    """Which of the known keys signed the raw response body."""
    header = res.headers.get("x-inngest-signature")
    if header is None:
        return None
    ts = int(dict(p.split("=", 1) for p in header.split("&"))["t"])
    for key in (KEY, FALLBACK, OTHER):
        if hmac.compare_digest(header, hmac_sig(key, res.content, ts)):
            return key
    raise AssertionError(f"the response signature {header!r} matches no known key")


# -- through the adapters -------------------------------------------------------------------


def test_signed_request_executes_and_response_is_signed(served: ServeFactory) -> None:
    s = served(prod_app())
    raw = done_body()
    res = post(s, raw, hmac_sig(KEY, raw, int(time.time())))
    assert res.status_code == 200, res.text
    assert res.json() == {"total": 5}
    assert response_key(res) == KEY
    peer = net.validate_response_sig(
        body=res.content,
        headers=dict(res.headers),
        mode=server_lib.ServerKind.CLOUD,
        signing_key=KEY,
    )
    assert not isinstance(peer, Exception), peer


def test_new_step_response_is_signed(served: ServeFactory) -> None:
    s = served(prod_app())
    raw = jcs(json.dumps(exec_body({"name": "math/add", "data": {"a": 1, "b": 1}})).encode())
    res = post(s, raw, signing.sign(raw, KEY))
    assert res.status_code == 206
    assert response_key(res) == KEY


def test_signed_request_for_unknown_function_gets_signed_404(served: ServeFactory) -> None:
    s = served(prod_app())
    raw = done_body()
    res = s.client.post(
        f"{s.path}?{exec_query('calc-missing')}",
        content=raw,
        headers={"x-inngest-signature": signing.sign(raw, KEY)},
    )
    assert res.status_code == 404
    assert response_key(res) == KEY


def test_forged_signature_is_401(served: ServeFactory) -> None:
    s = served(prod_app())
    raw = done_body()
    res = post(s, raw, hmac_sig(OTHER, raw, int(time.time())))
    assert res.status_code == 401
    assert "does not match" in res.json()["message"]
    assert "x-inngest-signature" not in res.headers


def test_tampered_body_is_401(served: ServeFactory) -> None:
    s = served(prod_app())
    raw = done_body()
    signature = hmac_sig(KEY, raw, int(time.time()))
    res = post(s, raw.replace(b'"a":2', b'"a":9'), signature)
    assert res.status_code == 401


def test_unsigned_request_is_401_saying_signatures_are_required(served: ServeFactory) -> None:
    s = served(prod_app())
    res = post(s, done_body(), None)
    assert res.status_code == 401
    assert res.headers["x-inngest-sdk"].startswith("durable-py:v")
    assert res.headers["x-inngest-req-version"] == "2"
    message = res.json()["message"]
    assert "X-Inngest-Signature" in message
    assert "signed requests" in message


@pytest.mark.parametrize("header", ["", "garbage", "t=abc&s=00", "s=00", "t=1700000000"])
def test_malformed_signature_header_is_401(served: ServeFactory, header: str) -> None:
    s = served(prod_app())
    res = post(s, done_body(), header)
    assert res.status_code == 401
    assert res.json()["message"]


def test_stale_signature_is_401(served: ServeFactory) -> None:
    s = served(prod_app())
    raw = done_body()
    res = post(s, raw, hmac_sig(KEY, raw, int(time.time()) - 6 * 60))
    assert res.status_code == 401
    assert "stale" in res.json()["message"]


def test_future_signature_is_401(served: ServeFactory) -> None:
    s = served(prod_app())
    raw = done_body()
    res = post(s, raw, hmac_sig(KEY, raw, int(time.time()) + 6 * 60))
    assert res.status_code == 401


def test_fallback_key_is_accepted_and_signs_the_response(served: ServeFactory) -> None:
    s = served(prod_app())
    raw = done_body()
    res = post(s, raw, hmac_sig(FALLBACK, raw, int(time.time())))
    assert res.status_code == 200, res.text
    assert response_key(res) == FALLBACK


def test_signature_is_over_the_canonical_body(served: ServeFactory) -> None:
    s = served(prod_app())
    body = json.loads(done_body())
    # Keys in reverse order, with indentation: not the bytes that were signed.
    loose = json.dumps(dict(reversed(body.items())), indent=3).encode()
    assert loose != jcs(loose)
    res = post(s, loose, hmac_sig(KEY, jcs(loose), int(time.time())))
    assert res.status_code == 200, res.text
    assert res.json() == {"total": 5}


@pytest.mark.parametrize("prefix", ["signkey-prod-", "signkey-test-", "signkey-branch-"])
def test_prefixed_signing_key_works(served: ServeFactory, prefix: str) -> None:
    s = served(prod_app(prefix + KEY))
    raw = done_body()
    res = post(s, raw, hmac_sig(KEY, raw, int(time.time())))
    assert res.status_code == 200, res.text
    assert response_key(res) == KEY


def test_dev_mode_accepts_unsigned_requests(served: ServeFactory) -> None:
    s = served(add_app(Durable("calc", dev=True)))
    res = post(s, done_body(), None)
    assert res.status_code == 200
    assert res.json() == {"total": 5}
    assert "x-inngest-signature" not in res.headers


@pytest.fixture
def no_durable_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    for name in ("DURABLE_SIGNING_KEY", "DURABLE_SIGNING_KEY_FALLBACK", "DURABLE_DEV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DURABLE_DIR", str(tmp_path / ".durable"))
    return tmp_path


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    ("orchestrator_url", "embedded"),
    [("http://127.0.0.1:8288", None), (None, False)],
    ids=["orchestrator-url", "not-embedded"],
)
def test_production_without_signing_key_refuses_to_serve(
    no_durable_env: Any, framework: str, orchestrator_url: str | None, embedded: bool | None
) -> None:
    d = add_app(Durable("calc", orchestrator_url=orchestrator_url))
    with pytest.raises(ConfigError) as info:
        build_app(framework, d, embedded=embedded)
    message = str(info.value)
    assert "DURABLE_SIGNING_KEY" in message
    assert "dev" in message


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_embedded_production_without_key_still_refuses_unsigned(
    no_durable_env: Any, framework: str
) -> None:
    with TestClient(build_app(framework, add_app(Durable("calc")), embedded=None)) as client:
        res = client.post(f"{SERVE_PATH}?{exec_query('calc-add')}", content=done_body())
    assert res.status_code == 401


def test_signing_key_from_environment(
    served: ServeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DURABLE_DEV", raising=False)
    monkeypatch.setenv("DURABLE_SIGNING_KEY", KEY)
    s = served(add_app(Durable("calc")))
    raw = done_body()
    assert post(s, raw, None).status_code == 401
    assert post(s, raw, hmac_sig(KEY, raw, int(time.time()))).status_code == 200


# -- durable_core.signing -------------------------------------------------------------------

NOW = 1_760_000_000


def test_sign_matches_an_independent_hmac() -> None:
    raw = b'{"b":1,"a":[1,2]}'
    assert signing.sign(raw, KEY, ts=NOW) == hmac_sig(KEY, raw, NOW)
    assert signing.sign(raw, "signkey-test-" + KEY, ts=NOW) == hmac_sig(KEY, raw, NOW)
    assert signing.sign(raw, KEY, ts=NOW, canonicalize=True) == hmac_sig(KEY, jcs(raw), NOW)


def test_verify_returns_the_matching_key() -> None:
    raw = b'{"x": 1}'
    assert signing.verify(raw, hmac_sig(KEY, jcs(raw), NOW), [KEY, FALLBACK], now=NOW) == KEY
    assert (
        signing.verify(raw, hmac_sig(FALLBACK, jcs(raw), NOW), [KEY, FALLBACK], now=NOW) == FALLBACK
    )
    assert signing.verify(raw, hmac_sig(KEY, jcs(raw), NOW), [None, KEY], now=NOW) == KEY


def test_verify_checks_the_age_both_ways() -> None:
    raw = b"{}"
    assert signing.verify(raw, hmac_sig(KEY, raw, NOW - 300), [KEY], now=NOW) == KEY
    assert signing.verify(raw, hmac_sig(KEY, raw, NOW + 300), [KEY], now=NOW) == KEY
    for ts in (NOW - 301, NOW + 301):
        with pytest.raises(SignatureError, match="stale"):
            signing.verify(raw, hmac_sig(KEY, raw, ts), [KEY], now=NOW)


@pytest.mark.parametrize("header", ["garbage", "t=&s=ab", "t=x&s=ab", "s=ab", "t=1"])
def test_verify_rejects_malformed_headers(header: str) -> None:
    with pytest.raises(SignatureError, match="malformed"):
        signing.verify(b"{}", header, [KEY], now=NOW)


def test_verify_rejects_missing_header_and_missing_keys() -> None:
    with pytest.raises(SignatureError, match="missing"):
        signing.verify(b"{}", None, [KEY], now=NOW)
    with pytest.raises(SignatureError, match="DURABLE_SIGNING_KEY"):
        signing.verify(b"{}", hmac_sig(KEY, b"{}", NOW), [None, ""], now=NOW)


def test_verify_checks_the_raw_bytes_before_parsing_anything() -> None:
    # Signed as sent: accepted unparsed (the serve handler then answers 400 for the body).
    assert signing.verify(b"{nope", hmac_sig(KEY, b"{nope", NOW), [KEY], now=NOW) == KEY
    # Not signed as sent and not JSON: there is no canonical form to check either.
    with pytest.raises(SignatureError, match="does not match"):
        signing.verify(b"{nope", hmac_sig(KEY, b"{}", NOW), [KEY], now=NOW)


@pytest.mark.parametrize(
    "body",
    [b"[" * 5000 + b"]" * 5000, b'{"n": ' + b"1" * 5000 + b"}", b'{"x": NaN}', b"1e999"],
    ids=["deep", "long-integer", "nan", "overflowing-float"],
)
def test_a_body_nobody_can_have_signed_canonically_is_refused_unparsed(body: bytes) -> None:
    with pytest.raises(SignatureError, match="does not match"):
        signing.verify(body, hmac_sig(KEY, b"{}", NOW), [KEY], now=NOW)
    # The key holder may still sign the raw bytes (the body is then refused for what it is).
    assert signing.verify(body, hmac_sig(KEY, body, NOW), [KEY], now=NOW) == KEY


def test_a_non_canonical_body_nested_within_the_limit_verifies() -> None:
    nested: Any = {"b": 1, "a": 2.0}
    for _ in range(60):  # 121 levels: an execution request may nest 128
        nested = {"z": [nested], "y": None}
    raw = json.dumps(nested, indent=1).encode()
    assert signing.verify(raw, hmac_sig(KEY, jcs(raw), NOW), [KEY], now=NOW) == KEY


def test_verify_rejects_the_wrong_key() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        signing.verify(b"{}", hmac_sig(OTHER, b"{}", NOW), [KEY, FALLBACK], now=NOW)


def test_hashed_signing_key() -> None:
    expected = hashlib.sha256(bytes.fromhex(KEY)).hexdigest()
    assert signing.hashed_signing_key(KEY) == expected
    assert signing.hashed_signing_key("signkey-prod-" + KEY) == expected
    with pytest.raises(SignatureError, match="hex"):
        signing.hashed_signing_key("signkey-prod-not-hex")


def test_canonical_body() -> None:
    assert signing.canonical(b"") == b""
    assert signing.canonical(b'{ "b": 1, "a": 2.0 }') == b'{"a":2,"b":1}'


# -- cross-checked with the inngest SDK -----------------------------------------------------


@pytest.mark.parametrize("key", [KEY, "signkey-prod-" + KEY])
def test_inngest_signed_request_verifies_here(key: str) -> None:
    raw = json.dumps(exec_body({"name": "math/add", "data": {"b": 1, "a": 2}}), indent=2).encode()
    header = net.sign_request(raw, key)
    assert isinstance(header, str)
    assert signing.verify(raw, header, [KEY]) == KEY


@pytest.mark.parametrize("key", [KEY, "signkey-prod-" + KEY])
def test_our_signature_is_accepted_by_inngest(key: str) -> None:
    raw = json.dumps({"z": [3, 2, 1], "a": {"y": "é", "x": 1.5}}, indent=1).encode()
    header = signing.sign(raw, key, canonicalize=True)
    accepted = net.validate_request_sig(
        body=raw,
        headers={"x-inngest-signature": header},
        mode=server_lib.ServerKind.CLOUD,
        signing_key=KEY,
        signing_key_fallback=None,
    )
    assert accepted == KEY

    wrong = net.validate_request_sig(
        body=raw,
        headers={"x-inngest-signature": signing.sign(raw, OTHER, canonicalize=True)},
        mode=server_lib.ServerKind.CLOUD,
        signing_key=KEY,
        signing_key_fallback=None,
    )
    assert isinstance(wrong, Exception)


def test_inngest_fallback_key_verifies_here() -> None:
    raw = done_body()
    header = net.sign_request(raw, FALLBACK)
    assert isinstance(header, str)
    assert signing.verify(raw, header, [KEY, FALLBACK]) == FALLBACK


# -- authentication before parsing ----------------------------------------------------------

DEEP = b"[" * 2000 + b"]" * 2000


@pytest.mark.parametrize(
    "raw",
    [DEEP, b'{"event": ' + DEEP + b"}", b'{"n": ' + b"1" * 5000 + b"}", b'{"x": NaN}'],
    ids=["deep", "deep-field", "long-integer", "nan"],
)
@pytest.mark.parametrize("signature", [None, "t=1&s=00", "fresh-but-wrong"])
def test_an_unauthenticated_hostile_body_is_401_not_parsed(
    served: ServeFactory, raw: bytes, signature: str | None
) -> None:
    s = served(prod_app())
    if signature == "fresh-but-wrong":
        signature = hmac_sig(OTHER, raw, int(time.time()))
    res = post(s, raw, signature)
    assert res.status_code == 401, res.text
    assert res.json()["code"] == "unauthorized" and res.json()["status"] == 401
    assert "x-inngest-signature" not in res.headers


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (DEEP, "deeper than the limit of 128 levels"),
        (b'{"event": {"name": "x", "data": {"n": NaN}}}', "event.data.n: NaN is not JSON"),
        (b'{"n": ' + b"1" * 5000 + b"}", "too many digits"),
    ],
    ids=["deep", "nan", "long-integer"],
)
def test_a_hostile_body_signed_as_sent_is_400_naming_the_problem(
    served: ServeFactory, raw: bytes, problem: str
) -> None:
    s = served(prod_app())
    res = post(s, raw, hmac_sig(KEY, raw, int(time.time())))
    assert res.status_code == 400, res.text
    assert problem in res.json()["message"] and res.json()["status"] == 400
    assert response_key(res) == KEY


def test_a_signature_with_odd_characters_is_401(served: ServeFactory) -> None:
    s = served(prod_app())
    now = int(time.time())
    for header in (f"t={now}&s=\u00e9\u00e9", f"t={'9' * 400}&s=00", f"t={now}&s=%ff%fe"):
        res = s.client.post(
            f"{s.path}?{exec_query('calc-add')}",
            content=done_body(),
            headers={"x-inngest-signature": header.encode("latin-1")},
        )
        assert res.status_code == 401, (header, res.text)


def test_a_body_over_the_limit_is_413_through_a_real_server(
    uvicorn_server: Callable[[Any], UvicornServer],
) -> None:
    server = uvicorn_server(build_app("starlette", prod_app()))
    big = b'{"x": "' + b"y" * (10 * 1024 * 1024) + b'"}'
    res = httpx.post(
        f"{server.base_url}{SERVE_PATH}?{exec_query('calc-add')}", content=big, timeout=30
    )
    assert res.status_code == 413, res.text[:300]
    assert "limit" in res.json()["message"]
