"""Whole sync runs against the simulator and a real warehouse.

Each watermark trap of the design has a test that fails if the defence
against it is removed: the final comparison is always with what the API
returns at that moment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from compare import api_snapshot, assert_same, warehouse_snapshot
from etl import state
from etl.config import Settings
from etl.errors import ApiContractError, LoadError
from etl.extract import DevinClient
from etl.pipeline import RunSummary, SessionSync, sync_once
from etl.simulator import Simulator
from support import Warehouse, make_settings, start_cli, start_simulator


def run(settings: Settings, warehouse: Warehouse, **options: Any) -> RunSummary:
    summary = sync_once(settings, warehouse.engine, **options)
    assert summary is not None, "the run lock was taken"
    return summary


def assert_synced(simulator: Simulator, warehouse: Warehouse, **filters: Any) -> None:
    expected = api_snapshot(simulator.expected_sessions(**filters))
    assert_same(warehouse_snapshot(warehouse.engine), expected)


def stored_watermark(
    warehouse: Warehouse, source: str = "enterprise"
) -> datetime | None:
    with warehouse.engine.connect() as connection:
        return state.read_source_state(connection, source).watermark


def test_sync_first_run_loads_every_session(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    summary = run(make_settings(simulator, warehouse), warehouse)

    assert_synced(simulator, warehouse)
    assert summary.counts.sessions_inserted == len(simulator.expected_sessions())
    assert summary.is_window_complete


def test_sync_second_run_without_upstream_change_changes_nothing(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    settings = make_settings(simulator, warehouse)
    run(settings, warehouse)
    before = row_versions(warehouse)

    second = run(settings, warehouse, full=True)

    assert row_versions(warehouse) == before
    assert second.counts.sessions_inserted == 0
    assert second.counts.sessions_updated == 0
    assert second.counts.child_rows_written == 0
    assert second.counts.sessions_unchanged == len(simulator.expected_sessions())


def row_versions(warehouse: Warehouse) -> dict[str, set[tuple[Any, ...]]]:
    """Every row with its physical version: xmin on PostgreSQL, rowid on SQLite.

    A rewritten row gets a new xmin; on SQLite ``last_synced_at`` shows it.
    """
    version = "xmin::text" if warehouse.is_postgres else "rowid"
    queries = {
        "sessions": f"SELECT session_id, {version}, last_synced_at FROM sessions",
        "session_tags": f"SELECT session_id, tag, {version} FROM session_tags",
        "session_pull_requests": (
            f"SELECT session_id, pr_url, pr_state, {version} FROM session_pull_requests"
        ),
        "session_children": f"SELECT *, {version} FROM session_children",
    }
    with warehouse.engine.connect() as connection:
        return {
            name: {tuple(row) for row in connection.execute(sa.text(query))}
            for name, query in queries.items()
        }


def change_upstream(simulator: Simulator) -> None:
    """Update, create and strip child rows of some sessions."""
    sessions = simulator.sessions_snapshot()
    for session in sessions[:10]:
        simulator.update_session(session["session_id"], tags=[], status="exit")
    for session in sessions[10:20]:
        simulator.update_session(
            session["session_id"],
            pull_requests=[
                {"pr_url": "https://github.com/a/b/pull/1", "pr_state": "merged"}
            ],
            child_session_ids=[],
            acus_consumed=session["acus_consumed"] + 3.25,
        )
    for _ in range(5):
        simulator.create_session()


def test_sync_incremental_run_applies_updates_creations_and_removed_children(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    settings = make_settings(simulator, warehouse)
    run(settings, warehouse)
    change_upstream(simulator)

    second = run(settings, warehouse)

    assert_synced(simulator, warehouse)
    assert second.counts.sessions_inserted == 5
    assert second.counts.sessions_updated == 20
    assert second.window_start is not None


@pytest.mark.parametrize("offset", [3600, -3600], ids=["server-ahead", "server-behind"])
def test_sync_follows_the_server_clock_not_the_host_clock(
    warehouse: Warehouse, offset: int
) -> None:
    with start_simulator(clock_offset=offset) as simulator:
        settings = make_settings(simulator, warehouse)
        run(settings, warehouse)
        change_upstream(simulator)

        run(settings, warehouse)

        assert_synced(simulator, warehouse)
        watermark = stored_watermark(warehouse)
        assert watermark is not None
        assert abs(watermark.timestamp() - simulator.now()) < 60


def test_sync_survives_the_server_clock_jumping_back(warehouse: Warehouse) -> None:
    with start_simulator() as simulator:
        settings = make_settings(simulator, warehouse)
        run(settings, warehouse)
        simulator.set_clock_offset(-3600)
        change_upstream(simulator)

        run(settings, warehouse)

        assert_synced(simulator, warehouse)


@pytest.mark.parametrize("inclusive", [True, False], ids=["inclusive", "exclusive"])
def test_sync_reads_sessions_sharing_the_watermark_second(
    warehouse: Warehouse, inclusive: bool
) -> None:
    with start_simulator(updated_after_inclusive=inclusive) as simulator:
        settings = make_settings(simulator, warehouse, sync={"lookback_seconds": 2})
        run(settings, warehouse)
        watermark = stored_watermark(warehouse)
        assert watermark is not None
        second = int(watermark.timestamp())
        for session in simulator.sessions_snapshot()[:25]:
            simulator.update_session(
                session["session_id"], title="renamed", updated_at=second
            )

        run(settings, warehouse)

        assert_synced(simulator, warehouse)


ORDERS = ["created_desc", "created_asc", "updated_asc", "updated_desc"]


@pytest.mark.parametrize("cursor", ["keyset", "offset"])
@pytest.mark.parametrize("order", ORDERS)
def test_sync_is_complete_when_sessions_change_during_the_listing(
    pg_warehouse: Warehouse, cursor: str, order: str
) -> None:
    with start_simulator(cursor=cursor, order=order) as simulator:
        settings = make_settings(simulator, pg_warehouse)
        simulator.on_page(first_page_mover())

        run(settings, pg_warehouse)
        simulator.clear_hooks()
        run(settings, pg_warehouse)

        assert_synced(simulator, pg_warehouse)


def first_page_mover() -> Callable[[Simulator, int], None]:
    """On page 3 of the first listing, touch the oldest-updated session and
    delete the newest one, so that every kind of cursor and order sees a
    session move or vanish under it."""
    fired: list[int] = []

    def hook(simulator: Simulator, page_number: int) -> None:
        if page_number != 3 or fired:
            return
        fired.append(page_number)
        sessions = sorted(simulator.sessions_snapshot(), key=lambda s: s["updated_at"])
        simulator.update_session(sessions[0]["session_id"], title="moved")
        simulator.update_session(sessions[1]["session_id"], title="moved too")
        simulator.create_session()

    return hook


def test_sync_lists_again_when_an_offset_cursor_skips(pg_warehouse: Warehouse) -> None:
    with start_simulator(cursor="offset", order="updated_asc") as simulator:
        settings = make_settings(simulator, pg_warehouse)
        simulator.on_page(first_page_mover())

        summary = run(settings, pg_warehouse)

        assert summary.passes == 2
        assert summary.is_window_complete
        assert_synced(simulator, pg_warehouse)


def test_sync_keeps_the_watermark_when_no_listing_is_stable(
    pg_warehouse: Warehouse,
) -> None:
    with start_simulator(cursor="offset", order="updated_asc") as simulator:
        settings = make_settings(simulator, pg_warehouse, sync={"max_passes": 1})
        run(settings, pg_warehouse)
        before = stored_watermark(pg_warehouse)
        simulator.on_page(first_page_mover())

        summary = run(settings, pg_warehouse, full=True)

        assert not summary.is_window_complete
        assert stored_watermark(pg_warehouse) == before
        simulator.clear_hooks()
        run(settings, pg_warehouse)
        assert_synced(simulator, pg_warehouse)


def test_sync_failed_batch_keeps_watermark_and_next_run_repairs(
    simulator: Simulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(simulator, warehouse)
    run(settings, warehouse)
    watermark = stored_watermark(warehouse)
    change_upstream(simulator)
    crash_on_second_batch(monkeypatch)

    with pytest.raises(LoadError):
        run(settings, warehouse, full=True)

    assert stored_watermark(warehouse) == watermark
    assert last_run_status(warehouse) == ("failed", "injected crash")
    monkeypatch.undo()
    run(settings, warehouse)
    assert_synced(simulator, warehouse)


def crash_on_second_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    import etl.pipeline

    real = etl.pipeline.load_batch
    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise LoadError("injected crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(etl.pipeline, "load_batch", flaky)


def last_run_status(warehouse: Warehouse) -> tuple[str, str | None]:
    with warehouse.engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT status, error FROM sync_runs ORDER BY id DESC LIMIT 1")
        ).one()
    return row[0], row[1]


def test_sync_refuses_millisecond_timestamps_and_stores_nothing_of_the_batch(
    warehouse: Warehouse,
) -> None:
    with start_simulator(count=40) as simulator:
        target = simulator.sessions_snapshot()[0]["session_id"]
        simulator.update_session(target, updated_at=1_790_000_000_000)
        settings = make_settings(simulator, warehouse, sync={"batch_pages": 10})

        with pytest.raises(ApiContractError, match="milliseconds"):
            run(settings, warehouse)

        assert warehouse_snapshot(warehouse.engine).sessions == {}
        assert stored_watermark(warehouse) is None


def test_sync_counts_items_without_identity_and_goes_on(warehouse: Warehouse) -> None:
    with start_simulator(count=30) as simulator:
        target = simulator.sessions_snapshot()[0]["session_id"]
        simulator.update_session(target, org_id=None)
        settings = make_settings(simulator, warehouse)

        summary = run(settings, warehouse)

        assert summary.counts.items_rejected == 1
        stored = warehouse_snapshot(warehouse.engine).sessions
        assert target not in stored
        assert len(stored) == 29


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"org_ids": ["org-1"]}, "org_ids"),
        ({"is_archived": True}, "is_archived"),
    ],
    ids=["org_ids", "is_archived"],
)
def test_sync_fails_when_the_server_ignores_a_filter(
    simulator: Simulator, warehouse: Warehouse, filters: dict[str, Any], expected: str
) -> None:
    settings = make_settings(simulator, warehouse, filters=filters)
    client = DevinClient(
        settings.api, settings.require_api_key(), http=FilterDroppingSession(filters)
    )

    with pytest.raises(
        ApiContractError, match=f"outside the configured filter {expected}"
    ):
        SessionSync(settings, warehouse.engine, client).run()

    assert warehouse_snapshot(warehouse.engine).sessions == {}


class FilterDroppingSession(requests.Session):
    """Plays a server that does not know some parameters: they never arrive."""

    def __init__(self, dropped: dict[str, Any]) -> None:
        super().__init__()
        self._dropped = set(dropped)

    def request(self, method: str, url: str, params: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        kept = [(k, v) for k, v in params or () if k not in self._dropped]
        return super().request(method, url, params=kept, **kwargs)


def test_sync_with_filters_loads_only_matching_sessions(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    org = simulator.sessions_snapshot()[0]["org_id"]
    settings = make_settings(simulator, warehouse, filters={"org_ids": [org]})

    run(settings, warehouse)

    assert_synced(simulator, warehouse, org_ids=[org])


def test_sync_changed_filters_start_over_with_a_full_listing(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    org = simulator.sessions_snapshot()[0]["org_id"]
    run(make_settings(simulator, warehouse, filters={"org_ids": [org]}), warehouse)

    summary = run(make_settings(simulator, warehouse), warehouse)

    assert summary.window_start is None
    assert_synced(simulator, warehouse)


def test_sync_record_counts_requests_and_pages(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    summary = run(make_settings(simulator, warehouse), warehouse)

    with warehouse.engine.connect() as connection:
        row = (
            connection.execute(
                sa.text("SELECT * FROM sync_runs WHERE id = :id"),
                {"id": summary.run_id},
            )
            .mappings()
            .one()
        )
    pages = -(-len(simulator.expected_sessions()) // 50)
    assert row["status"] == "succeeded"
    assert row["pages"] == pages
    assert row["api_requests"] == pages
    assert row["sessions_inserted"] == len(simulator.expected_sessions())
    assert row["finished_at"] is not None


def test_sync_killed_with_sigkill_then_next_run_is_complete(
    pg_warehouse: Warehouse,
) -> None:
    with start_simulator(count=600) as simulator:
        process = start_cli(simulator, pg_warehouse, "sync")
        simulator.on_page(kill_after_first_commit(process, pg_warehouse, 9))

        assert process.wait(timeout=60) == -signal.SIGKILL
        assert stored_watermark(pg_warehouse) is None
        assert 0 < len(warehouse_snapshot(pg_warehouse.engine).sessions) < 600
        simulator.clear_hooks()
        change_upstream(simulator)

        run(make_settings(simulator, pg_warehouse), pg_warehouse)

        assert_synced(simulator, pg_warehouse)


def kill_after_first_commit(
    process: subprocess.Popen[str], warehouse: Warehouse, page: int
) -> Callable[[Simulator, int], None]:
    """Hold page ``page`` until a batch is committed, then SIGKILL the sync."""

    def hook(_simulator: Simulator, page_number: int) -> None:
        if page_number != page:
            return
        deadline = time.monotonic() + 30
        while not warehouse_snapshot(warehouse.engine).sessions:
            assert time.monotonic() < deadline, "the sync never committed a batch"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)

    return hook


def keep_busy(simulator: Simulator, page_number: int) -> None:
    """Create one session and update one on every page, like a busy account."""
    simulator.create_session()
    oldest = min(simulator.sessions_snapshot(), key=lambda s: s["updated_at"])
    simulator.update_session(oldest["session_id"], title=f"busy {page_number}")


def test_sync_busy_server_with_stable_order_needs_one_listing(
    pg_warehouse: Warehouse,
) -> None:
    with start_simulator(cursor="keyset", order="created_desc") as simulator:
        settings = make_settings(simulator, pg_warehouse)
        simulator.on_page(keep_busy)

        summary = run(settings, pg_warehouse)

        assert summary.passes == 1
        assert summary.is_window_complete
        simulator.clear_hooks()
        run(settings, pg_warehouse)
        assert_synced(simulator, pg_warehouse)
