"""Flow-control options: checked at registration, and read into what a request carries.

`check` refuses a malformed option with a message naming it. `request_flow` turns a function's
concurrency, throttle and priority options into the small record a queue item carries, so the
claim (`claiming.py`) can enforce them without reading the function again. Helpers here (key
values, durations, labels) are shared with admission.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

from .._durations import format_duration, parse_duration, to_iso_utc
from . import expressions, wildcards
from .store import FunctionRecord

DAY_MS = 24 * 3600 * 1000
PRIORITY_MAX_MS = 600_000


def duration_ms(text: Any) -> int:
    return round(parse_duration(str(text)).total_seconds() * 1000)


def compact(ms: float) -> str:
    return format_duration(_dt.timedelta(milliseconds=ms))


def iso(ms: float) -> str:
    return to_iso_utc(_dt.datetime.fromtimestamp(ms / 1000, _dt.UTC))


def key_value(source: str | None, event: dict[str, Any]) -> str | None:
    """The key an expression gives for `event` (None without an expression; "null" when the
    expression cannot be evaluated, so such events share one key)."""
    if not source:
        return None
    value = expressions.evaluate(source, {"event": event})
    return value if isinstance(value, str) else json.dumps(value, default=str)


def keyed(base: str, value: str | None) -> str:
    """A state or limit key: `base`, made per key value when the option has a key."""
    return base if value is None else f"{base}|{value}"


def on_key(value: str | None) -> str:
    return "" if value is None else f' on key "{value}"'


# -- checking options at registration -------------------------------------------------------


def check(config: dict[str, Any]) -> str | None:
    """What is wrong with a function's trigger names, flow-control options and expressions
    (None if nothing), so a bad registration is refused with a 400 instead of failing later
    in the queue or at intake."""
    try:
        _check(config)
    except _Bad as bad:
        return str(bad)
    return None


class _Bad(Exception):
    pass


def _obj(config: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = config.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Bad(f"{name} must be an object")
    return value


def _int(opts: dict[str, Any], where: str, field: str, low: int, required: bool = True) -> None:
    value = opts.get(field)
    if value is None and not required:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise _Bad(f"{where}.{field} must be an integer >= {low}")


def _dur(opts: dict[str, Any], where: str, field: str, required: bool = True) -> None:
    value = opts.get(field)
    if value is None and not required:
        return
    try:
        if not isinstance(value, str) or duration_ms(value) <= 0:
            raise ValueError("must be a positive duration")
    except ValueError:
        raise _Bad(
            f'{where}.{field} must be a positive duration like "30s" (got {value!r})'
        ) from None


def _check(config: dict[str, Any]) -> None:
    for i, trig in enumerate(config.get("triggers") or []):
        name = trig.get("event") if isinstance(trig, dict) else None
        if isinstance(name, str) and (bad := wildcards.problem(name)):
            raise _Bad(f"triggers[{i}].{bad}")
    concurrency = config.get("concurrency")
    if concurrency is not None:
        if not isinstance(concurrency, list) or len(concurrency) > 2:
            raise _Bad("concurrency must be a list of at most 2 limits")
        for i, conc in enumerate(concurrency):
            where = f"concurrency[{i}]"
            if not isinstance(conc, dict):
                raise _Bad(f"{where} must be an object")
            _int(conc, where, "limit", 0)
            if conc.get("scope") not in (None, "fn", "app", "env", "account"):
                raise _Bad(f'{where}.scope must be "fn", "app", "env" or "account"')
    for name, fields in (("throttle", True), ("rateLimit", False)):
        opts = _obj(config, name)
        if opts is not None:
            _int(opts, name, "limit", 1)
            _dur(opts, name, "period")
            if fields:
                _int(opts, name, "burst", 0, required=False)
    debounce = _obj(config, "debounce")
    if debounce is not None:
        _dur(debounce, "debounce", "period")
        _dur(debounce, "debounce", "timeout", required=False)
    batch = _obj(config, "batchEvents")
    if batch is not None:
        _int(batch, "batchEvents", "maxSize", 1)
        _dur(batch, "batchEvents", "timeout")
    priority = _obj(config, "priority")
    if priority is not None and not isinstance(priority.get("run"), str):
        raise _Bad("priority.run must be a CEL expression string")
    singleton = _obj(config, "singleton")
    if singleton is not None and singleton.get("mode") not in ("skip", "cancel"):
        raise _Bad('singleton.mode must be "skip" or "cancel"')
    timeouts = _obj(config, "timeouts")
    if timeouts is not None:
        _dur(timeouts, "timeouts", "start", required=False)
        _dur(timeouts, "timeouts", "finish", required=False)
    cancel = config.get("cancel")
    if cancel is not None:
        if not isinstance(cancel, list):
            raise _Bad("cancel must be a list")
        for i, c in enumerate(cancel):
            where = f"cancel[{i}]"
            if not isinstance(c, dict) or not isinstance(c.get("event"), str) or not c["event"]:
                raise _Bad(f"{where}.event must be an event name")
            if "*" in c["event"]:
                raise _Bad(f"{where}.event {c['event']!r}: a cancel event cannot be a wildcard")
            _dur(c, where, "timeout", required=False)
    for where, source, sees in expressions.in_config(config):
        bad = expressions.problem(source, sees)
        if bad is not None:
            raise _Bad(f"{where}: {bad}" if isinstance(source, str) else f"{where} {bad}")


def has_queue_flow(fn: FunctionRecord) -> bool:
    """Whether the function's requests go through the flow-controlled claim."""
    cfg = fn.config
    return bool(
        any((c or {}).get("limit") for c in cfg.get("concurrency") or [])
        or cfg.get("throttle")
        or cfg.get("priority")
    )


