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

#: What an expression sees: `event` (the triggering event); waits and cancellations also
#: see `async` (the incoming event).
EVENT_ONLY = frozenset({"event"})
EVENT_AND_ASYNC = frozenset({"event", "async"})

# Names a macro binds, like `x` in `event.data.items.exists(x, x > 1)` or `cel.bind(x, ...)`.
_BOUND = re.compile(r"\.\s*[A-Za-z_]\w*\s*\(\s*([A-Za-z_]\w*)\s*,(?:\s*([A-Za-z_]\w*)\s*,)?")


@functools.lru_cache(maxsize=4096)
def compile_expression(source: str) -> Any:
    if len(source) > 4096:  # the CEL library overflows its stack (SIGSEGV) on ~25,000 chars
        raise ConfigError(f"CEL expression of {len(source)} characters: the limit is 4096")
    try:
        return cel.compile(source)
    except ValueError as err:
        detail = str(err).removeprefix(f"Failed to parse expression {source!r}: ")
        raise ConfigError(f"invalid CEL expression {source!r}: {detail}") from None


@functools.lru_cache(maxsize=4096)
def _problem(source: str, variables: frozenset[str]) -> str | None:
    try:
        program = compile_expression(source)
    except ConfigError as err:
        return str(err)
    bound = {name for m in _BOUND.finditer(source) for name in m.groups() if name}
    unknown = sorted(set(program.variables()) - variables - bound)
    if unknown:
        seen = " and ".join(f"`{v}`" for v in sorted(variables))
        return (
            f"invalid CEL expression {source!r}: unknown variable {unknown[0]!r} "
            f"(this expression sees {seen})"
        )
    return None


def problem(source: object, variables: frozenset[str] = EVENT_AND_ASYNC) -> str | None:
    """What is wrong with `source` as an expression that sees `variables`; None if nothing
    (None or an empty expression is no condition)."""
    if source is None:
        return None
    if not isinstance(source, str):
        return "must be a CEL expression string"
    return _problem(source, variables) if source.strip() else None


def check(source: str, variables: frozenset[str] = EVENT_AND_ASYNC) -> None:
    """Raise ConfigError naming the problem if `source` is not valid CEL."""
    found = problem(source, variables)
    if found is not None:
        raise ConfigError(found)


def matches(source: str | None, variables: dict[str, Any]) -> bool:
    """True when the expression holds; a missing field, a type error or any other failure to
    evaluate counts as no match (an invalid expression is refused before it gets here)."""
    if not source:
        return True
    try:
        return compile_expression(source).execute(variables) is True
    except Exception:  # CEL raises KeyError, IndexError, ZeroDivisionError, ...
        return False


def evaluate(source: str, variables: dict[str, Any]) -> Any:
    """The expression's value (for keys and priorities); None if it cannot be evaluated."""
    try:
        return compile_expression(source).execute(variables)
    except Exception:  # as in `matches`
        return None


def in_config(config: dict[str, Any]) -> list[tuple[str, object, frozenset[str]]]:
    """Every expression a FunctionConfig carries: where it is, its source, what it sees."""
    found: list[tuple[str, object, frozenset[str]]] = []

    def add(where: str, opts: object, field: str, sees: frozenset[str] = EVENT_ONLY) -> None:
        if isinstance(opts, dict) and opts.get(field) is not None:
            found.append((f"{where}.{field}", opts[field], sees))

    for i, trig in enumerate(_items(config.get("triggers"))):
        add(f"triggers[{i}]", trig, "expression")
    for i, conc in enumerate(_items(config.get("concurrency"))):
        add(f"concurrency[{i}]", conc, "key")
    for name in ("throttle", "rateLimit", "debounce", "batchEvents", "singleton"):
        add(name, config.get(name), "key")
    add("batchEvents", config.get("batchEvents"), "if")
    add("priority", config.get("priority"), "run")
    if config.get("idempotency") is not None:
        found.append(("idempotency", config["idempotency"], EVENT_ONLY))
    for i, cancel in enumerate(_items(config.get("cancel"))):
        add(f"cancel[{i}]", cancel, "if", EVENT_AND_ASYNC)
    return found


def _items(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


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
