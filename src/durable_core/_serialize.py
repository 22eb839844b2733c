"""JSON in, typed values out: step and function outputs are stored as JSON and, where the
handler's return annotation (or `output_type=`) names a type, restored as that type."""

from __future__ import annotations

import collections
import functools
import inspect
import json
import logging
import math
import typing
from collections.abc import Callable
from typing import Any

import pydantic
import pydantic_core

from . import _bounded_json
from .errors import SerializationError

_log = logging.getLogger("durable")
_PLAIN = (type(None), bool, int, float, str)
_HINTS = collections.defaultdict(
    lambda: "return a finite number, or None",
    integer="return a larger integer as a string",
    nests=f"keep outputs within {_bounded_json.MAX_DEPTH} levels of nesting",
)


def _plain(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) <= _bounded_json.MAX_SAFE_INTEGER
    return isinstance(value, _PLAIN)


def to_json_value(value: object, *, what: str) -> object:
    """A JSON-compatible copy of `value`; `what` names the step or function in the error.

    The limits of `_bounded_json` apply, as they do to everything the orchestrator takes in:
    an integer beyond +-(2^53-1) (which no canonical JSON can carry, so the run could not be
    delivered again) or nesting deeper than 64 levels is refused here, as the step's own error.
    """
    if _plain(value):
        return value
    try:
        out = pydantic_core.to_jsonable_python(value)
        _bounded_json.check_value(out)
        json.dumps(out, allow_nan=False)
    except _bounded_json.BadJson as err:
        raise SerializationError(
            f"{what} returned a value that cannot be stored as JSON: {err.where('output')}; "
            + _HINTS[err.reason.split(" ", 1)[0]]
        ) from None
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as err:
        raise SerializationError(
            f"{what} returned a value of type {type(value).__qualname__} that cannot be stored "
            f"as JSON ({err}); return JSON data, a pydantic model or a dataclass instead"
        ) from None
    return out


@functools.lru_cache(maxsize=512)
def _adapter(tp: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(tp)


def from_json_value(value: object, tp: Any, *, what: str) -> Any:
    """Restore `value` as `tp` (None or Any leave it as JSON)."""
    if tp is None or tp is Any or tp is object or (value is None and tp is type(None)):
        return value
    try:
        return _adapter(tp).validate_python(value)
    except pydantic.ValidationError as err:
        raise SerializationError(
            f"the stored output of {what} does not fit its return type {tp!r} "
            f"(did the type change since it ran?): {err.errors()[0]['msg']}"
        ) from None


def return_type(handler: Callable[..., Any]) -> Any:
    """The handler's declared return type, unwrapping partials and awaitables; None if unknown."""
    target: Any = handler
    while isinstance(target, functools.partial):
        target = target.func
    try:
        return _declared_return(target)
    except TypeError:  # unhashable callable
        return _declared_return.__wrapped__(target)


@functools.lru_cache(maxsize=2048)
def _declared_return(target: Any) -> Any:
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        call = getattr(target, "__call__", None)  # noqa: B004
        if call is None or not inspect.ismethod(call):
            return None
        target = call
    try:
        hints = typing.get_type_hints(target)
    except Exception as err:
        _log.warning(
            "cannot resolve the return annotation of %s (%s): its stored result will come back "
            "as plain JSON; define the type at module level or pass output_type=",
            getattr(target, "__qualname__", target),
            err,
        )
        return None
    tp = hints.get("return")
    if tp is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Awaitable, typing.Coroutine) or (
        origin is not None and getattr(origin, "__name__", "") in ("Awaitable", "Coroutine")
    ):
        args = typing.get_args(tp)
        tp = args[-1] if args else None
    return None if tp is type(None) else tp
