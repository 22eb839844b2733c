"""CEL expressions: compiled once, evaluated against `event` (the trigger) and `async` (an
incoming event), and reduced to index terms so pending waits are found without scanning.

Index terms only narrow the candidates; the real CEL evaluation always decides.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import cel

from ..errors import ConfigError


@functools.lru_cache(maxsize=4096)
def compile_expression(source: str) -> Any:
    if len(source) > 4096:  # the CEL library overflows its stack (SIGSEGV) on ~25,000 chars
        raise ConfigError(f"CEL expression of {len(source)} characters: the limit is 4096")
    try:
        return cel.compile(source)
    except ValueError as err:
        raise ConfigError(f"invalid CEL expression {source!r}: {err}") from None


def check(source: str) -> None:
    """Raise ConfigError naming the problem if `source` is not valid CEL."""
    compile_expression(source)


def matches(source: str | None, variables: dict[str, Any]) -> bool:
    """True when the expression holds; a missing field or a type error counts as no match."""
    if not source:
        return True
    try:
        return compile_expression(source).execute(variables) is True
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError):
        return False


def evaluate(source: str, variables: dict[str, Any]) -> Any:
    """The expression's value (for keys and priorities); None if a field is missing."""
    try:
        return compile_expression(source).execute(variables)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError):
        return None


# -- index terms ---------------------------------------------------------------------------

_PATH = r"(?:async|event)(?:\.[A-Za-z_]\w*)+"
_LITERAL = r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|-?\d+(?:\.\d+)?|true|false|null"
_EQ = re.compile(rf"^\s*\(?\s*({_PATH}|{_LITERAL})\s*==\s*({_PATH}|{_LITERAL})\s*\)?\s*$")


def _split_conjunction(source: str) -> list[str] | None:
    """Top-level `&&` terms, or None if the expression has a top-level `||` or `?:`."""
    terms, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(source):
        c = source[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and source.startswith("&&", i):
            terms.append(source[start:i])
            start = i + 2
            i += 1
        elif depth == 0 and (source.startswith("||", i) or c == "?"):
            return None
        i += 1
    terms.append(source[start:])
    return terms


def _literal(text: str) -> Any:
    if text.startswith("'"):
        text = '"' + text[1:-1].replace('"', '\\"') + '"'
    try:
        return json.loads(text)
    except ValueError:
        return None


def _lookup(path: str, variables: dict[str, Any]) -> tuple[bool, Any]:
    parts = path.split(".")
    value: Any = variables.get(parts[0])
    for part in parts[1:]:
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def index_term(source: str | None, trigger_event: dict[str, Any]) -> tuple[str, str] | None:
    """One `(async path, JSON value)` equality the expression requires of the incoming event.

    `async.data.order_id == event.data.id` with the trigger's `id` = 7 gives
    `("data.order_id", "7")`. None when no such term can be proven.
    """
    if not source:
        return None
    terms = _split_conjunction(source)
    if terms is None:
        return None
    for term in terms:
        m = _EQ.match(term)
        if m is None:
            continue
        left, right = m.group(1), m.group(2)
        if right.startswith("async.") and not left.startswith("async."):
            left, right = right, left
        if not left.startswith("async.") or right.startswith("async."):
            continue
        if right.startswith("event."):
            found, value = _lookup(right, {"event": trigger_event})
            if not found:
                continue
        else:
            value = _literal(right)
        if isinstance(value, dict | list):
            continue
        return left.removeprefix("async."), index_value(value)
    return None


def index_value(value: Any) -> str:
    # 1 and 1.0 are equal in CEL comparisons of JSON numbers; index them alike.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True)


def event_value(event: dict[str, Any], path: str) -> str | None:
    """The incoming event's value at an index path, in index form; None if absent."""
    found, value = _lookup("e." + path, {"e": event})
    if not found or isinstance(value, dict | list):
        return None
    return index_value(value)
