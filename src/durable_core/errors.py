"""Every error durable raises, and the ones user code raises to steer retries.

    DurableError                   code, retriable
    ├── NonRetriableError          fail the run now, no more attempts
    │   ├── SerializationError     a value cannot be stored as JSON
    │   ├── NestedStepError        a step was called inside another step
    │   ├── InvalidStepError       a step was called with an argument that can never work
    │   ├── NonDeterminismError    replay met steps the stored history does not know
    │   └── LimitExceededError     an output, the run's stored outputs or its steps exceed a limit
    ├── RetryAfterError            retry, but not before `after`
    ├── StepError                  a step failed for good; user code may catch it
    ├── ConfigError                bad options or environment
    │   └── StoreLockedError       another process owns this SQLite file
    ├── SignatureError             a request's signature is missing, forged or stale
    ├── FunctionNotFoundError      no function with that id is registered
    ├── RunFailedError             an invoked run failed or was cancelled
    ├── WaitTimeoutError           an invoked run did not finish within the wait (a TimeoutError)
    ├── RunCancelledError          a step finished for a run that has already ended
    ├── CheckpointError            a finished step could not be made durable; the request ends
    └── HarnessError               a test run misses a stub, or never ends

`code` is the machine-readable name sent in error payloads; `retriable` says whether the
orchestrator may try the request again. Every message says what to do about it.

`RunErrorName` and `run_error` are the errors the orchestrator records on runs and steps;
`ServeErrorCode` names the serve handler's own error answers. Their values are wire values.
"""

from __future__ import annotations

import datetime as _dt
import enum
import traceback
from typing import Any

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


class InvalidStepError(NonRetriableError):
    """A step was called with an argument no retry can fix (a bad duration, date, id or
    expression); the message names the step and the value."""

    code = "step_invalid"


class NonDeterminismError(NonRetriableError):
    code = "step_unexpected"


class LimitExceededError(NonRetriableError):
    """A run went over one of its limits (`limit`: "step_output", "run_output_total" or
    "steps", whose value was `value`); the message says how to raise it."""

    code = "limit_exceeded"

    def __init__(self, message: str, limit: str = "", value: int = 0) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value


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


class StoreLockedError(ConfigError):
    """Another process owns this SQLite file."""

    code = "store_locked"


class SignatureError(DurableError):
    code = "sig_verification_failed"
    retriable = False


class FunctionNotFoundError(DurableError):
    """No function with that id is registered (with the orchestrator, or served here)."""

    code = "function_not_found"


class RunFailedError(DurableError):
    """An invoked run failed or was cancelled; `error` is its error payload."""

    code = "run_failed"
    retriable = False

    def __init__(self, run_id: str, status: str, error: dict[str, Any]) -> None:
        super().__init__(
            f"run {run_id} {status}: {error.get('name', 'Error')}: {error.get('message', '')}"
        )
        self.run_id = run_id
        self.status = status
        self.error = error


class WaitTimeoutError(DurableError, TimeoutError):
    """An invoked run did not finish within the `timeout` the caller waited for."""

    code = "wait_timeout"


class RunCancelledError(DurableError):
    """A step finished for a run that was cancelled or has ended; its request stops."""

    code = "run_cancelled"


class CheckpointError(DurableError):
    """A finished step's result could not be stored before the next step (a store error, or
    the request passed its deadline): the request ends, and is retried."""

    code = "checkpoint_failed"


class HarnessError(DurableError):
    """The test set-up misses a stub, or the function never ends; the message says what to pass."""

    code = "harness_setup_invalid"
    retriable = False


def error_payload(err: BaseException) -> dict[str, object]:
    """The wire form of an error: `{"code", "message", "name", "stack"}`."""
    if isinstance(err, StepError):
        return {"code": err.code, "message": err.message, "name": err.name, "stack": err.stack}
    stack = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    code = err.code if isinstance(err, DurableError) else "unknown"
    return {"code": code, "message": str(err), "name": type(err).__name__, "stack": stack}


# -- wire names of errors that are not exceptions ------------------------------------------


class RunErrorName(enum.StrEnum):
    """The `name` of an error the orchestrator records on a run or a step."""

    FUNCTION_NOT_FOUND = "FunctionNotFound"
    INVOKE_TIMEOUT = "InvokeTimeout"
    SIGNAL_CONFLICT = "SignalConflict"
    UNSUPPORTED_OPCODE = "UnsupportedOpcode"
    INVALID_RESPONSE = "InvalidResponse"
    RUN_CANCELLED = "RunCancelled"
    INVALID_EXPRESSION = "InvalidExpression"
    INVALID_FUNCTION = "InvalidFunctionConfig"
    REQUEST_TIMEOUT = "RequestTimeout"
    LIMIT_EXCEEDED = "LimitExceededError"  # the name the SDK's `LimitExceededError` reports too
    GATEWAY_ERROR = "GatewayError"  # a request made for `step.ai.infer` or `step.fetch` failed
    STEP_NOT_FOUND = "StepNotFound"


def run_error(name: RunErrorName, message: str) -> dict[str, Any]:
    """An error result the orchestrator records: `{"name", "message"}`. It has no `stack`
    key: the SDKs take a stack that is a string or absent (the TypeScript SDK turns
    `"stack": null` into "Unknown error")."""
    return {"name": str(name), "message": message}


class ServeErrorCode(enum.StrEnum):
    """The `name` and `code` of the serve handler's own error answers."""

    FUNCTION_NOT_FOUND = FunctionNotFoundError.code
    UNAUTHORIZED = "unauthorized"
    BODY_INVALID = "body_invalid"
    QUERY_PARAM_MISSING = "query_param_missing"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REGISTRATION_FAILED = "registration_failed"
    INTERNAL_ERROR = "internal_error"


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DurableError",
    "FunctionNotFoundError",
    "HarnessError",
    "InvalidStepError",
    "LimitExceededError",
    "NestedStepError",
    "NonDeterminismError",
    "NonRetriableError",
    "RetryAfterError",
    "RunCancelledError",
    "RunErrorName",
    "RunFailedError",
    "SerializationError",
    "ServeErrorCode",
    "SignatureError",
    "StepError",
    "StoreLockedError",
    "WaitTimeoutError",
    "error_payload",
    "run_error",
]