# -- requests: the flow a queue item carries ------------------------------------------------


def request_flow(
    fn: FunctionRecord | None, events: list[dict[str, Any]], first: bool
) -> dict[str, Any] | None:
    """The flow control of a discovery or step request of a run (`first`: the run's start,
    which a throttle applies to)."""
    if fn is None or not has_queue_flow(fn):
        return None
    cfg, event = fn.config, events[0]
    flow: dict[str, Any] = {}
    limits = []
    for conc in cfg.get("concurrency") or []:
        limit = int(conc.get("limit") or 0)
        if limit <= 0:
            continue
        scope = conc.get("scope") or "fn"
        value = key_value(conc.get("key"), event)
        base = {"fn": f"fn:{fn.fn_id}", "app": f"app:{fn.app_id}"}.get(scope, "env")
        if value is not None:
            label = f'concurrency limit {limit} on key "{value}"'
        elif scope == "fn":
            label = f'concurrency limit {limit} on function "{fn.fn_id}"'
        elif scope == "app":
            label = f'concurrency limit {limit} on app "{fn.app_id}"'
        else:
            label = f"concurrency limit {limit} across all functions"
        limits.append([keyed(base, value), limit, label])
    if limits:
        flow["c"] = limits
    priority = (cfg.get("priority") or {}).get("run")
    if priority:
        value = expressions.evaluate(str(priority), {"event": event})
        if isinstance(value, int | float) and not isinstance(value, bool):
            ms = max(-PRIORITY_MAX_MS, min(PRIORITY_MAX_MS, int(value * 1000)))
            if ms:
                flow["p"] = ms
    throttle = cfg.get("throttle")
    if throttle and first:
        limit, period = int(throttle["limit"]), duration_ms(throttle["period"])
        value = key_value(throttle.get("key"), event)
        key = keyed(fn.fn_id, value)
        label = f"{limit} per {compact(period)}{on_key(value)}"
        flow["t"] = [key, limit, period, int(throttle.get("burst") or 0), label]
    return flow or None
