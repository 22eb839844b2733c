"""A small in-memory orchestrator that plays the Inngest server against two apps in lock step.

Every execution request is sent, as the same JSON bytes, to the peer app (the `inngest` SDK)
and to ours; both responses are normalized and compared, then the peer's response is applied
to the run's memo state, the way the Inngest server would:

    StepRun         memoize {"data"}, discover again
    StepError       repeat the same request with attempt + 1
    StepFailed      memoize {"error": {name, message, stack}}, attempt back to 0
    StepPlanned     one targeted request per planned step (stepId=<hashed id>), then one
                    discovery request with disable_immediate_execution = true (kept from then on)
    Sleep           memoize null
    WaitForEvent    memoize the scenario's event (matched) or null (timed out)
    InvokeFunction  memoize the scenario's child result ({"data"} or {"error"})

The run ends at the first response that is not a 206. Every exchange goes into a transcript,
so a failure shows where the two SDKs diverged.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Mapping
from typing import Any

import httpx
from starlette.testclient import TestClient

PEER_PATH = "/api/inngest"
OURS_PATH = "/api/durable"
APP_ID = "diff"
MAX_REQUESTS = 40
WAKE_TOLERANCE = datetime.timedelta(seconds=30)


class _Marker:
    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"<{self.label}>"


ABSENT: Any = _Marker("absent")  # a field missing from a response
UNSET: Any = _Marker("unset")  # a scenario expectation left out


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One run: the function, its trigger data, and what the orchestrator answers for waits and
    invokes (keyed by the step's user-facing id)."""

    fn_id: str
    max_attempts: int
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    waits: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    invokes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    expect_status: int = 200
    expect_output: Any = UNSET
    expect_ops: frozenset[str] = frozenset()
    expect_no_retry: bool = False
    expect_retry_after: bool = False


@dataclasses.dataclass(frozen=True, eq=False)
class WakeTime:
    """A Sleep op's `name` or a `retry-after` header: equal to another when both have the same
    shape (digits aside) and are close in time."""

    raw: object

    def _parsed(self) -> datetime.datetime | None:
        if not isinstance(self.raw, str):
            return None
        try:
            return datetime.datetime.fromisoformat(self.raw)
        except ValueError:
            return None

    def _shape(self) -> str:
        return re.sub(r"\d", "9", str(self.raw))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WakeTime):
            return NotImplemented
        mine, theirs = self._parsed(), other._parsed()
        if mine is None or theirs is None or mine.tzinfo is None or theirs.tzinfo is None:
            return self.raw == other.raw
        return self._shape() == other._shape() and abs(mine - theirs) <= WAKE_TOLERANCE

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WakeTime({self.raw!r})"


# -- normalizing responses --------------------------------------------------------------------


def normalize_error(err: object) -> object:
    if not isinstance(err, dict):
        return {"not_an_object": err}
    return {
        "name": err.get("name", ABSENT),
        "message": err.get("message", ABSENT),
        "code": err.get("code", ABSENT),
        "stack_is_str": isinstance(err.get("stack"), str),
    }


def normalize_op(op: object) -> object:
    if not isinstance(op, dict):
        return {"not_an_object": op}
    name = op.get("name", ABSENT)
    return {
        "op": op.get("op", ABSENT),
        "id": op.get("id", ABSENT),
        "name": WakeTime(name) if op.get("op") == "Sleep" else name,
        "displayName": op.get("displayName", ABSENT),
        "opts": op.get("opts", ABSENT),
        "userland": op.get("userland", ABSENT),
        "data": op.get("data", ABSENT),
        "error": normalize_error(op["error"]) if "error" in op else ABSENT,
    }


def _json(res: httpx.Response) -> Any:
    try:
        return res.json()
    except ValueError:
        return {"not_json": res.text}


def normalize(res: httpx.Response) -> dict[str, Any]:
    body = _json(res)
    out: dict[str, Any] = {
        "status": res.status_code,
        "x-inngest-no-retry": res.headers.get("x-inngest-no-retry", ABSENT),
        "retry-after": WakeTime(res.headers["retry-after"])
        if "retry-after" in res.headers
        else ABSENT,
    }
    if res.status_code == 206 and isinstance(body, list):
        out["ops"] = [normalize_op(op) for op in body]
    elif res.status_code >= 400:
        out["error"] = normalize_error(body)
    else:
        out["output"] = body
    return out


def differences(peer: object, ours: object, path: str = "") -> list[str]:
    """Readable `path: peer=... ours=...` lines for every leaf that differs."""
    if isinstance(peer, dict) and isinstance(ours, dict):
        lines = []
        for key in list(peer) + [k for k in ours if k not in peer]:
            lines += differences(peer.get(key, ABSENT), ours.get(key, ABSENT), f"{path}.{key}")
        return lines
    if isinstance(peer, list) and isinstance(ours, list) and len(peer) == len(ours):
        lines = []
        for i, (a, b) in enumerate(zip(peer, ours, strict=True)):
            lines += differences(a, b, f"{path}[{i}]")
        return lines
    return [] if peer == ours else [f"{path or '.'}: peer={peer!r} ours={ours!r}"]


# -- the orchestrator -------------------------------------------------------------------------


@dataclasses.dataclass
class Exchange:
    label: str
    body: bytes
    peer: dict[str, Any]
    ours: dict[str, Any]
    peer_raw: str
    ours_raw: str


class Divergence(AssertionError):
    pass


