"""The embedded orchestrator's API on a Unix socket, for the other processes of the same app.

One process owns a SQLite store; when a server runs several worker processes, the others
forward their events, invokes and API requests to it over this socket (HTTP/1.1, one request
per connection). Calling the ASGI app in memory is shared with same-process callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

import httpx

from .._bounded_json import MAX_BODY

Answer = tuple[int, list[tuple[str, str]], bytes]
_MAX_HEAD = 64 * 1024


def _refused(length: str) -> Answer | None:
    """A JSON 4xx for a content-length that is not a number, or is over the body limit."""
    if not (length.isascii() and length.isdigit()):
        message, status = f"content-length {length[:40]!r} is not a number of bytes", 400
    elif int(length) > MAX_BODY:
        message, status = f"body too large ({length} bytes; the limit is {MAX_BODY})", 413
    else:
        return None
    body = json.dumps({"error": message, "status": status}).encode()
    return status, [("content-type", "application/json")], body


async def call_asgi(
    app: Any, method: str, path: str, query: str, headers: dict[str, str], body: bytes
) -> Answer:
    """Run one HTTP request through an ASGI app in memory."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": None,
        "server": None,
    }
    received = False
    status, out_headers, chunks = 500, list[tuple[str, str]](), list[bytes]()

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            await asyncio.Event().wait()  # the body was sent whole; no disconnect follows
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            out_headers.extend(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])
            )
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, out_headers, b"".join(chunks)


async def serve(path: str, app: Any) -> asyncio.AbstractServer:
    """Serve `app` on the Unix socket `path` (replacing a stale socket file), owner-only."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEAD:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    key, value = line.split(":", 1)
                    headers[key.strip().lower()] = value.strip()
            length = headers.get("content-length", "0")
            refused = _refused(length)
            if refused is None:
                body = await reader.readexactly(int(length))
                route, _, query = target.partition("?")
                status, out, payload = await call_asgi(app, method, route, query, headers, body)
            else:
                status, out, payload = refused
            kept = [(k, v) for k, v in out if k.lower() not in ("content-length", "connection")]
            lines_out = [f"HTTP/1.1 {status} -"] + [f"{k}: {v}" for k, v in kept]
            lines_out += [f"content-length: {len(payload)}", "connection: close", "", ""]
            writer.write("\r\n".join(lines_out).encode("latin-1") + payload)
            await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, path=path, limit=_MAX_HEAD)
    os.chmod(path, 0o600)
    return server


def _split(response: httpx.Response) -> Answer:
    return response.status_code, list(response.headers.items()), response.content


def forward(
    path: str, method: str, route: str, query: str, headers: dict[str, str], body: bytes
) -> Answer:
    """Send a request to the process serving the socket `path` (from sync code)."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=None) as client:
        url = f"http://durable{route}" + (f"?{query}" if query else "")
        return _split(client.request(method, url, headers=headers, content=body))


async def forward_async(
    path: str, method: str, route: str, query: str, headers: dict[str, str], body: bytes
) -> Answer:
    async with httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=path), timeout=None
    ) as client:
        url = f"http://durable{route}" + (f"?{query}" if query else "")
        return _split(await client.request(method, url, headers=headers, content=body))
