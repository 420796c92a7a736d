"""Single-flight: real ``devin-etl`` processes racing for a source's lock.

The first process is held inside its listing by a simulator page hook, so
it provably still runs, holding the lock, while the second one starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from compare import api_snapshot, assert_same, warehouse_snapshot
from etl.lock import run_lock
from etl.pipeline import sync_once
from etl.simulator import Simulator
from support import Warehouse, make_settings, run_cli, start_cli, start_simulator

SOURCE = "enterprise"
BUSY_RUN = (
    f"Another run of source {SOURCE} is in progress; nothing to do "
    "(use --wait to wait for it)."
)
BUSY_BACKFILL = (
    f"Another backfill of source {SOURCE} is in progress; nothing to do "
    "(use --wait to wait for it)."
)
CHILD_TABLES = {
    "session_tags": "session_id, tag",
    "session_pull_requests": "session_id, pr_url",
    "session_children": "session_id, child_session_id",
}


def on_page(page: int, action: Callable[[], None]) -> Callable[[Simulator, int], None]:
    """A page hook that runs ``action`` once, while serving page ``page``."""

    def hook(_simulator: Simulator, page_number: int) -> None:
        if page_number == page:
            action()

    return hook


def assert_warehouse_equals_api(simulator: Simulator, warehouse: Warehouse) -> None:
    expected = api_snapshot(simulator.expected_sessions())
    assert_same(warehouse_snapshot(warehouse.engine), expected)
    with warehouse.engine.connect() as connection:
        for table, key in CHILD_TABLES.items():
            rows = connection.execute(sa.text(f"SELECT count(*) FROM {table}"))
            distinct = connection.execute(
                sa.text(f"SELECT count(*) FROM (SELECT DISTINCT {key} FROM {table}) d")
            )
            assert rows.scalar_one() == distinct.scalar_one(), table


def runs(warehouse: Warehouse) -> list[dict[str, Any]]:
    with warehouse.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM sync_runs ORDER BY id"))
        return [dict(row) for row in rows.mappings()]


def test_lock_second_sync_exits_0_while_the_first_runs(warehouse: Warehouse) -> None:
    with start_simulator(count=200) as simulator:
        second: list[subprocess.CompletedProcess[str]] = []
        simulator.on_page(
            on_page(2, lambda: second.append(run_cli(simulator, warehouse, "sync")))
        )

        first = start_cli(simulator, warehouse, "sync")
        first_out, first_err = first.communicate(timeout=120)

        assert first.returncode == 0, first_err
        assert first_out.startswith("Run 1 succeeded")
        assert second[0].returncode == 0, second[0].stderr
        assert second[0].stdout.splitlines() == [BUSY_RUN]
        assert "Traceback" not in second[0].stderr
        assert [run["status"] for run in runs(warehouse)] == ["succeeded"]
        assert_warehouse_equals_api(simulator, warehouse)


def test_lock_sync_with_wait_runs_after_the_first_ends(pg_warehouse: Warehouse) -> None:
    with start_simulator(count=200) as simulator:
        waiting: list[subprocess.Popen[str]] = []
        simulator.on_page(
            on_page(
                2, lambda: waiting.append(start_waiting_sync(simulator, pg_warehouse))
            )
        )

        first = start_cli(simulator, pg_warehouse, "sync")
        _, first_err = first.communicate(timeout=120)
        second_out, second_err = waiting[0].communicate(timeout=120)

        assert first.returncode == 0, first_err
        assert waiting[0].returncode == 0, second_err
        assert second_out.startswith("Run 2 succeeded")
        done, then = runs(pg_warehouse)
        assert (done["status"], then["status"]) == ("succeeded", "succeeded")
        assert then["started_at"] >= done["finished_at"]
        assert_warehouse_equals_api(simulator, pg_warehouse)


def start_waiting_sync(
    simulator: Simulator, warehouse: Warehouse
) -> subprocess.Popen[str]:
    """Start ``sync --wait`` and return once it says that it is waiting."""
    process = start_cli(simulator, warehouse, "sync", "--wait")
    assert process.stderr is not None
    for line in process.stderr:
        if "is held by another run; waiting" in line:
            return process
    raise AssertionError("sync --wait ended without waiting for the lock")


def test_lock_sigkilled_run_frees_the_lock_and_is_marked_abandoned(
    warehouse: Warehouse,
) -> None:
    with start_simulator(count=200) as simulator:
        process = start_cli(simulator, warehouse, "sync")
        simulator.on_page(on_page(3, lambda: os.kill(process.pid, signal.SIGKILL)))

        assert process.wait(timeout=60) == -signal.SIGKILL
        simulator.clear_hooks()
        settings = make_settings(simulator, warehouse, sync={"lock_wait_seconds": 30})
        summary = sync_once(settings, warehouse.engine, wait=True)

        assert summary is not None
        killed, next_run = runs(warehouse)
        assert killed["status"] == "abandoned"
        assert next_run["status"] == "succeeded"
        assert_warehouse_equals_api(simulator, warehouse)


@pytest.mark.parametrize(
    ("held", "command", "expected"),
    [
        (SOURCE, ["sync"], BUSY_RUN),
        (SOURCE, ["reconcile"], BUSY_RUN),
        (f"{SOURCE}:backfill", ["backfill", "--since", "2026-09-01"], BUSY_BACKFILL),
        (SOURCE, ["backfill", "--since", "2026-09-01"], "Backfill run 1 succeeded"),
        (f"{SOURCE}:backfill", ["sync"], "Run 1 succeeded"),
    ],
    ids=[
        "sync-vs-run",
        "reconcile-vs-run",
        "backfill-vs-backfill",
        "backfill-goes-on-beside-a-sync",
        "sync-goes-on-beside-a-backfill",
    ],
)
def test_lock_command_meets_a_held_lock(
    warehouse: Warehouse, held: str, command: list[str], expected: str
) -> None:
    with (
        start_simulator(count=60) as simulator,
        run_lock(warehouse.engine, warehouse.settings, held) as is_held,
    ):
        assert is_held

        result = run_cli(simulator, warehouse, *command)

        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(expected)
        assert len(result.stdout.splitlines()) == 1
