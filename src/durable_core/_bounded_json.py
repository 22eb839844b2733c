"""JSON from bytes nobody has vouched for yet, within limits; and the same limits on the values
an app hands over to be stored (step and function outputs, events sent in-process).

- size: at most `MAX_BODY` bytes (10 MiB) per body;
- nesting: at most `MAX_DEPTH` levels of objects and arrays (64; the body itself is level 1),
  counted by one linear scan of the bytes *before* anything is parsed, so a body nested 100,000
  deep costs a scan, never a recursion; an execution request wraps stored values in a few levels
  of its own and may nest `EXECUTION_DEPTH` (128) levels;
- numbers: no `NaN` or `Infinity`, no float that overflows to infinity (`1e400`), and integers
  within ±(2^53-1), the range every JSON implementation represents exactly and the only one RFC
  8785 (the canonical form requests are signed in) can write;
- text: UTF-8, valid Unicode (no lone surrogates, which no database stores), and, where the
  caller asks (everything the orchestrator stores), no NUL character (U+0000), which
  PostgreSQL text cannot hold.

`loads` and `check_value` raise `BadJson` naming where the problem is, as a path from the top
of the body (`[0].data.amount`); the caller puts its own name in front (`events[0].data.amount`).
"""

from __future__ import annotations

import array
import itertools
import json
import math
import re
from collections.abc import Iterator
from typing import Any

MAX_BODY = 10 * 1024 * 1024
MAX_DEPTH = 64
EXECUTION_DEPTH = 2 * MAX_DEPTH
MAX_SAFE_INTEGER = 2**53 - 1
RANGE = "the exactly representable range \u00b1(2^53\u22121)"

Path = tuple[str | int, ...]

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_SIGNED = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_NAME = re.compile(r"[A-Za-z_$][\w$-]*")
_GAP = object()
_CHUNK = 1 << 16