class Orchestrator:
    """Runs one scenario against both apps; `run()` returns the final exchange."""

    def __init__(self, scenario: Scenario, peer: TestClient, ours: TestClient) -> None:
        self.scenario = scenario
        self.peer = peer
        self.ours = ours
        self.steps: dict[str, Any] = {}
        self.disable_immediate_execution = False
        self.transcript: list[Exchange] = []
        self.seen_ops: set[str] = set()

    # -- requests -------------------------------------------------------------------------

    def _body(self, attempt: int) -> bytes:
        sc = self.scenario
        event = {
            "name": f"diff/{sc.fn_id}",
            "data": dict(sc.data),
            "id": "evt-1",
            "ts": 1_700_000_000_000,
        }
        body = {
            "event": event,
            "events": [event],
            "steps": self.steps,
            "ctx": {
                "run_id": f"run-{sc.fn_id}",
                "fn_id": f"{APP_ID}-{sc.fn_id}",
                "attempt": attempt,
                "max_attempts": sc.max_attempts,
                "disable_immediate_execution": self.disable_immediate_execution,
                "stack": {"stack": list(self.steps), "current": len(self.steps)},
            },
            "use_api": False,
            "version": 2,
        }
        return json.dumps(body).encode()

    def exchange(self, target: str | None, attempt: int) -> tuple[int, Any]:
        if len(self.transcript) >= MAX_REQUESTS:
            raise Divergence(self.report(f"the run did not end within {MAX_REQUESTS} requests"))
        body = self._body(attempt)
        params = {"fnId": f"{APP_ID}-{self.scenario.fn_id}", "stepId": target or "step"}
        headers = {"content-type": "application/json"}
        peer_res = self.peer.post(PEER_PATH, params=params, content=body, headers=headers)
        ours_res = self.ours.post(OURS_PATH, params=params, content=body, headers=headers)
        label = (
            f"#{len(self.transcript) + 1} stepId={params['stepId']} attempt={attempt} "
            f"disable_immediate_execution={self.disable_immediate_execution} "
            f"memos={len(self.steps)}"
        )
        ex = Exchange(
            label, body, normalize(peer_res), normalize(ours_res), peer_res.text, ours_res.text
        )
        self.transcript.append(ex)
        if ex.peer != ex.ours:
            raise Divergence(self.report("the two SDKs answered differently"))
        peer_body = _json(peer_res)
        if peer_res.status_code == 206 and isinstance(peer_body, list):
            self.seen_ops.update(op.get("op") for op in peer_body if isinstance(op, dict))
        return peer_res.status_code, peer_body

    # -- applying responses ---------------------------------------------------------------

    def _memoize(self, op: dict[str, Any]) -> None:
        kind, step_id, user_id = op["op"], op["id"], op["userland"]["id"]
        if kind == "StepRun":
            self.steps[step_id] = {"data": op.get("data")}
        elif kind == "StepFailed":
            err = op["error"]
            self.steps[step_id] = {
                "error": {"name": err["name"], "message": err["message"], "stack": err.get("stack")}
            }
        elif kind == "Sleep":
            self.steps[step_id] = None
        elif kind == "WaitForEvent":
            if user_id not in self.scenario.waits:
                raise Divergence(self.report(f"the scenario has no answer for wait {user_id!r}"))
            self.steps[step_id] = self.scenario.waits[user_id]
        elif kind == "InvokeFunction":
            if user_id not in self.scenario.invokes:
                raise Divergence(self.report(f"the scenario has no answer for invoke {user_id!r}"))
            self.steps[step_id] = self.scenario.invokes[user_id]
        else:
            raise Divergence(self.report(f"the driver cannot apply op {kind!r}"))

    def _run_planned(self, step_id: str) -> tuple[int, Any] | None:
        """Targeted requests for one planned step until it is memoized; a final answer ends it."""
        attempt = 0
        while True:
            status, body = self.exchange(step_id, attempt)
            if status != 206:
                return status, body
            if len(body) != 1 or body[0].get("id") != step_id:
                raise Divergence(self.report(f"a targeted request answered {len(body)} ops"))
            if body[0]["op"] == "StepError":
                attempt += 1
                continue
            self._memoize(body[0])
            return None

    def run(self) -> Exchange:
        attempt = 0
        while True:
            status, body = self.exchange(None, attempt)
            if status != 206:
                return self.transcript[-1]
            if len(body) == 1 and body[0]["op"] == "StepError":
                attempt += 1
                continue
            attempt = 0
            planned = False
            for op in body:
                if op["op"] == "StepPlanned":
                    planned = True
                    final = self._run_planned(op["id"])
                    if final is not None:
                        return self.transcript[-1]
                else:
                    self._memoize(op)
            if planned:
                self.disable_immediate_execution = True

    # -- reporting ------------------------------------------------------------------------

    def report(self, headline: str) -> str:
        lines = [f"scenario {self.scenario.fn_id!r}: {headline}", "transcript:"]
        for ex in self.transcript:
            lines.append(f"  {ex.label}")
            if ex.peer == ex.ours:
                lines.append(f"    both: {ex.peer!r}")
                continue
            lines.append(f"    request: {ex.body.decode()}")
            lines += [f"    DIFF {line}" for line in differences(ex.peer, ex.ours)]
            lines.append(f"    peer raw: {ex.peer_raw[:3000]}")
            lines.append(f"    ours raw: {ex.ours_raw[:3000]}")
        return "\n".join(lines)
