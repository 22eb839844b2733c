"""Durations: "30s", "1h30m", "7d", a timedelta, or seconds; formatted back as "90m"."""

from __future__ import annotations

import datetime as _dt
import re

DurationLike = str | int | float | _dt.timedelta

_UNITS_MS = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")


def parse_duration(text: str) -> _dt.timedelta:
    s = text.strip().lower().replace(" ", "")
    if not s:
        raise ValueError('empty duration: use a string like "30s", "5m", "1h" or "7d"')
    pos, total_ms = 0, 0.0
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        total_ms += float(match.group(1)) * _UNITS_MS[match.group(2)]
        pos = match.end()
    if pos != len(s):
        if re.fullmatch(r"\d+(\.\d+)?", s):
            return _dt.timedelta(seconds=float(s))
        raise ValueError(
            f'invalid duration {text!r}: use a number and a unit (ms, s, m, h, d, w), like "30s", '
            '"1h30m" or "7d"'
        )
    return _dt.timedelta(milliseconds=total_ms)


def to_timedelta(value: DurationLike) -> _dt.timedelta:
    if isinstance(value, _dt.timedelta):
        td = value
    elif isinstance(value, bool):
        raise TypeError(
            "a duration cannot be a bool: use seconds, a timedelta or a string like '5m'"
        )
    elif isinstance(value, int | float):
        td = _dt.timedelta(seconds=value)
    elif isinstance(value, str):
        td = parse_duration(value)
    else:
        raise TypeError(
            f"a duration must be a string like '5m', a timedelta or seconds, not {type(value).__name__}"
        )
    if td < _dt.timedelta(0):
        raise ValueError(f"a duration cannot be negative (got {value!r})")
    return td


def format_duration(value: DurationLike) -> str:
    """The largest unit that divides evenly: 90 s -> "90s", 3600 s -> "1h", 1.5 s -> "1500ms"."""
    ms = round(to_timedelta(value).total_seconds() * 1000)
    for suffix in ("w", "d", "h", "m", "s"):
        unit = _UNITS_MS[suffix]
        if ms and ms % unit == 0:
            return f"{ms // unit}{suffix}"
    return f"{ms}ms"


def to_iso_utc(value: _dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.astimezone()
    utc = value.astimezone(_dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
