"""The spans of a traced run (imported only when tracing is on: see `tracing`).

Every request of a run joins one trace whose id is derived from the run id, so requests made
hours apart, retried, or served by other processes land in the same trace. Each step attempt
is a span whose parent is the run span, whose id is derived from the run id too; the run span
itself is emitted once, when the function returns or fails for good, from the run's start
(the time in its ULID, else its event's time) to then.

Giving the run span its derived ids needs the tracer's id generator (the OpenTelemetry SDK's
tracers have one): ours delegates to it except while the run span starts. With a tracer
provider that has none, step spans still share the run's trace and the run span is left out.
"""

from __future__ import annotations

import contextvars
import hashlib
import time
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, Status, StatusCode, TraceFlags

from . import _span_names as names
from ._engine import StepInfo
from .protocol import SDK_VERSION

SCOPE = "durable_core"
_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}
_YEAR_MS = 365 * 24 * 3600 * 1000
_EPOCH_2015_MS = 1_420_070_400_000

_forced: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "durable_run_span_ids", default=None
)


def global_provider() -> trace.TracerProvider | None:
    """The tracer provider the application set globally, if it set one."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


def run_ids(run_id: str) -> tuple[int, int]:
    """The run's trace id and run span id: the first 16 and next 8 bytes of SHA-256(run id)."""
    digest = hashlib.sha256(run_id.encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1


def run_started_ms(run_id: str, event_ts: int) -> int | None:
    """When the run started: the time in its ULID (ours and Inngest's), else its event's."""
    if len(run_id) == 26:
        value = 0
        for ch in run_id[:10].upper():
            digit = _CROCKFORD.get(ch)
            if digit is None:
                break
            value = value * 32 + digit
        else:
            if _EPOCH_2015_MS <= value <= time.time() * 1000 + _YEAR_MS:
                return value
    return event_ts or None


class _RunSpanIds:
    """A tracer's id generator that gives the run span the ids derived from its run."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def generate_trace_id(self) -> int:
        forced = _forced.get()
        return forced[0] if forced is not None else int(self.inner.generate_trace_id())

    def generate_span_id(self) -> int:
        forced = _forced.get()
        return forced[1] if forced is not None else int(self.inner.generate_span_id())

    def is_trace_id_random(self) -> bool:
        if _forced.get() is not None:
            return False
        return bool(getattr(self.inner, "is_trace_id_random", lambda: False)())


class Tracer:
    """Makes the spans of runs with one tracer of `provider`."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self.tracer = provider.get_tracer(SCOPE, SDK_VERSION)
        ids = getattr(self.tracer, "id_generator", None)
        if ids is not None and not isinstance(ids, _RunSpanIds):
            ids = _RunSpanIds(ids)
            cast(Any, self.tracer).id_generator = ids
        self.fixed_ids = isinstance(ids, _RunSpanIds)

    def sampled(self, trace_id: int, name: str) -> bool:
        """Whether the tracer's sampler keeps the run span (so its steps too): one decision
        from the run's trace id, the same in every request and process."""
        sampler = getattr(self.tracer, "sampler", None)
        if sampler is None:
            return True
        return bool(sampler.should_sample(None, trace_id, name).decision.is_sampled())

    def run(
        self, app_id: str, run_id: str, fn_id: str, event_name: str, event_ts: int, now_ns: int
    ) -> RunTrace:
        return RunTrace(self, app_id, run_id, fn_id, event_name, event_ts, now_ns)


class RunTrace:
    """One request of a run being traced: the step spans it starts, and maybe the run span."""

    def __init__(
        self,
        tracer: Tracer,
        app_id: str,
        run_id: str,
        fn_id: str,
        event_name: str,
        event_ts: int,
        now_ns: int,
    ) -> None:
        self._tracer = tracer
        self.ids = run_ids(run_id)
        self.run_id = run_id
        self.fn_id = fn_id
        self.event_name = event_name
        started_ms = run_started_ms(run_id, event_ts)
        self.started_ns = now_ns if started_ms is None else min(now_ns, started_ms * 1_000_000)
        self.app_id = app_id
        self.name = f"run {fn_id}"
        sampled = tracer.sampled(self.ids[0], self.name)
        flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
        parent = SpanContext(self.ids[0], self.ids[1], is_remote=True, trace_flags=flags)
        self._parent = trace.set_span_in_context(
            trace.NonRecordingSpan(parent), otel_context.Context()
        )

    def step(self, info: StepInfo, attempt: int) -> StepSpan:
        """A step attempt starts: its span, current until it ends."""
        attributes: dict[str, str | int] = {
            names.RUN_ID: self.run_id,
            names.FUNCTION_ID: self.fn_id,
            names.STEP_ID: info.user_id,
            names.STEP_NAME: info.name,
            names.STEP_ATTEMPT: attempt,
        }
        caller = trace.get_current_span().get_span_context()  # e.g. the HTTP request's span
        links = [Link(caller)] if caller.is_valid and caller.trace_id != self.ids[0] else None
        span = self._tracer.tracer.start_span(
            f"step {info.user_id}", context=self._parent, attributes=attributes, links=links
        )
        return StepSpan(span, otel_context.attach(trace.set_span_in_context(span)))

    def finish(self, outcome: str, err: BaseException | None) -> None:
        """Emit the run span (once the function returned or failed for good)."""
        if not self._tracer.fixed_ids:
            return
        attributes = {
            names.APP_ID: self.app_id,
            names.RUN_ID: self.run_id,
            names.FUNCTION_ID: self.fn_id,
            names.EVENT_NAME: self.event_name,
        }
        token = _forced.set(self.ids)
        try:
            span = self._tracer.tracer.start_span(
                self.name,
                context=otel_context.Context(),
                attributes=attributes,
                start_time=self.started_ns,
            )
        finally:
            _forced.reset(token)
        _ended(span, names.RUN_OUTCOME, outcome, err)


class StepSpan:
    """A step attempt's span, and the context that makes it current."""

    def __init__(self, span: Span, token: contextvars.Token[otel_context.Context]) -> None:
        self.span = span
        self.token = token

    def end(self, outcome: str, err: BaseException | None) -> None:
        otel_context.detach(self.token)
        _ended(self.span, names.STEP_OUTCOME, outcome, err)


def _ended(span: Span, key: str, outcome: str, err: BaseException | None) -> None:
    span.set_attribute(key, outcome)
    if isinstance(err, Exception):
        span.record_exception(err)
    if outcome not in (names.OK, names.COMPLETED):
        why = f"{type(err).__name__}: {err}" if err is not None else outcome
        span.set_status(Status(StatusCode.ERROR, why))
    span.end()
