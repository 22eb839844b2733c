"""Errors raised by durable and by user code to steer retries.

    DurableError                 code, retriable
    ├── NonRetriableError        fail the run now, no more attempts
    │   ├── SerializationError   a value cannot be stored as JSON
    │   ├── NestedStepError      a step was called inside another step
    │   └── NonDeterminismError  replay met steps the stored history does not know
    ├── RetryAfterError          retry, but not before `after`
    ├── StepError                a step failed for good; user code may catch it
    ├── ConfigError              bad options or environment
    ├── SignatureError           a request's signature is missing, forged or stale
    └── FunctionNotFoundError    no function with that id is served here

Every message says what to do about it.
"""

from __future__ import annotations

import datetime as _dt
import traceback

from ._durations import DurationLike, to_timedelta


class DurableError(Exception):
    code: str = "unknown"
    retriable: bool = True

    def __init__(self, message: str = "") -> None:
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self)

    @property
    def name(self) -> str:
        return type(self).__name__


class NonRetriableError(DurableError):
    """Raise it to fail the run at once, without using the remaining retries."""

    code = "non_retriable_error"
    retriable = False


class SerializationError(NonRetriableError):
    code = "output_unserializable"


class NestedStepError(NonRetriableError):
    code = "step_nested"


class NonDeterminismError(NonRetriableError):
    code = "step_unexpected"


class RetryAfterError(DurableError):
    """Raise it to retry, no earlier than `after` (a datetime, a timedelta, seconds or "30s")."""

    code = "retry_after_error"

    def __init__(self, message: str, after: _dt.datetime | DurationLike) -> None:
        super().__init__(message)
        if isinstance(after, _dt.datetime):
            self.retry_at = after if after.tzinfo else after.replace(tzinfo=_dt.UTC)
        else:
            self.retry_at = _dt.datetime.now(_dt.UTC) + to_timedelta(after)


class StepError(DurableError):
    """A step failed for good (its retries are spent); carries the original error's name and message."""

    code = "step_errored"
    retriable = False

    def __init__(self, message: str, name: str, stack: str | None = None) -> None:
        super().__init__(message)
        self.error_name = name
        self.stack = stack

    @property
    def name(self) -> str:
        return self.error_name


class ConfigError(DurableError):
    code = "function_config_invalid"
    retriable = False


class SignatureError(DurableError):
    code = "sig_verification_failed"
    retriable = False


class FunctionNotFoundError(DurableError):
    code = "function_not_found"


def error_payload(err: BaseException) -> dict[str, object]:
    """The wire form of an error: `{"code", "message", "name", "stack"}`."""
    if isinstance(err, StepError):
        return {"code": err.code, "message": err.message, "name": err.name, "stack": err.stack}
    stack = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    code = err.code if isinstance(err, DurableError) else "unknown"
    return {"code": code, "message": str(err), "name": type(err).__name__, "stack": stack}
