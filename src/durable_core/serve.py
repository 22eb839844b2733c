"""The framework-agnostic serve handler: a `Request` goes in, a `Response` comes out.

- GET: introspection (function count, mode, which keys are set).
- PUT: sync. Out-of-band posts the function configs to the orchestrator's `/fn/register`;
  in-band (`x-inngest-sync-kind: in_band`, signed requests only) returns them. In production
  the URL registered is the configured serve origin; without one, only a signed PUT may name
  it (from its Host), since an unsigned request's Host header is whatever its sender says.
- POST `?fnId=<id>&stepId=<step>`: execute one request of a run; when the orchestrator names
  the request's queue item (`ctx.qi_id`), its steps are checkpointed over HTTP as they finish
  (`_http_checkpoint.py`), so one request runs a chain of steps.

Signatures are checked before a body is parsed, and bodies are parsed within the limits of
`_bounded_json` (10 MiB, 128 levels for an execution request); every refusal is a 4xx JSON
answer, so the only 5xx left is the protocol's "the function raised".

Adapters only convert their framework's request and response to and from these objects.
"""

from __future__ import annotations

import dataclasses
import logging
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx
import pydantic

from . import _bounded_json, signing
from ._driver import Outcome, Raised
from ._execute import ExecutionRequest, execute, execute_blocking, to_wire
from ._http_checkpoint import HttpCheckpoints
from .app import Durable
from .errors import ConfigError, ServeErrorCode, SignatureError
from .events import Event
from .function import Function
from .messages import Request, Response, json_response
from .protocol import (
    CAPABILITIES,
    INTROSPECTION_SCHEMA,
    REGISTRATION_VERSION,
    REQUEST_VERSION,
    SDK_ID,
    SDK_LANGUAGE,
    SDK_VERSION,
    Header,
)
from .types import AsyncSender, Handler, SyncSender

_log = logging.getLogger("durable")
DEFAULT_SERVE_PATH = "/api/durable"


@dataclasses.dataclass(slots=True)
class _Execution:
    fn: Function[Any]
    handler: Handler
    body: ExecutionRequest
    target: str | None
    key: str | None


@dataclasses.dataclass(slots=True)
class _Sync:
    key: str | None
    url: str
    query: Mapping[str, str]


def _error(status: int, name: ServeErrorCode, message: str, **extra: str) -> Response:
    body = {"name": str(name), "message": message, "code": str(name)}
    return json_response(status, {**body, "error": message, "status": status}, extra)


def _unserved_sync(reason: str) -> str:
    return (
        f"refused to sync: {reason}. In production an unsigned sync registers only the "
        "configured serve origin: set DURABLE_SERVE_ORIGIN (or Durable(serve_origin=...)) to "
        "this app's public origin, like https://app.example.com, or sign the PUT"
    )


