"""The dashboard: static pages (`web/`) served beside the API, at `/` of `durable dev` and
`durable start` and under the API's mount (`/durable/`) of an embedded app.

    GET  /                 the dashboard (or, with a signing key and no session, the login)
    GET  /static/{name}    its scripts and styles (no run data)
    POST /login            form field `key`: the signing key; sets the session cookie
    POST /logout           drops it

With a signing key, a session is a cookie holding an HMAC of the key (never the key), HttpOnly
and SameSite=Strict; the API accepts it besides the bearer token. A request authenticated by
the cookie that changes anything must carry the header `x-durable-dashboard: 1`, which a form
on another site cannot send (CSRF). Without a signing key (`durable dev`), no login is asked.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from importlib import resources
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .. import signing
from ..errors import SignatureError
from .api_http import read_body
from .api_input import Problem

__all__ = ["COOKIE", "CSRF_HEADER", "Dashboard", "session_problem", "session_value"]

Handler = Callable[[Request], Awaitable[Response]]
COOKIE = "durable_session"
CSRF_HEADER = "x-durable-dashboard"
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}
_HEADERS = {
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}


def session_value(signing_key: str) -> str:
    return hmac.new(signing_key.encode(), b"durable dashboard session", hashlib.sha256).hexdigest()


def session_problem(request: Request, signing_key: str) -> str | None:
    """None if the request carries a valid session (and, to change anything, the CSRF header);
    otherwise why not."""
    given = request.cookies.get(COOKIE)
    if given is None:
        return "no session"
    if not hmac.compare_digest(given.encode(), session_value(signing_key).encode()):
        return "the session cookie is not valid for this orchestrator's key: log in again"
    if request.method not in ("GET", "HEAD") and request.headers.get(CSRF_HEADER) != "1":
        return f"a change made with the dashboard's session needs the header {CSRF_HEADER}: 1"
    return None


def _asset(name: str) -> bytes | None:
    web = resources.files(__package__ or "durable_core.orchestrator") / "web"
    if "/" in name or name.startswith(".") or not any(name.endswith(s) for s in _TYPES):
        return None
    path = web / name
    return path.read_bytes() if path.is_file() else None


def _same_key(given: str, key: str) -> bool:
    """Whether `given` is `key`, with or without its `signkey-<env>-` prefix."""
    try:
        hashed = signing.hashed_signing_key(given)
    except SignatureError:
        return False
    return hmac.compare_digest(hashed.encode(), signing.hashed_signing_key(key).encode())


class Dashboard:
    """`guard` answers a handler's failures as JSON errors (`api_http.guarded`)."""

    def __init__(self, signing_key: str | None, guard: Callable[[Handler], Handler]) -> None:
        self.signing_key = signing_key
        self.guard = guard

    def routes(self) -> list[Route]:
        g = self.guard
        return [
            Route("/", g(self.index), methods=["GET", "HEAD"]),
            Route("/static/{name}", g(self.static), methods=["GET", "HEAD"]),
            Route("/login", g(self.login), methods=["POST"]),
            Route("/logout", g(self.logout), methods=["POST"]),
        ]

    def _page(self, name: str, status: int = 200, **fills: str) -> Response:
        """A page, its `{{name}}` places filled (with text of ours, never a request's)."""
        html = (_asset(name) or b"").decode()
        for place, text in fills.items():
            html = html.replace("{{" + place + "}}", text)
        return HTMLResponse(html, status_code=status, headers=_HEADERS)

    async def index(self, request: Request) -> Response:
        if self.signing_key is not None and session_problem(request, self.signing_key):
            return self._page("login.html", message="")
        return self._page("index.html", logout="" if self.signing_key else "hidden")

    async def static(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        body = _asset(name)
        if body is None:
            raise Problem(404, f"no dashboard file {name!r}")
        media = _TYPES[name[name.rindex(".") :]]
        return Response(body, media_type=media, headers=_HEADERS)

    async def login(self, request: Request) -> Response:
        if self.signing_key is None:
            return RedirectResponse("./", status_code=303)
        form = parse_qs((await read_body(request, 8192)).decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0].strip()
        if not _same_key(key, self.signing_key):
            msg = "That key is not this orchestrator's signing key."
            return self._page("login.html", 401, message=msg)
        answer = RedirectResponse("./", status_code=303)
        answer.set_cookie(
            COOKIE, session_value(self.signing_key), httponly=True, samesite="strict",
            secure=request.url.scheme == "https", path="/",
        )  # fmt: skip
        return answer

    async def logout(self, request: Request) -> Response:
        answer = RedirectResponse("./", status_code=303)
        answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return answer
