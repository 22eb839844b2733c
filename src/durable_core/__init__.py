"""durable: durable functions for Python web apps.

Define functions on a `Durable` app, serve them with an adapter, and every step's result is
stored: after a crash, retry, sleep or wait the function replays and only new work runs.
"""

from ._durations import format_duration, parse_duration
from .app import Durable
from .context import Context, SyncContext
from .errors import (
    ConfigError,
    DurableError,
    FunctionNotFoundError,
    InvalidStepError,
    LimitExceededError,
    NestedStepError,
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    RunFailedError,
    SerializationError,
    SignatureError,
    StepError,
)
from .events import Event, Signal
from .fetch import FetchResponse
from .function import Function
from .logs import JsonFormatter
from .messages import Request, Response
from .options import (
    Batch,
    Cancel,
    Concurrency,
    Debounce,
    Limits,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
    TriggerCron,
    TriggerEvent,
)
from .routes import CallResponse, SyncWorkflowContext, WorkflowContext
from .serve import ServeHandler

__all__ = [
    "Batch",
    "CallResponse",
    "Cancel",
    "Concurrency",
    "ConfigError",
    "Context",
    "Debounce",
    "Durable",
    "DurableError",
    "Event",
    "FetchResponse",
    "Function",
    "FunctionNotFoundError",
    "InvalidStepError",
    "JsonFormatter",
    "LimitExceededError",
    "Limits",
    "NestedStepError",
    "NonDeterminismError",
    "NonRetriableError",
    "Priority",
    "RateLimit",
    "Request",
    "Response",
    "RetryAfterError",
    "RunFailedError",
    "SerializationError",
    "ServeHandler",
    "Signal",
    "SignatureError",
    "Singleton",
    "StepError",
    "SyncContext",
    "SyncWorkflowContext",
    "Throttle",
    "Timeouts",
    "TriggerCron",
    "TriggerEvent",
    "WorkflowContext",
    "format_duration",
    "parse_duration",
]
