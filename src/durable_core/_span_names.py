"""The names traced runs use: span attributes and the outcomes they take (see `tracing`)."""

from __future__ import annotations

APP_ID = "durable.app_id"
RUN_ID = "durable.run_id"
FUNCTION_ID = "durable.function_id"
EVENT_NAME = "durable.event.name"
RUN_OUTCOME = "durable.run.outcome"
STEP_ID = "durable.step.id"
STEP_NAME = "durable.step.name"
STEP_ATTEMPT = "durable.step.attempt"
STEP_OUTCOME = "durable.step.outcome"

# `durable.step.outcome`: the step returned; it raised and will be tried again; it raised and
# will not be (retries spent, or an error that fails it at once); or the request stopped
# while it ran (cancelled, or its result could not be recorded).
OK = "ok"
RETRYING = "retrying"
FAILED = "failed"
ERROR = "error"
# `durable.run.outcome`: COMPLETED or FAILED (the run span is emitted once the function
# returns or fails for good).
COMPLETED = "completed"
