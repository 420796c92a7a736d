"""session_history: one row per observed version, written with the session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from etl import db
from etl.errors import LoadError
from etl.pipeline import RunSummary, sync_once
from etl.simulator import Simulator
from reference import pr_states
from support import Warehouse, make_settings, start_simulator


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with start_simulator(count=60) as running:
        yield running


def sync(simulator: Simulator, warehouse: Warehouse, **options: Any) -> RunSummary:
    summary = sync_once(
        make_settings(simulator, warehouse), warehouse.engine, **options
    )
    assert summary is not None, "the run lock was taken"
    return summary


def history(warehouse: Warehouse) -> dict[tuple[str, int], dict[str, Any]]:
    """Every version by (session_id, version), JSON columns decoded."""
    query = "SELECT * FROM session_history"
    with warehouse.engine.connect() as connection:
        rows = connection.execute(sa.text(query)).mappings().all()
    return {(row["session_id"], row["version"]): _decoded(row) for row in rows}


def _decoded(row: Any) -> dict[str, Any]:
    values = dict(row)
    for name in ("tags", "pull_requests"):
        if isinstance(values[name], str):  # SQLite keeps JSON as text
            values[name] = json.loads(values[name])
    values["is_archived"] = (
        None if row["is_archived"] is None else bool(row["is_archived"])
    )
    return values


def latest(warehouse: Warehouse, session_id: str) -> dict[str, Any]:
    versions = [v for (key, _), v in history(warehouse).items() if key == session_id]
    return max(versions, key=lambda version: version["version"])


def test_history_first_sync_records_version_one_of_every_session(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    summary = sync(simulator, warehouse)

    versions = history(warehouse)
    listed = simulator.expected_sessions()
    assert set(versions) == {(s["session_id"], 1) for s in listed}
    for session in listed:
        stored = versions[(session["session_id"], 1)]
        assert stored["run_id"] == summary.run_id
        assert stored["status"] == session["status"]
        assert stored["acus_consumed"] == session["acus_consumed"]
        assert stored["tags"] == sorted(set(session.get("tags") or ()))
        assert stored["pull_requests"] == pr_states(session)


def test_history_rerun_without_upstream_change_adds_no_version(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    sync(simulator, warehouse)
    before = history(warehouse)

    sync(simulator, warehouse, full=True)
    sync(simulator, warehouse)

    assert history(warehouse) == before


def _same_second(session: dict[str, Any]) -> dict[str, Any]:
    return {"updated_at": session["updated_at"]}


# What each change does to a session, and how many versions it must add.
CHANGES = [
    pytest.param(lambda s: {"status": "exit"}, 1, id="status"),
    pytest.param(lambda s: {"acus_consumed": s["acus_consumed"] + 2.5}, 1, id="acus"),
    pytest.param(lambda s: {"title": "Renamed"}, 1, id="title"),
    pytest.param(
        lambda s: {"tags": ["zeta", "Alpha", "é"], **_same_second(s)},
        1,
        id="tags-only-same-updated-at",
    ),
    pytest.param(
        lambda s: {
            "pull_requests": [
                {"pr_url": "https://github.com/acme/web/pull/7", "pr_state": "merged"}
            ],
            **_same_second(s),
        },
        1,
        id="pr-state-only-same-updated-at",
    ),
    pytest.param(lambda s: {"structured_output": {"new": 1}}, 1, id="other-field"),
    pytest.param(
        lambda s: {"subcategory": "Other", **_same_second(s)}, 0, id="untracked"
    ),
    pytest.param(lambda s: {"status": "exit", "updated_at": 1}, 0, id="stale-version"),
]


def test_history_upstream_changes_add_a_version_only_when_tracked_data_changed(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    first = sync(simulator, warehouse)
    targets = simulator.sessions_snapshot()[: len(CHANGES)]
    served = {
        case.id: simulator.update_session(target["session_id"], **change(target))
        for case, target in zip(CHANGES, targets, strict=True)
        for change, _ in [case.values]
    }

    second = sync(simulator, warehouse, full=True)

    expected_total = len(simulator.expected_sessions())
    for case, target in zip(CHANGES, targets, strict=True):
        added, session = case.values[1], served[case.id]
        newest = latest(warehouse, target["session_id"])
        assert newest["version"] == 1 + added, case.id
        assert newest["run_id"] == (second.run_id if added else first.run_id), case.id
        if added:
            assert newest["status"] == session["status"], case.id
            assert newest["title"] == session.get("title"), case.id
            assert newest["tags"] == sorted(session["tags"]), case.id
            assert newest["pull_requests"] == pr_states(session), case.id
        expected_total += added
    assert len(history(warehouse)) == expected_total


def test_history_versions_count_up_across_runs(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    sync(simulator, warehouse)
    session_id = simulator.sessions_snapshot()[0]["session_id"]
    runs = []
    for step, acus in enumerate((10.0, 12.5, 20.0)):
        # Each step one second later than any generated updated_at.
        moment = 1_800_000_000 + step
        simulator.update_session(session_id, acus_consumed=acus, updated_at=moment)
        runs.append(sync(simulator, warehouse, full=True).run_id)

    versions = sorted(
        (v["version"], v["acus_consumed"], v["run_id"])
        for (key, _), v in history(warehouse).items()
        if key == session_id
    )
    assert [v[1:] for v in versions[1:]] == list(
        zip((10.0, 12.5, 20.0), runs, strict=True)
    )
    assert [v[0] for v in versions] == [1, 2, 3, 4]


def test_history_commits_only_with_its_batch(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    import etl.pipeline

    def fail(*_: Any, **__: Any) -> None:
        raise LoadError("injected failure after the batch was loaded")

    with start_simulator(count=40) as simulator:
        monkeypatch.setattr(etl.pipeline.state, "add_run_counts", fail)
        with pytest.raises(LoadError, match="injected"):
            sync(simulator, warehouse)

    with warehouse.engine.connect() as connection:
        counts = connection.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM sessions), "
                "(SELECT count(*) FROM session_history)"
            )
        ).one()
    assert tuple(counts) == (0, 0)


def test_history_migration_backfill_matches_what_the_loader_writes(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    sync(simulator, warehouse)
    config = db.alembic_config(warehouse.engine, warehouse.settings)
    command.downgrade(config, "0002")
    command.upgrade(config, "head")
    backfilled = history(warehouse)

    sync(simulator, warehouse, full=True)

    assert history(warehouse) == backfilled
    assert len(backfilled) == len(simulator.expected_sessions())
    assert {v["run_id"] for v in backfilled.values()} == {None}
    assert {version for _, version in backfilled} == {1}
