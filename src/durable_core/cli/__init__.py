"""The `durable` command: run the orchestrator standalone, send events, steer and inspect runs.

durable dev [--port 8288] [-u APP_URL ...] [--fast-retries] [--log-format text|json]
durable start --database URL --signing-key KEY --event-key KEY [--log-format text|json]
durable send NAME [--data JSON] [--event-key KEY]
durable events [--name NAME]
durable functions
durable invoke FUNCTION_ID [--data JSON] [--wait]
durable signal NAME [--data JSON]
durable runs [--function ID] [--status STATUS]
durable run RUN_ID
durable cancel RUN_ID
durable rerun RUN_ID [--from-step ID [--output JSON]]

The commands that talk to an orchestrator take `--url` and `--signing-key` (`remote.py`).
"""

from __future__ import annotations

import sys

import click

from . import actions, runs, servers
from .options import limit_options

__all__ = ["limit_options", "main"]


@click.group()
@click.version_option("0.1.0", prog_name="durable")
def main() -> None:
    """Durable functions: the orchestrator and its tools."""


for _command in (
    servers.dev,
    servers.start,
    actions.send,
    actions.events,
    actions.functions,
    actions.invoke,
    actions.signal,
    runs.runs,
    runs.run,
    runs.cancel,
    runs.rerun,
):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
