"""One sync run: extract pages, normalize them, load them, move the watermark.

How the watermark stays correct (the README's "Guarantees" says the same):

* A run lists the window ``updated_after = watermark - lookback`` with no
  upper bound, so an item that changes during the listing stays in it.
* The run's reference time is the server's ``Date`` header on the first
  page, never this host's clock: a skewed host clock cannot open a gap.
* A listing is *stable* when no session came twice and ``total`` (when the
  API reports it) did not move. Only a stable listing is a complete
  snapshot whatever the cursor kind; an unstable one (an offset cursor
  shifted by a change) is listed again, up to ``sync.max_passes`` times.
* The watermark becomes the start time of the last stable listing, written
  in the same transaction as that listing's last batch. Earlier batches
  commit on their own: if the process dies, they hold newer data and the
  old watermark makes the next run read them again, harmlessly.
* The lookback re-reads the seconds around the boundary, which covers an
  inclusive or exclusive ``updated_after`` and many sessions sharing one
  ``updated_at`` second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from itertools import islice
from typing import Any

import sqlalchemy as sa

from etl import state
from etl.bi import refresh_bi_inputs
from etl.config import Settings
from etl.db import ensure_schema
from etl.errors import EtlError, RunStoppedError
from etl.extract import (
    SESSIONS_PATH,
    DevinClient,
    Page,
    RequestStats,
    check_filters,
    session_params,
)
from etl.load import LoadResult, load_batch
from etl.lock import run_lock
from etl.prefetch import prefetch
from etl.transform import normalize_items
from etl.window import (
    Listing,
    ServerClockWentBackError,
    Window,
    expected_server_now,
    reference_time,
)

log = logging.getLogger(__name__)

SYNC = "sync"
RECONCILE = "reconcile"
# The kinds of run that share the source's own lock.
SOURCE_KINDS = (SYNC, RECONCILE)


@dataclass
class RunCounts:
    """The counters of ``sync_runs``, accumulated over a run."""

    pages: int = 0
    sessions_seen: int = 0
    sessions_inserted: int = 0
    sessions_updated: int = 0
    sessions_unchanged: int = 0
    child_rows_written: int = 0
    items_rejected: int = 0
    api_requests: int = 0
    api_retries: int = 0

    def add(self, other: RunCounts) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass(frozen=True)
class RunSummary:
    run_id: int
    window_start: datetime | None
    watermark: datetime | None
    passes: int
    is_window_complete: bool
    counts: RunCounts
    seconds: float


def _ignore(_: object) -> None:
    """The default hook: nothing watches the run."""


@dataclass(frozen=True)
class RunHooks:
    """How a long-lived caller (the daemon) steers and watches a run.

    The run checks ``stop`` before each batch: once it is set, the run ends
    with :class:`RunStoppedError`, keeping the batches it committed and the
    old watermark. ``on_batch`` gets the counts of each batch right after
    its commit; ``on_requests`` gets the client's traffic when the run ends,
    however it ends.
    """

    stop: threading.Event = field(default_factory=threading.Event)
    on_batch: Callable[[RunCounts], None] = _ignore
    on_requests: Callable[[RequestStats], None] = _ignore


def sync_once(
    settings: Settings,
    engine: sa.Engine,
    *,
    full: bool = False,
    wait: bool = False,
    hooks: RunHooks | None = None,
) -> RunSummary | None:
    """Check the schema, take the source's lock and run one sync.

    Returns None, having done nothing, when another run of the source holds
    the lock (after waiting up to ``sync.lock_wait_seconds`` if ``wait``).
    """
    hooks = hooks or RunHooks()
    lock = settings.sync.source
    with exclusive_run(
        settings, engine, lock=lock, kinds=SOURCE_KINDS, wait=wait
    ) as client:
        if client is None:
            return None
        try:
            summary = SessionSync(settings, engine, client, hooks).run(full=full)
            refresh_bi_inputs(settings, engine, client)
            return summary
        finally:
            hooks.on_requests(client.stats)


@contextmanager
def exclusive_run(
    settings: Settings,
    engine: sa.Engine,
    *,
    lock: str,
    kinds: tuple[str, ...],
    wait: bool,
) -> Iterator[DevinClient | None]:
    """Check the schema, hold ``lock`` and give one run its API client.

    Yields None, having done nothing, when another run holds the lock
    (after waiting up to ``sync.lock_wait_seconds`` if ``wait``). Runs of
    ``kinds`` that a dead process left ``running`` are marked abandoned
    first, which only the holder of their lock may do.
    """
    ensure_schema(engine, settings.database)
    wait_seconds = settings.sync.lock_wait_seconds if wait else 0.0
    with run_lock(engine, settings.database, lock, wait_seconds=wait_seconds) as held:
        if not held:
            log.info("Lock %r is held by another run; not starting", lock)
            yield None
            return
        abandon_dead_runs(engine, settings.sync.source, kinds)
        client = DevinClient(settings.api, settings.require_api_key())
        try:
            yield client
        finally:
            client.close()


def abandon_dead_runs(engine: sa.Engine, source: str, kinds: tuple[str, ...]) -> None:
    """Close the run records of processes that died holding this lock."""
    with engine.begin() as connection:
        count = state.abandon_stale_runs(connection, source, kinds)
    if count:
        log.warning("Marked %s runs of a stopped process as abandoned", count)


class SessionSync:
    """Runs of the sessions sync for one configured source."""

    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        client: DevinClient,
        hooks: RunHooks | None = None,
        *,
        batch_log_level: int = logging.INFO,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._client = client
        self._hooks = hooks or RunHooks()
        self._batch_log_level = batch_log_level
        self._counted = RequestStats(client.stats.requests, client.stats.retries)
        self._source = settings.sync.source
        self._fingerprint = _fingerprint(settings)

    def run(self, *, full: bool = False) -> RunSummary:
        """Sync once; ``full`` ignores the watermark and lists everything.

        Raises an :class:`EtlError` after recording the failed run.
        """
        started = time.monotonic()
        with self._engine.begin() as connection:
            stored = state.read_source_state(connection, self._source)
            window_start = self._window_start(stored, full=full)
            run_id = state.start_run(
                connection, source=self._source, kind=SYNC, window_start=window_start
            )
        log.info(
            "Run %s: syncing sessions updated after %s",
            run_id,
            window_start.isoformat() if window_start else "the beginning",
        )
        window = Window(window_start, expected_server_now(stored))
        try:
            summary = self._run_passes(run_id, window, stored.watermark)
        except (EtlError, Exception, KeyboardInterrupt) as error:
            self._record_failure(run_id, error)
            raise
        summary = replace(summary, seconds=time.monotonic() - started)
        _log_summary(summary)
        return summary

    def load_listing(
        self,
        run_id: int,
        counts: RunCounts,
        on_stable: Callable[[sa.Connection, int], None],
    ) -> bool:
        """Load every session the configured filters list, ignoring the watermark.

        Lists again, up to ``sync.max_passes`` times, while a listing is not
        stable. ``on_stable`` runs in the transaction of the last batch of
        the first stable listing, with the number of sessions it held.
        Returns whether a listing was stable. Reads and moves no watermark
        and does not finish the run: callers such as the backfill own both.
        """
        close_pass = partial(_close_if_stable, on_stable)
        max_passes = self._settings.sync.max_passes
        for number in range(1, max_passes + 1):
            listing = self._run_pass(run_id, Window(None, None), counts, close_pass)
            if listing.is_stable:
                return True
            log.warning(
                "Run %s: sessions moved during listing %s%s",
                run_id,
                number,
                "" if number == max_passes else "; listing again",
            )
        return False

    def _window_start(
        self, stored: state.SourceState, *, full: bool
    ) -> datetime | None:
        if full or stored.watermark is None:
            return None
        if stored.filters_fingerprint != self._fingerprint:
            log.warning(
                "The filters or base URL of source %r changed since its last "
                "run: listing everything again",
                self._source,
            )
            return None
        return stored.watermark - timedelta(
            seconds=self._settings.sync.lookback_seconds
        )

    def _run_passes(
        self, run_id: int, window: Window, old: datetime | None
    ) -> RunSummary:
        counts = RunCounts()
        max_passes = self._settings.sync.max_passes
        for number in range(1, max_passes + 1):
            is_last_pass = number == max_passes
            close_pass = partial(
                self._close_pass,
                run_id=run_id,
                old=old,
                number=number,
                is_last_pass=is_last_pass,
            )
            listing, window = self._run_pass_in_server_time(
                run_id, window, counts, close_pass
            )
            if listing.is_stable:
                return self._summary(run_id, window.start, listing, number, counts)
            log.warning(
                "Run %s: sessions moved during listing %s (an offset cursor "
                "may have skipped some)%s",
                run_id,
                number,
                "" if is_last_pass else "; listing the window again",
            )
        log.warning(
            "Run %s: no stable listing after %s passes; the watermark stays at %s "
            "so that the next run reads this window again",
            run_id,
            max_passes,
            old,
        )
        return RunSummary(run_id, window.start, old, max_passes, False, counts, 0.0)

    def _summary(
        self,
        run_id: int,
        window_start: datetime | None,
        listing: Listing,
        passes: int,
        counts: RunCounts,
    ) -> RunSummary:
        watermark = reference_time(listing) or listing.server_time
        return RunSummary(run_id, window_start, watermark, passes, True, counts, 0.0)

    def _run_pass_in_server_time(
        self,
        run_id: int,
        window: Window,
        counts: RunCounts,
        close_pass: Callable[[sa.Connection, Listing], None],
    ) -> tuple[Listing, Window]:
        """Run a pass; start it again, wider, if the server clock went back."""
        try:
            return self._run_pass(run_id, window, counts, close_pass), window
        except ServerClockWentBackError as error:
            log.warning(
                "Run %s: the server clock is %ss behind where it was at the last "
                "run; widening the window by as much",
                run_id,
                int(error.by.total_seconds()),
            )
            assert window.start is not None
            wider = Window(window.start - error.by, None)
            return self._run_pass(run_id, wider, counts, close_pass), wider

    def _run_pass(
        self,
        run_id: int,
        window: Window,
        counts: RunCounts,
        close_pass: Callable[[sa.Connection, Listing], None],
    ) -> Listing:
        """List the window once, loading each batch in its own transaction.

        The last batch's transaction also runs ``close_pass``, which decides
        what becomes of the watermark.
        """
        listing = Listing()
        window_start = window.start
        updated_after = int(window_start.timestamp()) if window_start else None
        params = session_params(self._settings.filters, updated_after=updated_after)
        pages = self._client.iter_pages(
            SESSIONS_PATH, params, page_size=self._settings.api.page_size
        )
        size = self._settings.sync.batch_pages
        with closing(prefetch(pages, depth=size)) as ahead:
            for batch, is_last in _mark_last(_batched(ahead, size)):
                self._raise_if_stopped(run_id)
                items = self._check_pages(batch, listing, updated_after)
                self._check_server_clock(window, listing)
                last_step = close_pass if is_last else None
                counts.add(self._load(run_id, batch, items, listing, last_step))
        return listing

    def _raise_if_stopped(self, run_id: int) -> None:
        if self._hooks.stop.is_set():
            raise RunStoppedError(
                f"run {run_id} stopped between batches because the process is "
                "shutting down: its committed batches are kept and the watermark "
                "did not move, so the next run reads the window again"
            )

    def _check_server_clock(self, window: Window, listing: Listing) -> None:
        """Raise when the server clock moved back more than the lookback.

        Sessions changed since the last run may then carry ``updated_at``
        values older than the window start.
        """
        if window.expected_server_now is None or listing.server_time is None:
            return
        behind = window.expected_server_now - listing.server_time
        if behind > timedelta(seconds=self._settings.sync.lookback_seconds):
            raise ServerClockWentBackError(behind)

    def _check_pages(
        self, pages: tuple[Page, ...], listing: Listing, updated_after: int | None
    ) -> list[dict[str, Any]]:
        items = [item for page in pages for item in page.items]
        check_filters(
            items,
            self._settings.filters,
            consequence="nothing of this batch was stored",
        )
        _warn_if_window_ignored(items, updated_after)
        for page in pages:
            listing.observe(page)
        return items

    def _load(
        self,
        run_id: int,
        pages: tuple[Page, ...],
        items: list[dict[str, Any]],
        listing: Listing,
        close_pass: Callable[[sa.Connection, Listing], None] | None,
    ) -> RunCounts:
        started = time.monotonic()
        batch = normalize_items(items)
        with self._engine.begin() as connection:
            result = load_batch(
                connection, batch, synced_at=state.utc_now(), run_id=run_id
            )
            counts = self._batch_counts(pages, batch.rejected, result)
            state.add_run_counts(connection, run_id, **vars(counts))
            if close_pass is not None:
                close_pass(connection, listing)
        self._hooks.on_batch(counts)
        log.log(
            self._batch_log_level,
            "Run %s: batch of %s pages, %s sessions (%s new, %s updated, %s "
            "unchanged), %s child rows written, %s rejected in %.2fs",
            run_id,
            len(pages),
            len(batch.sessions),
            result.inserted,
            result.updated,
            result.unchanged,
            result.child_rows_written,
            batch.rejected,
            time.monotonic() - started,
        )
        return counts

    def _batch_counts(
        self, pages: tuple[Page, ...], rejected: int, result: LoadResult
    ) -> RunCounts:
        stats, counted = self._client.stats, self._counted
        counts = RunCounts(
            pages=len(pages),
            sessions_seen=result.inserted + result.updated + result.unchanged,
            sessions_inserted=result.inserted,
            sessions_updated=result.updated,
            sessions_unchanged=result.unchanged,
            child_rows_written=result.child_rows_written,
            items_rejected=rejected,
            api_requests=stats.requests - counted.requests,
            api_retries=stats.retries - counted.retries,
        )
        self._counted = RequestStats(stats.requests, stats.retries)
        return counts

    def _close_pass(
        self,
        connection: sa.Connection,
        listing: Listing,
        *,
        run_id: int,
        old: datetime | None,
        number: int,
        is_last_pass: bool,
    ) -> None:
        if not listing.is_stable and not is_last_pass:
            return
        watermark = (reference_time(listing) or old) if listing.is_stable else old
        state.save_watermark(
            connection,
            source=self._source,
            fingerprint=self._fingerprint,
            watermark=watermark,
            run_id=run_id,
        )
        state.finish_run(
            connection,
            run_id,
            status=state.SUCCEEDED,
            window_end=watermark,
            passes=number,
        )

    def _record_failure(self, run_id: int, error: BaseException) -> None:
        record_failure(self._engine, run_id, error)


def record_failure(engine: sa.Engine, run_id: int, error: BaseException) -> None:
    """Close a run as failed with its error line, if the warehouse still answers."""
    message = str(error) if isinstance(error, EtlError) else repr(error)
    try:
        with engine.begin() as connection:
            state.finish_run(connection, run_id, status=state.FAILED, error=message)
    except sa.exc.SQLAlchemyError:
        log.warning("Run %s: could not record the failure", run_id)


def _close_if_stable(
    on_stable: Callable[[sa.Connection, int], None],
    connection: sa.Connection,
    listing: Listing,
) -> None:
    if listing.is_stable:
        on_stable(connection, len(listing.versions))


def _batched(items: Iterator[Page], size: int) -> Iterator[tuple[Page, ...]]:
    while batch := tuple(islice(items, size)):
        yield batch


def _mark_last(iterable: Iterator[Any] | Any) -> Iterator[tuple[Any, bool]]:
    iterator = iter(iterable)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current, False
        current = following
    yield current, True


def _warn_if_window_ignored(
    items: list[dict[str, Any]], updated_after: int | None
) -> None:
    if updated_after is None:
        return
    outside = sum(
        1
        for item in items
        if isinstance(item.get("updated_at"), int)
        and item["updated_at"] < updated_after - 1
    )
    if outside:
        log.warning(
            "%s sessions came back older than updated_after=%s: the server "
            "seems to ignore the filter; they are loaded, but runs read more "
            "than they need",
            outside,
            updated_after,
        )


def _fingerprint(settings: Settings) -> str:
    return f"{settings.filters.fingerprint()}@{settings.api.base_url}"


def _log_summary(summary: RunSummary) -> None:
    counts = summary.counts
    log.info(
        "Run %s succeeded in %.1fs: %s pages, %s sessions seen (%s new, %s "
        "updated, %s unchanged), %s child rows, %s rejected, %s requests, %s "
        "retries; watermark %s",
        summary.run_id,
        summary.seconds,
        counts.pages,
        counts.sessions_seen,
        counts.sessions_inserted,
        counts.sessions_updated,
        counts.sessions_unchanged,
        counts.child_rows_written,
        counts.items_rejected,
        counts.api_requests,
        counts.api_retries,
        summary.watermark.isoformat() if summary.watermark else "none",
    )
