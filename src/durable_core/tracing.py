"""Runs as OpenTelemetry traces: one trace per run, one span per step attempt.

Whether an app traces is decided by this rule (the first that applies):

1. `Durable(tracing=False)`, or `DURABLE_TRACING=0`: off.
2. `Durable(tracing=provider)`: on, the spans go to that `TracerProvider`.
3. `Durable(tracing=True)`, or `DURABLE_TRACING=1`: on, with the global tracer provider,
   from the first request that finds one set (OpenTelemetry must be installed).
4. By default: the same, once OpenTelemetry is installed and a global tracer provider is set
   (`trace.set_tracer_provider(...)`) or `OTEL_EXPORTER_OTLP_ENDPOINT` (or
   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; off when `OTEL_SDK_DISABLED=true`.

In 3 and 4, when no global tracer provider is set but an OTLP endpoint is, the app sets one
up: an OTLP/HTTP exporter behind a batch processor, with `service.name` the app id unless
`OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` say otherwise.

Off costs one `is None` check per step attempt (and, while the default waits for a tracer
provider, a look for one per request); nothing imports OpenTelemetry when it is not installed
or `tracing=False`. On, the spans are made by `_otel_spans`, and `_otel_export` sets up the
OTLP exporter: the only modules that import OpenTelemetry.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from ._engine import Replay
from ._span_names import (
    APP_ID,
    COMPLETED,
    ERROR,
    EVENT_NAME,
    FAILED,
    FUNCTION_ID,
    OK,
    RETRYING,
    RUN_ID,
    RUN_OUTCOME,
    STEP_ATTEMPT,
    STEP_ID,
    STEP_NAME,
    STEP_OUTCOME,
)
from .errors import ConfigError, DurableError, NonRetriableError, RetryAfterError

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from ._otel_spans import RunTrace, Tracer

_log = logging.getLogger("durable")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_INSTALL = "pip install 'durable-core[otel]'"


class Tracing:
    """An app's tracing setting, turned into a tracer the first time it is on."""

    def __init__(self, app_id: str, setting: bool | TracerProvider | None) -> None:
        self.app_id = app_id
        self._lock = threading.Lock()
        self._tracer: Tracer | None = None
        if setting is None:
            setting = _from_env()
        if setting is not None and not isinstance(setting, bool):
            if not callable(getattr(setting, "get_tracer", None)):
                raise ConfigError(
                    f"tracing={setting!r}: pass True, False or an OpenTelemetry TracerProvider"
                )
        elif setting is True:
            _require_otel()
        self._setting = setting
        self._off = setting is False

    def tracer(self) -> Tracer | None:
        """The tracer when tracing is on; None when it is off (checked again on each request
        while a default setting waits for a tracer provider)."""
        if self._tracer is not None or self._off:
            return self._tracer
        with self._lock:
            if self._tracer is None and not self._off:
                self._resolve()
        return self._tracer

    def _resolve(self) -> None:
        setting = self._setting
        if setting is None and os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
            self._off = True
            return
        try:
            from . import _otel_spans
        except ImportError:
            self._off = True  # not installed: the default stays off for good
            return
        if not isinstance(setting, bool | None):
            self._tracer = _otel_spans.Tracer(setting)
            return
        provider = _otel_spans.global_provider()
        if provider is None and any(os.environ.get(name) for name in _OTLP_ENDPOINTS):
            provider = _otlp_provider(self.app_id)
            if provider is None:
                self._off = True
                return
        if provider is not None:
            self._tracer = _otel_spans.Tracer(provider)


def _from_env() -> bool | None:
    raw = os.environ.get("DURABLE_TRACING", "").strip().lower()
    if not raw:
        return None
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"DURABLE_TRACING={raw!r}: set it to 1 (on) or 0 (off), or leave it unset")


def _require_otel() -> None:
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        raise ConfigError(f"tracing=True needs OpenTelemetry: {_INSTALL}") from None


def _otlp_provider(app_id: str) -> TracerProvider | None:
    """A global tracer provider exporting over OTLP/HTTP, or None (with a warning) when the
    exporter is not installed."""
    try:
        from . import _otel_export
    except ImportError:
        _log.warning(
            "an OTLP endpoint is set but the OpenTelemetry SDK or its OTLP/HTTP exporter is "
            "not installed, so runs are not traced: %s",
            _INSTALL,
        )
        return None
    return _otel_export.global_otlp_provider(app_id)


# -- hooks: called by the request executor and by each step attempt -----------------------------


def run_started(
    app: Tracing, run_id: str, fn_id: str, event_name: str, event_ts: int
) -> RunTrace | None:
    """Trace this request of a run, when tracing is on: its step spans join the run's trace."""
    tracer = app.tracer()
    if tracer is None:
        return None
    return tracer.run(app.app_id, run_id, fn_id, event_name, event_ts, time.time_ns())


def run_ended(
    run: RunTrace, returned: bool, error: BaseException | None, attempt: int, max_attempts: int
) -> None:
    """The request ended: the run span is emitted if the function returned, or raised an
    error that fails the run for good (not retriable, or its last attempt)."""
    if returned:
        run.finish(COMPLETED, None)
    elif error is not None:
        not_retried = isinstance(error, DurableError) and not error.retriable
        if not_retried or attempt + 1 >= max_attempts:
            run.finish(FAILED, error)


def step_outcome(err: BaseException | None, replay: Replay) -> str:
    """What became of a step attempt that ended with `err` (None: it returned)."""
    if err is None:
        return FAILED if isinstance(replay.result, DurableError) else OK  # output refused
    if isinstance(err, RetryAfterError):
        return RETRYING
    if isinstance(err, NonRetriableError):
        return FAILED
    if isinstance(err, Exception):
        return FAILED if replay.attempt + 1 >= replay.max_attempts else RETRYING
    return ERROR


__all__ = [
    "APP_ID",
    "COMPLETED",
    "ERROR",
    "EVENT_NAME",
    "FAILED",
    "FUNCTION_ID",
    "OK",
    "RETRYING",
    "RUN_ID",
    "RUN_OUTCOME",
    "STEP_ATTEMPT",
    "STEP_ID",
    "STEP_NAME",
    "STEP_OUTCOME",
    "Tracing",
]
