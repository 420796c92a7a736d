"""The BI views against what the simulator served, on PostgreSQL and SQLite.

One scenario per backend and day boundary: a first sync, upstream changes at
chosen moments (ACU growth on both sides of 08:00 UTC, pull requests merged,
closed and opened, sessions ending, tags changing), a second sync, more
growth, a third sync, and finally a session marked deleted as a reconcile
would. Each view is compared with :mod:`reference`, which derives the same
numbers from the sessions the simulator listed after each sync.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import reference
from etl import db
from etl.pipeline import sync_once
from etl.simulator import Simulator, generate_organizations, generate_users
from reference import Observations, as_date, as_epoch, bi_day, pr_states
from support import (
    NOW,
    Warehouse,
    make_database_settings,
    make_settings,
    start_simulator_with_directory,
)

HOUR = 3600
# A day after the generated data ends (NOW is 2026-09-21 14:13 UTC).
DAY = int(datetime(2026, 9, 25, tzinfo=UTC).timestamp())
MERGED_REPO_URL = "https://github.com/acme/web/pull/424242"


@dataclass(frozen=True)
class Scenario:
    warehouse: Warehouse
    hour: int
    seen: Observations
    listed: list[dict[str, Any]]
    deleted: str
    ended: list[str]

    @property
    def live(self) -> list[dict[str, Any]]:
        return [s for s in self.listed if s["session_id"] != self.deleted]

    def rows(self, query: str) -> list[Any]:
        with self.warehouse.engine.connect() as connection:
            return list(connection.execute(sa.text(query)))


@pytest.fixture(
    scope="module",
    params=[("postgresql", 0), ("postgresql", 8), ("sqlite", 0), ("sqlite", 8)],
    ids=["postgresql-utc", "postgresql-8h", "sqlite-utc", "sqlite-8h"],
)
def scenario(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    backend, hour = request.param
    warehouse = _migrated_warehouse(request, tmp_path_factory, backend)
    try:
        with start_simulator_with_directory(count=120) as simulator:
            yield _play(simulator, warehouse, hour)
    finally:
        warehouse.engine.dispose()


def _migrated_warehouse(
    request: pytest.FixtureRequest, tmp: pytest.TempPathFactory, backend: str
) -> Warehouse:
    if backend == "postgresql":
        url = request.getfixturevalue("postgres_url")
        settings = make_database_settings(url, f"v_{uuid.uuid4().hex[:12]}")
    else:
        path: Path = tmp.mktemp("views") / "warehouse.db"
        settings = make_database_settings(f"sqlite:///{path}")
    engine = db.create_warehouse_engine(settings)
    db.upgrade_schema(engine, settings)
    return Warehouse(settings, engine)


def _play(simulator: Simulator, warehouse: Warehouse, hour: int) -> Scenario:
    settings = make_settings(simulator, warehouse, bi={"day_start_hour_utc": hour})
    seen = Observations()

    def sync() -> None:
        assert sync_once(settings, warehouse.engine, full=True) is not None
        seen.observe(simulator.expected_sessions())

    sync()
    ended = _change_first_round(simulator)
    sync()
    _change_second_round(simulator)
    sync()
    deleted = simulator.sessions_snapshot()[1]["session_id"]
    with warehouse.engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE sessions SET deleted_at = last_synced_at WHERE session_id = :s"
            ),
            {"s": deleted},
        )
    listed = simulator.expected_sessions()
    return Scenario(warehouse, hour, seen, listed, deleted, ended)


def _change_first_round(simulator: Simulator) -> list[str]:
    """Change sessions upstream; returns the ids of the sessions it ends."""
    sessions = simulator.sessions_snapshot()
    for index, session in enumerate(sessions[:6]):
        # Half just before 08:00 UTC, half just after: the day boundary decides.
        moment = DAY + (5 if index % 2 else 9) * HOUR
        simulator.update_session(
            session["session_id"],
            acus_consumed=session["acus_consumed"] + 1.5 + index,
            updated_at=moment,
        )
    with_prs = [s for s in sessions[6:] if pr_states(s)]
    for session, state in zip(with_prs[:6], ["merged", "closed"] * 3, strict=True):
        pulls = [{**pr, "pr_state": state} for pr in session["pull_requests"]]
        simulator.update_session(
            session["session_id"], pull_requests=pulls, updated_at=DAY + 2 * HOUR
        )
    ended = _end_running_sessions(simulator, sessions)
    opened = sessions[20]
    simulator.update_session(
        opened["session_id"],
        pull_requests=[{"pr_url": MERGED_REPO_URL, "pr_state": "open"}],
        tags=["release", *opened["tags"]],
        updated_at=DAY + 3 * HOUR,
    )
    return ended


def _end_running_sessions(
    simulator: Simulator, sessions: list[dict[str, Any]]
) -> list[str]:
    running = [s for s in sessions[21:] if not reference.is_terminal(s)][:5]
    for offset, session in enumerate(running):
        simulator.update_session(
            session["session_id"],
            status="exit",
            status_detail=None,
            updated_at=DAY + (12 + offset) * HOUR,
        )
    return [session["session_id"] for session in running]


def _change_second_round(simulator: Simulator) -> None:
    sessions = simulator.sessions_snapshot()
    simulator.update_session(
        sessions[0]["session_id"],
        acus_consumed=sessions[0]["acus_consumed"] + 4.25,
        updated_at=DAY + 8 * 24 * HOUR + 7 * HOUR,
    )
    simulator.update_session(
        sessions[20]["session_id"],
        pull_requests=[{"pr_url": MERGED_REPO_URL, "pr_state": "merged"}],
        updated_at=DAY + 9 * 24 * HOUR,
    )
    simulator.update_session(
        sessions[1]["session_id"],
        acus_consumed=sessions[1]["acus_consumed"] + 0.75,
        updated_at=DAY + 10 * 24 * HOUR,
    )


def test_v_sessions_lists_live_sessions_with_their_names(scenario: Scenario) -> None:
    orgs = {o["org_id"]: o["name"] for o in generate_organizations(seed=7, now=NOW)}
    users = {u["user_id"]: (u["name"], u["email"]) for u in generate_users(seed=7)}

    rows = scenario.rows(
        "SELECT session_id, org_name, user_id, user_name, user_email, "
        "created_day, status, acus_consumed FROM v_sessions"
    )

    expected = {
        s["session_id"]: (
            orgs[s["org_id"]],
            *users.get(s.get("user_id"), (None, None)),
            bi_day(s["created_at"], scenario.hour),
            s["status"],
            s["acus_consumed"],
        )
        for s in scenario.live
    }
    assert {
        r.session_id: (
            r.org_name,
            r.user_name,
            r.user_email,
            as_date(r.created_day),
            r.status,
            r.acus_consumed,
        )
        for r in rows
    } == expected


def test_v_sessions_daily_counts_by_day_org_origin_category_status(
    scenario: Scenario,
) -> None:
    rows = scenario.rows(
        "SELECT day, org_id, origin, category, status, sessions FROM v_sessions_daily"
    )

    actual = {(as_date(r[0]), *r[1:5]): r.sessions for r in rows}
    assert actual == dict(reference.sessions_daily(scenario.live, scenario.hour))


def test_v_tags_counts_sessions_per_day_org_and_tag(scenario: Scenario) -> None:
    rows = scenario.rows("SELECT day, org_id, tag, sessions FROM v_tags")

    actual = {(as_date(r.day), r.org_id, r.tag): r.sessions for r in rows}
    assert actual == dict(reference.tags_daily(scenario.live, scenario.hour))


def test_v_pull_requests_lists_current_prs_with_first_seen_dates(
    scenario: Scenario,
) -> None:
    rows = scenario.rows(
        "SELECT session_id, pr_url, repo, pr_state, org_id, first_seen_at, "
        "merged_at, closed_at FROM v_pull_requests"
    )

    seen = scenario.seen.without({scenario.deleted}).versions
    expected = {
        (s["session_id"], url): (
            reference.repo_of(url),
            state,
            s["org_id"],
            *(
                reference.first_seen(seen[s["session_id"]], url, wanted)
                for wanted in (None, "merged", "closed")
            ),
        )
        for s in scenario.live
        for url, state in pr_states(s).items()
    }
    assert {
        (r.session_id, r.pr_url): (
            r.repo,
            r.pr_state,
            r.org_id,
            *(as_epoch(t) if t else None for t in r[5:]),
        )
        for r in rows
    } == expected


def test_v_pr_outcomes_counts_per_repo_and_week(scenario: Scenario) -> None:
    rows = scenario.rows(
        "SELECT week, repo, opened, merged, closed, merge_rate FROM v_pr_outcomes"
    )

    expected = reference.pr_outcomes(
        scenario.seen.without({scenario.deleted}), scenario.hour
    )
    assert {
        (as_date(r.week), r.repo): [r.opened, r.merged, r.closed] for r in rows
    } == (expected)
    for row in rows:
        resolved = row.merged + row.closed
        assert row.merge_rate == (row.merged / resolved if resolved else None)
    week = reference.monday(bi_day(DAY + 9 * 24 * HOUR, scenario.hour))
    assert expected[(week, "acme/web")][1] >= 1  # the PR merged in round two


def test_v_session_durations_ends_at_the_first_terminal_version(
    scenario: Scenario,
) -> None:
    rows = scenario.rows("SELECT session_id, duration_seconds FROM v_session_durations")

    expected = reference.durations(scenario.seen.without({scenario.deleted}))
    assert {r.session_id: r.duration_seconds for r in rows} == expected
    # Sessions seen running first, then ended: their end is the later version.
    assert len(scenario.ended) == 5
    listed = {s["session_id"]: s for s in scenario.listed}
    for session_id in scenario.ended:
        session = listed[session_id]
        assert session["updated_at"] >= DAY + 12 * HOUR
        assert expected[session_id] == session["updated_at"] - session["created_at"]


def test_v_acu_daily_attributes_growth_to_the_day_of_the_later_observation(
    scenario: Scenario,
) -> None:
    rows = scenario.rows("SELECT day, org_id, user_id, acus FROM v_acu_daily")

    actual = {(as_date(r.day), r.org_id, r.user_id): r.acus for r in rows}
    assert actual == pytest.approx(reference.acu_daily(scenario.seen, scenario.hour))
    # The days of every session, deleted ones included, add up to its total.
    total = sum(s["acus_consumed"] for s in scenario.listed)
    assert sum(actual.values()) == pytest.approx(total)


@pytest.mark.parametrize(
    ("hour", "expected"),
    [
        (0, {DAY: 5.0}),
        (8, {DAY - 24 * HOUR: 2.0, DAY: 3.0}),
    ],
    ids=["utc-days", "days-from-8h"],
)
def test_v_acu_daily_day_boundary_follows_the_setting(
    warehouse: Warehouse, hour: int, expected: dict[int, float]
) -> None:
    with Simulator([], organizations=[], users=[]) as simulator:
        created = simulator.create_session(
            created_at=DAY - 24 * HOUR, updated_at=DAY + 5 * HOUR, acus_consumed=2.0
        )
        settings = make_settings(simulator, warehouse, bi={"day_start_hour_utc": 0})
        sync_once(settings, warehouse.engine, full=True)
        simulator.update_session(
            created["session_id"], acus_consumed=5.0, updated_at=DAY + 9 * HOUR
        )
        settings = make_settings(simulator, warehouse, bi={"day_start_hour_utc": hour})
        sync_once(settings, warehouse.engine, full=True)

    with warehouse.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT day, acus FROM v_acu_daily"))
        actual = {as_date(day): acus for day, acus in rows}
    assert actual == {
        datetime.fromtimestamp(day, UTC).date(): acus for day, acus in expected.items()
    }
