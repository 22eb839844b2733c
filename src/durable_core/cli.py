"""The `durable` command: run the orchestrator standalone, send events, inspect runs.

durable dev [--port 8288] [-u APP_URL ...] [--fast-retries]
durable send NAME [--data JSON]
durable runs [--function ID] [--status STATUS]
durable run RUN_ID
durable cancel RUN_ID
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click
import httpx

from . import _limits
from .options import Limits
from .orchestrator.service import DEFAULT_BACKOFF, FAST_BACKOFF

DEFAULT_URL = "http://127.0.0.1:8288"


def _url() -> str:
    return os.environ.get("DURABLE_ORCHESTRATOR_URL", DEFAULT_URL).rstrip("/")


def _headers() -> dict[str, str]:
    from .signing import hashed_signing_key

    key = os.environ.get("DURABLE_SIGNING_KEY")
    return {"authorization": f"Bearer {hashed_signing_key(key)}"} if key else {}


def _call(method: str, path: str, url: str, **kw: Any) -> Any:
    try:
        res = httpx.request(method, f"{url}{path}", headers=_headers(), timeout=30, **kw)
    except httpx.HTTPError as err:
        raise click.ClickException(
            f"cannot reach the orchestrator at {url}: {err} (is `durable dev` running?)"
        ) from None
    try:
        body = res.json()
    except ValueError:
        body = {"error": res.text}
    if res.status_code >= 400:
        raise click.ClickException(f"HTTP {res.status_code}: {body.get('error', body)}")
    return body


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return _limits.parse_size(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def limit_options(command: Callable[..., None]) -> Callable[..., None]:
    """The `--max-*` flags of a command that runs the orchestrator, passed on as `limits`."""
    s = _limits.SETTINGS

    @functools.wraps(command)
    def run(
        *args: Any,
        max_step_output: int | None,
        max_run_output_total: int | None,
        max_steps: int | None,
        **kwargs: Any,
    ) -> None:
        given = Limits(
            step_output=max_step_output, run_output_total=max_run_output_total, steps=max_steps
        )
        command(*args, limits=given, **kwargs)

    flags = [
        click.option(
            s["step_output"].flag,
            envvar=s["step_output"].env,
            callback=_size,
            help="Largest output (of a step or a function) or error a run may store, like 8MB "
            f"(default {_limits.format_size(_limits.DEFAULT_STEP_OUTPUT)}).",
        ),
        click.option(
            s["run_output_total"].flag,
            envvar=s["run_output_total"].env,
            callback=_size,
            help="Most bytes of step results one run may store, like 64MB "
            f"(default {_limits.format_size(_limits.DEFAULT_RUN_OUTPUT_TOTAL)}).",
        ),
        click.option(
            s["steps"].flag,
            envvar=s["steps"].env,
            type=click.IntRange(min=1),
            help=f"Most steps one run may have (default {_limits.DEFAULT_STEPS}).",
        ),
    ]
    for flag in reversed(flags):
        run = flag(run)
    return run


@click.group()
@click.version_option("0.1.0", prog_name="durable")
def main() -> None:
    """Durable functions: the orchestrator and its tools."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8288, show_default=True, type=int)
