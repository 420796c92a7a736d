"""Deletion detection against the simulator and a real warehouse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from etl.config import Settings
from etl.errors import ApiPermissionError, ApiUnavailableError, DeletionLimitError
from etl.extract import DevinClient
from etl.pipeline import RunSummary, sync_once
from etl.reconcile import (
    ReconcileSummary,
    deletion_signal,
    is_reconcile_due,
    reconcile_once,
)
from etl.simulator import Fault, Simulator
from support import Warehouse, make_settings, run_cli, start_simulator


def sync(settings: Settings, warehouse: Warehouse, **options: Any) -> RunSummary:
    summary = sync_once(settings, warehouse.engine, **options)
    assert summary is not None, "the run lock was taken"
    return summary


def reconcile(
    settings: Settings, warehouse: Warehouse, *, force: bool = False
) -> ReconcileSummary:
    summary = reconcile_once(settings, warehouse.engine, force=force)
    assert summary is not None, "the run lock was taken"
    return summary


def deleted_ids(warehouse: Warehouse) -> set[str]:
    with warehouse.engine.connect() as connection:
        query = sa.text("SELECT session_id FROM sessions WHERE deleted_at IS NOT NULL")
        return set(connection.execute(query).scalars())


def last_run(warehouse: Warehouse) -> dict[str, Any]:
    with warehouse.engine.connect() as connection:
        query = sa.text("SELECT * FROM sync_runs ORDER BY id DESC LIMIT 1")
        return dict(connection.execute(query).mappings().one())


def delete_upstream(simulator: Simulator, count: int, **filters: Any) -> set[str]:
    """Delete the ``count`` oldest sessions matching ``filters``; return their ids."""
    victims = [s["session_id"] for s in simulator.expected_sessions(**filters)]
    for session_id in victims[-count:] if count else []:
        simulator.delete_session(session_id)
    return set(victims[-count:]) if count else set()


@pytest.mark.parametrize("count", [0, 1, 12], ids=["none", "one", "twelve"])
def test_reconcile_marks_the_sessions_deleted_upstream(
    simulator: Simulator, warehouse: Warehouse, count: int
) -> None:
    settings = make_settings(simulator, warehouse)
    sync(settings, warehouse)
    gone = delete_upstream(simulator, count)

    summary = reconcile(settings, warehouse)
    again = reconcile(settings, warehouse)

    assert deleted_ids(warehouse) == gone
    assert (summary.deleted, again.deleted) == (count, 0)
    assert summary.listed == len(simulator.expected_sessions())
    run = last_run(warehouse)
    assert (run["kind"], run["status"]) == ("reconcile", "succeeded")
    assert run["sessions_seen"] == summary.listed
    assert run["api_requests"] == run["pages"] == -(-summary.listed // 50)


@pytest.mark.parametrize("restorer", ["reconcile", "sync"])
def test_reconcile_deleted_session_listed_again_is_restored(
    simulator: Simulator, warehouse: Warehouse, restorer: str
) -> None:
    settings = make_settings(simulator, warehouse)
    sync(settings, warehouse)
    # Without a parent: re-creating a child would also touch its parent.
    record = next(
        s for s in simulator.sessions_snapshot() if not s.get("parent_session_id")
    )
    simulator.delete_session(record["session_id"])
    reconcile(settings, warehouse)
    assert deleted_ids(warehouse) == {record["session_id"]}
    # Fields the record lacks would get generated values: keep them absent.
    simulator.create_session(**{"is_archived": None, **record})

    if restorer == "reconcile":
        assert reconcile(settings, warehouse).restored == 1
        assert last_run(warehouse)["sessions_restored"] == 1
    else:
        assert sync(settings, warehouse, full=True).counts.sessions_updated == 1

    assert deleted_ids(warehouse) == set()
    assert sync(settings, warehouse, full=True).counts.sessions_updated == 0


@pytest.mark.parametrize(
    ("share", "count", "force", "marked"),
    [
        (0.10, 20, False, 20),
        (0.10, 40, False, 0),
        (0.10, 40, True, 40),
        (0.0, 1, False, 0),
        (1.0, 300, False, 300),
    ],
    ids=["under-limit", "over-limit", "over-limit-forced", "zero-share", "all"],
)
def test_reconcile_refuses_more_than_the_deleted_share_without_force(
    simulator: Simulator,
    warehouse: Warehouse,
    share: float,
    count: int,
    force: bool,
    marked: int,
) -> None:
    settings = make_settings(
        simulator, warehouse, reconcile={"max_deleted_share": share}
    )
    sync(settings, warehouse)
    delete_upstream(simulator, count)

    if marked:
        assert reconcile(settings, warehouse, force=force).deleted == marked
    else:
        with pytest.raises(DeletionLimitError, match="nothing was marked"):
            reconcile(settings, warehouse, force=force)
        run = last_run(warehouse)
        assert run["status"] == "failed"
        assert "--force" in run["error"]

    assert len(deleted_ids(warehouse)) == marked


def fail_after_page(
    page: int, action: Callable[[Simulator], None]
) -> Callable[[Simulator, int], None]:
    def hook(simulator: Simulator, page_number: int) -> None:
        if page_number == page:
            action(simulator)

    return hook


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (lambda s: s.inject(*[Fault.status(503)] * 4), ApiUnavailableError),
        (lambda s: s.inject(*[Fault.drop()] * 4), ApiUnavailableError),
        (lambda s: s.set_forbidden(), ApiPermissionError),
    ],
    ids=["5xx-until-retries-run-out", "dropped-connections", "permission-revoked"],
)
def test_reconcile_listing_failing_midway_marks_nothing(
    simulator: Simulator,
    warehouse: Warehouse,
    failure: Callable[[Simulator], None],
    error: type[Exception],
) -> None:
    settings = make_settings(simulator, warehouse)
    sync(settings, warehouse)
    delete_upstream(simulator, 5)
    simulator.on_page(fail_after_page(2, failure))

    with pytest.raises(error):
        reconcile(settings, warehouse)

    assert deleted_ids(warehouse) == set()
    assert last_run(warehouse)["status"] == "failed"


def create_and_store(warehouse: Warehouse) -> Callable[[Simulator], None]:
    """A session created upstream after the listing passed its place, and
    stored meanwhile by another loader (here a sync of another source)."""

    def action(simulator: Simulator) -> None:
        simulator.create_session()
        other = make_settings(simulator, warehouse, sync={"source": "other"})
        assert sync(other, warehouse).counts.sessions_inserted == 1

    return action


def delete_a_listed_session(simulator: Simulator) -> None:
    """Shift an offset cursor back by one: the next page skips a session."""
    simulator.delete_session(simulator.expected_sessions()[0]["session_id"])


@pytest.mark.parametrize(
    ("cursor", "race", "is_skipped", "deleted_later"),
    [
        ("keyset", "created-and-stored", False, 0),
        ("offset", "created-and-stored", False, 0),
        ("offset", "shifted-cursor", True, 1),
    ],
    ids=[
        "new-session-keyset",
        "new-session-offset",
        "session-skipped-by-offset-cursor",
    ],
)
def test_reconcile_never_marks_a_session_the_listing_missed(
    warehouse: Warehouse,
    caplog: pytest.LogCaptureFixture,
    cursor: str,
    race: str,
    is_skipped: bool,
    deleted_later: int,
) -> None:
    with start_simulator(cursor=cursor, order="created_desc") as simulator:
        settings = make_settings(simulator, warehouse)
        sync(settings, warehouse)
        action = (
            create_and_store(warehouse)
            if race == "created-and-stored"
            else delete_a_listed_session
        )
        simulator.on_page(fail_after_page(2, action))

        summary = reconcile(settings, warehouse)

        assert summary.deleted == 0
        assert deleted_ids(warehouse) == set()
        assert "A page hook raised" not in caplog.text
        assert ("looked up by id" in caplog.text) is is_skipped
        simulator.clear_hooks()
        assert reconcile(settings, warehouse).deleted == deleted_later


@pytest.mark.parametrize("name", ["org_ids", "tags", "is_archived"])
def test_reconcile_judges_only_sessions_within_the_filters(
    simulator: Simulator, warehouse: Warehouse, name: str
) -> None:
    sync(make_settings(simulator, warehouse), warehouse)
    first = simulator.sessions_snapshot()[0]
    value = {
        "org_ids": [first["org_id"]],
        "tags": first["tags"][:1] or ["none"],
        "is_archived": bool(first.get("is_archived")),
    }[name]
    in_scope = delete_upstream(simulator, 1, **{name: value})
    everything = {s["session_id"] for s in simulator.sessions_snapshot()}
    outside = everything - {
        s["session_id"] for s in simulator.expected_sessions(**{name: value})
    }
    simulator.delete_session(sorted(outside)[0])
    settings = make_settings(simulator, warehouse, filters={name: value})

    summary = reconcile(settings, warehouse)

    assert deleted_ids(warehouse) == in_scope
    assert summary.deleted == 1


@pytest.mark.parametrize(
    ("include_total", "count", "api_total", "is_due"),
    [(True, 0, 300, False), (True, 3, 297, True), (False, 3, None, False)],
    ids=["nothing-deleted", "three-deleted", "api-without-total"],
)
def test_reconcile_deletion_signal_compares_total_with_live_sessions(
    warehouse: Warehouse,
    include_total: bool,
    count: int,
    api_total: int | None,
    is_due: bool,
) -> None:
    with start_simulator(include_total=include_total) as simulator:
        settings = make_settings(simulator, warehouse)
        sync(settings, warehouse)
        delete_upstream(simulator, count)
        simulator.reset_log()
        client = DevinClient(settings.api, settings.require_api_key())

        signal = deletion_signal(settings, warehouse.engine, client)
        client.close()

        assert (signal.api_total, signal.live_sessions) == (api_total, 300)
        assert signal.is_reconcile_due is is_due
        assert is_reconcile_due(settings, warehouse.engine) is is_due
        requests = simulator.requests_log
        assert len(requests) == 2
        assert all(("first", "1") in request.query for request in requests)


def test_reconcile_cli_prints_one_line_and_refuses_over_the_limit(
    pg_warehouse: Warehouse,
) -> None:
    with start_simulator(count=60) as simulator:
        sync(make_settings(simulator, pg_warehouse), pg_warehouse)
        delete_upstream(simulator, 1)

        marked = run_cli(simulator, pg_warehouse, "reconcile")
        delete_upstream(simulator, 20)
        refused = run_cli(simulator, pg_warehouse, "reconcile")
        forced = run_cli(simulator, pg_warehouse, "reconcile", "--force")

    assert marked.returncode == 0, marked.stderr
    assert marked.stdout.startswith("Reconcile run 2 succeeded in ")
    assert marked.stdout.endswith(
        ": 59 sessions listed, 1 marked deleted, 0 restored\n"
    )
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert lines[-1].startswith(
        "Error: reconcile would mark 20 of 59 live sessions deleted (34%)"
    )
    assert "--force" in lines[-1]
    assert "Traceback" not in refused.stderr
    assert forced.stdout.endswith(
        ": 39 sessions listed, 20 marked deleted, 0 restored\n"
    )
    assert simulator.config.api_key not in marked.stderr + refused.stderr
