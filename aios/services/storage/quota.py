"""Per-agent storage quota (``AIOS_STORAGE_QUOTA_BYTES``): the bytes an agent's data holds, kept in its own database.

What counts: the content (UTF-8) of every kept version of every file (the current one is the newest version, so
counted once), and every memory value (its JSON). Keys, paths, SQLite's own pages and the vectors do not. The
total is one row of the agent's database (``usage``), changed by every write, prune and delete in the same
transaction as the change it counts, so it is exact across threads and worker processes; a database from before
the quota gets it counted once, on first use. Every function here runs inside the caller's write transaction
(``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import sqlite3

from aios.wire.errors import QuotaExceeded

SCHEMA = "CREATE TABLE IF NOT EXISTS usage (id INTEGER PRIMARY KEY CHECK (id = 1), bytes INTEGER NOT NULL)"


def used(db: sqlite3.Connection) -> int:
    """The agent's bytes stored (counted from its tables the first time)."""
    row = db.execute("SELECT bytes FROM usage WHERE id = 1").fetchone()
    if row is not None:
        return int(row[0])
    total = int(db.execute(
        "SELECT (SELECT coalesce(sum(length(CAST(content AS BLOB))), 0) FROM file_versions) + "
        "(SELECT coalesce(sum(length(CAST(value AS BLOB))), 0) FROM memory)").fetchone()[0])
    db.execute("INSERT INTO usage VALUES (1, ?)", (total,))
    return total


def charge(db: sqlite3.Connection, agent: str, delta: int, limit: int | None, what: str) -> None:
    """Add ``delta`` bytes (negative: freed) to the agent's usage. With a ``limit``, raise :class:`QuotaExceeded`
    instead, changing nothing, if it would grow past it; ``None`` (data the kernel found, not wrote) never fails."""
    now = used(db)
    if limit is not None and delta > 0 and now + delta > limit:
        raise QuotaExceeded(
            f"storage quota of agent '{agent}' exceeded: {what} needs {delta} more bytes, and {now} of its {limit} "
            f"bytes are used (AIOS_STORAGE_QUOTA_BYTES: every kept version of every file, and memory values); "
            "nothing was written. Delete files or memory items, or write smaller ones")
    if delta:
        db.execute("UPDATE usage SET bytes = ? WHERE id = 1", (now + delta,))
