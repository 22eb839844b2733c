"""Named fault points: exact places where a crash test can make the process die.

`fault(name)` returns at once unless the process was started with `DURABLE_FAULT` naming that
point: `DURABLE_FAULT=<name>` kills the process with SIGKILL the first time it reaches the
point, `DURABLE_FAULT=<name>:<n>` the n-th time (counted in this process). Nothing is cleaned
up and no `finally` runs, as when the machine loses power or the kernel kills the process; the
log handlers and stdout/stderr are flushed first, and one line on stderr names the point.

`DURABLE_FAULT_MARK=<path>` makes the fault fire once among every process started with it (the
workers of a server, and the ones that replace them): the process about to die creates the file
(exclusively) and writes `<name> <n> <pid>` into it; a process that finds the file already
there goes on. A test reads the file to know which process died where.

An unknown name or a malformed count fails at import, so a misspelt point cannot go unnoticed.

The points, in the order one step's life meets them:

- `claim.committed` (`orchestrator/dispatch.py`, `Dispatcher._dispatch`): a transaction that
  leased queue items to this process has committed; none of them has started.
- `step.ran` (`_lifecycle.py`, `Execution.returned`; the app's side): a step's
  function has returned and its result is serialized; nothing has recorded or reported it.
- `checkpoint.committed` (`orchestrator/checkpoints.py`, `StepBuffer.flush`): a step's result
  has been committed on its own (in-process, or posted by an app over HTTP), and the request
  goes on to the next step.
- `checkpoint.posted` (`_http_checkpoint.py`, `HttpCheckpoints`; the app's side, over HTTP):
  the orchestrator has accepted a checkpoint of the steps the app posted; the next step has
  not started.
- `answer.received` (`orchestrator/dispatch.py`, `Dispatcher._request`): the app has answered a
  request; the transaction that applies the answer has not begun.
- `answer.committed` (`orchestrator/dispatch.py`, `Dispatcher._request`): the transaction that
  applied the answer (consumed the item, queued what comes next) has committed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import sys

POINTS = frozenset(
    {
        "claim.committed",
        "step.ran",
        "checkpoint.committed",
        "checkpoint.posted",
        "answer.received",
        "answer.committed",
    }
)


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, count = spec.strip().partition(":")
    if name not in POINTS:
        raise ValueError(
            f"DURABLE_FAULT={spec!r}: no fault point {name!r}; the points are {sorted(POINTS)}"
        )
    if not count:
        return name, 1
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"DURABLE_FAULT={spec!r}: the count after ':' must be 1 or more")
    return name, int(count)


_armed = _parse(os.environ.get("DURABLE_FAULT"))
_hits = itertools.count(1)


def fault(name: str) -> None:
    """Kill this process here if `DURABLE_FAULT` names this point (and this is its n-th time)."""
    if _armed is None:
        return
    if name == _armed[0] and next(_hits) == _armed[1]:
        _die(name, _armed[1])


def _die(name: str, count: int) -> None:
    pid = os.getpid()
    mark = os.environ.get("DURABLE_FAULT_MARK")
    if mark:
        try:
            fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return  # another process has died here already
        try:
            os.write(fd, f"{name} {count} {pid}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    # Dying anyway: a handler or stream that fails to flush must not stop it.
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.write(f"durable: fault point {name} reached ({count}); killing process {pid}\n")
        sys.stderr.flush()
    os.kill(pid, signal.SIGKILL)


__all__ = ["POINTS", "fault"]
