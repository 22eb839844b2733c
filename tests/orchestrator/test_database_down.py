"""While the database cannot be reached, the API answers a JSON 503 with `retry-after` naming
the problem (not a plain-text 500), and once it is back, the same requests succeed.

The orchestrator reaches PostgreSQL through a TCP proxy on loopback that the test cuts (every
connection dropped, new ones refused) and restores, so no other client of the server notices.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from durable_core.orchestrator.api import Api
from durable_core.orchestrator.service import Orchestrator
from durable_core.orchestrator.store import open_store

from .conftest import DEADLINE, UvicornApp, wait_until

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


class Proxy:
    """A TCP proxy to `upstream` on a fixed loopback port, which can be cut and restored."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and drop every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._open = self._open, []
        if listener is not None:
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut while this one was connecting
                    client.close()
                    server.close()
                    return
                self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxied(database_url: str) -> Iterator[tuple[Proxy, str, str]]:
    """(proxy, dsn through the proxy, schema)."""
    parts = urllib.parse.urlsplit(database_url)
    schema = urllib.parse.parse_qs(parts.query)["schema"][0]
    proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    proxy.up()
    netloc = (
        f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
    )
    yield proxy, urllib.parse.urlunsplit(parts._replace(netloc=netloc, query="")), schema
    proxy.down()


def test_the_api_answers_503_while_the_database_is_down(
    proxied: tuple[Proxy, str, str],
) -> None:
    proxy, dsn, schema = proxied
    store: Any = open_store(f"{dsn}?schema={schema}")
    store.pool.timeout = 1.0  # give up on a connection after 1 s (the default waits 30 s)
    orch = Orchestrator(store)

    server = UvicornApp(Api(orch).served())
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=DEADLINE * 3) as client:
            assert client.post("/e/k", json={"name": "before"}).status_code == 200

            proxy.down()
            for method, path, body in (
                ("POST", "/e/k", {"name": "during"}),
                ("GET", "/v1/runs", None),
                ("GET", "/v1/events", None),
            ):
                res = client.request(method, path, json=body)
                assert res.status_code == 503, (path, res.status_code, res.text)
                assert res.headers["content-type"] == "application/json"
                answer = res.json()
                assert answer["status"] == 503 and "database" in answer["error"], answer
                assert "retry" in answer["error"] and int(res.headers["retry-after"]) > 0

            proxy.up()
            wait_until(
                "the API to take events again",
                lambda: client.post("/e/k", json={"name": "after"}).status_code == 200,
                deadline=DEADLINE * 3,
            )
            names = [e["name"] for e in client.get("/v1/events").json()["data"]]
            assert "before" in names and "after" in names and "during" not in names
    finally:
        server.stop()
