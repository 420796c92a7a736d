"""Refresh the ``organizations`` and ``users`` tables from their directories.

Both listings are small, so each refresh lists everything
(``GET /v3/enterprise/organizations``, ``GET /v3/enterprise/members/users``)
and, in one transaction per listing:

* upserts every listed row, writing only rows that changed (or come back
  after being marked removed);
* marks stored rows that the complete listing lacks with ``removed_at``;
  they stay, so old sessions keep their names.

A key without the listing's permission (403) skips that listing with one
warning naming the permission; other failures raise as everywhere else.
Timestamps are unix seconds (UTC), stored as UTC timestamps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from etl import schema
from etl.errors import (
    ApiContractError,
    ApiPermissionError,
    DatabaseUnavailableError,
    LoadError,
)
from etl.extract import PERMISSIONS, DevinClient
from etl.state import utc_now
from etl.transform import MAX_EPOCH_SECONDS

log = logging.getLogger(__name__)

ORGANIZATIONS_PATH = "/v3/enterprise/organizations"
USERS_PATH = "/v3/enterprise/members/users"
Row = dict[str, Any]


@dataclass(frozen=True)
class Listing:
    """A directory endpoint and the table its items fill."""

    path: str
    table: sa.Table
    to_row: Callable[[Row], Row]

    @property
    def key(self) -> str:
        return next(iter(self.table.primary_key.columns)).name

    @property
    def data_columns(self) -> tuple[str, ...]:
        stamps = ("first_synced_at", "last_synced_at", "removed_at")
        names = (column.name for column in self.table.columns)
        return tuple(name for name in names if name not in stamps)


@dataclass(frozen=True)
class RefreshResult:
    """What one listing changed: rows listed, written and newly removed."""

    table: str
    listed: int
    written: int
    removed: int


def refresh_directory(
    engine: sa.Engine, client: DevinClient, *, page_size: int
) -> list[RefreshResult]:
    """Refresh both directory tables; returns one result per listing refreshed.

    A listing the key may not read is skipped with a warning. Raises
    :class:`ApiContractError` for millisecond timestamps, and the usual
    :mod:`etl.errors` for other API and database failures.
    """
    results = []
    for listing in LISTINGS:
        items = _list_items(client, listing, page_size)
        if items is not None:
            results.append(_store(engine, listing, items))
    return results


def _list_items(
    client: DevinClient, listing: Listing, page_size: int
) -> list[Row] | None:
    try:
        pages = client.iter_pages(listing.path, [], page_size=page_size)
        return [item for page in pages for item in page.items]
    except ApiPermissionError:
        log.warning(
            "Not refreshing %s: the API key lacks the %s permission (GET %s "
            "answered 403); the table keeps its rows until the service user "
            "is granted that permission",
            listing.table.name,
            PERMISSIONS[listing.path],
            listing.path,
        )
        return None


def _store(engine: sa.Engine, listing: Listing, items: list[Row]) -> RefreshResult:
    rows = _rows(listing, items)
    synced_at = utc_now()
    try:
        with engine.begin() as connection:
            written = _upsert(connection, listing, rows, synced_at)
            removed = _mark_removed(connection, listing, rows.keys(), synced_at)
    except sa.exc.OperationalError as error:
        raise DatabaseUnavailableError(_describe(listing, error)) from error
    except sa.exc.DBAPIError as error:
        raise LoadError(_describe(listing, error)) from error
    result = RefreshResult(listing.table.name, len(rows), written, removed)
    log.info(
        "Directory %s: %s listed, %s written, %s marked removed",
        result.table,
        result.listed,
        result.written,
        result.removed,
    )
    return result


def _describe(listing: Listing, error: sa.exc.DBAPIError) -> str:
    detail = str(error.orig).strip().splitlines()[0] if error.orig else "?"
    return (
        f"the warehouse refused the {listing.table.name} listing ({detail}); "
        "the table is unchanged: fix the database and run again"
    )


def _rows(listing: Listing, items: Iterable[Row]) -> dict[str, Row]:
    """Rows by key; items without a text key are skipped with a warning."""
    rows: dict[str, Row] = {}
    for item in items:
        key = item.get(listing.key) if isinstance(item, dict) else None
        if not isinstance(key, str) or not key:
            log.warning(
                "Skipping an item of GET %s that has no %s: %.200r",
                listing.path,
                listing.key,
                item,
            )
            continue
        rows[key] = listing.to_row(item)
    return rows


def _upsert(
    connection: sa.Connection, listing: Listing, rows: dict[str, Row], at: datetime
) -> int:
    if not rows:
        return 0
    table = listing.table
    insert = schema.insert_for(connection, table)
    new = insert.excluded
    is_changed = sa.or_(
        table.c.removed_at.is_not(None),
        *(table.c[name].is_distinct_from(new[name]) for name in listing.data_columns),
    )
    statement = insert.on_conflict_do_update(
        index_elements=[listing.key],
        set_={
            **{name: new[name] for name in listing.data_columns},
            "last_synced_at": new.last_synced_at,
            "removed_at": None,
        },
        where=is_changed,
    ).returning(table.c[listing.key])
    stamps = {"first_synced_at": at, "last_synced_at": at, "removed_at": None}
    result = connection.execute(statement, [row | stamps for row in rows.values()])
    return len(result.all())


def _mark_removed(
    connection: sa.Connection, listing: Listing, listed: Iterable[str], at: datetime
) -> int:
    table = listing.table
    key = table.c[listing.key]
    stored = connection.execute(sa.select(key).where(table.c.removed_at.is_(None)))
    gone = set(stored.scalars()) - set(listed)
    if gone:
        statement = table.update().where(key == sa.bindparam("gone_key"))
        connection.execute(
            statement.values(removed_at=at), [{"gone_key": k} for k in gone]
        )
    return len(gone)


def _organization_row(item: Row) -> Row:
    path = ORGANIZATIONS_PATH
    return {
        "org_id": item["org_id"],
        "name": _text(item.get("name")),
        "created_at": _timestamp(item, "created_at", path),
        "updated_at": _timestamp(item, "updated_at", path),
        "max_session_acu_limit": _number(item.get("max_session_acu_limit")),
        "max_cycle_acu_limit": _number(item.get("max_cycle_acu_limit")),
    }


def _user_row(item: Row) -> Row:
    return {
        "user_id": item["user_id"],
        "email": _text(item.get("email")),
        "name": _text(item.get("name")),
    }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    # PostgreSQL text cannot hold NUL characters.
    return str(value).replace("\x00", "")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _timestamp(item: Row, name: str, path: str) -> datetime | None:
    """Unix seconds to UTC; None when absent or not a number."""
    seconds = _number(item.get(name))
    if seconds is None:
        return None
    if seconds > MAX_EPOCH_SECONDS:
        raise ApiContractError(
            f"GET {path} returned {name}={int(seconds)} for {_identity(item)}, "
            "which looks like milliseconds, not unix seconds; refusing to store "
            "it: report the API change (set sync.refresh_directory = false to "
            "sync sessions meanwhile)"
        )
    return datetime.fromtimestamp(seconds, tz=UTC)


def _identity(item: Row) -> str:
    return str(item.get("org_id") or item.get("user_id") or "an item")


LISTINGS = (
    Listing(ORGANIZATIONS_PATH, schema.organizations, _organization_row),
    Listing(USERS_PATH, schema.users, _user_row),
)
