"""The gateway: HTTP requests the orchestrator makes for a run (`step.ai.infer`, `step.fetch`).

An `AIGateway` or `Gateway` op does not hold the app while the far end answers: `answers.py`
checks the op (`parse`) and queues a GATEWAY item; the dispatcher makes the request
(`GatewayClient.perform`) outside any dispatch slot and applies the outcome in one unit
(`apply`). The step's memo then resumes the run like any other step result:

- `step.ai.infer`: `{"data": <the model's JSON answer>}`. A 4xx other than 429 fails the
  step at once (the answer will not change); a network error, a timeout, a 429 or a 5xx is
  retried with the function's retries and backoff (`retry-after` respected).
- `step.fetch`: `{"data": {"url", "status_code", "headers", "body"}}` (the shape the
  TypeScript SDK's `fetch` turns back into a `Response`): any answer below 500 other than
  429 is the result, as `fetch` resolves on a 404; the rest is retried like a model call.

An answer over the run's `step_output` limit is not read past that limit: the step fails with
a `LimitExceededError`, and so does one that would take the run over `run_output_total`.
A step that fails gets `{"error": {"name", "message"}}`, which the SDK raises in the function.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx

from .._limits import Budget, RunLimits, Usage
from ..errors import LimitExceededError, RunErrorName, run_error
from ..fetch import METHODS, headers_problem, url_problem
from ..protocol import Header, Opcode
from . import lifecycle
from .store import ItemKind, QueueItem, now_ms
from .transport import read_bounded
from .unit import Unit

#: Where each model format takes the auth key (a header already set by the caller wins).
AUTH_HEADERS: dict[str, tuple[str, str]] = {
    "anthropic": ("x-api-key", "{}"),
    "azure-openai": ("api-key", "{}"),
    "gemini": ("x-goog-api-key", "{}"),
}
_BEARER = ("authorization", "Bearer {}")
#: Request headers the client sets itself.
_DROPPED = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_EXCERPT = 500  # characters of an error answer quoted in the step's error
#: Statuses whose answers have no body (`fetch` refuses to build a `Response` with one).
_NO_BODY = frozenset({101, 103, 204, 205, 304})


def where(url: str) -> str:
    """A URL as messages and reasons show it: without its query or credentials, where keys
    travel (Gemini's `?key=`)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _error(message: str) -> dict[str, Any]:
    return run_error(RunErrorName.GATEWAY_ERROR, message)


@dataclasses.dataclass(frozen=True, slots=True)
class GatewayRequest:
    """One request to make: `ai` says it is a model call (`step.ai.infer`)."""

    ai: bool
    url: str
    method: str
    headers: dict[str, str]
    body: str | None

    def to_payload(self, step_name: str) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "name": step_name}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> GatewayRequest:
        return cls(
            bool(payload["ai"]),
            str(payload["url"]),
            str(payload["method"]),
            dict(payload["headers"]),
            payload.get("body"),
        )


def _headers(value: object) -> dict[str, str] | str:
    problem = headers_problem(value)
    if problem is not None:
        return f"opts.{problem[:300]}"
    if not isinstance(value, Mapping):  # None: no headers
        return {}
    return {str(k).lower(): str(v) for k, v in value.items() if str(k).lower() not in _DROPPED}


def parse(kind: str, opts: dict[str, Any]) -> GatewayRequest | str:
    """The request an `AIGateway` or `Gateway` op asks for, or what is wrong with its opts."""
    problem = url_problem(opts.get("url"))
    if problem is not None:
        return f"opts.{problem[:300]}"
    headers = _headers(opts.get("headers"))
    if isinstance(headers, str):
        return headers
    if kind == Opcode.AI_GATEWAY:
        key, fmt = opts.get("auth_key"), opts.get("format") or "openai-chat"
        if key is not None and not isinstance(key, str):
            return "opts.auth_key must be a string"
        if not isinstance(fmt, str):
            return "opts.format must be a string"
        if key:
            name, template = AUTH_HEADERS.get(fmt, _BEARER)
            headers.setdefault(name, template.format(key))
        headers.setdefault("content-type", "application/json")
        payload = json.dumps(opts.get("body"), separators=(",", ":"))
        return GatewayRequest(True, str(opts["url"]), "POST", headers, payload)
    method = opts.get("method") or "GET"
    if not isinstance(method, str) or method.upper() not in METHODS:
        return f"opts.method must be one of {', '.join(METHODS)}, not {str(method)[:50]!r}"
    raw = opts.get("body")
    body: str | None = raw if raw is None or isinstance(raw, str) else json.dumps(raw)
    return GatewayRequest(False, str(opts["url"]), method.upper(), headers, body)


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What a request came to: the step's memo, or an error worth another attempt."""

    memo: dict[str, Any] | None = None
    transient: dict[str, Any] | None = None
    retry_after: str | None = None


