"""The warehouse tables: the public contract that dashboards query.

Tables are declared without a schema. On PostgreSQL every connection sets
``search_path`` to the configured schema (``devin`` by default), so the same
definitions serve Alembic, the loader and SQLite, which has no schemas.
Timestamps are ``timestamptz`` in UTC. ``docs/schema.md`` describes every
column; change both together and only through a migration. The BI views
(``v_*``) are not declared here: their migrations create them with plain SQL.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

Timestamp = sa.DateTime(timezone=True)
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _session_fk() -> sa.ForeignKey:
    return sa.ForeignKey("sessions.session_id", ondelete="CASCADE")


sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("session_id", sa.Text, primary_key=True),
    sa.Column("org_id", sa.Text, nullable=False),
    sa.Column("user_id", sa.Text),
    sa.Column("service_user_id", sa.Text),
    sa.Column("parent_session_id", sa.Text),
    sa.Column("playbook_id", sa.Text),
    sa.Column("title", sa.Text),
    sa.Column("url", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("status_detail", sa.Text),
    sa.Column("origin", sa.Text),
    sa.Column("category", sa.Text),
    sa.Column("subcategory", sa.Text),
    sa.Column("is_archived", sa.Boolean),
    sa.Column("acus_consumed", sa.Float(precision=53)),
    sa.Column("structured_output", Json),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("first_synced_at", Timestamp, nullable=False),
    sa.Column("last_synced_at", Timestamp, nullable=False),
    sa.Column("deleted_at", Timestamp),
    sa.Index(None, "updated_at"),
    sa.Index(None, "created_at"),
    sa.Index(None, "org_id", "created_at"),
    sa.Index(None, "user_id"),
)

session_tags = sa.Table(
    "session_tags",
    metadata,
    sa.Column("session_id", sa.Text, _session_fk(), primary_key=True),
    sa.Column("tag", sa.Text, primary_key=True),
    sa.Index(None, "tag"),
)

session_pull_requests = sa.Table(
    "session_pull_requests",
    metadata,
    sa.Column("session_id", sa.Text, _session_fk(), primary_key=True),
    sa.Column("pr_url", sa.Text, primary_key=True),
    sa.Column("pr_state", sa.Text),
    sa.Column("repo", sa.Text),
    sa.Column("pr_number", sa.Integer),
    sa.Index(None, "repo", "pr_number"),
)

session_children = sa.Table(
    "session_children",
    metadata,
    sa.Column("session_id", sa.Text, _session_fk(), primary_key=True),
    sa.Column("child_session_id", sa.Text, primary_key=True),
    sa.Index(None, "child_session_id"),
)

sync_state = sa.Table(
    "sync_state",
    metadata,
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("filters_fingerprint", sa.Text, nullable=False),
    sa.Column("watermark", Timestamp),
    sa.Column("last_success_at", Timestamp),
    sa.Column("last_run_id", BigId),
)

sync_runs = sa.Table(
    "sync_runs",
    metadata,
    sa.Column("id", BigId, sa.Identity(), primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("finished_at", Timestamp),
    sa.Column("window_start", Timestamp),
    sa.Column("window_end", Timestamp),
    sa.Column("passes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("pages", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sessions_seen", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sessions_inserted", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sessions_updated", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sessions_unchanged", sa.Integer, nullable=False, server_default="0"),
    sa.Column("child_rows_written", sa.Integer, nullable=False, server_default="0"),
    sa.Column("items_rejected", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sessions_deleted", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sessions_restored", sa.Integer, nullable=False, server_default="0"),
    sa.Column("api_requests", sa.Integer, nullable=False, server_default="0"),
    sa.Column("api_retries", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Index(None, "source", "started_at"),
)

backfill_slices = sa.Table(
    "backfill_slices",
    metadata,
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("slice_start", Timestamp, primary_key=True),
    sa.Column("slice_end", Timestamp, primary_key=True),
    sa.Column("run_id", BigId, nullable=False),
    sa.Column("sessions", sa.Integer, nullable=False),
    sa.Column("finished_at", Timestamp, nullable=False),
)

# One row per observed version of a session, written by the loader in the
# transaction that stores the version (see etl.history).
session_history = sa.Table(
    "session_history",
    metadata,
    sa.Column("session_id", sa.Text, _session_fk(), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("observed_at", Timestamp, nullable=False),
    sa.Column("run_id", BigId),
    sa.Column("status", sa.Text),
    sa.Column("status_detail", sa.Text),
    sa.Column("acus_consumed", sa.Float(precision=53)),
    sa.Column("is_archived", sa.Boolean),
    sa.Column("title", sa.Text),
    sa.Column("tags", Json, nullable=False),
    sa.Column("pull_requests", Json, nullable=False),
    sa.Index(None, "updated_at"),
)

# The directory listings, refreshed in full by each sync (see etl.directory).
organizations = sa.Table(
    "organizations",
    metadata,
    sa.Column("org_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text),
    sa.Column("created_at", Timestamp),
    sa.Column("updated_at", Timestamp),
    sa.Column("max_session_acu_limit", sa.Float(precision=53)),
    sa.Column("max_cycle_acu_limit", sa.Float(precision=53)),
    sa.Column("first_synced_at", Timestamp, nullable=False),
    sa.Column("last_synced_at", Timestamp, nullable=False),
    sa.Column("removed_at", Timestamp),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("email", sa.Text),
    sa.Column("name", sa.Text),
    sa.Column("first_synced_at", Timestamp, nullable=False),
    sa.Column("last_synced_at", Timestamp, nullable=False),
    sa.Column("removed_at", Timestamp),
)

# The settings the BI views read; one row, written by each sync (etl.bi).
bi_settings = sa.Table(
    "bi_settings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("day_start_hour_utc", sa.Integer, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.CheckConstraint("id = 1", name="one_row"),
    sa.CheckConstraint(
        "day_start_hour_utc BETWEEN 0 AND 23", name="day_start_hour_utc"
    ),
)

SESSION_CHILD_TABLES = (session_tags, session_pull_requests, session_children)


def insert_for(connection: sa.Connection, table: sa.Table) -> Any:
    """An INSERT of the connection's dialect, which has ``on_conflict_do_*``.

    Both supported dialects spell upserts the same way in SQLAlchemy, but
    through their own insert constructs.
    """
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
