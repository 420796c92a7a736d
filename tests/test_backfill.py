"""Backfills by created_at slices against the simulator and a real warehouse."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from compare import api_snapshot, assert_same, warehouse_snapshot
from etl.backfill import BackfillSummary, Slice, backfill_once, plan_slices
from etl.config import FilterSettings, Settings
from etl.pipeline import sync_once
from etl.simulator import Simulator
from support import NOW, Warehouse, make_settings, start_cli, start_simulator

DAY = 86_400
SINCE = datetime.fromtimestamp(NOW - 420 * DAY, UTC)  # before every session
UNTIL = datetime.fromtimestamp(NOW + DAY, UTC)  # after every session


def at(day: int) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day)


def backfill(
    settings: Settings, warehouse: Warehouse, **options: Any
) -> BackfillSummary:
    options = {"since": SINCE, "until": UNTIL, "stream": io.StringIO(), **options}
    summary = backfill_once(settings, warehouse.engine, **options)
    assert summary is not None, "the backfill lock was taken"
    return summary


def created_between(
    simulator: Simulator, since: datetime, until: datetime
) -> list[dict[str, Any]]:
    """The sessions created in ``[since, until)``."""
    after = int(since.timestamp()) - 1  # the simulator's bound is exclusive
    return simulator.expected_sessions(
        created_after=after, created_before=int(until.timestamp())
    )


def slice_rows(warehouse: Warehouse) -> list[tuple[int, int]]:
    with warehouse.engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT slice_start, slice_end FROM backfill_slices")
        )
        return sorted((epoch(start), epoch(end)) for start, end in rows)


def epoch(value: datetime | str) -> int:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return int(value.replace(tzinfo=value.tzinfo or UTC).timestamp())


def listed_bounds(simulator: Simulator) -> list[tuple[int, int]]:
    """The ``(created_after, created_before)`` of each listing requested."""
    bounds = []
    for request in simulator.requests_log:
        query = dict(request.query)
        if "created_after" in query and "after" not in query:
            bounds.append((int(query["created_after"]), int(query["created_before"])))
    return bounds


@pytest.mark.parametrize(
    ("since", "until", "days", "expected"),
    [
        (at(0), at(10), 7, [(at(0), at(7)), (at(7), at(10))]),
        (at(0), at(7), 7, [(at(0), at(7))]),
        (at(0), at(3), 30, [(at(0), at(3))]),
        (at(0), at(0), 7, []),
    ],
    ids=["partial-last", "exact", "shorter-than-a-slice", "empty"],
)
def test_backfill_plan_cuts_slices_aligned_on_since(
    since: datetime,
    until: datetime,
    days: int,
    expected: list[tuple[datetime, datetime]],
) -> None:
    slices = plan_slices(since, until, days=days, filters=FilterSettings())

    assert [(s.start, s.end) for s in slices] == expected


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"created_after": at(9)}, [(at(9), at(14)), (at(14), at(20))]),
        ({"created_before": at(9)}, [(at(0), at(7)), (at(7), at(9))]),
        ({"created_after": at(30)}, []),
    ],
    ids=["created-after", "created-before", "disjoint"],
)
def test_backfill_plan_keeps_within_the_configured_created_filters(
    filters: dict[str, datetime], expected: list[tuple[datetime, datetime]]
) -> None:
    slices = plan_slices(at(0), at(20), days=7, filters=FilterSettings(**filters))

    assert [(s.start, s.end) for s in slices] == expected


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, (at(7) - timedelta(seconds=1), at(14) + timedelta(seconds=1))),
        ({"created_after": at(8)}, (at(8), at(14) + timedelta(seconds=1))),
        ({"created_before": at(13)}, (at(7) - timedelta(seconds=1), at(13))),
    ],
    ids=["one-second-wider", "configured-after", "configured-before"],
)
def test_backfill_slice_lists_one_second_wider_within_the_filters(
    filters: dict[str, datetime], expected: tuple[datetime, datetime]
) -> None:
    listing = Slice(at(7), at(14)).listing_filters(FilterSettings(**filters))

    assert (listing.created_after, listing.created_before) == expected


@pytest.mark.parametrize(
    ("since", "until", "filters"),
    [
        (SINCE, UNTIL, {}),
        (SINCE, None, {}),
        (at(-200), at(-100), {}),
        (SINCE, UNTIL, {"created_after": at(-150)}),
    ],
    ids=["everything", "until-now", "middle-range", "configured-created-after"],
)
def test_backfill_loads_the_sessions_created_in_the_range(
    simulator: Simulator,
    warehouse: Warehouse,
    since: datetime,
    until: datetime | None,
    filters: dict[str, datetime],
) -> None:
    settings = make_settings(
        simulator, warehouse, filters=filters, backfill={"slice_days": 30}
    )

    summary = backfill(settings, warehouse, since=since, until=until)

    start = max(since, filters.get("created_after", since))
    expected = created_between(simulator, start, until or UNTIL)
    assert len(expected) > 0
    assert_same(warehouse_snapshot(warehouse.engine), api_snapshot(expected))
    assert summary.counts.sessions_inserted == len(expected)
    assert len(slice_rows(warehouse)) == summary.slices


@pytest.mark.parametrize("inclusive", [True, False], ids=["inclusive", "exclusive"])
def test_backfill_reads_sessions_created_on_slice_boundaries(
    warehouse: Warehouse, inclusive: bool
) -> None:
    with start_simulator(count=20, updated_after_inclusive=inclusive) as simulator:
        settings = make_settings(simulator, warehouse, backfill={"slice_days": 7})
        since = at(-70)
        for day in range(0, 70, 7):  # on --since and every later slice start
            created = int((since + timedelta(days=day)).timestamp())
            simulator.create_session(created_at=created, updated_at=created)
        for day in range(7, 71, 7):  # the last second of every slice
            created = int((since + timedelta(days=day)).timestamp()) - 1
            simulator.create_session(created_at=created, updated_at=created)

        backfill(settings, warehouse, since=since, until=at(0))

        expected = created_between(simulator, since, at(0))
        assert len(expected) >= 20
        assert_same(warehouse_snapshot(warehouse.engine), api_snapshot(expected))


@pytest.mark.parametrize(
    ("until", "listings"),
    [(UNTIL, 0), (None, 1)],
    ids=["same-until", "until-now-relists-the-last-slice"],
)
def test_backfill_again_lists_no_finished_slice(
    simulator: Simulator, warehouse: Warehouse, until: datetime | None, listings: int
) -> None:
    settings = make_settings(simulator, warehouse, backfill={"slice_days": 30})
    first = backfill(settings, warehouse, until=until)
    simulator.reset_log()
    # The Date header has whole seconds: without this, two backfills in the
    # same second would share their "now" and nothing would be left to relist.
    simulator.set_clock_offset(2)

    second = backfill(settings, warehouse, until=until)

    assert len(listed_bounds(simulator)) == listings
    assert second.skipped == first.slices - listings
    assert second.counts.sessions_inserted == 0


def test_backfill_leaves_the_watermark_alone(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    settings = make_settings(simulator, warehouse, backfill={"slice_days": 60})
    assert sync_once(settings, warehouse.engine) is not None
    before = sync_state(warehouse)
    renamed = simulator.sessions_snapshot()[0]["session_id"]
    simulator.update_session(renamed, title="renamed upstream")

    summary = backfill(settings, warehouse)

    assert summary.counts.sessions_updated == 1
    assert sync_state(warehouse) == before
    assert_same(
        warehouse_snapshot(warehouse.engine),
        api_snapshot(simulator.expected_sessions()),
    )


def sync_state(warehouse: Warehouse) -> list[tuple[Any, ...]]:
    with warehouse.engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(sa.text("SELECT * FROM sync_state"))
        ]


class SliceKiller:
    """A page hook that SIGKILLs the backfill on the first page served after
    a slice commits.

    A slice is recorded before the next slice's first page is requested, so
    the kill lands between slices with later slices still to do.
    """

    def __init__(self, process: subprocess.Popen[str], warehouse: Warehouse) -> None:
        self._process = process
        self._warehouse = warehouse
        self._pages = 0

    def __call__(self, _simulator: Simulator, page_number: int) -> None:
        self._pages = page_number
        if self._process.poll() is None and slice_rows(self._warehouse):
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=30)

    def wait_for_the_log(self, simulator: Simulator) -> None:
        """Wait until the simulator logged every page the hook saw: the last
        one is logged after the hook returns, maybe after the kill."""
        deadline = time.monotonic() + 30
        while len(simulator.requests_log) < self._pages:
            assert time.monotonic() < deadline, "the last page was never logged"
            time.sleep(0.01)


def test_backfill_killed_midway_resumes_where_it_stopped(
    pg_warehouse: Warehouse,
) -> None:
    with start_simulator(count=300) as simulator:
        process = start_cli(
            simulator,
            pg_warehouse,
            "backfill",
            f"--since={SINCE:%Y-%m-%dT%H:%M:%S}",
            f"--until={UNTIL:%Y-%m-%dT%H:%M:%S}",
            DEVIN_ETL_BACKFILL__SLICE_DAYS="30",
        )
        killer = SliceKiller(process, pg_warehouse)
        simulator.on_page(killer)
        assert process.wait(timeout=60) == -signal.SIGKILL
        killer.wait_for_the_log(simulator)
        simulator.clear_hooks()
        finished = slice_rows(pg_warehouse)
        simulator.reset_log()
        settings = make_settings(simulator, pg_warehouse, backfill={"slice_days": 30})

        summary = backfill(settings, pg_warehouse)

        listed = listed_bounds(simulator)
        assert not [
            (after, before)
            for after, before in listed
            for start, end in finished
            if after + 1 < end and start < before - 1
        ], "a finished slice was listed again"
        assert summary.skipped == len(finished) > 0
        assert len(listed) == summary.slices - summary.skipped
        assert len(slice_rows(pg_warehouse)) == summary.slices
        assert_same(
            warehouse_snapshot(pg_warehouse.engine),
            api_snapshot(simulator.expected_sessions()),
        )
        assert sync_state(pg_warehouse) == []
        assert [run["status"] for run in runs(pg_warehouse)] == [
            "abandoned",
            "succeeded",
        ]


def runs(warehouse: Warehouse) -> list[dict[str, Any]]:
    with warehouse.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM sync_runs ORDER BY id"))
        return [dict(row) for row in rows.mappings()]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("is_terminal", [True, False], ids=["terminal", "log"])
def test_backfill_shows_a_bar_on_a_terminal_and_a_line_per_slice_otherwise(
    simulator: Simulator,
    warehouse: Warehouse,
    caplog: pytest.LogCaptureFixture,
    is_terminal: bool,
) -> None:
    settings = make_settings(simulator, warehouse, backfill={"slice_days": 60})
    stream = Terminal() if is_terminal else io.StringIO()

    with caplog.at_level(logging.INFO, logger="etl"):
        summary = backfill(settings, warehouse, stream=stream)

    lines = [
        r.getMessage() for r in caplog.records if "Backfill slice" in r.getMessage()
    ]
    batch_lines = [r for r in caplog.records if "batch of" in r.getMessage()]
    assert batch_lines == []
    if is_terminal:
        assert lines == []
        assert f"{summary.slices}/{summary.slices}" in stream.getvalue()
        assert f"{summary.counts.sessions_seen} sessions" in stream.getvalue()
    else:
        assert len(lines) == summary.slices
        assert lines[-1].startswith(f"Backfill slice {summary.slices}/{summary.slices}")
        assert "/s, about 0:00:00 left" in lines[-1]
        assert stream.getvalue() == ""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--since", "2026-02-01", "--until", "2026-01-01"], "must be later than"),
        (["--since", "2026-02-01", "--until", "2026-02-01"], "must be later than"),
        (["--since", "yesterday"], "'yesterday' does not match the formats"),
        ([], "Missing option '--since'"),
    ],
    ids=["until-before-since", "until-equals-since", "not-a-date", "no-since"],
)
def test_backfill_cli_rejects_a_bad_range_as_a_usage_error(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "etl", "backfill", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert expected in result.stderr
