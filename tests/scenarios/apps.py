"""One app builder per framework, all serving the scenario functions, and the real servers.

- FastAPI, Starlette: uvicorn (lifespan on, so the embedded orchestrator starts with the app);
- Flask: Werkzeug's threaded server (`make_server(..., threaded=True)`);
- Django: Django's own threaded WSGI server (the one `runserver` and live-server tests use),
  with a minimal settings module configured here.

Every app routes the two route workflows and `POST /scn/flaky/<key>` (HTTP 500 on the first
call for a key, then 200), and keeps the embedded orchestrator's API at /durable.
`start(framework)` builds and serves one; call it with DURABLE_DIR pointing at a fresh directory.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from durable_core import Durable
from durable_core.orchestrator.embedded import Embedded

from .functions import WORKFLOW_PATHS, WORKFLOWS, flaky_endpoint, register

FRAMEWORKS = ["fastapi", "starlette", "flask", "django"]
START_DEADLINE = 15.0
STOP_GRACE = 3
DJANGO_URLCONF = "scenarios_django_urls"


def app_id(framework: str) -> str:
    return f"scn-{framework}"


def make_durable(framework: str) -> Durable:
    durable = Durable(app_id(framework), dev=True)
    register(durable)
    return durable


# -- app builders ---------------------------------------------------------------------------


async def _asgi_flaky(request: Request) -> Response:
    raw = await request.body()
    status, body = flaky_endpoint(request.path_params["key"], json.loads(raw) if raw else None)
    return JSONResponse(body, status_code=status)


def build_fastapi(durable: Durable) -> Any:
    from fastapi import FastAPI

    from adapters.fastapi import Serve

    app = FastAPI()
    serve = Serve(app, durable)
    for mode, path in WORKFLOW_PATHS.items():
        serve.post(path)(WORKFLOWS[mode])
    app.add_api_route("/scn/flaky/{key}", _asgi_flaky, methods=["POST"])
    return app


def build_starlette(durable: Durable) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    from adapters.starlette import Serve

    app = Starlette(routes=[Route("/scn/flaky/{key}", _asgi_flaky, methods=["POST"])])
    serve = Serve(app, durable)
    for mode, path in WORKFLOW_PATHS.items():
        serve.post(path)(WORKFLOWS[mode])
    return app


def build_flask(durable: Durable) -> Any:
    from flask import Flask, request

    from adapters.flask import durable_blueprint

    app = Flask("scenarios")
    bp = durable_blueprint(durable)
    for mode, path in WORKFLOW_PATHS.items():
        bp.workflow(path)(WORKFLOWS[mode])  # before register_blueprint

    @app.post("/scn/flaky/<key>")
    def flaky(key: str) -> Any:
        status, body = flaky_endpoint(key, request.get_json(silent=True))
        return body, status

    app.register_blueprint(bp)
    return app


def _django_urlconf(durable: Durable) -> list[Any]:
    from django.http import HttpRequest, HttpResponse, JsonResponse
    from django.urls import include, path

    from adapters.django import csrf_exempt, durable_api_urls, durable_urls, workflow_view

    @csrf_exempt
    def flaky(request: HttpRequest, key: str) -> HttpResponse:
        status, body = flaky_endpoint(key, json.loads(request.body) if request.body else None)
        return JsonResponse(body, status=status)

    routes = [
        path("api/durable/", include(durable_urls(durable))),
        path("durable/", include(durable_api_urls(durable))),
        path("scn/flaky/<str:key>", flaky),
    ]
    for mode, route in WORKFLOW_PATHS.items():
        fn = durable.workflow(route)(WORKFLOWS[mode])
        routes.append(path(route.lstrip("/"), workflow_view(fn)))
    return routes


def build_django(durable: Durable) -> Any:
    """The project's WSGI app. Django is configured once per process: a second build swaps
    the URL patterns, and its orchestrator starts on its first request."""
    import django
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application
    from django.urls import clear_url_caches

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="scenario-tests",
            ALLOWED_HOSTS=["127.0.0.1", "localhost"],
            ROOT_URLCONF=DJANGO_URLCONF,
            INSTALLED_APPS=["adapters.django.DurableConfig"],
            MIDDLEWARE=[],
            LOGGING_CONFIG=None,
            USE_TZ=True,
            DURABLE={"DEV": True},
        )
    urlconf = types.ModuleType(DJANGO_URLCONF)
    urlconf.urlpatterns = _django_urlconf(durable)
    sys.modules[DJANGO_URLCONF] = urlconf
    clear_url_caches()
    django.setup()  # the first time: the ready hook starts the embedded orchestrator
    return get_wsgi_application()


BUILDERS: dict[str, Callable[[Durable], Any]] = {
    "fastapi": build_fastapi,
    "starlette": build_starlette,
    "flask": build_flask,
    "django": build_django,
}


# -- servers --------------------------------------------------------------------------------


class UvicornThread:
    """An ASGI app under uvicorn on 127.0.0.1, lifespan on, in a background thread."""

    def __init__(self, app: Any) -> None:
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
        # without it every response waits out the client's delayed ACK (~40 ms).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            ws="none",
            access_log=False,
            timeout_graceful_shutdown=STOP_GRACE,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(START_DEADLINE)
        self._sock.close()


class WsgiThread:
    """A socketserver-based WSGI server (Werkzeug's or Django's) in a background thread."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self.port: int = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(START_DEADLINE)


def _werkzeug(app: Any) -> WsgiThread:
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    return WsgiThread(make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet))


def _django_server(app: Any) -> WsgiThread:
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadedWSGIServer):  # type: ignore[misc]
        def get_request(self) -> tuple[socket.socket, Any]:
            conn, addr = super().get_request()
            # Headers and body go out in two writes: without TCP_NODELAY the body waits out
            # the client's delayed ACK (~40 ms a response).
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn, addr

    server = Server(("127.0.0.1", 0), Quiet)
    server.set_app(app)
    return WsgiThread(server)


@dataclasses.dataclass
class Running:
    framework: str
    app_id: str
    base_url: str
    durable: Durable
    server: UvicornThread | WsgiThread
    hosted_loop: Any = None  # the event loop of a thread-hosted orchestrator, once stopped

    def stop(self) -> None:
        self.server.stop()
        host = self.durable.local
        if isinstance(host, Embedded):  # WSGI apps host the orchestrator on a thread
            self.hosted_loop = host._loop
            host.stop_thread()


def _wait_healthy(base_url: str) -> None:
    """Until the embedded orchestrator's API answers through the app."""
    deadline = time.monotonic() + START_DEADLINE
    last = "no answer"
    with httpx.Client(base_url=base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                res = client.get("/durable/health")
            except httpx.TransportError as err:
                last = repr(err)
            else:
                if res.status_code == 200:
                    return
                last = f"HTTP {res.status_code}: {res.text[:200]}"
            time.sleep(0.02)
    raise RuntimeError(f"{base_url} did not become healthy in time ({last})")


def start(framework: str) -> Running:
    """Build `framework`'s app on a fresh `Durable` and serve it on 127.0.0.1."""
    durable = make_durable(framework)
    app = BUILDERS[framework](durable)
    server: UvicornThread | WsgiThread
    if framework in ("fastapi", "starlette"):
        server = UvicornThread(app)
    elif framework == "flask":
        server = _werkzeug(app)
    else:
        server = _django_server(app)
    running = Running(
        framework, app_id(framework), f"http://127.0.0.1:{server.port}", durable, server
    )
    try:
        _wait_healthy(running.base_url)
    except BaseException:
        running.stop()
        raise
    return running
