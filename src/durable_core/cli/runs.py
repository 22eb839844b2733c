"""Runs: `durable runs`, `durable run RUN_ID`, `durable cancel RUN_ID`, `durable rerun RUN_ID`."""

from __future__ import annotations

import json
from typing import Any

import click

from .remote import Target, call, parse_json, remote_options

STATUSES = "queued, running, sleeping, waiting, completed, failed, cancelled or skipped"


def when(iso: str | None) -> str:
    return iso.replace("T", " ")[:23] if iso else "-"


def clip(value: Any, width: int = 70) -> str:
    text = json.dumps(value)
    return text if len(text) < width else text[: width - 3] + "..."


@click.command()
@click.option("--function", "function_id", default=None, help="Only runs of this function id.")
@click.option("--status", default=None, help=f"Only runs that are {STATUSES}.")
@click.option("--limit", default=20, show_default=True)
@remote_options
def runs(function_id: str | None, status: str | None, limit: int, target: Target) -> None:
    """List runs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if function_id:
        params["function_id"] = function_id
    if status:
        params["status"] = status
    rows = call(target, "GET", "/v1/runs", params=params)["data"]
    if not rows:
        click.echo("no runs")
        return
    width = max(32, *(len(r["function_id"]) for r in rows))
    click.echo(f"{'RUN':<27} {'FUNCTION':<{width}} {'STATUS':<10} {'CREATED':<24} REASON")
    for r in rows:
        click.echo(
            f"{r['run_id']:<27} {r['function_id']:<{width}} {r['status']:<10} "
            f"{when(r['created_at']):<24} {r['reason'] or ''}"
        )


def _traceback(error: dict[str, Any]) -> list[str]:
    stack = error.get("stack")
    return [f"    {line}" for line in stack.rstrip().splitlines()] if isinstance(stack, str) else []


def _steps(steps: list[dict[str, Any]]) -> None:
    width = max(24, *(len(s["name"]) for s in steps)) if steps else 24
    click.echo(f"\n{'STEP':<{width}} {'OP':<14} {'TRY':>3} {'MS':>7}  RESULT")
    for s in steps:
        result = s["error"] if s["error"] else s["output"]
        ms = "" if s["duration_ms"] is None else str(s["duration_ms"])
        click.echo(f"{s['name']:<{width}} {s['op']:<14} {s['attempt']:>3} {ms:>7}  {clip(result)}")
    for s in steps:
        error = s["error"]
        if isinstance(error, dict) and isinstance(error.get("stack"), str):
            name, message = error.get("name") or "Error", error.get("message") or ""
            click.echo(f"\nstep {s['name']!r} (attempt {s['attempt']}) failed: {name}: {message}")
            click.echo("\n".join(_traceback(error)))


@click.command()
@click.argument("run_id")
@remote_options
def run(run_id: str, target: Target) -> None:
    """Show one run with its steps, and the traceback of each step that failed."""
    r = call(target, "GET", f"/v1/runs/{run_id}")
    click.echo(
        f"run       {r['run_id']}\nfunction  {r['function_id']}\nstatus    {r['status']}"
        + (f" ({r['reason']})" if r["reason"] else "")
    )
    click.echo(f"created   {when(r['created_at'])}\nended     {when(r['ended_at'])}")
    click.echo(f"event     {json.dumps(r['event'])}")
    _steps(r["steps"])
    if r["status"] == "completed":
        click.echo(f"\noutput    {json.dumps(r['output'])}")
    elif r["error"]:
        click.echo(f"\nerror     {r['error'].get('name')}: {r['error'].get('message')}")
        if _traceback(r["error"]) and not any(s["error"] for s in r["steps"]):
            click.echo("\n".join(_traceback(r["error"])))


@click.command()
@click.argument("run_id")
@remote_options
def cancel(run_id: str, target: Target) -> None:
    """Cancel a run."""
    r = call(target, "POST", f"/v1/runs/{run_id}/cancel")
    click.echo(f"run {r['run_id']} is {r['status']}")


@click.command()
@click.argument("run_id")
@click.option(
    "--from-step",
    default=None,
    help="Keep the results of the steps before this step id and run again from it.",
)
@click.option(
    "--output",
    default=None,
    help="With --from-step: JSON to use as that step's result instead of running it.",
)
@remote_options
def rerun(run_id: str, from_step: str | None, output: str | None, target: Target) -> None:
    """Start a new run with the events of RUN_ID (from the start, or from a step)."""
    body: dict[str, Any] = {}
    if output is not None and from_step is None:
        raise click.UsageError("--output replaces the result of a step: give --from-step too")
    if from_step is not None:
        body["from_step"] = from_step
    if output is not None:
        body["output"] = parse_json(output, "--output")
    kw: dict[str, Any] = {"json": body} if body else {}
    answer = call(target, "POST", f"/v1/runs/{run_id}/rerun", **kw)
    click.echo(f"rerun of {run_id}: run {answer['run_id']}")
