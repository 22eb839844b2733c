"""The schema of both databases, as versioned migrations.

A migration is applied once, in order, and its number recorded in `schema_version`; a new one
goes at the end. The words the databases spell differently (`{bigint}`, `{serial}`, ...) come
from the dialect, so each renders to what that database's store has always created.
"""

from __future__ import annotations

import dataclasses

from .dialect import Dialect

_TABLES = """
    CREATE TABLE apps (app_id TEXT PRIMARY KEY, url TEXT NOT NULL, sdk TEXT NOT NULL,
        framework TEXT NOT NULL, updated_at {bigint} NOT NULL);
    CREATE TABLE functions (fn_id TEXT PRIMARY KEY, app_id TEXT NOT NULL, name TEXT NOT NULL,
        config TEXT NOT NULL);
    CREATE TABLE events (internal_id TEXT PRIMARY KEY, name TEXT NOT NULL, data TEXT NOT NULL,
        event_id TEXT NOT NULL, ts {bigint} NOT NULL, received_at {bigint} NOT NULL, raw TEXT NOT NULL);
    CREATE INDEX events_by_name ON events (name, received_at);
    CREATE INDEX events_by_time ON events (received_at);
    CREATE TABLE keys (scope TEXT NOT NULL, key TEXT NOT NULL, expires_at {bigint} NOT NULL,
        PRIMARY KEY (scope, key));
    CREATE TABLE runs (run_id TEXT PRIMARY KEY, fn_id TEXT NOT NULL, app_id TEXT NOT NULL,
        status TEXT NOT NULL, events TEXT NOT NULL, created_at {bigint} NOT NULL,
        started_at {bigint}, ended_at {bigint}, output TEXT, error TEXT, parent_run_id TEXT,
        parent_step TEXT, reason TEXT, batch_parallel {flag});
    CREATE INDEX runs_by_fn ON runs (fn_id, created_at);
    CREATE INDEX runs_by_time ON runs (created_at);
    CREATE INDEX runs_unfinished ON runs (status) WHERE status NOT IN ('completed','failed','cancelled');
    CREATE TABLE memos (run_id TEXT NOT NULL, step TEXT NOT NULL, memo {memo},
        PRIMARY KEY (run_id, step)){key_only};
    CREATE TABLE pending (run_id TEXT NOT NULL, step TEXT NOT NULL, PRIMARY KEY (run_id, step))
        {key_only};
    CREATE TABLE history (id {serial}, run_id TEXT NOT NULL, step TEXT NOT NULL,
        name TEXT NOT NULL, op TEXT NOT NULL, attempt INTEGER NOT NULL, started_at {bigint} NOT NULL,
        ended_at {bigint}, output TEXT, error TEXT);
    CREATE INDEX history_by_run ON history (run_id, id);
    CREATE TABLE queue (id {serial}, run_id TEXT NOT NULL, kind TEXT NOT NULL,
        step TEXT, attempt INTEGER NOT NULL, available_at {bigint} NOT NULL, payload TEXT,
        lease_until {bigint});
    CREATE INDEX queue_ready ON queue (available_at, id);
    CREATE INDEX queue_by_run ON queue (run_id);
    CREATE TABLE waits (run_id TEXT NOT NULL, step TEXT NOT NULL, event_name TEXT NOT NULL,
        expression TEXT, trigger_event TEXT NOT NULL, expires_at {bigint} NOT NULL,
        key_path TEXT, key_value TEXT, PRIMARY KEY (run_id, step));
    CREATE INDEX waits_by_key ON waits (event_name, key_path, key_value);
    CREATE TABLE signals (signal TEXT PRIMARY KEY, run_id TEXT NOT NULL, step TEXT NOT NULL);
"""

_FLOW_CONTROL = """
    ALTER TABLE queue ADD COLUMN flow TEXT;
    ALTER TABLE queue ADD COLUMN parked TEXT;
    ALTER TABLE queue ADD COLUMN rank {bigint};
    CREATE INDEX queue_flow ON queue (rank, id) WHERE flow IS NOT NULL;
    CREATE INDEX queue_parked ON queue (parked, rank, id) WHERE parked IS NOT NULL;
    CREATE TABLE flow_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    DROP INDEX runs_unfinished;
    CREATE INDEX runs_unfinished ON runs (status)
        WHERE status NOT IN ('completed','failed','cancelled','skipped');
"""

# Queue ids are never reused: a late answer to a cancelled run's request deletes its item by
# id, which must not be another run's new item. Only a table whose ids may be reused needs it.
_QUEUE_IDS_UNIQUE = """
    CREATE TABLE queue_new (id {serial} AUTOINCREMENT, run_id TEXT NOT NULL,
        kind TEXT NOT NULL, step TEXT, attempt INTEGER NOT NULL, available_at {bigint} NOT NULL,
        payload TEXT, lease_until {bigint}, flow TEXT, parked TEXT, rank {bigint});
    INSERT INTO queue_new SELECT id, run_id, kind, step, attempt, available_at, payload,
        lease_until, flow, parked, rank FROM queue;
    DROP TABLE queue;
    ALTER TABLE queue_new RENAME TO queue;
    CREATE INDEX queue_ready ON queue (available_at, id);
    CREATE INDEX queue_by_run ON queue (run_id);
    CREATE INDEX queue_flow ON queue (rank, id) WHERE flow IS NOT NULL;
    CREATE INDEX queue_parked ON queue (parked, rank, id) WHERE parked IS NOT NULL;
"""


_LEASE_OWNERS = """
    ALTER TABLE queue ADD COLUMN lease_owner TEXT;
"""

# When each memo was stored (nanoseconds since the epoch): requests list a run's memos in the
# order its steps finished (`ctx.stack.stack`), which SDKs use to replay parallel steps.
_MEMO_ORDER = """
    ALTER TABLE memos ADD COLUMN seq {bigint};
"""

# For the dashboard: the runs a run invoked, found by their parent; the runs an event started,
# found by the id of their first event; and when the request that
# ran a step attempt was due (`queued_at`), so its wait in the queue shows apart from its time
# in the app (`started_at` to `ended_at`).
_DASHBOARD = """
    CREATE INDEX runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
    CREATE INDEX runs_by_event ON runs ({first_event_id}, created_at);
    ALTER TABLE history ADD COLUMN queued_at {bigint};
"""


def migrations(dialect: Dialect) -> list[str]:
    """The migrations in order, as scripts for `dialect` (version n is item n - 1); a script
    may be empty where the database needs nothing at that version."""
    words = {f.name: getattr(dialect, f.name) for f in dataclasses.fields(dialect)}
    return [
        _TABLES.format(**words),
        _FLOW_CONTROL.format(**words),
        _QUEUE_IDS_UNIQUE.format(**words) if dialect.reuses_ids else "",
        _LEASE_OWNERS,
        _MEMO_ORDER.format(**words),
        _DASHBOARD.format(**words, first_event_id=dialect.first_event_id),
    ]


def statements(script: str) -> list[str]:
    """A migration's statements, one by one."""
    return [s for s in script.split(";") if s.strip()]
