"""The `--max-*` options of the commands that run the orchestrator, and the check that the
port they serve on is free."""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from typing import Any

import click

from .. import _limits
from ..options import Limits


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


def port_free(host: str, port: int, option: str = "--port") -> None:
    """Say in one line which option picks another port when `port` is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            sock.bind((host, port))
        except OSError as err:
            raise click.ClickException(
                f"cannot listen on {host}:{port} ({err.strerror or err}): another program "
                f"uses the port; pick another with {option} N"
            ) from None
