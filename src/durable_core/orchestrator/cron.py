"""Cron schedules: standard 5-field expressions, optionally prefixed `TZ=Area/City `.

The schedule's ticks come from croniter; which tick last ran is kept in the store, so a tick
runs once however many orchestrators share the store, and the ticks missed while nothing was
running collapse into one run.
"""

from __future__ import annotations

import datetime as _dt
import zoneinfo

from croniter import croniter

from ..errors import ConfigError


def parse(spec: str) -> tuple[str, _dt.tzinfo]:
    """The expression and its time zone (UTC unless `TZ=...` says otherwise)."""
    text = spec.strip()
    zone: _dt.tzinfo = _dt.UTC
    if text.startswith(("TZ=", "CRON_TZ=")):
        name, _, text = text.partition("=")[2].partition(" ")
        try:
            zone = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"cron {spec!r}: unknown time zone {name!r} (use Area/City, like Europe/Paris)"
            ) from None
        text = text.strip()
    if len(text.split()) != 5 or not croniter.is_valid(text):
        raise ConfigError(
            f"cron {spec!r} is not a 5-field cron expression (minute hour day month weekday), "
            "like '0 9 * * 1-5', optionally prefixed 'TZ=Area/City '"
        )
    return text, zone


def check(spec: str) -> None:
    parse(spec)


def _at(ms: int, zone: _dt.tzinfo) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ms / 1000, zone)


def latest_tick(spec: str, now_ms: int) -> int:
    """The last tick at or before `now_ms`."""
    expr, zone = parse(spec)
    moment = _at(now_ms, zone)
    if (
        croniter.match(expr, moment.replace(second=0, microsecond=0))
        and moment.second == 0
        and moment.microsecond == 0
    ):
        return now_ms
    return int(croniter(expr, moment).get_prev(_dt.datetime).timestamp() * 1000)


def next_tick(spec: str, now_ms: int) -> int:
    """The first tick after `now_ms`."""
    expr, zone = parse(spec)
    return int(croniter(expr, _at(now_ms, zone)).get_next(_dt.datetime).timestamp() * 1000)
