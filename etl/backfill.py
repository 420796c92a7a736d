"""Backfill: load the history of sessions slice by slice of ``created_at``.

A backfill lists, for each slice of ``backfill.slice_days``, the sessions
that the configured filters select and that were created in that slice, and
loads them through the sync's own path (transform, staged upsert), so a
session that a backfill and a sync both read keeps its newest version.

* Each finished slice is recorded in ``backfill_slices`` in the transaction
  of its last batch. A backfill started again skips every slice that a
  recorded one covers, so an interrupted backfill resumes where it stopped.
  Slices are aligned on ``--since``, so runs with the same ``--since`` cut
  the same slices.
* Whether the API's ``created_after`` and ``created_before`` are inclusive
  is undocumented, so each slice is listed one second wider on both sides:
  neighbouring slices overlap by two seconds, and a session created on a
  boundary second is read twice rather than never. The configured
  ``created_*`` filters still bound every listing.
* A slice whose listing moved under its cursor is listed again, up to
  ``sync.max_passes`` times; if none was stable its data stays but the
  slice is not recorded, so the next backfill lists it again.
* The backfill holds the lock ``<source>:backfill``, not the source's own:
  syncs and reconciles go on meanwhile. It never reads or moves the
  watermark.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TextIO

import sqlalchemy as sa
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from etl import state
from etl.config import FilterSettings, Settings
from etl.errors import EtlError
from etl.extract import SESSIONS_PATH, DevinClient, session_params
from etl.pipeline import RunCounts, SessionSync, exclusive_run, record_failure

log = logging.getLogger(__name__)

BACKFILL = "backfill"
BOUNDARY_SLACK = timedelta(seconds=1)

Advance = Callable[["Slice", RunCounts], None]


@dataclass(frozen=True)
class Slice:
    """A ``created_at`` range ``[start, end)``, in UTC."""

    start: datetime
    end: datetime

    def is_covered_by(self, recorded: list[tuple[datetime, datetime]]) -> bool:
        return any(start <= self.start and self.end <= end for start, end in recorded)

    def listing_filters(self, filters: FilterSettings) -> FilterSettings:
        """``filters`` with created bounds one second wider than the slice,
        but never wider than the configured ones."""
        after = self.start - BOUNDARY_SLACK
        before = self.end + BOUNDARY_SLACK
        if filters.created_after is not None:
            after = max(after, filters.created_after)
        if filters.created_before is not None:
            before = min(before, filters.created_before)
        return filters.model_copy(
            update={"created_after": after, "created_before": before}
        )

    def describe(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M}"


@dataclass(frozen=True)
class BackfillSummary:
    """What a backfill run did.

    ``slices`` is every slice of the range, ``skipped`` those an earlier
    backfill had finished, ``incomplete`` those listed without a stable
    listing (not recorded: the next backfill lists them again).
    """

    run_id: int
    since: datetime
    until: datetime
    slices: int
    skipped: int
    incomplete: int
    counts: RunCounts
    seconds: float


def backfill_lock_name(source: str) -> str:
    return f"{source}:backfill"


def backfill_once(
    settings: Settings,
    engine: sa.Engine,
    *,
    since: datetime,
    until: datetime | None = None,
    wait: bool = False,
    stream: TextIO | None = None,
) -> BackfillSummary | None:
    """Check the schema, take the source's backfill lock and backfill once.

    ``since`` and ``until`` are aware datetimes; ``until`` defaults to the
    server's clock now. A progress bar goes to ``stream`` (default stderr)
    when it is a terminal; otherwise each slice logs one INFO line. Returns
    None, having done nothing, when another backfill of the source holds
    the lock (after waiting up to ``sync.lock_wait_seconds`` if ``wait``).
    """
    lock = backfill_lock_name(settings.sync.source)
    with exclusive_run(
        settings, engine, lock=lock, kinds=(BACKFILL,), wait=wait
    ) as client:
        if client is None:
            return None
        backfill = Backfill(settings, engine, client)
        shown_on = sys.stderr if stream is None else stream
        return backfill.run(since, until, stream=shown_on)


def plan_slices(
    since: datetime, until: datetime, *, days: int, filters: FilterSettings
) -> list[Slice]:
    """Cut ``[since, until)`` into slices of ``days``, aligned on ``since``,
    clipped to the configured ``created_after``/``created_before``."""
    start = max(since, filters.created_after or since)
    end = min(until, filters.created_before or until)
    step = timedelta(days=days)
    edge = since + step * max(0, (start - since) // step)
    slices = []
    while edge < end:
        low, high = max(edge, start), min(edge + step, end)
        if low < high:
            slices.append(Slice(low, high))
        edge += step
    return slices


class Backfill:
    """Backfill runs for one configured source."""

    def __init__(
        self, settings: Settings, engine: sa.Engine, client: DevinClient
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._client = client
        self._source = settings.sync.source

    def run(
        self, since: datetime, until: datetime | None = None, *, stream: TextIO
    ) -> BackfillSummary:
        """Load every slice of ``[since, until)`` that no earlier run finished.

        Raises an :class:`EtlError` after recording the failed run.
        """
        started = time.monotonic()
        until = until or self._server_now()
        slices = plan_slices(
            since,
            until,
            days=self._settings.backfill.slice_days,
            filters=self._settings.filters,
        )
        with self._engine.begin() as connection:
            recorded = state.read_backfill_slices(connection, self._source)
            run_id = state.start_run(
                connection, source=self._source, kind=BACKFILL, window_start=since
            )
        todo = [piece for piece in slices if not piece.is_covered_by(recorded)]
        self._log_plan(run_id, since, until, len(slices), len(todo))
        try:
            incomplete, counts = self._load_slices(run_id, todo, stream)
        except (EtlError, Exception, KeyboardInterrupt) as error:
            record_failure(self._engine, run_id, error)
            raise
        with self._engine.begin() as connection:
            state.finish_run(
                connection, run_id, status=state.SUCCEEDED, window_end=until
            )
        skipped = len(slices) - len(todo)
        seconds = time.monotonic() - started
        summary = BackfillSummary(
            run_id, since, until, len(slices), skipped, incomplete, counts, seconds
        )
        _log_summary(summary)
        return summary

    def _server_now(self) -> datetime:
        params = [*session_params(self._settings.filters), ("first", "1")]
        now = self._client.fetch_page(SESSIONS_PATH, params).server_time
        if now is None:
            log.warning(
                "The API sent no Date header: backfilling until this host's now"
            )
            now = state.utc_now()
        return now

    def _log_plan(
        self, run_id: int, since: datetime, until: datetime, slices: int, todo: int
    ) -> None:
        log.info(
            "Run %s: backfilling sessions created from %s to %s: %s slices of %s "
            "days, %s finished by earlier runs",
            run_id,
            since.isoformat(),
            until.isoformat(),
            slices,
            self._settings.backfill.slice_days,
            slices - todo,
        )

    def _load_slices(
        self, run_id: int, todo: list[Slice], stream: TextIO
    ) -> tuple[int, RunCounts]:
        counts, incomplete = RunCounts(), 0
        with show_progress(len(todo), stream) as advance:
            for piece in todo:
                piece_counts = RunCounts()
                if not self._load_slice(run_id, piece, piece_counts):
                    incomplete += 1
                counts.add(piece_counts)
                advance(piece, piece_counts)
        return incomplete, counts

    def _load_slice(self, run_id: int, piece: Slice, counts: RunCounts) -> bool:
        filters = piece.listing_filters(self._settings.filters)
        settings = self._settings.model_copy(update={"filters": filters})
        loader = SessionSync(
            settings, self._engine, self._client, batch_log_level=logging.DEBUG
        )
        record = partial(self._record_slice, run_id=run_id, piece=piece)
        if loader.load_listing(run_id, counts, record):
            return True
        log.warning(
            "Run %s: sessions created %s moved during every listing; the slice "
            "is not recorded, so the next backfill lists it again",
            run_id,
            piece.describe(),
        )
        return False

    def _record_slice(
        self, connection: sa.Connection, sessions: int, *, run_id: int, piece: Slice
    ) -> None:
        state.record_backfill_slice(
            connection,
            source=self._source,
            start=piece.start,
            end=piece.end,
            run_id=run_id,
            sessions=sessions,
        )


@dataclass
class _Tally:
    """Progress over the slices of one run: rate and time left."""

    total: int
    done: int = 0
    sessions: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, counts: RunCounts) -> None:
        self.done += 1
        self.sessions += counts.sessions_seen

    @property
    def sessions_per_second(self) -> float:
        return self.sessions / max(time.monotonic() - self.started, 1e-6)

    @property
    def seconds_left(self) -> float:
        elapsed = time.monotonic() - self.started
        return elapsed / max(self.done, 1) * (self.total - self.done)


@contextmanager
def show_progress(total: int, stream: TextIO) -> Iterator[Advance]:
    """Yield the function to call after each slice: it advances a progress
    bar on ``stream`` when that is a terminal, else logs one INFO line."""
    tally = _Tally(total)
    if not stream.isatty():
        yield partial(_log_slice, tally)
        return
    with (
        tqdm(total=total, unit="slice", desc="Backfill", file=stream) as bar,
        logging_redirect_tqdm(),
    ):
        yield partial(_advance_bar, tally, bar)


def _advance_bar(tally: _Tally, bar: tqdm[Any], _: Slice, counts: RunCounts) -> None:
    tally.add(counts)
    rate = tally.sessions_per_second
    bar.set_postfix_str(f"{tally.sessions} sessions, {rate:.0f}/s", refresh=False)
    bar.update(1)


def _log_slice(tally: _Tally, piece: Slice, counts: RunCounts) -> None:
    tally.add(counts)
    log.info(
        "Backfill slice %s/%s (created %s): %s sessions (%s new, %s updated, %s "
        "unchanged); %s sessions in all, %.0f/s, about %s left",
        tally.done,
        tally.total,
        piece.describe(),
        counts.sessions_seen,
        counts.sessions_inserted,
        counts.sessions_updated,
        counts.sessions_unchanged,
        tally.sessions,
        tally.sessions_per_second,
        timedelta(seconds=round(tally.seconds_left)),
    )


def _log_summary(summary: BackfillSummary) -> None:
    counts = summary.counts
    log.info(
        "Run %s succeeded in %.1fs: %s slices (%s finished earlier, %s "
        "incomplete), %s sessions seen (%s new, %s updated, %s unchanged), %s "
        "requests",
        summary.run_id,
        summary.seconds,
        summary.slices,
        summary.skipped,
        summary.incomplete,
        counts.sessions_seen,
        counts.sessions_inserted,
        counts.sessions_updated,
        counts.sessions_unchanged,
        counts.api_requests,
    )
