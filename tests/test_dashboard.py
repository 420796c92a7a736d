"""The Grafana dashboard: every panel's SQL, run as devin_reader, shows what
the simulator knows.

Grafana cannot run here, so the test does what its PostgreSQL datasource
would: it takes each panel's ``rawSql`` from grafana/dashboards, expands
``$__timeFilter(column)`` to a range that holds everything, and runs it on a
warehouse filled by real syncs from the simulator, under ``SET ROLE
devin_reader``. Each panel's key numbers are then checked against the
simulator's own data.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import yaml

import reference
from etl import db
from etl.pipeline import sync_once
from etl.simulator import Simulator, generate_organizations, generate_users
from reference import Observations, pr_states, repo_of
from support import (
    NOW,
    Warehouse,
    make_database_settings,
    make_settings,
    start_simulator_with_directory,
)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "devin-sessions.json"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "warehouse.yaml"
PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "devin.yaml"
TIME_FILTER = re.compile(r"\$__timeFilter\((\w+)\)")
DAY = int(datetime(2026, 9, 25, tzinfo=UTC).timestamp())
HOUR = 3600

Rows = list[sa.Row[Any]]


def load_panels() -> dict[str, dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return {panel["title"]: panel for panel in dashboard["panels"]}


PANELS = load_panels()


def runnable_sql(panel: dict[str, Any]) -> str:
    """The panel's SQL as Grafana would send it, for a range holding all."""
    sql = TIME_FILTER.sub(
        r"\1 BETWEEN '-infinity' AND 'infinity'", target(panel)["rawSql"]
    )
    assert "$" not in sql, f"{panel['title']}: a Grafana macro this test cannot expand"
    return sql


def target(panel: dict[str, Any]) -> dict[str, Any]:
    (only,) = panel["targets"]
    return dict(only)


@dataclass(frozen=True)
class SyncedWarehouse:
    """The synced warehouse and what the simulator served."""

    warehouse: Warehouse
    listed: list[dict[str, Any]]
    seen: Observations

    def query_as_reader(self, sql: str) -> Rows:
        with self.warehouse.engine.connect() as connection:
            connection.execute(sa.text("SET ROLE devin_reader"))
            try:
                return list(connection.execute(sa.text(sql)))
            finally:
                connection.rollback()


@pytest.fixture(scope="module")
def synced(postgres_url: str) -> Iterator[SyncedWarehouse]:
    settings = make_database_settings(postgres_url, f"g_{uuid.uuid4().hex[:12]}")
    engine = db.create_warehouse_engine(settings)
    db.upgrade_schema(engine, settings)
    warehouse = Warehouse(settings, engine)
    try:
        with start_simulator_with_directory(count=150) as simulator:
            yield _sync_with_changes(simulator, warehouse)
    finally:
        engine.dispose()


def _sync_with_changes(simulator: Simulator, warehouse: Warehouse) -> SyncedWarehouse:
    settings = make_settings(simulator, warehouse)
    seen = Observations()
    for change in (None, _grow_and_resolve, _end_some):
        if change is not None:
            change(simulator)
        assert sync_once(settings, warehouse.engine, full=True) is not None
        seen.observe(simulator.expected_sessions())
    return SyncedWarehouse(warehouse, simulator.expected_sessions(), seen)


def _grow_and_resolve(simulator: Simulator) -> None:
    sessions = simulator.sessions_snapshot()
    for index, session in enumerate(sessions[:10]):
        # Only open pull requests merge: states never go back.
        pulls = [
            {**pr, "pr_state": "merged"} if pr.get("pr_state") in ("open", None) else pr
            for pr in session["pull_requests"]
        ]
        simulator.update_session(
            session["session_id"],
            acus_consumed=session["acus_consumed"] + index,
            pull_requests=pulls,
            updated_at=DAY + index * HOUR,
        )


def _end_some(simulator: Simulator) -> None:
    sessions = simulator.sessions_snapshot()[10:]
    running = [s for s in sessions if not reference.is_terminal(s)][:8]
    for index, session in enumerate(running):
        simulator.update_session(
            session["session_id"], status="error", updated_at=DAY + (30 + index) * HOUR
        )


