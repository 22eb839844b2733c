"""A worker process that forwards to the process hosting the embedded orchestrator, while that
host is gone (killed: its socket file is left behind, nobody listens) and before another worker
takes over: API requests get a JSON 503 saying to retry, and `durable.send()` raises
DurableError, never a 500 with a traceback or the HTTP client's own exception."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from durable_core import Durable, DurableError
from durable_core.orchestrator.embedded import Embedded

from .conftest import DEADLINE, UvicornApp, sqlite_only

pytestmark = sqlite_only  # no store is reached: the host is gone


@pytest.fixture(params=["stale-socket", "no-socket"])
def forwarding(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Embedded]:
    durable = Durable("gap", dev=True)
    embedded = Embedded(durable, directory=str(tmp_path / "durable"))
    if request.param == "stale-socket":  # a killed host leaves its socket file
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(embedded.socket_path)
        sock.close()
    embedded._forward()  # what start_or_forward does when another process owns the store
    yield embedded
    if os.path.exists(embedded.socket_path):
        os.unlink(embedded.socket_path)


def check_retry_answer(status: int, headers: Any, body: bytes) -> None:
    assert status == 503, body
    answer = httpx.Response(status, content=body).json()
    assert answer["status"] == 503 and "retry" in answer["error"], answer
    assert dict(headers)["retry-after"]


def test_the_api_answers_503_retry_through_a_real_server(forwarding: Embedded) -> None:
    app = Starlette()
    app.mount("/durable", forwarding)
    server = UvicornApp(app)
    server.start()
    try:
        for method, path in (("POST", "/durable/e/dev"), ("GET", "/durable/v1/runs")):
            res = httpx.request(
                method, server.base_url + path, json={"name": "x"}, timeout=DEADLINE
            )
            check_retry_answer(res.status_code, res.headers, res.content)
    finally:
        server.stop()


# httpcore's sync Unix-socket connect drops the socket of a failed connect without closing it
# (CPython closes it when collected, with a ResourceWarning): the warning is httpcore's.
@pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket")
def test_a_wsgi_app_s_api_call_answers_503_retry(forwarding: Embedded) -> None:
    check_retry_answer(*forwarding.call_api("GET", "/v1/runs", "", {}, b""))


def test_send_and_invoke_raise_durable_error(forwarding: Embedded) -> None:
    durable = forwarding.durable
    with pytest.raises(DurableError, match="takes over within seconds: retry"):
        durable.send({"name": "x"})
    with pytest.raises(DurableError, match="takes over within seconds: retry"):
        durable.invoke("gap-f", {})
