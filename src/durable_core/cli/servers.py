"""`durable dev` and `durable start`: the orchestrator as a server of its own, logging one line
per change of a run's state (`--log-format text|json`)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import click
import httpx

from .. import logs
from ..errors import ConfigError
from ..options import Limits
from ..orchestrator.service import DEFAULT_BACKOFF, FAST_BACKOFF
from .options import limit_options, port_free


def log_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option(
        "--log-format",
        type=click.Choice(logs.FORMATS, case_sensitive=False),
        envvar="DURABLE_LOG_FORMAT",
        default=None,
        help="text (default) or json: one object per line (or DURABLE_LOG_FORMAT).",
    )(command)
    return click.option("--log-level", default="info", show_default=True)(command)


def _logging(log_format: str | None, log_level: str) -> None:
    try:
        logs.configure(log_format, log_level)
    except (ConfigError, ValueError) as err:
        raise click.UsageError(str(err)) from None


@click.command()
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
@log_options
@limit_options
def dev(
    host: str,
    port: int,
    app_urls: tuple[str, ...],
    db: str,
    fast_retries: bool,
    log_level: str,
    log_format: str | None,
    limits: Limits,
) -> None:
    """Run the orchestrator standalone for development: any event key, no signatures."""
    import uvicorn

    from ..orchestrator.api import Api
    from ..orchestrator.service import Orchestrator
    from ..orchestrator.store.sqlite import SqliteStore

    _logging(log_format, log_level)
    port_free(host, port)
    backoff = FAST_BACKOFF if fast_retries else DEFAULT_BACKOFF
    orch = Orchestrator(SqliteStore(db), backoff=backoff, limits=limits)

    api = Api(orch)

    async def sync_apps() -> None:
        pending = list(app_urls)
        deadline = time.monotonic() + 300
        async with httpx.AsyncClient(timeout=10) as client:
            while pending and time.monotonic() < deadline:
                for url in list(pending):
                    before = api.registrations
                    try:
                        res = await client.put(url)
                    except httpx.HTTPError as err:
                        why = f"the app did not answer ({type(err).__name__}); is it running?"
                        api.sync_problems.failed(url, why)
                        continue
                    if res.status_code < 400 and api.registrations > before:
                        click.echo(f"synced {url}")
                        api.sync_problems.cleared(url)
                        pending.remove(url)
                    elif res.status_code < 400:  # the app answered, but nothing registered
                        why = api.last_refusal or "the app sent no registration"
                        api.sync_problems.failed(url, f"registered nothing: {why}")
                        click.echo(f"sync of {url} registered nothing: {why}", err=True)
                        pending.remove(url)
                    else:
                        why = f"answered {res.status_code}: {res.text[:200]}"
                        api.sync_problems.failed(url, why)
                        click.echo(f"sync of {url} {why}")
                if pending:
                    await asyncio.sleep(0.5)
        for url in pending:
            click.echo(f"could not sync {url}; is the app running?", err=True)

    app = api.served(beside=sync_apps)
    click.echo(f"durable dev: http://{host}:{port} (API /v1, events /e/<any key>, store {db})")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@click.command()
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
@log_options
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
    log_format: str | None,
    limits: Limits,
) -> None:
    """Run the orchestrator in production: signed requests, known event keys, any number of
    processes on one PostgreSQL database."""
    import uvicorn

    from ..orchestrator.api import Api
    from ..orchestrator.service import Orchestrator
    from ..orchestrator.store import open_store
    from ..signing import hashed_signing_key

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
    _logging(log_format, log_level)
    port_free(host, port)
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
