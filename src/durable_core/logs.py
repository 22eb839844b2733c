"""Log output: the text and JSON formats, and the `durable` logger's lines shown by default.

`durable dev` and `durable start` log to stderr in the format `--log-format` or
`DURABLE_LOG_FORMAT` names: `text` (the default) or `json`, one object per line with the keys
`ts`, `level`, `logger` and `message`, then the fields of a run's change (`event`, `run_id`,
`function_id`, `step`, `attempt`, `retry_at`, `until`, `waiting_for`, `error`, `reason`) or of
a line logged with `ctx.logger` (`run_id`, `function_id`), and `traceback` when there is one.

In an app, nothing shows INFO lines unless logging was configured, and servers such as uvicorn
and gunicorn configure only their own loggers; so an app (`Durable(...)`) gives the `durable`
logger a handler of last resort, at INFO unless a level was set: it prints to stderr only while
neither the root logger nor `durable` has a handler of its own, so a line is never printed
twice once the app configures logging (`logging.basicConfig(...)`, a dictConfig, ...).
`logging.getLogger("durable").setLevel(logging.WARNING)` quiets it.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import sys
from typing import Any

from .errors import ConfigError

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
_CONTEXT = (("run_id", "run_id"), ("fn_id", "function_id"))  # what ctx.logger adds


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with stable keys."""

    def format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created, _dt.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "durable", None)
        if isinstance(fields, dict):
            out.update(fields)
        else:
            for attr, key in _CONTEXT:
                value = getattr(record, attr, None)
                if value is not None:
                    out[key] = value
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def log_format(name: str | None = None) -> str:
    """`name`, else `DURABLE_LOG_FORMAT`, else text; ConfigError for anything else."""
    chosen = (name or os.environ.get("DURABLE_LOG_FORMAT") or "text").strip().lower()
    if chosen not in FORMATS:
        raise ConfigError(
            f"log format {chosen!r} is not known: use text or json "
            "(--log-format or DURABLE_LOG_FORMAT)"
        )
    return chosen


def formatter(name: str | None = None) -> logging.Formatter:
    return JsonFormatter() if log_format(name) == "json" else logging.Formatter(TEXT_FORMAT)


def configure(name: str | None, level: str) -> None:
    """Log every logger to stderr at `level` in format `name` (`durable dev`, `durable start`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(name))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per call to an app is noise


class _LastResort(logging.StreamHandler):  # type: ignore[type-arg]
    """Prints the `durable` logger's lines while no other handler would."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers or len(logging.getLogger("durable").handlers) > 1:
            return  # the app configured logging: its handlers show the line
        self.stream = sys.stderr  # as it is now (a test or a server may have replaced it)
        super().emit(record)


def show_by_default() -> None:
    """Make INFO lines of `durable` loggers (runs, `ctx.logger`) visible when logging is left
    unconfigured (see the module docstring). Idempotent."""
    logger = logging.getLogger("durable")
    if any(isinstance(h, _LastResort) for h in logger.handlers):
        return
    handler = _LastResort()
    handler.setFormatter(formatter())
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


__all__ = ["FORMATS", "JsonFormatter", "configure", "formatter", "log_format", "show_by_default"]