def totals_by(rows: Rows, key: int, value: int) -> dict[Any, float]:
    totals: dict[Any, float] = defaultdict(float)
    for row in rows:
        totals[row[key]] += float(row[value])
    return dict(totals)


def org_names() -> dict[str, str]:
    return {o["org_id"]: o["name"] for o in generate_organizations(seed=7, now=NOW)}


def user_names() -> dict[str, str | None]:
    return {u["user_id"]: u["name"] for u in generate_users(seed=7)}


def pr_counts(listed: list[dict[str, Any]]) -> Counter[tuple[str, str | None]]:
    """Current pull requests per (repo, state), those with a repository."""
    return Counter(
        (repo, state)
        for session in listed
        for url, state in pr_states(session).items()
        if (repo := repo_of(url)) is not None
    )


def minutes(seen: Observations) -> list[float]:
    return [seconds / 60 for seconds in reference.durations(seen).values()]


def check_sessions(rows: Rows, data: SyncedWarehouse) -> None:
    assert rows[0].sessions == len(data.listed)


def check_acus(rows: Rows, data: SyncedWarehouse) -> None:
    assert rows[0].acus == pytest.approx(sum(s["acus_consumed"] for s in data.listed))


def check_merged(rows: Rows, data: SyncedWarehouse) -> None:
    counts = pr_counts(data.listed)
    assert rows[0].merged == sum(
        n for (_, state), n in counts.items() if state == "merged"
    )


def check_merge_rate(rows: Rows, data: SyncedWarehouse) -> None:
    counts = pr_counts(data.listed)
    merged = sum(n for (_, state), n in counts.items() if state == "merged")
    closed = sum(n for (_, state), n in counts.items() if state == "closed")
    assert rows[0].merge_rate == pytest.approx(merged / (merged + closed))


def check_sessions_by_org(rows: Rows, data: SyncedWarehouse) -> None:
    names = org_names()
    expected = Counter(names[s["org_id"]] for s in data.listed)
    assert totals_by(rows, 1, 2) == dict(expected)


def check_sessions_by_origin(rows: Rows, data: SyncedWarehouse) -> None:
    expected = Counter(s.get("origin") or "(none)" for s in data.listed)
    assert totals_by(rows, 1, 2) == dict(expected)


def check_acus_by_org(rows: Rows, data: SyncedWarehouse) -> None:
    names = org_names()
    expected: dict[str, float] = defaultdict(float)
    for session in data.listed:
        expected[names[session["org_id"]]] += session["acus_consumed"]
    assert totals_by(rows, 1, 2) == pytest.approx(dict(expected))


def check_top_users(rows: Rows, data: SyncedWarehouse) -> None:
    names = user_names()
    acus: dict[str | None, float] = defaultdict(float)
    for session in data.listed:
        acus[session.get("user_id")] += session["acus_consumed"]
    labels = {
        user_id: (names.get(user_id) or user_id) if user_id else "(service users)"
        for user_id in acus
    }
    top = sorted(acus.items(), key=lambda item: (-item[1], labels[item[0]]))[:10]
    assert [row.user for row in rows] == [labels[user_id] for user_id, _ in top]
    assert [row.acus for row in rows] == pytest.approx([value for _, value in top])


def check_pr_outcomes(rows: Rows, data: SyncedWarehouse) -> None:
    counts = pr_counts(data.listed)
    repos = {repo for repo, _ in counts}
    expected = {
        repo: (
            sum(n for (r, _), n in counts.items() if r == repo),
            counts[(repo, "merged")],
            counts[(repo, "closed")],
        )
        for repo in repos
    }
    assert {row.repo: (row.opened, row.merged, row.closed) for row in rows} == expected
    assert any(row.merged for row in rows)


def check_weekly_merge_rate(rows: Rows, data: SyncedWarehouse) -> None:
    weekly: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
    for (week, _), (_, merged, closed) in reference.pr_outcomes(data.seen).items():
        weekly[week][0] += merged
        weekly[week][1] += closed
    actual = {row.time.astimezone(UTC).date(): row.merge_rate for row in rows}
    assert actual.keys() == weekly.keys()
    for week, (merged, closed) in weekly.items():
        if merged + closed:
            assert actual[week] == pytest.approx(merged / (merged + closed)), week
        else:
            assert actual[week] is None, week


