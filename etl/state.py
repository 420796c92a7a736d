"""The sync's own bookkeeping: watermarks in ``sync_state``, runs in ``sync_runs``.

All functions take an open connection and write inside the caller's
transaction, so the watermark commits together with the data it covers.
Times are UTC.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload

import sqlalchemy as sa

from etl import schema

log = logging.getLogger(__name__)

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
ABANDONED = "abandoned"


@dataclass(frozen=True)
class SourceState:
    """The stored progress of one configured source."""

    watermark: datetime | None
    filters_fingerprint: str | None
    last_success_at: datetime | None
    last_run_started_at: datetime | None = None


def utc_now() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything stored is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def read_source_state(connection: sa.Connection, source: str) -> SourceState:
    """The source's watermark and when (host clock) its last run started."""
    table, runs = schema.sync_state, schema.sync_runs
    row = connection.execute(
        sa.select(
            table.c.watermark,
            table.c.filters_fingerprint,
            table.c.last_success_at,
            runs.c.started_at,
        )
        .outerjoin(runs, runs.c.id == table.c.last_run_id)
        .where(table.c.source == source)
    ).first()
    if row is None:
        return SourceState(None, None, None)
    return SourceState(as_utc(row[0]), row[1], as_utc(row[2]), as_utc(row[3]))


def save_watermark(
    connection: sa.Connection,
    *,
    source: str,
    fingerprint: str,
    watermark: datetime | None,
    run_id: int,
) -> None:
    """Record a successful run and the watermark it reached."""
    values = {
        "source": source,
        "filters_fingerprint": fingerprint,
        "watermark": watermark,
        "last_success_at": utc_now(),
        "last_run_id": run_id,
    }
    insert = schema.insert_for(connection, schema.sync_state).values(**values)
    connection.execute(
        insert.on_conflict_do_update(
            index_elements=["source"],
            set_={key: insert.excluded[key] for key in values if key != "source"},
        )
    )


def start_run(
    connection: sa.Connection,
    *,
    source: str,
    kind: str,
    window_start: datetime | None = None,
) -> int:
    """Insert a ``running`` row into ``sync_runs`` and return its id."""
    runs = schema.sync_runs
    statement = (
        runs.insert()
        .values(
            source=source,
            kind=kind,
            status=RUNNING,
            started_at=utc_now(),
            window_start=window_start,
        )
        .returning(runs.c.id)
    )
    return int(connection.execute(statement).scalar_one())


def add_run_counts(connection: sa.Connection, run_id: int, **counts: int) -> None:
    """Add to the counters of a run (``pages=3`` adds three pages)."""
    runs = schema.sync_runs
    changes = {name: runs.c[name] + value for name, value in counts.items() if value}
    if changes:
        connection.execute(runs.update().where(runs.c.id == run_id).values(changes))


def finish_run(
    connection: sa.Connection,
    run_id: int,
    *,
    status: str,
    error: str | None = None,
    **values: Any,
) -> None:
    """Close a run with its final status, error line and other columns."""
    runs = schema.sync_runs
    connection.execute(
        runs.update()
        .where(runs.c.id == run_id)
        .values(status=status, finished_at=utc_now(), error=error, **values)
    )


def abandon_stale_runs(
    connection: sa.Connection, source: str, kinds: tuple[str, ...]
) -> int:
    """Mark runs of ``kinds`` left ``running`` by a dead process as ``abandoned``.

    Only safe while holding the lock those kinds run under: a live run
    would be mislabelled.
    """
    runs = schema.sync_runs
    result = connection.execute(
        runs.update()
        .where(
            runs.c.source == source,
            runs.c.status == RUNNING,
            runs.c.kind.in_(kinds),
        )
        .values(
            status=ABANDONED,
            finished_at=utc_now(),
            error="the process stopped before finishing the run",
        )
    )
    return int(result.rowcount)


def read_backfill_slices(
    connection: sa.Connection, source: str
) -> list[tuple[datetime, datetime]]:
    """The ``created_at`` ranges ``[start, end)`` that backfills of ``source``
    finished, oldest first."""
    slices = schema.backfill_slices
    rows = connection.execute(
        sa.select(slices.c.slice_start, slices.c.slice_end)
        .where(slices.c.source == source)
        .order_by(slices.c.slice_start)
    )
    return [(as_utc(start), as_utc(end)) for start, end in rows]


def record_backfill_slice(
    connection: sa.Connection,
    *,
    source: str,
    start: datetime,
    end: datetime,
    run_id: int,
    sessions: int,
) -> None:
    """Record that the slice ``[start, end)`` is loaded, in the caller's
    transaction (the one that commits the slice's last batch)."""
    values = {"run_id": run_id, "sessions": sessions, "finished_at": utc_now()}
    insert = schema.insert_for(connection, schema.backfill_slices).values(
        source=source, slice_start=start, slice_end=end, **values
    )
    connection.execute(
        insert.on_conflict_do_update(
            index_elements=["source", "slice_start", "slice_end"],
            set_={key: insert.excluded[key] for key in values},
        )
    )
