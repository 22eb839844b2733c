"""Choose a store by URL: `sqlite:///path/to/file.db` (or a plain path) or `postgresql://...`."""

from __future__ import annotations

from ..errors import ConfigError
from .store import Store


def open_store(url: str) -> Store:
    """A store for `url`; call `await store.open()` before use (the orchestrator does)."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .pg_store import PostgresStore
        except ImportError:
            raise ConfigError("PostgreSQL needs psycopg: pip install 'durable[postgres]'") from None
        return PostgresStore(url)
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") and not path.startswith("//") else path
        if path.startswith("//"):
            path = path[1:]
        if not path:
            raise ConfigError(
                f"{url!r} names no file: use sqlite:///relative.db or sqlite:////abs/path.db"
            )
        from .sqlite_store import SqliteStore

        return SqliteStore(path)
    if "://" in url:
        raise ConfigError(
            f"unsupported database URL {url!r}: use sqlite:///path.db or postgresql://..."
        )
    from .sqlite_store import SqliteStore

    return SqliteStore(url)
