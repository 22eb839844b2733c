"""Wildcard event triggers, as in Inngest: `app/*` matches every event whose name starts
with `app/`, `app/user.*` every one starting with `app/user.`. A `*` is supported only at the
end of a name, right after a `/` or a `.`; anything else is refused when the function is
defined and when it is registered.

Triggers are indexed by their prefix, and an event looks up only the prefixes its own name
has (each part up to a `/` or `.`), so matching never scans the functions.
"""

from __future__ import annotations

from collections.abc import Iterator

SEPARATORS = "/."


def problem(name: str) -> str | None:
    """What is wrong with `name` as a trigger's event name (None: a name or a wildcard)."""
    if "*" not in name:
        return None
    if name.count("*") == 1 and len(name) > 2 and name[-1] == "*" and name[-2] in SEPARATORS:
        return None
    return (
        f"event {name!r}: a wildcard is supported only as a trailing '*' right after a '/' or "
        "a '.', like 'app/*' or 'app/user.*' (matching every event whose name starts with "
        "'app/' or 'app/user.')"
    )


def prefix(name: str) -> str | None:
    """The prefix a wildcard trigger matches (`app/*` -> `app/`); None for a plain name."""
    return name[:-1] if name.endswith("*") and problem(name) is None else None


def prefixes(event_name: str) -> Iterator[str]:
    """The wildcard prefixes an event's name can match: its parts up to each `/` or `.`."""
    for i, char in enumerate(event_name):
        if char in SEPARATORS:
            yield event_name[: i + 1]
