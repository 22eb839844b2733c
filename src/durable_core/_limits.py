"""What one run may store, and the budget a request spends of it.

Three limits, each with a default that the orchestrator can change for every function
(`Orchestrator(limits=...)`, `durable dev/start --max-...`, `DURABLE_MAX_...` in embedded
mode) and a function can change for itself (`limits=Limits(...)`):

- `step_output` (4 MB): the JSON size of one output (a step's or the function's) or error;
- `run_output_total` (32 MB): the JSON size of every step result a run has stored;
- `steps` (20,000): how many steps (runs, sleeps, waits, invokes, ...) one run may have.

Sizes count the bytes of the compact JSON the orchestrator stores (non-ASCII characters as
`\\uXXXX` escapes). The SDK checks them before an output leaves it and the orchestrator before
it stores one, with the same messages, so apps written with any SDK meet the same limits.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from .errors import LimitExceededError

KB = 1024
MB = 1024 * KB
GB = 1024 * MB

DEFAULT_STEP_OUTPUT = 4 * MB
DEFAULT_RUN_OUTPUT_TOTAL = 32 * MB
DEFAULT_STEPS = 20_000
#: An app's HTTP answer is read up to twice the step output limit plus this much; a longer
#: one is refused unread (JSON from other SDKs may be spaced out, and carry several ops).
ANSWER_SLACK = 1 * MB


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """How a limit is set: the function option field, the CLI flag and the variable."""

    field: str
    flag: str
    env: str


SETTINGS: Mapping[str, Setting] = {
    "step_output": Setting("step_output", "--max-step-output", "DURABLE_MAX_STEP_OUTPUT"),
    "run_output_total": Setting(
        "run_output_total", "--max-run-output-total", "DURABLE_MAX_RUN_OUTPUT_TOTAL"
    ),
    "steps": Setting("steps", "--max-steps", "DURABLE_MAX_STEPS"),
}

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|bytes?|kb|kib|k|mb|mib|m|gb|gib|g)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1, "k": KB, "m": MB, "g": GB}


def parse_size(value: object) -> int:
    """Bytes from an int or a string like "4MB", "512KB", "1.5 MB" (KB = 1024 bytes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        unit = (match.group(2) or "").lower()
        size = int(float(match.group(1)) * _UNITS.get(unit, _UNITS.get(unit[:1], 1)))
    else:
        raise ValueError(
            f'invalid size {value!r}: use a number of bytes or a string like "4MB" or "512KB"'
        )
    if size < 1:
        raise ValueError(f"a size limit must be at least 1 byte, not {value!r}")
    return size


def format_size(size: int) -> str:
    for unit, name in ((GB, "GB"), (MB, "MB"), (KB, "KB")):
        if size >= unit:
            amount = size / unit
            return f"{amount:.0f} {name}" if size % unit == 0 else f"{amount:.1f} {name}"
    return f"{size} bytes"


def json_size(value: Any) -> int:
    """The bytes of `value` as compact JSON, as the orchestrator stores it."""
    return len(json.dumps(value, separators=(",", ":")))


def memo_size(memo: Any) -> int:
    """The size of what a stored step result holds: its output or error (`{"data"}` or
    `{"error"}`), or the whole value (a matched event, a signal)."""
    if isinstance(memo, dict) and memo and set(memo) <= {"data", "error"}:
        return json_size(memo["data"] if "data" in memo else memo["error"])
    return 0 if memo is None else json_size(memo)


def how_to_raise(limit: str) -> str:
    s = SETTINGS[limit]
    return (
        f"raise it for the function with limits=Limits({s.field}=...), or for every function "
        f"with the orchestrator's {s.flag} flag, the {s.env} variable (embedded mode) or "
        f"Orchestrator(limits=Limits({s.field}=...))"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class RunLimits:
    """The limits of one run, in bytes and steps."""

    step_output: int = DEFAULT_STEP_OUTPUT
    run_output_total: int = DEFAULT_RUN_OUTPUT_TOTAL
    steps: int = DEFAULT_STEPS

    def replace(self, **values: int | None) -> RunLimits:
        """These limits with the given ones changed (None keeps a limit as it is)."""
        changes = {k: v for k, v in values.items() if v is not None}
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def answer_bound(self) -> int:
        """The most bytes of one answer over HTTP that are read."""
        return 2 * self.step_output + ANSWER_SLACK

    def output_too_large(self, what: str, size: int) -> LimitExceededError | None:
        if size <= self.step_output:
            return None
        return LimitExceededError(
            f"{what} is {format_size(size)} as JSON, over the step_output limit of "
            f"{format_size(self.step_output)}. Keep large data outside the run (store it "
            f"elsewhere and return a reference), or {how_to_raise('step_output')}.",
            "step_output",
            self.step_output,
        )

    def answer_too_large(self) -> LimitExceededError:
        bound = self.answer_bound
        return LimitExceededError(
            f"the app's answer is over {format_size(bound)} (twice the step_output limit of "
            f"{format_size(self.step_output)}, plus {format_size(ANSWER_SLACK)}), so it was not "
            f"read. Keep large data outside the run, or {how_to_raise('step_output')}.",
            "step_output",
            self.step_output,
        )

    def total_too_large(self, what: str, total: int) -> LimitExceededError | None:
        if total <= self.run_output_total:
            return None
        return LimitExceededError(
            f"{what} brings the run's stored step results to {format_size(total)}, over the "
            f"run_output_total limit of {format_size(self.run_output_total)}. Keep large data "
            f"outside the run, or {how_to_raise('run_output_total')}.",
            "run_output_total",
            self.run_output_total,
        )

    def too_many_steps(self, count: int) -> LimitExceededError | None:
        if count <= self.steps:
            return None
        return LimitExceededError(
            f"the run reached {count:,} steps, over the steps limit of {self.steps:,}. Split "
            f"the work (invoke a function per batch), or {how_to_raise('steps')}.",
            "steps",
            self.steps,
        )


@dataclasses.dataclass(slots=True)
class Usage:
    """What a run has stored: how many step results, and their size."""

    steps: int = 0
    bytes: int = 0

    @classmethod
    def of(cls, memos: Mapping[str, Any]) -> Usage:
        return cls(len(memos), sum(memo_size(m) for m in memos.values()))


class Budget:
    """A run's limits and what it has used; each check raises `LimitExceededError` and
    counts nothing when it does."""

    def __init__(self, limits: RunLimits | None = None, usage: Usage | None = None) -> None:
        self.limits = limits or RunLimits()
        self.usage = usage or Usage()

    def output(self, what: str, value: Any) -> int:
        """Check one output (not counted in the run's total); returns its size."""
        size = json_size(value)
        err = self.limits.output_too_large(what, size)
        if err is not None:
            raise err
        return size

    def store(self, what: str, value: Any) -> None:
        """Check and count a step result the run will store."""
        size = self.output(what, value)
        err = self.limits.total_too_large(what, self.usage.bytes + size)
        if err is not None:
            raise err
        self.usage.bytes += size

    def add_steps(self, count: int) -> None:
        err = self.limits.too_many_steps(self.usage.steps + count)
        if err is not None:
            raise err
        self.usage.steps += count

    # -- the limits an execution request carries (`ctx.limits`) --------------------------

    def to_wire(self) -> dict[str, int]:
        return {
            "step_output": self.limits.step_output,
            "run_output_total": self.limits.run_output_total,
            "steps": self.limits.steps,
            "used_steps": self.usage.steps,
            "used_bytes": self.usage.bytes,
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Budget | None:
        """The budget an orchestrator sent, or None when it sent none usable."""
        values: list[int] = []
        for key in (*SETTINGS, "used_steps", "used_bytes"):
            value = wire.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                return None
            values.append(value)
        step_output, run_output_total, steps, used_steps, used_bytes = values
        return cls(RunLimits(step_output, run_output_total, steps), Usage(used_steps, used_bytes))
