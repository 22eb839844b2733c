"""Our SDK registers the same function configs as the `inngest` SDK (0.5.19).

Both apps (`sync_peer.py`, `sync_ours.py`: the same functions, covering every trigger kind and
every flow-control option both SDKs accept) are synced the way an orchestrator syncs them, by a
PUT to their serve endpoint, in dev mode and in production mode; each then POSTs its
`/fn/register` body to a fake orchestrator under uvicorn on loopback. The two bodies are
compared field by field, in any key order, after setting aside what legitimately differs: the
serve path in URLs, the SDK's name and version. Function ids are not normalised: both SDKs make
them `<app id>-<function id>` (and `<that>-failure` for an `on_failure` handler).

Every other difference must be listed in `DELIBERATE` with its reason, and each listed one must
still occur, so the list cannot outlive what it explains.

Not compared, because only one SDK accepts them: inngest-py's `TriggerCron(jitter=...)` and
app version; our `Concurrency(scope="app")`, `Limits` and sub-second durations. Durations are
given as timedeltas: inngest-py reads an int as milliseconds, we read it as seconds.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from durable_core.protocol import SDK_ID

from . import sync_ours, sync_peer
from .driver import ABSENT, OURS_PATH, PEER_PATH

PEER_SDK = "py:v0.5.19"
SERVE_PATH = "/api/<sdk>"
DEPLOY_ID = "deploy-1"
SIGNING_KEY = "signkey-prod-" + "5e" * 32


@dataclasses.dataclass(frozen=True)
class Difference:
    """`where` is `<function id>:<path>`, or `<app>:<path>` outside the function configs."""

    where: str
    peer: Any
    ours: Any


@dataclasses.dataclass(frozen=True)
class Deliberate:
    """A difference we keep: at `where` (an fnmatch pattern) the peer sends `peer` and we send
    `ours` (`ABSENT`: the field is left out)."""

    where: str
    peer: Any
    ours: Any
    reason: str

    def explains(self, diff: Difference) -> bool:
        return (
            fnmatch.fnmatchcase(diff.where, self.where)
            and diff.peer == self.peer
            and diff.ours == self.ours
        )


DELIBERATE = [
    Deliberate(
        "<app>:capabilities.connect",
        "v1",
        ABSENT,
        "we do not serve Inngest Connect (the app dialling the orchestrator over a WebSocket), "
        "so we do not claim it",
    ),
    Deliberate(
        "sync-event:steps.step.retries",
        ABSENT,
        {"attempts": 4},
        "a function declared without `retries`: inngest-py leaves the field out and the server "
        "applies its own default (our orchestrator's is 4); we send our SDK's default of 4 "
        "retries, so a run gets the attempts our SDK documents whatever the server's default",
    ),
    Deliberate(
        "sync-throttle-no-burst:throttle.burst",
        1,
        ABSENT,
        "a throttle declared without `burst`: inngest-py fills in 1; our orchestrator lets "
        "`limit + burst` runs start at once, so we leave it out (0): `limit` starts, as our "
        "README documents",
    ),
]


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    signing_key: str | None
    serve_origin: str | None

    @property
    def origin(self) -> str:
        return self.serve_origin or "http://testserver"


@dataclasses.dataclass
class Registration:
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    mode: Mode


MODES = [
    Mode("dev", None, None),
    # In production both SDKs register the configured serve origin and authenticate the POST.
    Mode("production", SIGNING_KEY, "https://shop.example.com"),
]


@pytest.fixture(params=MODES, ids=lambda m: m.name)
def registrations(
    request: pytest.FixtureRequest, uvicorn_server: Callable[[Any], Any]
) -> tuple[Registration, Registration]:
    """The `/fn/register` request each SDK sends when its serve endpoint gets a PUT."""
    mode: Mode = request.param
    received: list[Registration] = []

    async def register(request: Request) -> JSONResponse:
        body = await request.json()
        received.append(Registration(dict(request.query_params), dict(request.headers), body, mode))
        return JSONResponse({"ok": True, "modified": True})

    server = uvicorn_server(Starlette(routes=[Route("/fn/register", register, methods=["POST"])]))
    out = []
    for sdk, path in ((sync_peer, PEER_PATH), (sync_ours, OURS_PATH)):
        app = sdk.build(server.base_url, mode.signing_key, mode.serve_origin)
        out.append(_sync(app, path, received))
    return out[0], out[1]


def _sync(app: FastAPI, path: str, received: list[Registration]) -> Registration:
    with TestClient(app) as client:
        res = client.put(path, params={"deployId": DEPLOY_ID})
    assert res.status_code == 200, (path, res.status_code, res.text)
    assert len(received) == 1, f"{path}: expected one /fn/register request, got {len(received)}"
    return received.pop()


def _normalized(reg: Registration, path: str) -> dict[str, Any]:
    """The body with the serve path in its URLs replaced and the SDK name left out."""

    def url(value: str) -> str:
        assert value.startswith(f"{reg.mode.origin}{path}"), value
        return value.replace(path, SERVE_PATH, 1)

    out = {k: v for k, v in reg.body.items() if k not in ("functions", "sdk")}
    out["url"] = url(reg.body["url"])
    functions = {}
    for fn in reg.body["functions"]:
        step = fn["steps"]["step"]
        runtime = {**step["runtime"], "url": url(step["runtime"]["url"])}
        functions[fn["id"]] = {**fn, "steps": {"step": {**step, "runtime": runtime}}}
    assert len(functions) == len(reg.body["functions"]), "two functions share an id"
    out["functions"] = functions
    return out


def _differences(where: str, peer: Any, ours: Any) -> Iterator[Difference]:
    """Every leaf where two JSON values differ; objects are compared key by key."""
    if isinstance(peer, dict) and isinstance(ours, dict):
        for key in sorted(peer.keys() | ours.keys()):
            inner = f"{where}.{key}" if not where.endswith(":") else f"{where}{key}"
            yield from _differences(inner, peer.get(key, ABSENT), ours.get(key, ABSENT))
    elif isinstance(peer, list) and isinstance(ours, list) and len(peer) == len(ours):
        for i, (p, o) in enumerate(zip(peer, ours, strict=True)):
            yield from _differences(f"{where}[{i}]", p, o)
    elif type(peer) is not type(ours) or peer != ours:
        yield Difference(where, peer, ours)


def _all_differences(peer: Registration, ours: Registration) -> list[Difference]:
    p, o = _normalized(peer, PEER_PATH), _normalized(ours, OURS_PATH)
    p_fns, o_fns = p.pop("functions"), o.pop("functions")
    found = list(_differences("<app>:", p, o))
    for fn_id in sorted(p_fns.keys() | o_fns.keys()):
        found.extend(_differences(f"{fn_id}:", p_fns.get(fn_id), o_fns.get(fn_id)))
    return found


def test_both_sdks_register_the_same_functions(
    registrations: tuple[Registration, Registration],
) -> None:
    peer, ours = registrations
    assert peer.body["sdk"] == PEER_SDK
    assert ours.body["sdk"] == SDK_ID
    ids = [fn["id"] for fn in ours.body["functions"]]
    assert ids == [fn["id"] for fn in peer.body["functions"]]
    assert "sync-on-failure-failure" in ids and "sync-everything-failure" in ids
    assert len(ids) == 28  # 26 functions, 2 of them with on_failure
    for reg in registrations:
        assert reg.query == {"deployId": DEPLOY_ID}
        assert reg.headers["content-type"] == "application/json"
    # Unauthenticated in dev mode; in production the same bearer (the hashed signing key).
    assert peer.headers.get("authorization") == ours.headers.get("authorization")
    assert ("authorization" in ours.headers) is (ours.mode.signing_key is not None)


def test_same_config_for_every_function_and_option(
    registrations: tuple[Registration, Registration],
) -> None:
    found = _all_differences(*registrations)
    unexplained = [d for d in found if not any(rule.explains(d) for rule in DELIBERATE)]
    assert not unexplained, "the sync payloads differ:\n" + "\n".join(
        f"  {d.where}: inngest-py {d.peer!r}, ours {d.ours!r}" for d in unexplained
    )


def test_every_deliberate_difference_still_occurs(
    registrations: tuple[Registration, Registration],
) -> None:
    found = _all_differences(*registrations)
    stale = [rule.where for rule in DELIBERATE if not any(rule.explains(d) for d in found)]
    assert not stale, f"listed as deliberate but no longer different: {stale}"