@click.option(
    "-u", "--app-url", "app_urls", multiple=True, help="Serve URL of an app to sync (repeatable)."
)
@click.option("--db", default=".durable/dev.db", show_default=True, help="SQLite file.")
@click.option(
    "--fast-retries",
    is_flag=True,
    help="Retry failed steps after 50 ms, 100 ms, ... instead of 15 s, 30 s, ...",
)
@click.option("--log-level", default="info", show_default=True)
@limit_options
def dev(
    host: str,
    port: int,
    app_urls: tuple[str, ...],
    db: str,
    fast_retries: bool,
    log_level: str,
    limits: Limits,
) -> None:
    """Run the orchestrator standalone for development: any event key, no signatures."""
    import uvicorn

    from .orchestrator.api import Api
    from .orchestrator.service import Orchestrator
    from .orchestrator.store.sqlite import SqliteStore

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per call to an app is noise
    backoff = FAST_BACKOFF if fast_retries else DEFAULT_BACKOFF
    orch = Orchestrator(SqliteStore(db), backoff=backoff, limits=limits)

    api = Api(orch)

    async def sync_apps() -> None:
        pending = list(app_urls)
        deadline = time.monotonic() + 300
        async with httpx.AsyncClient(timeout=10) as client:
            while pending and time.monotonic() < deadline:
                for url in list(pending):
                    with contextlib.suppress(httpx.HTTPError):
                        before = api.registrations
                        res = await client.put(url)
                        if res.status_code < 400 and api.registrations > before:
                            click.echo(f"synced {url}")
                            pending.remove(url)
                        elif res.status_code < 400:  # the app answered, but nothing registered
                            why = api.last_refusal or "the app sent no registration"
                            click.echo(f"sync of {url} registered nothing: {why}", err=True)
                            pending.remove(url)
                        else:
                            click.echo(
                                f"sync of {url} answered {res.status_code}: {res.text[:200]}"
                            )
                if pending:
                    await asyncio.sleep(0.5)
        for url in pending:
            click.echo(f"could not sync {url}; is the app running?", err=True)

    app = api.served(beside=sync_apps)
    click.echo(f"durable dev: http://{host}:{port} (API /v1, events /e/<any key>, store {db})")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.command()
@click.option(
    "--database",
    required=True,
    envvar="DURABLE_DATABASE_URL",
    help="postgresql://... (or sqlite:///path.db for one process).",
)
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8288, show_default=True, type=int)
@click.option(
    "--workers",
    default=64,
    show_default=True,
    type=int,
    help="Requests to apps run at once by this process.",
)
@click.option(
    "--signing-key",
    envvar="DURABLE_SIGNING_KEY",
    default=None,
    help="Hex key shared with the apps (or DURABLE_SIGNING_KEY).",
)
@click.option(
    "--event-key",
    "event_keys",
    multiple=True,
    help="A key accepted at /e/<key> (repeatable; or DURABLE_EVENT_KEYS=k1,k2).",
)
@click.option(
    "--lease",
    default=30.0,
    show_default=True,
    help="Seconds before a dead process's work is taken over.",
)
@click.option(
    "--http-checkpoints/--no-http-checkpoints",
    default=None,
    help="Let apps checkpoint each step over HTTP, so a chain of steps (or a one-step run) "
    "takes one request. Default: on with SQLite, off with PostgreSQL.",
)
@click.option("--log-level", default="info", show_default=True)
@limit_options
def start(
    database: str,
    host: str,
    port: int,
    workers: int,
    signing_key: str | None,
    event_keys: tuple[str, ...],
    lease: float,
    http_checkpoints: bool | None,
    log_level: str,
    limits: Limits,
) -> None:
    """Run the orchestrator in production: signed requests, known event keys, any number of
    processes on one PostgreSQL database."""
    import uvicorn

    from .orchestrator.api import Api
    from .orchestrator.service import Orchestrator
    from .orchestrator.store import open_store
    from .signing import hashed_signing_key

    keys = list(event_keys) or [
        k for k in os.environ.get("DURABLE_EVENT_KEYS", "").split(",") if k.strip()
    ]
    if not signing_key:
        raise click.UsageError(
            "production needs a signing key: pass --signing-key or set DURABLE_SIGNING_KEY (generate one "
            "with `python -c 'import secrets; print(secrets.token_hex(32))'`) and give the same key to the apps"
        )
    if not keys:
        raise click.UsageError(
            "production needs at least one event key: pass --event-key KEY or set DURABLE_EVENT_KEYS=k1,k2, "
            "and send events to /e/KEY"
        )
    try:
        hashed_signing_key(signing_key)
    except Exception as err:
        raise click.UsageError(str(err)) from None
    if lease <= 0:
        raise click.BadParameter("must be positive", param_hint="--lease")
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    store = open_store(database)
    orch = Orchestrator(
        store,
        signing_key=signing_key,
        event_keys=[k.strip() for k in keys],
        concurrency=workers,
        lease_ms=int(lease * 1000),
        limits=limits,
        http_checkpoints=http_checkpoints,
    )

    api = Api(orch).served()
    click.echo(
        f"durable start: http://{host}:{port} ({type(store).__name__}, {len(keys)} event key(s), {workers} workers)"
    )
    uvicorn.run(api, host=host, port=port, log_level="warning")


