"""The vocabulary of the serve protocol, shared by the SDK, the orchestrator and the test harness.

The names are the wire names of the Inngest serve protocol (which durable speaks, so peer
SDKs and orchestrators interoperate): opcodes a request answers with, the `x-inngest-*`
headers, the system events, the versions, and the body of an execution request.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Final


class Opcode(enum.StrEnum):
    """What a step reports in a 206 answer."""

    STEP_RUN = "StepRun"
    STEP_ERROR = "StepError"
    STEP_FAILED = "StepFailed"
    STEP_PLANNED = "StepPlanned"
    SLEEP = "Sleep"
    WAIT_FOR_EVENT = "WaitForEvent"
    WAIT_FOR_SIGNAL = "WaitForSignal"
    INVOKE = "InvokeFunction"
    RUN_COMPLETE = "RunComplete"
    AI_GATEWAY = "AIGateway"  # `step.ai.infer`: the orchestrator calls the model
    GATEWAY = "Gateway"  # `step.fetch`: the orchestrator makes the HTTP request
    STEP_NOT_FOUND = "StepNotFound"  # the app could not find the step it was asked to run
    DISCOVERY_REQUEST = "DiscoveryRequest"  # the app asks to be called again
    DEFER_ADD = "DeferAdd"  # TypeScript `defer()` (experimental there)
    DEFER_ABORT = "DeferAbort"


class Header:
    """HTTP header names, lower case."""

    SIGNATURE: Final = "x-inngest-signature"
    SDK: Final = "x-inngest-sdk"
    REQ_VERSION: Final = "x-inngest-req-version"
    FRAMEWORK: Final = "x-inngest-framework"
    SDK_HANDLED: Final = "x-inngest-sdk-handled"
    SYNC_KIND: Final = "x-inngest-sync-kind"
    NO_RETRY: Final = "x-inngest-no-retry"
    SERVER_KIND: Final = "x-inngest-server-kind"
    RETRY_AFTER: Final = "retry-after"


_SYSTEM: Final = "inngest"  # the prefix of every event the orchestrator sends
_FUNCTION: Final = f"{_SYSTEM}/function"


class SystemEvent:
    """Events the orchestrator sends about runs and schedules."""

    FUNCTION_FAILED: Final = f"{_FUNCTION}.failed"
    FUNCTION_FINISHED: Final = f"{_FUNCTION}.finished"
    FUNCTION_CANCELLED: Final = f"{_FUNCTION}.cancelled"
    FUNCTION_INVOKED: Final = f"{_FUNCTION}.invoked"
    SCHEDULED_TIMER: Final = f"{_SYSTEM}/scheduled.timer"


SDK_NAME: Final = "durable-py"
SDK_VERSION: Final = "0.1.0"
SDK_LANGUAGE: Final = "py"
SDK_ID: Final = f"{SDK_NAME}:v{SDK_VERSION}"  # the `x-inngest-sdk` header and the `sdk` field
REQUEST_VERSION: Final = 2  # execution request bodies and `x-inngest-req-version`
INTROSPECTION_SCHEMA: Final = "2024-05-24"
REGISTRATION_VERSION: Final = "0.1"
CAPABILITIES: Final[Mapping[str, str]] = {"in_band_sync": "v1", "trust_probe": "v1"}


def execution_request(
    *,
    run_id: str,
    fn_id: str,
    events: Sequence[Any],
    memos: Mapping[str, Any],
    attempt: int,
    max_attempts: int,
    disable_immediate_execution: bool,
    limits: Mapping[str, int] | None = None,
    qi_id: str | None = None,
) -> dict[str, Any]:
    """The JSON body the orchestrator POSTs for one request of a run.

    `events` are the run's events in wire form (the first is the triggering one); `memos`
    maps hashed step ids to their stored results. The body holds `memos` itself, not a copy.
    `limits` (our orchestrator's extension, `ctx.limits`; other SDKs ignore it) tells the SDK
    the run's limits and what it has used, so it refuses an output before sending it.
    `qi_id` names the queue item this request answers: an SDK that checkpoints over HTTP
    (`POST /v1/checkpoint/{run_id}/async`) sends it back, so the orchestrator can tell a
    current request from a superseded one.
    """
    ctx: dict[str, Any] = {
        "run_id": run_id,
        "fn_id": fn_id,
        "attempt": attempt,
        "max_attempts": max_attempts,
        "disable_immediate_execution": disable_immediate_execution,
        "stack": {"stack": list(memos), "current": len(memos)},
    }
    if limits is not None:
        ctx["limits"] = dict(limits)
    if qi_id is not None:
        ctx["qi_id"] = qi_id
    return {
        "event": events[0],
        "events": list(events),
        "steps": memos,
        "ctx": ctx,
        "use_api": False,
        "version": REQUEST_VERSION,
    }


__all__ = [
    "CAPABILITIES",
    "INTROSPECTION_SCHEMA",
    "REGISTRATION_VERSION",
    "REQUEST_VERSION",
    "SDK_ID",
    "SDK_LANGUAGE",
    "SDK_NAME",
    "SDK_VERSION",
    "Header",
    "Opcode",
    "SystemEvent",
    "execution_request",
]
