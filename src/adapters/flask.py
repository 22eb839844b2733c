"""Flask: `app.register_blueprint(durable_blueprint(durable))` serves the endpoint at /api/durable.

With no orchestrator URL configured, the orchestrator runs embedded on a thread of the serving
process (under `flask run` with the reloader, in the reloaded child only) and its API is at
/durable. Route workflows: `@bp.workflow("/api/example")`, declared before registering `bp`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, request

from durable_core import Durable, Function, ServeHandler
from durable_core import Request as CoreRequest
from durable_core import Response as CoreResponse
from durable_core.orchestrator.embedded import API_PATH, Embedded
from durable_core.routes import is_protocol_call, start_blocking
from durable_core.serve import DEFAULT_SERVE_PATH

_METHODS = ["GET", "PUT", "POST"]


def to_core() -> CoreRequest:
    return CoreRequest(
        method=request.method,
        body=request.get_data(),
        headers=dict(request.headers),
        query=request.args.to_dict(),
        url=request.url,
    )


def to_response(res: CoreResponse) -> Response:
    return Response(res.body, status=res.status, headers=res.headers)


def serving_process(app: Flask) -> bool:
    """False in the watcher process of Werkzeug's reloader, which never serves a request."""
    if os.environ.get("WERKZEUG_RUN_MAIN") == "true":
        return True
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.info_name == "run":  # `flask run`: --reload, or --debug's default
        reload = ctx.params.get("reload")
        if reload is None:
            from flask.helpers import get_debug_flag

            reload = get_debug_flag()
        return not reload
    return not app.debug  # app.run(debug=True) reloads too


class DurableBlueprint(Blueprint):
    def __init__(
        self,
        durable: Durable,
        *,
        path: str = DEFAULT_SERVE_PATH,
        api_path: str = API_PATH,
        embedded: bool | None = None,
        name: str = "durable",
    ) -> None:
        super().__init__(name, __name__)
        self.durable = durable
        self.handler = ServeHandler(durable, framework="flask", serve_path=path)
        if embedded is None:
            embedded = not durable.orchestrator_url_configured
        self.embedded = Embedded(durable) if embedded else None
        self.add_url_rule(path, "serve", self._serve, methods=_METHODS)
        if self.embedded is not None:
            self.add_url_rule(f"{api_path}/<path:sub>", "api", self._api, methods=_METHODS)
            # The dashboard, at the API's root.
            root = f"{api_path}/"
            self.add_url_rule(root, "dashboard", self._api, defaults={"sub": ""}, methods=["GET"])
            self.record_once(lambda state: self._on_register(state.app))

    def _on_register(self, app: Any) -> None:
        embedded = self.embedded
        assert embedded is not None
        if serving_process(app):
            embedded.start_in_thread()

        def start_once() -> None:  # a server that imported the app without starting it
            embedded.start_in_thread()

        app.before_request(start_once)

    def _serve(self) -> Response:
        return to_response(self.handler.handle_sync(to_core()))

    def _api(self, sub: str) -> Response:
        assert self.embedded is not None
        status, headers, body = self.embedded.call_api(
            request.method,
            "/" + sub,
            request.query_string.decode("latin-1"),
            dict(request.headers),
            request.get_data(),
        )
        return Response(body, status=status, headers=headers)

    def workflow(
        self, path: str, *, id: str | None = None, retries: int = 4, on_failure: Any = None
    ) -> Callable[[Callable[..., Any]], Function[Any]]:
        """Make the route at `path` a workflow: a plain POST starts a run and answers
        `{"workflowRunId": ...}`; the orchestrator calls the same route for each step."""
        declare = self.durable.workflow(path, id=id, retries=retries, on_failure=on_failure)

        def decorate(handler: Callable[..., Any]) -> Function[Any]:
            fn = declare(handler)

            def view() -> Response:
                req = to_core()
                if is_protocol_call(req):
                    return to_response(self.handler.handle_sync(req))
                return to_response(start_blocking(self.durable, fn, req))

            self.add_url_rule(path, f"workflow_{fn.local_id}", view, methods=["POST"])
            return fn

        return decorate


def durable_blueprint(
    durable: Durable,
    *,
    path: str = DEFAULT_SERVE_PATH,
    api_path: str = API_PATH,
    embedded: bool | None = None,
) -> DurableBlueprint:
    """The blueprint serving `durable`'s functions (and, embedded, the orchestrator's API)."""
    return DurableBlueprint(durable, path=path, api_path=api_path, embedded=embedded)
