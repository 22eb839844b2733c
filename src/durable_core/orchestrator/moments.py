"""Moments an app names: ISO 8601 times (`sleepUntil`, wait timeouts) and `retry-after`
headers (seconds, or an HTTP or ISO date)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import email.utils


def parse_time(text: str) -> int | None:
    """Milliseconds since the epoch of an ISO 8601 time (UTC when it names no zone)."""
    try:
        moment = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    return int(moment.timestamp() * 1000)


MAX_RETRY_AFTER_S = 365 * 24 * 3600  # a later `retry-after` is taken as this


def retry_at(header: str, now: int) -> int | None:
    """When a `retry-after` header (seconds, or an HTTP or ISO date) allows the retry; None
    when it says nothing usable, so the backoff applies."""
    text = header.strip()
    if text.isascii() and text.isdigit():  # `isdigit` alone accepts digits like "²"
        return now + min(int(text), MAX_RETRY_AFTER_S) * 1000
    at = parse_time(text) if text else None
    if at is None and text:
        with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
            at = int(email.utils.parsedate_to_datetime(text).timestamp() * 1000)
    return None if at is None else min(at, now + MAX_RETRY_AFTER_S * 1000)