class GatewayClient:
    """Makes gateway requests: one connection pool, a timeout per request."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=True)

    async def perform(self, req: GatewayRequest, limits: RunLimits, usage: Usage) -> Outcome:
        what = f"{req.method} {where(req.url)}"
        content = req.body.encode() if req.body is not None else None
        try:
            async with (
                asyncio.timeout(self.timeout),  # the whole exchange, not each read
                self._client.stream(
                    req.method, req.url, headers=req.headers, content=content
                ) as res,
            ):
                raw = await read_bounded(res, limits.step_output)
                status, url = res.status_code, str(res.url)
                headers = {k.lower(): v for k, v in res.headers.items()}
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(transient=_error(f"{what} did not answer within {self.timeout:g} s"))
        except httpx.HTTPError as err:
            return Outcome(transient=_error(f"{what} failed: {type(err).__name__}: {err}"))
        if raw is None:  # longer than a step's output may be: not read
            over = limits.output_too_large(f"the answer to {what}", limits.step_output + 1)
            assert over is not None
            return Outcome(memo={"error": _limit_error(over)})
        text = raw.decode("utf-8", errors="replace")
        if status == 429 or status >= 500:
            message = f"{what} answered {status}: {text[:_EXCERPT]}"
            return Outcome(transient=_error(message), retry_after=headers.get(Header.RETRY_AFTER))
        if not req.ai:
            body = None if status in _NO_BODY else text
            data: Any = {"url": url, "status_code": status, "headers": headers, "body": body}
        elif not 200 <= status < 300:
            return Outcome(memo={"error": _error(f"{what} answered {status}: {text[:_EXCERPT]}")})
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                message = f"{what} answered {status} with a body that is not JSON: {text[:200]}"
                return Outcome(memo={"error": _error(message)})
        try:
            Budget(limits, dataclasses.replace(usage)).store(f"the answer to {what}", data)
        except LimitExceededError as err:
            return Outcome(memo={"error": _limit_error(err)})
        return Outcome(memo={"data": data})

    async def aclose(self) -> None:
        await self._client.aclose()


def _limit_error(err: LimitExceededError) -> dict[str, Any]:
    return run_error(RunErrorName.LIMIT_EXCEEDED, str(err))


async def enqueue(unit: Unit, run_id: str, step: str, payload: dict[str, Any]) -> None:
    """Queue the request of a gateway step (its first attempt)."""
    await unit.tx.enqueue(run_id, ItemKind.GATEWAY, step=step, payload=payload)


async def apply(
    unit: Unit, item: QueueItem, outcome: Outcome, max_attempts: int, not_before: int | None
) -> None:
    """Resolve the step with the outcome, or queue another attempt while attempts remain
    (after the backoff, or at `not_before`: what the answer's `retry-after` allows)."""
    if not await unit.tx.delete_item(item.id):
        return  # its lease ran out and another worker answered it already
    assert item.step is not None
    payload = item.payload or {}
    name = str(payload.get("name") or item.step)
    if outcome.memo is not None:
        await lifecycle.resolve(unit, item.run_id, item.step, outcome.memo)
        return
    error = outcome.transient or _error("the request failed")
    if item.attempt + 1 >= max_attempts:
        message = f"{error['message']} (gave up after {item.attempt + 1} attempts)"
        await lifecycle.resolve(unit, item.run_id, item.step, {"error": _error(message)})
        return
    run = await unit.tx.lock_run(item.run_id)
    if run is None or run.status.finished:
        return
    now = now_ms()
    when = now + lifecycle.delay_ms(unit, item.attempt)
    if not_before is not None:
        when = max(not_before, now)
    await unit.tx.enqueue(
        item.run_id,
        ItemKind.GATEWAY,
        step=item.step,
        attempt=item.attempt + 1,
        available_at=when,
        payload=payload,
    )
    reason = f"step {name!r}: {str(error['message'])[:200]}; retrying (attempt {item.attempt + 2})"
    unit.note("retrying", run.run_id, run.fn_id, name, attempt=item.attempt + 1,
              error=error, retry_at=when)  # fmt: skip
    await unit.tx.update_run(item.run_id, reason=reason)