class ServeHandler:
    """Answers the serve protocol for one `Durable` app."""

    def __init__(
        self,
        durable: Durable,
        *,
        framework: str = "starlette",
        serve_path: str = DEFAULT_SERVE_PATH,
        sender: AsyncSender | None = None,
        sync_sender: SyncSender | None = None,
    ) -> None:
        if not durable.dev and not durable.signing_key:
            raise ConfigError(
                f"app {durable.app_id!r} is in production mode but has no signing key: set "
                "DURABLE_SIGNING_KEY (the orchestrator's key), or pass dev=True / set "
                "DURABLE_DEV=1 to run unsigned on a trusted machine"
            )
        self.durable = durable
        self.framework = framework
        self.serve_path = serve_path
        self._sender: AsyncSender = sender or durable.send_async
        self._sync_sender: SyncSender = sync_sender or durable.send

    # -- entry points -------------------------------------------------------------------------

    async def handle(self, req: Request) -> Response:
        try:
            return await self._handle(req)
        except Exception as err:  # a bug of ours: still answer in the protocol, and say so
            return self._crashed(err)

    def handle_sync(self, req: Request) -> Response:
        try:
            return self._handle_sync(req)
        except Exception as err:
            return self._crashed(err)

    def _crashed(self, err: Exception) -> Response:
        _log.exception("the serve handler failed")
        msg = f"internal error in the durable serve handler: {type(err).__name__}: {err}"
        return self._finish(_error(500, ServeErrorCode.INTERNAL_ERROR, msg), None)

    async def _handle(self, req: Request) -> Response:
        plan = self._begin(req)
        if isinstance(plan, Response):
            return self._finish(plan, None)
        if isinstance(plan, _Sync):
            return self._finish(await self._sync_out_of_band(plan), plan.key)
        steps = self._checkpoints(plan)
        try:
            outcome = await execute(
                plan.fn, plan.handler, plan.body, plan.target,
                sender=self._sender, sync_sender=self._sync_sender,
                checkpoint=steps.hooks() if steps else None,
            )  # fmt: skip
            if steps is not None:
                outcome = await steps.answer(outcome)
        finally:
            if steps is not None:
                steps.close()
        return self._finish(self._outcome(plan, outcome), plan.key)

    def _handle_sync(self, req: Request) -> Response:
        plan = self._begin(req)
        if isinstance(plan, Response):
            return self._finish(plan, None)
        if isinstance(plan, _Sync):
            return self._finish(self._sync_out_of_band_blocking(plan), plan.key)
        steps = self._checkpoints(plan)
        try:
            outcome = execute_blocking(
                plan.fn, plan.handler, plan.body, plan.target,
                sender=self._sender, sync_sender=self._sync_sender,
                checkpoint=steps.sync_hooks() if steps else None,
            )  # fmt: skip
            if steps is not None:
                outcome = steps.answer_sync(outcome)
        finally:
            if steps is not None:
                steps.close()
        return self._finish(self._outcome(plan, outcome), plan.key)

    def _checkpoints(self, plan: _Execution) -> HttpCheckpoints | None:
        """Checkpoints over HTTP, when the orchestrator named the request's queue item."""
        ctx, d = plan.body.ctx, self.durable
        if ctx.qi_id is None or plan.target is not None or d.local is not None:
            return None
        return HttpCheckpoints(d.orchestrator_url, ctx, plan.fn.id, d.api_headers())

    # -- routing ------------------------------------------------------------------------------

    def _begin(self, req: Request) -> Response | _Execution | _Sync:
        headers = {k.lower(): v for k, v in req.headers.items()}
        method = req.method.upper()
        if len(req.body) > _bounded_json.MAX_BODY:
            msg = f"body too large ({len(req.body)} bytes; the limit is {_bounded_json.MAX_BODY})"
            return _error(413, ServeErrorCode.BODY_INVALID, msg)
        if method == "GET":
            return self._introspect(req, headers)
        if method == "PUT":
            return self._sync(req, headers)
        if method == "POST":
            return self._execution(req, headers)
        return _error(
            405,
            ServeErrorCode.METHOD_NOT_ALLOWED,
            f"{method} is not served here: use GET, PUT or POST",
        )

    def _verify(self, req: Request, headers: Mapping[str, str]) -> str | None:
        """The key that signed the request; None in dev mode. Raises SignatureError."""
        if self.durable.dev:
            return None
        keys = [self.durable.signing_key, self.durable.signing_key_fallback]
        return signing.verify(req.body, headers.get(Header.SIGNATURE), keys)

    def _introspect(self, req: Request, headers: Mapping[str, str]) -> Response:
        d = self.durable
        body: dict[str, Any] = {
            "schema_version": INTROSPECTION_SCHEMA,
            "function_count": sum(1 + (f.on_failure is not None) for f in d.functions),
            "has_event_key": d.event_key is not None,
            "has_signing_key": d.signing_key is not None,
            "has_signing_key_fallback": d.signing_key_fallback is not None,
            "mode": "dev" if d.dev else "cloud",
        }
        if not d.dev and headers.get(Header.SIGNATURE):
            try:
                self._verify(req, headers)
            except SignatureError:
                body["authentication_succeeded"] = False
            else:
                body.update(self._authenticated_details(req))
        return json_response(200, body)

    def _authenticated_details(self, req: Request) -> dict[str, Any]:
        d = self.durable
        return {
            "authentication_succeeded": True,
            "app_id": d.app_id,
            "api_origin": d.orchestrator_url,
            "event_api_origin": d.orchestrator_url,
            "framework": self.framework,
            "sdk_language": SDK_LANGUAGE,
            "sdk_version": SDK_VERSION,
            "serve_origin": d.serve_origin,
            "serve_path": self.serve_path,
            "signing_key_hash": signing.hashed_signing_key(d.signing_key)
            if d.signing_key
            else None,
            "signing_key_fallback_hash": (
                signing.hashed_signing_key(d.signing_key_fallback)
                if d.signing_key_fallback
                else None
            ),
            "capabilities": dict(CAPABILITIES),
        }

    def _serve_url(self, req: Request) -> str:
        """The configured serve origin's URL, or the request's (ValueError for a bad Host)."""
        if self.durable.serve_origin:
            return self.durable.serve_origin.rstrip("/") + self.serve_path
        parts = urllib.parse.urlsplit(req.url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))

    def _sync(self, req: Request, headers: Mapping[str, str]) -> Response | _Sync:
        if headers.get(Header.SYNC_KIND) == "in_band" and not self.durable.dev:
            return self._sync_in_band(req, headers)
        key = None
        if not self.durable.dev and not self.durable.serve_origin:
            sync_kind = {Header.SYNC_KIND: "out_of_band"}
            if not headers.get(Header.SIGNATURE):
                why = "the request is unsigned and this app has no serve origin configured, so its Host header cannot be trusted to say where the orchestrator should call the app"
                return _error(401, ServeErrorCode.UNAUTHORIZED, _unserved_sync(why), **sync_kind)
            try:
                key = self._verify(req, headers)
            except SignatureError as err:
                return _error(
                    401, ServeErrorCode.UNAUTHORIZED, _unserved_sync(str(err)), **sync_kind
                )
        try:
            url = self._serve_url(req)
        except ValueError as err:
            msg = f"cannot make the app's URL from this request ({err}): check its Host header, or set DURABLE_SERVE_ORIGIN"
            return _error(400, ServeErrorCode.BODY_INVALID, msg)
        return _Sync(key=key, url=url, query=req.query)

    def _sync_in_band(self, req: Request, headers: Mapping[str, str]) -> Response:
        try:
            key = self._verify(req, headers)
        except SignatureError as err:
            return _error(
                401, ServeErrorCode.UNAUTHORIZED, f"in-band sync needs a signed request: {err}"
            )
        try:
            sent = _bounded_json.loads(req.body) if req.body.strip() else {}
            url = (sent.get("url") if isinstance(sent, dict) else None) or self._serve_url(req)
        except ValueError as err:
            msg = f"in-band sync body must be a JSON object with an optional 'url' ({err})"
            return self._finish(_error(400, ServeErrorCode.BODY_INVALID, msg), key)
        if not isinstance(url, str):
            msg = "in-band sync body: 'url' must be a string"
            return self._finish(_error(400, ServeErrorCode.BODY_INVALID, msg), key)
        functions = self.function_configs(url)
        inspection = {**self._authenticated_details(req), "function_count": len(functions)}
        body = {
            "app_id": self.durable.app_id,
            "env": None,
            "framework": self.framework,
            "functions": functions,
            "inspection": inspection,
            "platform": None,
            "sdk_author": "durable",
            "sdk_language": SDK_LANGUAGE,
            "sdk_version": SDK_VERSION,
            "url": url,
        }
        return self._finish(json_response(200, body, {Header.SYNC_KIND: "in_band"}), key)

    def _execution(self, req: Request, headers: Mapping[str, str]) -> Response | _Execution:
        try:
            key = self._verify(req, headers)
        except SignatureError as err:
            return _error(401, ServeErrorCode.UNAUTHORIZED, str(err))
        if req.query.get("probe") == "trust":
            return self._finish(json_response(200, {}), key)
        fn_id = req.query.get("fnId")
        if not fn_id:
            return self._finish(
                _error(
                    400,
                    ServeErrorCode.QUERY_PARAM_MISSING,
                    "missing query parameter fnId=<function id>",
                ),
                key,
            )
        found = self.durable.find(fn_id)
        if found is None:
            ids = [i for f in self.durable.functions for i in (f.id, f.failure_id) if i]
            known = ", ".join(sorted(ids)) or "none"
            return self._finish(
                _error(
                    404,
                    ServeErrorCode.FUNCTION_NOT_FOUND,
                    f"no function {fn_id!r} here (served: {known})",
                ),
                key,
            )
        try:
            raw = _bounded_json.loads(
                req.body, max_depth=_bounded_json.EXECUTION_DEPTH, exact_ints=False
            )
        except _bounded_json.BadJson as err:
            msg = f"invalid execution request: {err}"
            return self._finish(_error(err.status, ServeErrorCode.BODY_INVALID, msg), key)
        try:
            body = ExecutionRequest.model_validate(raw)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            msg = f"invalid execution request: {where}: {first['msg']}"
            return self._finish(_error(400, ServeErrorCode.BODY_INVALID, msg), key)
        if body.use_api:
            msg = "use_api is not supported: send the events and steps in the request body"
            return self._finish(_error(400, ServeErrorCode.BODY_INVALID, msg), key)
        step_id = req.query.get("stepId")
        target = None if step_id in (None, "", "step") else step_id
        return _Execution(found[0], found[1], body, target, key)

    # -- responses ----------------------------------------------------------------------------

    def _outcome(self, plan: _Execution, outcome: Outcome) -> Response:
        if isinstance(outcome, Raised):
            _log.error(
                "function %s (run %s) failed: %s: %s",
                plan.fn.id,
                plan.body.ctx.run_id,
                type(outcome.error).__name__,
                outcome.error,
            )
        wire = to_wire(plan.fn, outcome)
        return json_response(wire.status, wire.body, wire.headers)

    def _finish(self, res: Response, key: str | None) -> Response:
        res.headers.setdefault("content-type", "application/json")
        res.headers[Header.SDK] = SDK_ID
        res.headers[Header.REQ_VERSION] = str(REQUEST_VERSION)
        res.headers[Header.FRAMEWORK] = self.framework
        res.headers[Header.SDK_HANDLED] = "true"
        if key is not None and Header.SIGNATURE not in res.headers:
            res.headers[Header.SIGNATURE] = signing.sign(res.body, key)
        return res

    # -- registration -------------------------------------------------------------------------

    def function_configs(self, serve_url: str) -> list[dict[str, Any]]:
        return [cfg for fn in self.durable.functions for cfg in fn.configs(serve_url)]

    def registration_body(self, serve_url: str) -> dict[str, Any]:
        return {
            "appname": self.durable.app_id,
            "deploy_type": "ping",
            "framework": self.framework,
            "sdk": SDK_ID,
            "url": serve_url,
            "v": REGISTRATION_VERSION,
            "capabilities": dict(CAPABILITIES),
            "functions": self.function_configs(serve_url),
        }

    def _registration(self, plan: _Sync) -> tuple[str, dict[str, Any], dict[str, str]]:
        url = f"{self.durable.orchestrator_url}/fn/register"
        if plan.query.get("deployId"):
            url += "?" + urllib.parse.urlencode({"deployId": plan.query["deployId"]})
        headers = {
            "content-type": "application/json",
            Header.SDK: SDK_ID,
        }
        if self.durable.signing_key:
            headers["authorization"] = (
                f"Bearer {signing.hashed_signing_key(self.durable.signing_key)}"
            )
        return url, self.registration_body(plan.url), headers

    def _registered(self, url: str, res: httpx.Response | Exception) -> Response:
        sync_kind = {Header.SYNC_KIND: "out_of_band"}
        if isinstance(res, Exception):
            msg = (
                f"could not reach the orchestrator at {url} ({res}); start it (`durable dev`) or "
                "set DURABLE_ORCHESTRATOR_URL"
            )
            return _error(502, ServeErrorCode.REGISTRATION_FAILED, msg, **sync_kind)
        try:
            body = res.json()
        except ValueError:
            body = {"error": res.text}
        return json_response(res.status_code, body, sync_kind)

    async def _sync_out_of_band(self, plan: _Sync) -> Response:
        url, body, headers = self._registration(plan)
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                return self._registered(url, await client.post(url, json=body, headers=headers))
        except httpx.HTTPError as err:
            return self._registered(url, err)

    def _sync_out_of_band_blocking(self, plan: _Sync) -> Response:
        url, body, headers = self._registration(plan)
        try:
            with httpx.Client(timeout=30) as client:
                return self._registered(url, client.post(url, json=body, headers=headers))
        except httpx.HTTPError as err:
            return self._registered(url, err)


__all__ = ["DEFAULT_SERVE_PATH", "Event", "Request", "Response", "ServeHandler"]
