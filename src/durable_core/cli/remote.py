"""How the commands reach an orchestrator: its URL, the key `/v1` needs, and every failure
said in one line (exit code 1, no traceback).

The URL is `--url`, else `DURABLE_ORCHESTRATOR_URL`, else the dev server. The signing key is
`--signing-key`, else `DURABLE_SIGNING_KEY`, else the key an embedded app keeps in
`.durable/signing-key` (`DURABLE_DIR/signing-key`) when the command runs in the app's
directory; `/v1` gets it as `Authorization: Bearer <sha256 of the key>`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from typing import Any

import click
import httpx

from ..errors import SignatureError
from ..signing import hashed_signing_key

DEFAULT_URL = "http://127.0.0.1:8288"
EMBEDDED_HINT = "an embedded app serves it under /durable, like http://127.0.0.1:8000/durable"


@dataclasses.dataclass(frozen=True)
class Target:
    url: str
    signing_key: str | None = None
    #: Where the signing key came from, for messages.
    key_source: str | None = None

    def headers(self) -> dict[str, str]:
        if not self.signing_key:
            return {}
        try:
            return {"authorization": f"Bearer {hashed_signing_key(self.signing_key)}"}
        except SignatureError as err:
            raise click.ClickException(f"the signing key from {self.key_source}: {err}") from None


def key_file() -> str:
    return os.path.join(os.environ.get("DURABLE_DIR") or ".durable", "signing-key")


def find_target(url: str | None, signing_key: str | None) -> Target:
    base = (url or os.environ.get("DURABLE_ORCHESTRATOR_URL") or DEFAULT_URL).rstrip("/")
    if signing_key:
        return Target(base, signing_key, "--signing-key or DURABLE_SIGNING_KEY")
    path = key_file()
    if os.path.isfile(path):
        try:
            with open(path) as fh:
                key = fh.read().strip()
        except OSError as err:
            raise click.ClickException(f"cannot read {path}: {err}") from None
        return Target(base, key or None, path)
    return Target(base)


def remote_options(command: Callable[..., None]) -> Callable[..., None]:
    """`--url` and `--signing-key`, passed on as `target`."""

    @functools.wraps(command)
    def run(*args: Any, url: str | None, signing_key: str | None, **kwargs: Any) -> None:
        command(*args, target=find_target(url, signing_key), **kwargs)

    run = click.option(
        "--signing-key",
        envvar="DURABLE_SIGNING_KEY",
        default=None,
        help="The orchestrator's signing key (or DURABLE_SIGNING_KEY; default: "
        ".durable/signing-key of an embedded app in this directory).",
    )(run)
    return click.option(
        "--url",
        default=None,
        help="Orchestrator URL (default $DURABLE_ORCHESTRATOR_URL or the dev server, "
        f"{DEFAULT_URL}; {EMBEDDED_HINT}).",
    )(run)


def parse_json(value: str, option: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"not JSON: {err}", param_hint=option) from None


def _refused(target: Target, status: int, message: str) -> str:
    if target.signing_key is None:
        return (
            f"the orchestrator at {target.url} needs its signing key (HTTP {status}): set "
            "DURABLE_SIGNING_KEY or pass --signing-key (an embedded app keeps its key in "
            ".durable/signing-key: run this command in the app's directory)"
        )
    return (
        f"the orchestrator at {target.url} refused the signing key from {target.key_source} "
        f"(HTTP {status}: {message}): set DURABLE_SIGNING_KEY or pass --signing-key with the "
        "key the orchestrator uses"
    )


def problem(target: Target, path: str, res: httpx.Response) -> str:
    """One line saying what went wrong with an answer of 400 or more, and what to do."""
    try:
        body = res.json()
    except ValueError:
        body = None
    message = str(body.get("error")) if isinstance(body, dict) and body.get("error") else ""
    if res.status_code in (401, 403):
        return _refused(target, res.status_code, message or res.text[:200])
    if res.status_code == 404 and message in ("", "Not Found"):
        return (
            f"nothing answers {target.url}{path} (HTTP 404): is {target.url} the orchestrator? "
            f"Set --url or DURABLE_ORCHESTRATOR_URL ({EMBEDDED_HINT})"
        )
    return f"HTTP {res.status_code}: {message or res.text[:300]}"


def request(target: Target, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {**target.headers(), **kw.pop("headers", {})}
    try:
        return httpx.request(method, f"{target.url}{path}", headers=headers, timeout=60, **kw)
    except httpx.HTTPError as err:
        raise click.ClickException(
            f"cannot reach the orchestrator at {target.url} ({err or type(err).__name__}): "
            "start it with `durable dev`, or set --url or DURABLE_ORCHESTRATOR_URL "
            f"({EMBEDDED_HINT})"
        ) from None


def call(target: Target, method: str, path: str, **kw: Any) -> Any:
    """The JSON answer to a request, or a ClickException saying what went wrong."""
    res = request(target, method, path, **kw)
    if res.status_code >= 400:
        raise click.ClickException(problem(target, path, res))
    try:
        return res.json()
    except ValueError:
        raise click.ClickException(
            f"{target.url}{path} did not answer JSON (HTTP {res.status_code}): is {target.url} "
            f"the orchestrator? ({EMBEDDED_HINT})"
        ) from None
