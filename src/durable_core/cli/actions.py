"""Events, functions and signals: `durable send`, `durable events`, `durable invoke`,
`durable functions`, `durable signal`.

`durable send` posts to `/e/<key>` with `--event-key` (or `DURABLE_EVENT_KEY`); without one,
it sends through `/v1/events` with the signing key when one is known (an embedded app's
`.durable/signing-key`, `durable start`'s key), else to `/e/dev`, which the dev server takes.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import click

from .remote import Target, call, parse_json, problem, remote_options, request
from .runs import clip, when


def _event_path(target: Target, event_key: str | None) -> str:
    if event_key:
        return f"/e/{urllib.parse.quote(event_key, safe='')}"
    return "/v1/events" if target.signing_key else "/e/dev"


@click.command()
@click.argument("name")
@click.option("--data", default="{}", help="Event data as a JSON object.")
@click.option("--id", "event_id", default=None, help="Idempotency id.")
@click.option(
    "--event-key",
    envvar="DURABLE_EVENT_KEY",
    default=None,
    help="A key the orchestrator accepts at /e/<key> (or DURABLE_EVENT_KEY; default: the "
    "signing key through /v1/events when one is known, else the dev server's any key).",
)
@remote_options
def send(name: str, data: str, event_id: str | None, event_key: str | None, target: Target) -> None:
    """Send an event."""
    event: dict[str, Any] = {"name": name, "data": parse_json(data, "--data")}
    if event_id:
        event["id"] = event_id
    path = _event_path(target, event_key)
    res = request(target, "POST", path, json=event)
    if res.status_code == 401 and path.startswith("/e/"):
        raise click.ClickException(
            f"the orchestrator at {target.url} refused the event key "
            f"{event_key or 'dev'!r} (HTTP 401): pass --event-key or set DURABLE_EVENT_KEY to a "
            "key it accepts, or set DURABLE_SIGNING_KEY (or --signing-key) to send through "
            "/v1/events"
        )
    if res.status_code >= 400:
        raise click.ClickException(problem(target, path, res))
    click.echo(f"sent {name}: {', '.join(res.json()['ids'])}")


@click.command()
@click.option("--name", default=None, help="Only events of this name.")
@click.option("--limit", default=20, show_default=True)
@remote_options
def events(name: str | None, limit: int, target: Target) -> None:
    """List events, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if name:
        params["name"] = name
    rows = call(target, "GET", "/v1/events", params=params)["data"]
    if not rows:
        click.echo("no events")
        return
    width = max(24, *(len(e["name"]) for e in rows))
    click.echo(f"{'EVENT':<27} {'NAME':<{width}} {'RECEIVED':<24} DATA")
    for e in rows:
        received = when(e["received_at"])
        click.echo(f"{e['internal_id']:<27} {e['name']:<{width}} {received:<24} {clip(e['data'])}")


@click.command()
@remote_options
def functions(target: Target) -> None:
    """List the registered functions and their triggers."""
    rows = call(target, "GET", "/v1/functions")["data"]
    if not rows:
        click.echo("no functions: is the app synced?")
        return
    width = max(32, *(len(f["function_id"]) for f in rows))
    click.echo(f"{'FUNCTION':<{width}} {'APP':<20} TRIGGERS")
    for f in rows:
        triggers = ", ".join(
            str(t.get("event") or f"cron {t.get('cron')}") for t in f["triggers"] or []
        )
        click.echo(f"{f['function_id']:<{width}} {f['app_id']:<20} {triggers}")


@click.command()
@click.argument("function_id")
@click.option("--data", default="{}", help="The data the run gets, as a JSON object.")
@click.option("--wait", is_flag=True, help="Wait for the run to finish and show its output.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds --wait waits.")
@remote_options
def invoke(function_id: str, data: str, wait: bool, timeout: float, target: Target) -> None:
    """Start a run of a function with data."""
    body = {"data": parse_json(data, "--data"), "wait": wait, "timeout": timeout}
    quoted = urllib.parse.quote(function_id, safe="")
    answer = call(target, "POST", f"/v1/functions/{quoted}/invoke", json=body)
    if not wait:
        click.echo(f"run {answer['run_id']}")
        return
    status = answer["status"]
    if status == "completed":
        click.echo(f"run {answer['run_id']} completed: {json.dumps(answer['output'])}")
        return
    error = answer.get("error") or {}
    detail = f": {error.get('name')}: {error.get('message')}" if error else ""
    message = f"run {answer['run_id']} is {status}{detail}"
    if status in ("failed", "cancelled"):
        raise click.ClickException(message)
    raise click.ClickException(f"{message} after {timeout:g} s (--timeout)")


@click.command()
@click.argument("name")
@click.option("--data", default="null", help="The signal's data, as JSON.")
@remote_options
def signal(name: str, data: str, target: Target) -> None:
    """Send a signal to the run waiting for it."""
    body = {"signal": name, "data": parse_json(data, "--data")}
    answer = call(target, "POST", "/v1/signals", json=body)
    click.echo(f"signal {name} resumed run {answer['run_id']}")