def check_weekly_durations(rows: Rows, data: SyncedWarehouse) -> None:
    by_week: dict[Any, list[float]] = defaultdict(list)
    listed = {s["session_id"]: s for s in data.listed}
    for session_id, seconds in reference.durations(data.seen).items():
        created = listed[session_id]["created_at"]
        by_week[reference.monday(reference.bi_day(created))].append(seconds / 60)
    expected = {
        week: (np.percentile(values, 50), np.percentile(values, 90))
        for week, values in by_week.items()
    }
    actual = {row.time.astimezone(UTC).date(): (row.p50, row.p90) for row in rows}
    assert actual.keys() == expected.keys()
    for week, values in expected.items():
        assert actual[week] == pytest.approx(values)


def check_duration_percentiles(rows: Rows, data: SyncedWarehouse) -> None:
    values = minutes(data.seen)
    (row,) = rows
    assert row.sessions == len(values)
    assert (row.p50, row.p90, row.p99) == pytest.approx(
        tuple(np.percentile(values, [50, 90, 99]))
    )


def check_status_mix(rows: Rows, data: SyncedWarehouse) -> None:
    expected = Counter(s.get("status") or "(none)" for s in data.listed)
    assert {row.status: row.sessions for row in rows} == dict(expected)


def check_tags(rows: Rows, data: SyncedWarehouse) -> None:
    expected = Counter(tag for s in data.listed for tag in set(s.get("tags") or ()))
    assert totals_by(rows, 1, 2) == dict(expected)


CHECKS: dict[str, Callable[[Rows, SyncedWarehouse], None]] = {
    "Sessions": check_sessions,
    "ACUs consumed": check_acus,
    "Pull requests merged": check_merged,
    "Merge rate": check_merge_rate,
    "Sessions per day by organization": check_sessions_by_org,
    "Sessions per day by origin": check_sessions_by_origin,
    "ACUs per day by organization": check_acus_by_org,
    "Top users by ACUs": check_top_users,
    "Pull request outcomes by repository": check_pr_outcomes,
    "Merge rate per week": check_weekly_merge_rate,
    "Session duration percentiles per week (minutes)": check_weekly_durations,
    "Session duration percentiles (minutes)": check_duration_percentiles,
    "Status mix": check_status_mix,
    "Tag usage per week": check_tags,
}


def test_dashboard_every_panel_has_a_check() -> None:
    assert set(PANELS) == set(CHECKS)


@pytest.mark.parametrize("title", sorted(PANELS))
def test_dashboard_panel_sql_runs_as_reader_and_matches_the_simulator(
    synced: SyncedWarehouse, title: str
) -> None:
    rows = synced.query_as_reader(runnable_sql(PANELS[title]))

    assert rows, f"{title} shows nothing"
    CHECKS[title](rows, synced)


@pytest.mark.parametrize("title", sorted(PANELS))
def test_dashboard_panel_shape_suits_its_format(title: str) -> None:
    panel = PANELS[title]
    query = target(panel)

    assert query["format"] in ("table", "time_series")
    assert query["datasource"] == panel["datasource"] == datasource_ref()
    assert "FROM v_" in query["rawSql"], "panels read the documented views only"
    if query["format"] == "time_series":
        assert query["rawSql"].splitlines()[0].endswith('AS "time",')
        assert "ORDER BY 1" in query["rawSql"]


def test_dashboard_time_series_come_in_time_order(synced: SyncedWarehouse) -> None:
    for title, panel in PANELS.items():
        if target(panel)["format"] != "time_series":
            continue
        times = [row.time for row in synced.query_as_reader(runnable_sql(panel))]
        assert times == sorted(times), title


def test_dashboard_reader_cannot_read_the_tables(synced: SyncedWarehouse) -> None:
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        synced.query_as_reader("SELECT count(*) FROM sessions")


def datasource_ref() -> dict[str, str]:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    return {"type": source["type"], "uid": source["uid"]}


def test_dashboard_datasource_logs_in_as_reader_with_a_password_from_env() -> None:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]

    assert source["user"] == "devin_reader"
    assert source["secureJsonData"]["password"] == "${DEVIN_READER_PASSWORD}"
    assert source["jsonData"]["database"].startswith("${")


def test_dashboard_provider_reads_where_compose_mounts_the_dashboards() -> None:
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())

    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
