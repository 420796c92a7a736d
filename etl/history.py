"""Record each observed version of a session in ``session_history``.

The loader calls :func:`record_versions` in the transaction that stores a
batch, after the sessions and their child rows are merged. A session gets a
new version when its tracked fields (``VERSION_COLUMNS``) differ from its
latest version, or when it has none yet; re-reading an unchanged session adds
nothing. Tags and pull request states are part of a version, so a change in
either list alone is a new version even when ``updated_at`` did not move.

Both lists are stored as JSON in one canonical form built by the database
from the stored child rows: tags as an array in code point order, pull
requests as an object ``{pr_url: pr_state}``. Migration 0003 builds the same
form for the versions it backfills; the two must stay identical, or every
session would gain a spurious version.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by

from etl import schema

log = logging.getLogger(__name__)

VERSION_COLUMNS = (
    "updated_at",
    "status",
    "status_detail",
    "acus_consumed",
    "is_archived",
    "title",
    "tags",
    "pull_requests",
)


def record_versions(
    connection: sa.Connection,
    current: sa.Select[tuple[str]],
    *,
    run_id: int,
    observed_at: datetime,
) -> int:
    """Add a version for each session of ``current`` that changed.

    ``current`` selects the ids of the sessions whose stored row is the
    version just loaded. Returns how many versions were added.
    """
    rows = _new_versions(connection, current, run_id, observed_at)
    columns = ["session_id", "version", "observed_at", "run_id", *VERSION_COLUMNS]
    statement = schema.session_history.insert().from_select(columns, rows)
    result = connection.execute(statement.execution_options(preserve_rowcount=True))
    log.debug("Recorded %s session versions", result.rowcount)
    return int(result.rowcount)


def _new_versions(
    connection: sa.Connection,
    current: sa.Select[tuple[str]],
    run_id: int,
    observed_at: datetime,
) -> sa.Select[Any]:
    """A row for each current session whose latest version differs or is none."""
    observed = _observed_sessions(connection, current)
    newest = _newest_versions(current)
    latest = schema.session_history.alias("latest")
    is_changed = sa.or_(
        newest.c.version.is_(None),
        *(
            latest.c[name].is_distinct_from(observed.c[name])
            for name in VERSION_COLUMNS
        ),
    )
    is_latest = sa.and_(
        latest.c.session_id == newest.c.session_id,
        latest.c.version == newest.c.version,
    )
    joined = observed.outerjoin(
        newest, newest.c.session_id == observed.c.session_id
    ).outerjoin(latest, is_latest)
    return (
        sa.select(
            observed.c.session_id,
            (sa.func.coalesce(newest.c.version, 0) + 1).label("version"),
            sa.literal(observed_at, schema.Timestamp).label("observed_at"),
            sa.literal(run_id, schema.BigId).label("run_id"),
            *(observed.c[name] for name in VERSION_COLUMNS),
        )
        .select_from(joined)
        .where(is_changed)
    )


def _observed_sessions(
    connection: sa.Connection, current: sa.Select[tuple[str]]
) -> sa.Subquery:
    """The stored version of each current session, child lists as JSON."""
    sessions = schema.sessions
    session_id = sessions.c.session_id
    tags = _tag_lists(connection, current)
    pulls = _pull_request_maps(connection, current)
    return (
        sa.select(
            session_id,
            *(sessions.c[name] for name in VERSION_COLUMNS[:-2]),
            sa.func.coalesce(tags.c.tags, _json(connection, "[]")).label("tags"),
            sa.func.coalesce(pulls.c.pull_requests, _json(connection, "{}")).label(
                "pull_requests"
            ),
        )
        .select_from(
            sessions.outerjoin(tags, tags.c.session_id == session_id).outerjoin(
                pulls, pulls.c.session_id == session_id
            )
        )
        .where(session_id.in_(current))
        .subquery("observed")
    )


def _newest_versions(current: sa.Select[tuple[str]]) -> sa.Subquery:
    history = schema.session_history
    return (
        sa.select(history.c.session_id, sa.func.max(history.c.version).label("version"))
        .where(history.c.session_id.in_(current))
        .group_by(history.c.session_id)
        .subquery("newest")
    )


def _json(connection: sa.Connection, literal: str) -> sa.ColumnElement[Any]:
    if connection.dialect.name == "postgresql":
        return sa.literal_column(f"'{literal}'::jsonb")
    return sa.literal_column(f"'{literal}'")


def _tag_lists(
    connection: sa.Connection, current: sa.Select[tuple[str]]
) -> sa.Subquery:
    """Each current session's tags as a JSON array in code point order."""
    tags = schema.session_tags
    is_current = tags.c.session_id.in_(current)
    if connection.dialect.name == "postgresql":
        # Collation "C" sorts by code point, whatever the database's locale.
        ordered = aggregate_order_by(tags.c.tag, tags.c.tag.collate("C"))
        lists = sa.select(tags.c.session_id, sa.func.jsonb_agg(ordered).label("tags"))
        return lists.where(is_current).group_by(tags.c.session_id).subquery("tag_lists")
    # SQLite aggregates in the order of its input, here by session and tag.
    rows = (
        sa.select(tags.c.session_id, tags.c.tag)
        .where(is_current)
        .order_by(tags.c.session_id, tags.c.tag)
        .subquery()
    )
    lists = sa.select(
        rows.c.session_id, sa.func.json_group_array(rows.c.tag).label("tags")
    )
    return lists.group_by(rows.c.session_id).subquery("tag_lists")


def _pull_request_maps(
    connection: sa.Connection, current: sa.Select[tuple[str]]
) -> sa.Subquery:
    """Each current session's pull requests as a JSON object url -> state."""
    pulls = schema.session_pull_requests
    is_current = pulls.c.session_id.in_(current)
    if connection.dialect.name == "postgresql":
        states = sa.func.jsonb_object_agg(pulls.c.pr_url, pulls.c.pr_state)
        maps = sa.select(pulls.c.session_id, states.label("pull_requests"))
        return maps.where(is_current).group_by(pulls.c.session_id).subquery("pr_maps")
    rows = (
        sa.select(pulls.c.session_id, pulls.c.pr_url, pulls.c.pr_state)
        .where(is_current)
        .order_by(pulls.c.session_id, pulls.c.pr_url)
        .subquery()
    )
    states = sa.func.json_group_object(rows.c.pr_url, rows.c.pr_state)
    maps = sa.select(rows.c.session_id, states.label("pull_requests"))
    return maps.group_by(rows.c.session_id).subquery("pr_maps")
