"""Single-flight: at most one run per source at a time, across processes and hosts.

On PostgreSQL the lock is a session-level advisory lock held on a dedicated
connection for the whole run; the server frees it if the process dies. On
SQLite it is a lock file beside the database file.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import filelock
import sqlalchemy as sa

from etl.config import DatabaseSettings

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


def advisory_key(schema: str, name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``."""
    digest = hashlib.sha256(f"devin-etl:{schema}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def run_lock(
    engine: sa.Engine,
    settings: DatabaseSettings,
    name: str,
    *,
    wait_seconds: float = 0.0,
) -> Iterator[bool]:
    """Hold the lock called ``name`` (usually the source) while the block runs.

    Yields True when held. Yields False when another process holds it and
    did not free it within ``wait_seconds``; the block must then do nothing.
    """
    if settings.is_postgres:
        key = advisory_key(settings.db_schema, name)
        with _advisory_lock(engine, key, name, wait_seconds) as held:
            yield held
    else:
        with _file_lock(engine, name, wait_seconds) as held:
            yield held


@contextmanager
def _advisory_lock(
    engine: sa.Engine, key: int, name: str, wait_seconds: float
) -> Iterator[bool]:
    with engine.connect() as connection:
        held = _try_until(lambda: _try_advisory(connection, key), name, wait_seconds)
        try:
            yield held
        finally:
            if held:
                connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                connection.commit()


def _try_advisory(connection: sa.Connection, key: int) -> bool:
    query = sa.text("SELECT pg_try_advisory_lock(:k)")
    held = bool(connection.execute(query, {"k": key}).scalar_one())
    connection.commit()  # keep no transaction open while the run goes on
    return held


@contextmanager
def _file_lock(engine: sa.Engine, name: str, wait_seconds: float) -> Iterator[bool]:
    database = engine.url.database
    if not database or database == ":memory:":
        yield True  # a private in-memory database has no other users
        return
    safe_name = hashlib.sha256(name.encode()).hexdigest()[:12]
    lock = filelock.FileLock(f"{database}.{safe_name}.lock")
    if not _try_until(lambda: _try_file_lock(lock), name, wait_seconds):
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _try_file_lock(lock: filelock.BaseFileLock) -> bool:
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return False
    return True


def _try_until(attempt: Callable[[], bool], name: str, wait_seconds: float) -> bool:
    deadline = time.monotonic() + wait_seconds
    if attempt():
        return True
    if wait_seconds > 0:
        log.info(
            "Lock %r is held by another run; waiting up to %.0fs", name, wait_seconds
        )
    while time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        if attempt():
            return True
    return False
