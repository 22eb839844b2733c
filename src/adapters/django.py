"""Django: `path("api/durable/", include(durable_urls(durable)))` serves the endpoint.

With no orchestrator URL configured the orchestrator runs embedded on a thread, started once
from this app's ready hook (add "adapters.django.DurableConfig" to INSTALLED_APPS; only in the
process that serves, not in runserver's autoreloader or in other management commands), with its
API under `path("durable/", include(durable_api_urls(durable)))`. Route workflows:
`path("api/example", workflow_view(fn))` for a function declared with `durable.workflow(...)`.
Settings come from `settings.DURABLE` (SIGNING_KEY, SIGNING_KEY_FALLBACK, EVENT_KEY,
ORCHESTRATOR_URL, DEV) where neither the arguments nor the environment set them.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path, re_path
from django.views.decorators.csrf import csrf_exempt as _csrf_exempt

from durable_core import Durable, Function, ServeHandler
from durable_core import Request as CoreRequest
from durable_core import Response as CoreResponse
from durable_core.orchestrator.embedded import Embedded
from durable_core.routes import is_protocol_call, start_blocking

_served: dict[int, tuple[ServeHandler, Embedded | None]] = {}
View = Callable[..., HttpResponse]
csrf_exempt: Callable[[View], View] = _csrf_exempt  # Django ships no type hints


def _configure(durable: Durable) -> None:
    conf: dict[str, Any] = getattr(settings, "DURABLE", None) or {}
    for key, attr in (
        ("SIGNING_KEY", "signing_key"),
        ("SIGNING_KEY_FALLBACK", "signing_key_fallback"),
        ("EVENT_KEY", "event_key"),
    ):
        if conf.get(key) and not getattr(durable, attr):
            setattr(durable, attr, conf[key])
    if conf.get("ORCHESTRATOR_URL") and not durable.orchestrator_url_configured:
        durable.orchestrator_url = str(conf["ORCHESTRATOR_URL"]).rstrip("/")
        durable.orchestrator_url_configured = True
    if conf.get("DEV") and "DURABLE_DEV" not in os.environ:
        durable.dev = bool(conf["DEV"])


def _serve(durable: Durable, embedded: bool | None = None) -> tuple[ServeHandler, Embedded | None]:
    if id(durable) not in _served:
        _configure(durable)
        if embedded is None:
            embedded = not durable.orchestrator_url_configured
        host = Embedded(durable) if embedded else None
        _served[id(durable)] = (ServeHandler(durable, framework="django"), host)
    return _served[id(durable)]


def to_core(request: HttpRequest) -> CoreRequest:
    return CoreRequest(
        method=request.method or "GET",
        body=request.body,
        headers=dict(request.headers),
        query=request.GET.dict(),
        url=request.build_absolute_uri(),
    )


def to_response(res: CoreResponse) -> HttpResponse:
    response = HttpResponse(res.body, status=res.status)
    for key, value in res.headers.items():
        response[key] = value
    return response


def _started(host: Embedded | None) -> None:
    if host is not None:
        host.start_in_thread()  # no-op once started (the ready hook normally did it)


def durable_urls(durable: Durable, *, embedded: bool | None = None) -> list[URLPattern]:
    """URL patterns for the serve endpoint; include them at the path of your choice."""
    handler, host = _serve(durable, embedded)

    @csrf_exempt
    def serve(request: HttpRequest) -> HttpResponse:
        _started(host)
        return to_response(handler.handle_sync(to_core(request)))

    return [path("", serve, name="durable-serve")]


def durable_api_urls(durable: Durable) -> list[URLPattern]:
    """URL patterns for the embedded orchestrator's API (/v1/..., /e/<key>, /fn/register)."""
    _, host = _serve(durable)
    if host is None:
        return []

    @csrf_exempt
    def api(request: HttpRequest, sub: str) -> HttpResponse:
        assert host is not None
        _started(host)
        status, headers, body = host.call_api(
            request.method or "GET",
            "/" + sub,
            request.META.get("QUERY_STRING", ""),
            dict(request.headers),
            request.body,
        )
        response = HttpResponse(body, status=status)
        for key, value in headers:
            response[key] = value
        return response

    # sub "" is the dashboard, at the root of the mount
    return [re_path(r"^(?P<sub>.*)$", api, name="durable-api")]


def workflow_view(fn: Function[Any]) -> View:
    """The view of a route workflow: a plain POST starts a run, protocol calls run its steps."""
    durable = fn.app
    if not isinstance(durable, Durable):
        raise TypeError(f"route workflow {fn.id!r} must be declared with @durable.workflow(...)")
    handler, host = _serve(durable)

    @csrf_exempt
    def view(request: HttpRequest) -> HttpResponse:
        _started(host)
        req = to_core(request)
        if is_protocol_call(req):
            return to_response(handler.handle_sync(req))
        return to_response(start_blocking(durable, fn, req))

    return view


def serving_process(argv: list[str] | None = None) -> bool:
    """True where requests are served: runserver's reloaded child, WSGI/ASGI servers."""
    argv = sys.argv if argv is None else argv
    if os.environ.get("RUN_MAIN") == "true":
        return True
    if len(argv) > 1:
        from django.core.management import get_commands

        if argv[1] in get_commands():  # manage.py, django-admin, python -m django, ...
            return argv[1] == "runserver" and "--noreload" in argv
    return True


class DurableConfig(AppConfig):  # type: ignore[misc]
    """Starts the embedded orchestrator of every app served through `durable_urls`."""

    name = "adapters.django"
    label = "durable"
    verbose_name = "durable"

    def ready(self) -> None:
        if not serving_process():
            return
        urlconf = getattr(settings, "ROOT_URLCONF", None)
        if urlconf:
            importlib.import_module(urlconf)  # declares the apps served through durable_urls
        for _, host in list(_served.values()):
            _started(host)
