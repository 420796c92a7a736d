"""``devin-etl status`` as text: the health verdict and the last runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from etl.errors import ApiAuthError
from etl.pipeline import sync_once
from etl.report import render_status
from etl.simulator import Fault, Simulator
from support import Warehouse, make_settings


def set_last_success(warehouse: Warehouse, age: timedelta) -> None:
    with warehouse.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE sync_state SET last_success_at = :at"),
            {"at": datetime.now(UTC) - age},
        )


@pytest.mark.parametrize(
    ("runs", "age", "health"),
    [
        (0, None, "unhealthy: no successful run of source enterprise"),
        (1, None, "healthy: the last successful run of source enterprise was "),
        (1, timedelta(hours=2), "unhealthy: the last successful run of source"),
    ],
    ids=["never-synced", "fresh", "stale"],
)
def test_report_status_shows_the_health_verdict(
    simulator: Simulator,
    warehouse: Warehouse,
    runs: int,
    age: timedelta | None,
    health: str,
) -> None:
    settings = make_settings(simulator, warehouse)
    for _ in range(runs):
        sync_once(settings, warehouse.engine)
    if age is not None:
        set_last_success(warehouse, age)

    lines = render_status(warehouse.engine, settings, runs=5).splitlines()

    assert lines[0] == "Source enterprise"
    assert lines[1].startswith(f"  health:        {health}")


def test_report_status_lists_runs_with_kind_counts_and_errors(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    settings = make_settings(simulator, warehouse)
    sync_once(settings, warehouse.engine)
    simulator.inject(Fault.status(401))
    with pytest.raises(ApiAuthError, match="401"):
        sync_once(settings, warehouse.engine)

    text = render_status(warehouse.engine, settings, runs=5)

    table = text.split("Last runs:\n")[1].split("\n\n")[0].splitlines()
    header, failed, first = (line.split() for line in table)
    assert header[:3] == ["id", "kind", "status"]
    assert "req" in header
    assert failed[1:3] == ["sync", "failed"]
    assert "401" in table[1]
    assert first[1:3] == ["sync", "succeeded"]
    count = len(simulator.expected_sessions())
    assert first[header.index("new")] == str(count)
    assert int(first[header.index("req")]) > 0