@main.command()
@click.argument("name")
@click.option("--data", default="{}", help="Event data as a JSON object.")
@click.option("--id", "event_id", default=None, help="Idempotency id.")
@click.option(
    "--url",
    default=None,
    help="Orchestrator URL (default $DURABLE_ORCHESTRATOR_URL or the dev server).",
)
def send(name: str, data: str, event_id: str | None, url: str | None) -> None:
    """Send an event."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"not JSON: {err}", param_hint="--data") from None
    event: dict[str, Any] = {"name": name, "data": payload}
    if event_id:
        event["id"] = event_id
    key = os.environ.get("DURABLE_EVENT_KEY", "dev")
    body = _call("POST", f"/e/{key}", url or _url(), json=event)
    click.echo(f"sent {name}: {', '.join(body['ids'])}")


def _when(iso: str | None) -> str:
    return iso.replace("T", " ")[:23] if iso else "-"


@main.command()
@click.option("--function", "function_id", default=None, help="Only runs of this function id.")
@click.option(
    "--status",
    default=None,
    help="queued, running, sleeping, waiting, completed, failed, cancelled or skipped.",
)
@click.option("--limit", default=20, show_default=True)
@click.option("--url", default=None)
def runs(function_id: str | None, status: str | None, limit: int, url: str | None) -> None:
    """List runs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if function_id:
        params["function_id"] = function_id
    if status:
        params["status"] = status
    rows = _call("GET", "/v1/runs", url or _url(), params=params)["data"]
    if not rows:
        click.echo("no runs")
        return
    click.echo(f"{'RUN':<27} {'FUNCTION':<32} {'STATUS':<10} {'CREATED':<24} REASON")
    for r in rows:
        click.echo(
            f"{r['run_id']:<27} {r['function_id']:<32} {r['status']:<10} {_when(r['created_at']):<24} {r['reason'] or ''}"
        )


@main.command()
@click.argument("run_id")
@click.option("--url", default=None)
def run(run_id: str, url: str | None) -> None:
    """Show one run with its steps."""
    r = _call("GET", f"/v1/runs/{run_id}", url or _url())
    click.echo(
        f"run       {r['run_id']}\nfunction  {r['function_id']}\nstatus    {r['status']}"
        + (f" ({r['reason']})" if r["reason"] else "")
    )
    click.echo(
        f"created   {_when(r['created_at'])}\nended     {_when(r['ended_at'])}\nevent     {json.dumps(r['event'])}"
    )
    click.echo(f"\n{'STEP':<24} {'OP':<14} {'TRY':>3} {'MS':>7}  RESULT")
    for s in r["steps"]:
        result = s["error"] if s["error"] else s["output"]
        text = json.dumps(result)
        text = text if len(text) < 70 else text[:67] + "..."
        ms = "" if s["duration_ms"] is None else str(s["duration_ms"])
        click.echo(f"{s['name'][:24]:<24} {s['op']:<14} {s['attempt']:>3} {ms:>7}  {text}")
    if r["status"] == "completed":
        click.echo(f"\noutput    {json.dumps(r['output'])}")
    elif r["error"]:
        click.echo(f"\nerror     {r['error'].get('name')}: {r['error'].get('message')}")


@main.command()
@click.argument("run_id")
@click.option("--url", default=None)
def cancel(run_id: str, url: str | None) -> None:
    """Cancel a run."""
    r = _call("POST", f"/v1/runs/{run_id}/cancel", url or _url())
    click.echo(f"run {r['run_id']} is {r['status']}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
