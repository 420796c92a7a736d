"""Deletion detection: compare a full listing of ids with the warehouse.

The list endpoint never says that a session was deleted, so a reconcile run
lists the id of every session the configured filters select and compares:

* a live stored session that the listing lacks gets ``deleted_at`` (it was
  deleted upstream, or left the configured filters);
* a stored session marked deleted that the listing holds again loses it.

What keeps a live session from being marked:

* The run holds the source's lock, so no sync of the source runs meanwhile.
* Only a complete listing counts: one that failed midway marks nothing.
* Every session missing from the listing is looked up again by id
  (``session_ids`` plus the configured filters) before it is marked, so a
  session that an offset cursor skipped, or that was created or entered the
  filters after the listing passed its position, is found and kept.
* A session first stored after the run started is never judged: a backfill
  or another source may have loaded it from a newer listing.
* Only stored sessions that the configured filters select (as far as the
  stored columns tell) are judged: a warehouse that also holds sessions
  synced under other filters keeps them. ``schedule_id`` is not stored, so
  with that filter every stored session is judged.
* A run that would mark more than ``reconcile.max_deleted_share`` of the
  live sessions it judges marks nothing and fails, unless forced: a wrong
  filter or a truncated listing would otherwise wipe the warehouse.

Marking and restoring happen in one transaction, which also records the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import islice
from typing import Any

import sqlalchemy as sa

from etl import schema, state
from etl.config import FilterSettings, Settings
from etl.errors import ApiContractError, DeletionLimitError, EtlError
from etl.extract import (
    SESSIONS_PATH,
    DevinClient,
    Params,
    check_filters,
    session_params,
)
from etl.pipeline import RECONCILE, SOURCE_KINDS, exclusive_run, record_failure

log = logging.getLogger(__name__)

LOOKUP_CHUNK = 50  # ids per confirming request: keeps the URL short
UPDATE_CHUNK = 1000  # ids per UPDATE statement


@dataclass(frozen=True)
class ReconcileSummary:
    """What a reconcile run did; ``listed`` counts distinct session ids."""

    run_id: int
    listed: int
    deleted: int
    restored: int
    api_requests: int
    seconds: float


@dataclass(frozen=True)
class DeletionSignal:
    """A cheap hint that sessions were deleted upstream.

    ``api_total`` is the ``total`` the API reports for the configured
    filters (None when it reports none); ``live_sessions`` counts the stored
    sessions in the filters' scope that are not marked deleted.
    """

    api_total: int | None
    live_sessions: int

    @property
    def is_reconcile_due(self) -> bool:
        """True when the API lists fewer sessions than the warehouse holds live.

        Then something was deleted or left the filters. False proves
        nothing: sessions created since the last sync can hide deletions.
        """
        return self.api_total is not None and self.api_total < self.live_sessions


def reconcile_once(
    settings: Settings, engine: sa.Engine, *, force: bool = False, wait: bool = False
) -> ReconcileSummary | None:
    """Check the schema, take the source's lock and reconcile once.

    Returns None, having done nothing, when another run of the source holds
    the lock (after waiting up to ``sync.lock_wait_seconds`` if ``wait``).
    Raises :class:`DeletionLimitError` when more than
    ``reconcile.max_deleted_share`` would be marked and ``force`` is False.
    """
    lock = settings.sync.source
    with exclusive_run(
        settings, engine, lock=lock, kinds=SOURCE_KINDS, wait=wait
    ) as client:
        if client is None:
            return None
        return Reconciler(settings, engine, client).run(force=force)


def deletion_signal(
    settings: Settings, engine: sa.Engine, client: DevinClient
) -> DeletionSignal:
    """Compare the API's ``total`` with the live sessions stored, cheaply.

    Costs one request (``first=1``) and one count. The warehouse is counted
    first, so a session created in between can only hide a deletion, never
    invent one. Raises the :mod:`etl.errors` of the request or the database.
    """
    with engine.connect() as connection:
        live = count_live_sessions(connection, settings.filters)
    params = [*session_params(settings.filters), ("first", "1")]
    page = client.fetch_page(SESSIONS_PATH, params)
    return DeletionSignal(api_total=page.total, live_sessions=live)


def is_reconcile_due(settings: Settings, engine: sa.Engine) -> bool:
    """Whether a reconcile should run now rather than at its scheduled time.

    For the daemon: opens its own client and asks :func:`deletion_signal`.
    """
    client = DevinClient(settings.api, settings.require_api_key())
    try:
        signal = deletion_signal(settings, engine, client)
    finally:
        client.close()
    if signal.is_reconcile_due:
        log.info(
            "The API lists %s sessions but the warehouse holds %s live ones: "
            "some were deleted upstream",
            signal.api_total,
            signal.live_sessions,
        )
    return signal.is_reconcile_due


def count_live_sessions(connection: sa.Connection, filters: FilterSettings) -> int:
    """Stored sessions in the scope of ``filters`` not marked deleted."""
    sessions = schema.sessions
    query = (
        sa.select(sa.func.count())
        .select_from(sessions)
        .where(sessions.c.deleted_at.is_(None), *in_scope(filters))
    )
    return int(connection.execute(query).scalar_one())


class Reconciler:
    """Reconcile runs for one configured source."""

    def __init__(
        self, settings: Settings, engine: sa.Engine, client: DevinClient
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._client = client
        self._source = settings.sync.source
        self._requests_before = client.stats.requests
        self._retries_before = client.stats.retries

    def run(self, *, force: bool = False) -> ReconcileSummary:
        """List every id, confirm the missing ones, then mark and restore.

        Raises an :class:`EtlError` after recording the failed run.
        """
        started, started_at = time.monotonic(), state.utc_now()
        with self._engine.begin() as connection:
            run_id = state.start_run(connection, source=self._source, kind=RECONCILE)
        log.info("Run %s: listing every session id to find deleted ones", run_id)
        try:
            summary = self._reconcile(run_id, started_at, force=force)
        except (EtlError, Exception, KeyboardInterrupt) as error:
            record_failure(self._engine, run_id, error)
            raise
        summary = replace(summary, seconds=time.monotonic() - started)
        _log_summary(summary)
        return summary

    def _reconcile(
        self, run_id: int, started_at: datetime, *, force: bool
    ) -> ReconcileSummary:
        listed, pages = self._list_ids()
        with self._engine.connect() as connection:
            missing = self._missing(connection, listed, started_at)
            restorable = _deleted_among(connection, listed)
            live = count_live_sessions(connection, self._settings.filters)
        gone = self._confirm_missing(missing)
        self._check_limit(len(gone), live, force=force)
        with self._engine.begin() as connection:
            deleted = _set_deleted(connection, gone, is_deleted=True)
            restored = _set_deleted(connection, restorable, is_deleted=False)
            requests = self._client.stats.requests - self._requests_before
            summary = ReconcileSummary(
                run_id, len(listed), deleted, restored, requests, 0.0
            )
            self._finish(connection, summary, pages)
        return summary

    def _list_ids(self) -> tuple[set[str], int]:
        """Every session id of a complete listing, and the number of pages."""
        params = session_params(self._settings.filters)
        pages = self._client.iter_pages(
            SESSIONS_PATH, params, page_size=self._settings.api.page_size
        )
        listed: set[str] = set()
        count = 0
        for page in pages:
            listed.update(self._checked_ids(page.items))
            count += 1
        return listed, count

    def _checked_ids(self, items: list[dict[str, Any]]) -> Iterator[str]:
        check_filters(items, self._settings.filters, consequence="nothing was marked")
        for item in items:
            if isinstance(item.get("session_id"), str):
                yield item["session_id"]

    def _missing(
        self, connection: sa.Connection, listed: set[str], started_at: datetime
    ) -> set[str]:
        """Live stored sessions in scope, stored before the run, not listed."""
        sessions = schema.sessions
        query = sa.select(sessions.c.session_id).where(
            sessions.c.deleted_at.is_(None),
            sessions.c.first_synced_at < started_at,
            *in_scope(self._settings.filters),
        )
        stored = connection.execution_options(yield_per=10_000).execute(query)
        return {session_id for (session_id,) in stored if session_id not in listed}

    def _confirm_missing(self, missing: set[str]) -> set[str]:
        """The missing sessions that a lookup by id does not find either."""
        found: set[str] = set()
        for chunk in _chunks(sorted(missing), LOOKUP_CHUNK):
            found.update(self._look_up(chunk))
        if found:
            log.warning(
                "%s sessions missing from the listing exist when looked up by id "
                "(the listing moved under its cursor); they are kept",
                len(found),
            )
        return missing - found

    def _look_up(self, session_ids: list[str]) -> Iterator[str]:
        filters = self._settings.filters.model_copy(update={"session_ids": []})
        params: Params = [
            *session_params(filters),
            *(("session_ids", session_id) for session_id in session_ids),
        ]
        pages = self._client.iter_pages(
            SESSIONS_PATH, params, page_size=len(session_ids)
        )
        for page in pages:
            for session_id in self._checked_ids(page.items):
                if session_id not in session_ids:
                    raise ApiContractError(
                        f"GET {SESSIONS_PATH}?session_ids=... returned session "
                        f"{session_id}, which was not asked for: the server "
                        "ignored the filter, so nothing was marked; check "
                        "DEVIN_API_BASE_URL points at the v3 API"
                    )
                yield session_id

    def _check_limit(self, deleted: int, live: int, *, force: bool) -> None:
        share = self._settings.reconcile.max_deleted_share
        if force or deleted <= share * live:
            return
        raise DeletionLimitError(
            f"reconcile would mark {deleted} of {live} live sessions deleted "
            f"({deleted / live:.0%}), more than reconcile.max_deleted_share "
            f"({share:.0%}); nothing was marked: check the [filters] settings "
            "and DEVIN_API_BASE_URL, or run `devin-etl reconcile --force` if "
            "the sessions really are gone"
        )

    def _finish(
        self, connection: sa.Connection, summary: ReconcileSummary, pages: int
    ) -> None:
        state.finish_run(
            connection,
            summary.run_id,
            status=state.SUCCEEDED,
            passes=1,
            pages=pages,
            sessions_seen=summary.listed,
            sessions_deleted=summary.deleted,
            sessions_restored=summary.restored,
            api_requests=summary.api_requests,
            api_retries=self._client.stats.retries - self._retries_before,
        )


def in_scope(filters: FilterSettings) -> list[sa.ColumnElement[bool]]:
    """Conditions on ``sessions`` for the stored rows that ``filters`` select.

    A row on a ``created_*`` bound second is out of scope, since whether the
    API's bounds are inclusive is undocumented. ``schedule_id`` is not
    stored and narrows nothing.
    """
    sessions = schema.sessions
    conditions: list[sa.ColumnElement[bool]] = [
        sessions.c[column].in_(values)
        for column, values in _membership(filters)
        if values
    ]
    conditions += [
        sessions.c[name] == getattr(filters, name)
        for name in ("category", "playbook_id")
        if getattr(filters, name) is not None
    ]
    if filters.is_archived is not None:
        is_archived = sa.func.coalesce(sessions.c.is_archived, sa.false())
        conditions.append(is_archived == filters.is_archived)
    return conditions + _created_scope(filters) + _child_scope(filters)


def _membership(filters: FilterSettings) -> list[tuple[str, list[str]]]:
    return [
        ("session_id", filters.session_ids),
        ("org_id", filters.org_ids),
        ("user_id", filters.user_ids),
        ("service_user_id", filters.service_user_ids),
        ("origin", filters.origins),
    ]


def _created_scope(filters: FilterSettings) -> list[sa.ColumnElement[bool]]:
    created = schema.sessions.c.created_at
    conditions = []
    if filters.created_after is not None:
        conditions.append(created > filters.created_after)
    if filters.created_before is not None:
        conditions.append(created < filters.created_before)
    return conditions


def _child_scope(filters: FilterSettings) -> list[sa.ColumnElement[bool]]:
    sessions, tags = schema.sessions, schema.session_tags
    pulls = schema.session_pull_requests
    conditions: list[sa.ColumnElement[bool]] = []
    if filters.tags:
        conditions.append(
            sa.exists().where(
                tags.c.session_id == sessions.c.session_id,
                tags.c.tag.in_(filters.tags),
            )
        )
    if filters.repo_names:
        conditions.append(
            sa.exists().where(
                pulls.c.session_id == sessions.c.session_id,
                pulls.c.repo.in_(filters.repo_names),
            )
        )
    return conditions


def _deleted_among(connection: sa.Connection, listed: set[str]) -> set[str]:
    """The sessions marked deleted that the listing holds again."""
    sessions = schema.sessions
    query = sa.select(sessions.c.session_id).where(sessions.c.deleted_at.is_not(None))
    stored = connection.execution_options(yield_per=10_000).execute(query)
    return {session_id for (session_id,) in stored if session_id in listed}


def _set_deleted(
    connection: sa.Connection, session_ids: Iterable[str], *, is_deleted: bool
) -> int:
    """Mark (or unmark) the given sessions deleted; returns the rows changed.

    Rows already in the wanted state are left alone. ``last_synced_at``
    moves with the change, so consumers that follow it see the row change.
    """
    sessions = schema.sessions
    now = state.utc_now()
    is_wanted = (
        sessions.c.deleted_at.is_(None)
        if is_deleted
        else sessions.c.deleted_at.is_not(None)
    )
    changed = 0
    for chunk in _chunks(sorted(session_ids), UPDATE_CHUNK):
        result = connection.execute(
            sessions.update()
            .where(sessions.c.session_id.in_(chunk), is_wanted)
            .values(deleted_at=now if is_deleted else None, last_synced_at=now)
        )
        changed += int(result.rowcount)
    return changed


def _chunks(values: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(values)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _log_summary(summary: ReconcileSummary) -> None:
    log.info(
        "Run %s succeeded in %.1fs: %s sessions listed, %s marked deleted, %s "
        "restored, %s requests",
        summary.run_id,
        summary.seconds,
        summary.listed,
        summary.deleted,
        summary.restored,
        summary.api_requests,
    )
