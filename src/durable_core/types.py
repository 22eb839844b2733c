"""Type aliases shared across the SDK."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from .events import Event

JSONObject: TypeAlias = dict[str, Any]
"""A JSON object on the wire: an op, a request body, an error payload, a stored memo."""

Handler: TypeAlias = Callable[[Any], Any]
"""A function's handler (or its `on_failure`): takes a context, returns the output."""

AsyncSender: TypeAlias = Callable[[list[Event]], Awaitable[list[str]]]
"""Sends events from async code; returns their ids."""

SyncSender: TypeAlias = Callable[[list[Event]], list[str]]
"""Sends events from sync code; returns their ids."""

__all__ = ["AsyncSender", "Handler", "JSONObject", "SyncSender"]
