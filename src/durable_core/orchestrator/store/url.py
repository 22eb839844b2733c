"""Choose a store by URL: `sqlite:///relative.db`, `sqlite:////absolute/path.db` (or a plain
path), or `postgresql://user@host:5432/db[?schema=name]`."""

from __future__ import annotations

import urllib.parse

from ...errors import ConfigError
from .interface import Store


def _take_schema(url: str) -> tuple[str, str | None]:
    """`?schema=name` puts the tables in that schema (created if missing); libpq never sees it."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "schema"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), schema


def open_store(url: str) -> Store:
    """A store for `url`; call `await store.open()` before use (the orchestrator does)."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStore
        except ImportError:
            raise ConfigError(
                "PostgreSQL needs psycopg: pip install 'durable-core[postgres]'"
            ) from None
        dsn, schema = _take_schema(url)
        return PostgresStore(dsn, schema=schema)
    from .sqlite import SqliteStore

    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path:
            raise ConfigError(
                f"{url!r} names no file: use sqlite:///relative.db or sqlite:////abs.db"
            )
        return SqliteStore(path)
    if "://" in url:
        raise ConfigError(
            f"unsupported database URL {url!r}: use sqlite:///path.db or postgresql://..."
        )
    return SqliteStore(url)
