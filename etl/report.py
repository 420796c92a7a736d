"""Human-readable reports on the warehouse: what ``devin-etl status`` prints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from etl import schema
from etl.config import Settings
from etl.health import HEALTHY, UNHEALTHY, read_health
from etl.state import as_utc, read_source_state, utc_now

RUN_COLUMNS = (
    ("id", "id"),
    ("kind", "kind"),
    ("status", "status"),
    ("started", "started_at"),
    ("secs", "seconds"),
    ("pages", "pages"),
    ("seen", "sessions_seen"),
    ("new", "sessions_inserted"),
    ("upd", "sessions_updated"),
    ("same", "sessions_unchanged"),
    ("rej", "items_rejected"),
    ("req", "api_requests"),
    ("retries", "api_retries"),
    ("error", "error"),
)


def render_status(engine: sa.Engine, settings: Settings, *, runs: int) -> str:
    """The health verdict, the source's watermark, its last ``runs`` runs
    and the row counts: what ``/healthz`` and ``/metrics`` tell, for a human."""
    with engine.connect() as connection:
        lines = _source_lines(connection, settings.sync.source)
        lines.insert(1, _health_line(connection, settings))
        lines += ["", "Last runs:", *format_table(_last_runs(connection, runs))]
        lines += ["", "Rows:", *_row_count_lines(connection)]
    return "\n".join(lines)


def _source_lines(connection: sa.Connection, source: str) -> list[str]:
    stored = read_source_state(connection, source)
    return [
        f"Source {source}",
        f"  watermark:     {_when(stored.watermark)}",
        f"  last success:  {_when(stored.last_success_at)}",
    ]


def _health_line(connection: sa.Connection, settings: Settings) -> str:
    health = read_health(connection, settings)
    verdict = HEALTHY if health.is_healthy else UNHEALTHY
    return f"  health:        {verdict}: {health.reason}"


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    age = int((utc_now() - moment).total_seconds())
    return f"{moment.isoformat(timespec='seconds')} ({_age(age)} ago)"


def _age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _last_runs(connection: sa.Connection, limit: int) -> list[dict[str, Any]]:
    runs = schema.sync_runs
    rows = connection.execute(
        sa.select(runs).order_by(runs.c.id.desc()).limit(limit)
    ).mappings()
    return [_run_row(dict(row)) for row in rows]


def _run_row(row: dict[str, Any]) -> dict[str, Any]:
    started, finished = as_utc(row["started_at"]), as_utc(row["finished_at"])
    row["seconds"] = (
        f"{(finished - started).total_seconds():.1f}" if started and finished else "-"
    )
    row["started_at"] = started.isoformat(timespec="seconds") if started else "-"
    row["error"] = (row["error"] or "")[:60]
    return row


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    """Rows as aligned text columns, or a line saying there are none."""
    if not rows:
        return ["  (none)"]
    cells = [[str(row[key]) for _, key in RUN_COLUMNS] for row in rows]
    headers = [title for title, _ in RUN_COLUMNS]
    widths = [
        max(len(v) for v in column) for column in zip(headers, *cells, strict=True)
    ]
    return [
        "  "
        + "  ".join(
            value.ljust(width) for value, width in zip(line, widths, strict=True)
        ).rstrip()
        for line in (headers, *cells)
    ]


def _row_count_lines(connection: sa.Connection) -> list[str]:
    tables = (
        schema.sessions,
        schema.session_tags,
        schema.session_pull_requests,
        schema.session_children,
    )
    return [
        f"  {table.name:<22} {count_rows(connection, table):>10}" for table in tables
    ]


def count_rows(connection: sa.Connection, table: sa.Table) -> int:
    query = sa.select(sa.func.count()).select_from(table)
    return int(connection.execute(query).scalar_one())
