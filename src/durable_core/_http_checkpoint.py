"""Checkpoints over HTTP: the serve handler's side of `POST /v1/checkpoint/{run_id}/async`.

When an execution request names its queue item (`ctx.qi_id`), the serve handler gives the
engine `HttpCheckpoints` hooks, the same `record`/`flush` hooks an in-process orchestrator
gives (`_lifecycle.Checkpoints`): `record` keeps a finished step, `flush` (before the next step
runs) posts what is kept to the orchestrator, which stores it before answering. So one request
runs a chain of steps, each durable before the next starts.

What is still kept when the function stops travels with the answer (`answer`): after the
function returned, as `206 [...steps, {"op": "RunComplete", "data": output}]`; before a sleep,
wait, invoke or fan-out, in front of those ops. A checkpoint that fails ends the request with
the steps it kept in a 206, as without checkpoints, so nothing is lost; a 409 (the request was
superseded: the run was taken over or has ended) ends it with nothing to report.

Posts go through `_http_post`'s small keep-alive clients: a request's checkpoints share one
connection, opened at its first checkpoint and closed when it ends (`close`), so a chain of
steps costs one connection, and a request that checkpoints nothing (a one-step run) none.
They are signed as the app's other calls to the orchestrator (`Authorization: Bearer
<hashed signing key>`). A checkpoint is idempotent, so a kept connection the server closed
is simply tried again on a fresh one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.parse
from typing import Any

from ._driver import Outcome, Raised, Returned
from ._engine import Ops
from ._faults import fault
from ._http_post import AsyncPoster, PostError, SyncPoster, origin_of
from ._lifecycle import CheckpointDeferred, Checkpoints, SyncCheckpoints
from .protocol import SDK_ID, Header, Opcode
from .types import JSONObject

_log = logging.getLogger("durable")

#: Ops after which the kept steps are posted rather than sent with them: the orchestrator
#: counts a retry's attempt from the request's, which the kept steps would not reset.
_ERRORS = frozenset({Opcode.STEP_ERROR, Opcode.STEP_FAILED})


class HttpCheckpoints:
    """The steps of one request, kept and posted to the orchestrator's checkpoint API."""

    def __init__(
        self, base_url: str, ctx: Any, fn_id: str, headers: dict[str, str] | None = None
    ) -> None:
        run_id = str(ctx.run_id)
        self.url = f"{base_url}/v1/checkpoint/{urllib.parse.quote(run_id, safe='')}/async"
        self.path = urllib.parse.urlsplit(self.url).path
        self._fixed = {
            "run_id": run_id,
            "fn_id": ctx.fn_id or fn_id,
            "qi_id": ctx.qi_id,
            "request_id": None,
            "generation_id": None,
        }
        self.headers = {"content-type": "application/json", Header.SDK: SDK_ID, **(headers or {})}
        self.kept: list[JSONObject] = []
        self._async: AsyncPoster | None = None
        self._sync: SyncPoster | None = None
        self.started_at = _now_ms()
        #: The request ends without checkpoints: "failed" (answer with what is kept) or
        #: "stale" (a 409: answer with nothing).
        self.ended: str | None = None

    # -- the hooks ----------------------------------------------------------------------------

    def record(self, op: JSONObject) -> None:
        self.kept.append({k: v for k, v in op.items() if k != "started_at"})

    def _body(self) -> bytes:
        body = {
            **self._fixed,
            "request_started_at": self.started_at,
            "steps": self.kept,
            "ts": _now_ms(),
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def _answered(self, res: tuple[int, bytes] | Exception) -> None:
        """Forget what was posted (2xx), or end the request (CheckpointDeferred)."""
        if isinstance(res, tuple) and 200 <= res[0] < 300:
            self.kept.clear()
            fault("checkpoint.posted")
            return
        text = res[1][:300].decode("utf-8", "replace") if isinstance(res, tuple) else ""
        if isinstance(res, tuple) and res[0] == 409:
            self.kept.clear()
            self.ended = "stale"
            raise CheckpointDeferred(f"the orchestrator says this request is stale: {text}")
        self.ended = "failed"
        what = f"HTTP {res[0]}: {text}" if isinstance(res, tuple) else repr(res)
        _log.warning(
            "checkpointing to %s failed (%s); the request ends with its steps", self.url, what
        )
        raise CheckpointDeferred(f"checkpointing failed ({what})")

    async def flush(self) -> None:
        if not self.kept or self.ended:
            return
        try:
            res: tuple[int, bytes] | Exception = await self._async_poster().post(
                self.path, self._body(), self.headers
            )
        except PostError as err:
            res = err
        self._answered(res)

    def flush_sync(self) -> None:
        if not self.kept or self.ended:
            return
        try:
            res: tuple[int, bytes] | Exception = self._sync_poster().post(
                self.path, self._body(), self.headers
            )
        except PostError as err:
            res = err
        self._answered(res)

    def _async_poster(self) -> AsyncPoster:
        self._async = self._async or AsyncPoster(origin_of(self.url))
        return self._async

    def _sync_poster(self) -> SyncPoster:
        self._sync = self._sync or SyncPoster(origin_of(self.url))
        return self._sync

    def close(self) -> None:
        """The request is over: close its connection to the orchestrator."""
        for poster in (self._async, self._sync):
            if poster is not None:
                poster.close()

    def hooks(self) -> Checkpoints:
        async def record(op: JSONObject) -> None:
            self.record(op)

        return Checkpoints(record=record, flush=self.flush)

    def sync_hooks(self) -> SyncCheckpoints:
        return SyncCheckpoints(record=self.record, flush=self.flush_sync)

    # -- the answer ---------------------------------------------------------------------------

    def _after(self, outcome: Outcome) -> Outcome | None:
        """The outcome with the kept steps in it, or None if they must be posted first."""
        if self.ended == "stale":
            return Ops([])
        if not self.kept:
            return outcome
        if isinstance(outcome, Returned):
            done = {"op": Opcode.RUN_COMPLETE, "id": "complete", "data": outcome.value}
            return Ops([*self.kept, done])
        if isinstance(outcome, Ops) and (
            self.ended or not any(op.get("op") in _ERRORS for op in outcome.ops)
        ):
            return Ops([*self.kept, *outcome.ops])
        return None

    def _settled(self, outcome: Outcome) -> Outcome:
        if isinstance(outcome, Ops) and self.kept:  # could not post them: they go with it
            return Ops([*self.kept, *outcome.ops])
        if isinstance(outcome, Raised) and self.kept:
            _log.warning(
                "%d finished steps could not be stored; the retry runs them again", len(self.kept)
            )
        return outcome

    async def answer(self, outcome: Outcome) -> Outcome:
        """The request's outcome, carrying the steps not checkpointed yet."""
        after = self._after(outcome)
        if after is not None:
            return after
        with contextlib.suppress(CheckpointDeferred):  # then they go with the answer
            await self.flush()
        return self._settled(Ops([]) if self.ended == "stale" else outcome)

    def answer_sync(self, outcome: Outcome) -> Outcome:
        after = self._after(outcome)
        if after is not None:
            return after
        with contextlib.suppress(CheckpointDeferred):
            self.flush_sync()
        return self._settled(Ops([]) if self.ended == "stale" else outcome)


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = ["HttpCheckpoints"]
