"""Small keep-alive HTTP/1.1 clients for the SDK's checkpoints, which post one small JSON body
per step: `AsyncPoster` (asyncio streams) and `SyncPoster` (`http.client`), each keeping one
connection to one origin until `close`.

A general client (httpx) costs more per request than a step does; these do only what a
checkpoint needs: POST a body, read the status and a body of declared length (or chunked).
A request is tried again once on a fresh connection when a pooled one turns out to be
closed; the caller posts only idempotent requests. Every failure is a `PostError`.
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
import urllib.parse

TIMEOUT_S = 30.0
MAX_ANSWER = 1024 * 1024  # the most of an answer read: a checkpoint's is a few bytes


class PostError(Exception):
    """The request got no answer: the connection failed, timed out or was cut."""


def origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _split(origin: str) -> tuple[str, int, bool]:
    parts = urllib.parse.urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PostError(f"cannot post to {origin!r}: not an http(s) URL")
    tls = parts.scheme == "https"
    return parts.hostname, parts.port or (443 if tls else 80), tls


def _head(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: {host}", f"content-length: {len(body)}"]
    lines += [
        f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()

    async def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """Send `request`; the status, the body, and whether the connection may be reused."""
        self.writer.write(request)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection")
        version, status, *_ = status_line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked()
        else:
            length = int(headers.get("content-length", "0"))
            if length > MAX_ANSWER:
                raise ValueError(f"an answer of {length} bytes")
            body = await self.reader.readexactly(length)
        close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        return int(status), body, not close

    async def _chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int((await self.reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            if sum(map(len, chunks)) + size > MAX_ANSWER:
                raise ValueError("an answer too long")
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readline()


class AsyncPoster:
    """Posts to one origin from one event loop, over a connection it keeps."""

    def __init__(self, origin: str) -> None:
        self.host, self.port, self.tls = _split(origin)
        self.idle: list[_Conn] = []

    async def _connect(self) -> _Conn:
        tls = ssl.create_default_context() if self.tls else None
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=tls)
        return _Conn(reader, writer)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        request = _head(self.host, path, body, headers)
        try:
            async with asyncio.timeout(TIMEOUT_S):
                while True:
                    pooled = bool(self.idle)
                    conn = self.idle.pop() if pooled else await self._connect()
                    try:
                        status, answer, keep = await conn.exchange(request)
                    except (OSError, asyncio.IncompleteReadError) as err:
                        conn.close()
                        if pooled:  # it may have been closed while idle: try a fresh one
                            continue
                        raise PostError(f"{type(err).__name__}: {err}") from err
                    except BaseException:
                        conn.close()
                        raise
                    if keep and not self.idle:
                        self.idle.append(conn)
                    else:
                        conn.close()
                    return status, answer
        except TimeoutError as err:
            raise PostError(f"no answer within {TIMEOUT_S:g} s") from err
        except (OSError, ValueError) as err:
            raise PostError(f"{type(err).__name__}: {err}") from err

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class SyncPoster:
    """Posts to one origin from one thread over one keep-alive connection."""

    def __init__(self, origin: str) -> None:
        self.host, self.port, self.tls = _split(origin)
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=TIMEOUT_S)
        return http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for fresh in (self.conn is None, True):
            conn = self.conn = self.conn or self._connect()
            try:
                conn.request("POST", path, body=body, headers=headers)
                res = conn.getresponse()
                answer = res.read(MAX_ANSWER)
                if res.will_close:
                    conn.close()
                    self.conn = None
                return res.status, answer
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                self.conn = None
                if fresh:
                    raise PostError(f"{type(err).__name__}: {err}") from err
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


__all__ = ["AsyncPoster", "PostError", "SyncPoster", "origin_of"]