class BadJson(ValueError):
    """A body or value outside the limits; `path` says where, `status` is the HTTP answer."""

    def __init__(self, reason: str, path: Path = (), status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path
        self.status = status

    def where(self, root: str = "") -> str:
        """The problem, prefixed by where it is: `root` names the top of the body."""
        if not self.path:
            return self.reason
        place = render(self.path)
        return f"{root}{place if root else place.removeprefix('.')}: {self.reason}"

    def __str__(self) -> str:
        return self.where("body" if self.path else "")


def render(path: Path) -> str:
    """`("events", 0, "data", "a b")` -> `.events[0].data["a b"]` (a long path shortened)."""
    parts = []
    shown: tuple[object, ...] = path if len(path) <= 12 else (*path[:6], _GAP, *path[-4:])
    for key in shown:
        if key is _GAP:
            parts.append("…")
        elif isinstance(key, int):
            parts.append(f"[{key}]")
        elif isinstance(key, str) and _NAME.fullmatch(key):
            parts.append(f".{key}")
        else:
            parts.append(f"[{json.dumps(key)}]")
    return "".join(parts)


def depth(body: bytes, limit: int | None = None) -> int:
    """How deep objects and arrays nest in `body` (0 for a scalar). Strings are skipped, so a
    bracket inside one does not count. With `limit`, the scan stops once past it."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_A_BRACKET).translate(_SIGNED)
    level = deepest = 0
    for start in range(0, len(brackets), _CHUNK):
        steps = array.array("b", brackets[start : start + _CHUNK])
        running = list(itertools.accumulate(steps, initial=level))
        deepest = max(deepest, max(running))
        level = running[-1]
        if limit is not None and deepest > limit:
            break
    return deepest


class _Bad:
    """Stands in for a number the limits refuse, until the walk finds where it sits."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _shown(text: str) -> str:
    digits = len(text.lstrip("-"))
    return text if len(text) <= 40 else f"{text[:12]}…{text[-6:]} ({digits} digits)"


def _out_of_range(value: int | str) -> str:
    return f"integer {_shown(str(value))} is outside {RANGE}"


class _Hooks:
    def __init__(self, exact_ints: bool) -> None:
        self.exact_ints = exact_ints
        self.bad = False

    def _flag(self, reason: str) -> _Bad:
        self.bad = True
        return _Bad(reason)

    def parse_int(self, text: str) -> int | _Bad:
        if self.exact_ints:
            if len(text) > 17:  # 2^53 has 16 digits: no need to build a longer number
                return self._flag(_out_of_range(text))
            value = int(text)
            return self._flag(_out_of_range(text)) if abs(value) > MAX_SAFE_INTEGER else value
        try:
            return int(text)
        except ValueError:  # past Python's limit on digits
            return self._flag(f"integer {_shown(text)} has too many digits")

    def parse_float(self, text: str) -> float | _Bad:
        value = float(text)
        if math.isfinite(value):
            return value
        return self._flag(f"number {_shown(text)} is too large for a 64-bit float")

    def parse_constant(self, text: str) -> _Bad:
        return self._flag(
            f"{text} is not JSON (JSON has no NaN or Infinity): send a number or null"
        )


def _walk(value: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every value in `value` with its path, keys included (as the value `(key,)`)."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key), (key,)
            yield from _walk(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, (*path, i))


def _text_problem(value: Any, nul: bool) -> tuple[Path, str] | None:
    """Where a string (or key) holds a lone surrogate, or a NUL character when `nul`."""
    for path, item in _walk(value):
        text = item[0] if isinstance(item, tuple) else item
        if not isinstance(text, str):
            continue
        what = "key" if isinstance(item, tuple) else "text"
        if nul and "\x00" in text:
            return path, f"{what} cannot contain a NUL character (U+0000)"
        try:
            text.encode()
        except UnicodeEncodeError as err:
            bad = text[err.start : err.end]
            return path, f"{what} is not valid Unicode ({err.reason}): {bad!r}"
    return None


def loads(
    body: bytes,
    *,
    max_depth: int = MAX_DEPTH,
    exact_ints: bool = True,
    allow_nul: bool = True,
    max_body: int = MAX_BODY,
) -> Any:
    """The JSON value of `body` (UTF-8), or BadJson (status 413 for size, 400 for the rest).

    `exact_ints=False` accepts integers of any size Python parses, and `allow_nul=True` text
    holding U+0000 (for bodies that only pass values through, like execution requests); the
    other limits always apply.
    """
    if len(body) > max_body:
        raise BadJson(f"body too large ({len(body)} bytes; the limit is {max_body})", status=413)
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadJson(f"body is not valid JSON: it is not UTF-8 text ({err})") from None
    if not text.strip():
        raise BadJson("empty body: send JSON")
    if depth(body, max_depth) > max_depth:
        raise BadJson(f"body nests objects and arrays deeper than the limit of {max_depth} levels")
    hooks = _Hooks(exact_ints)
    try:
        value = json.loads(
            text,
            parse_int=hooks.parse_int,
            parse_float=hooks.parse_float,
            parse_constant=hooks.parse_constant,
        )
    except json.JSONDecodeError as err:
        raise BadJson(f"body is not valid JSON: {err}") from None
    except RecursionError:  # the scan above makes this unreachable; a limit all the same
        raise BadJson(f"body nests objects and arrays deeper than {max_depth} levels") from None
    if hooks.bad:
        for path, item in _walk(value):
            if isinstance(item, _Bad):
                raise BadJson(item.reason, path)
    nul = not allow_nul and "\\u0000" in text
    if nul or _SURROGATE.search(text):
        problem = _text_problem(value, nul)
        if problem is not None:
            raise BadJson(problem[1], problem[0])
    return value


def check_value(value: Any, *, max_depth: int = MAX_DEPTH, allow_nul: bool = True) -> None:
    """Refuse (BadJson) a decoded value outside the limits: too deep, an integer beyond
    ±(2^53-1), a float that is not finite, and with `allow_nul=False` a NUL character in text
    or keys. Other types are left to the caller's encoder."""
    stack: list[tuple[Any, Path, int]] = [(value, (), 1)]
    while stack:
        item, path, level = stack.pop()
        if isinstance(item, bool):
            continue
        if isinstance(item, str):
            if not allow_nul and "\x00" in item:
                raise BadJson("text cannot contain a NUL character (U+0000)", path)
            continue
        if isinstance(item, int):
            if abs(item) > MAX_SAFE_INTEGER:
                raise BadJson(_out_of_range(item), path)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise BadJson(f"{item} is not JSON (JSON has no NaN or Infinity)", path)
        elif isinstance(item, dict | list | tuple):
            if level > max_depth:
                raise BadJson(f"nests objects and arrays more than {max_depth} levels deep", path)
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            if not allow_nul and isinstance(item, dict):
                for key in item:
                    if isinstance(key, str) and "\x00" in key:
                        raise BadJson("key cannot contain a NUL character (U+0000)", (*path, key))
            stack.extend((v, (*path, k), level + 1) for k, v in reversed(list(pairs)))


__all__ = [
    "EXECUTION_DEPTH",
    "MAX_BODY",
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "BadJson",
    "check_value",
    "depth",
    "loads",
    "render",
]
