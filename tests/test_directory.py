"""The organizations and users tables, refreshed from their directory listings."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from etl.config import Settings
from etl.directory import RefreshResult, refresh_directory
from etl.errors import ApiContractError
from etl.extract import DevinClient
from etl.pipeline import sync_once
from etl.simulator import Simulator, generate_organizations, generate_users
from support import (
    NOW,
    Warehouse,
    make_settings,
    start_simulator_with_directory,
)

ORGANIZATIONS_PATH = "/v3/enterprise/organizations"
USERS_PATH = "/v3/enterprise/members/users"


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with start_simulator_with_directory(count=40) as running:
        yield running


def refresh(simulator: Simulator, warehouse: Warehouse) -> list[RefreshResult]:
    settings = make_settings(simulator, warehouse)
    client = DevinClient(settings.api, settings.require_api_key())
    try:
        return refresh_directory(warehouse.engine, client, page_size=3)
    finally:
        client.close()


def stored(warehouse: Warehouse, table: str) -> dict[str, dict[str, Any]]:
    key = "org_id" if table == "organizations" else "user_id"
    with warehouse.engine.connect() as connection:
        rows = connection.execute(sa.text(f"SELECT * FROM {table}")).mappings()
        return {row[key]: dict(row) for row in rows}


def as_epoch(value: datetime | str | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite keeps timestamps as UTC text
        value = datetime.fromisoformat(value).replace(tzinfo=UTC)
    return int(value.timestamp())


def test_directory_refresh_stores_every_organization_and_user(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    results = refresh(simulator, warehouse)

    organizations = generate_organizations(seed=7, now=NOW)
    users = generate_users(seed=7)
    assert [(r.table, r.listed, r.written) for r in results] == [
        ("organizations", len(organizations), len(organizations)),
        ("users", len(users), len(users)),
    ]
    orgs = stored(warehouse, "organizations")
    assert {
        key: (
            row["name"],
            as_epoch(row["created_at"]),
            as_epoch(row["updated_at"]),
            row["max_session_acu_limit"],
            row["max_cycle_acu_limit"],
            row["removed_at"],
        )
        for key, row in orgs.items()
    } == {
        org["org_id"]: (
            org["name"],
            org["created_at"],
            org["updated_at"],
            org["max_session_acu_limit"],
            org["max_cycle_acu_limit"],
            None,
        )
        for org in organizations
    }
    assert {
        key: (row["email"], row["name"], row["removed_at"])
        for key, row in stored(warehouse, "users").items()
    } == {user["user_id"]: (user["email"], user["name"], None) for user in users}


def test_directory_refresh_without_change_writes_nothing(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    refresh(simulator, warehouse)
    before = {name: stored(warehouse, name) for name in ("organizations", "users")}

    results = refresh(simulator, warehouse)

    assert [(r.written, r.removed) for r in results] == [(0, 0), (0, 0)]
    after = {name: stored(warehouse, name) for name in ("organizations", "users")}
    assert after == before


def test_directory_marks_unlisted_rows_removed_and_restores_them(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    refresh(simulator, warehouse)
    gone = generate_organizations(seed=7, now=NOW)[2]["org_id"]
    simulator.delete_org(gone)

    first = refresh(simulator, warehouse)

    assert first[0].removed == 1
    removed = {
        k for k, r in stored(warehouse, "organizations").items() if r["removed_at"]
    }
    assert removed == {gone}
    with start_simulator_with_directory(count=1) as restored:
        again = refresh(restored, warehouse)
    assert (again[0].written, again[0].removed) == (1, 0)
    assert all(
        r["removed_at"] is None for r in stored(warehouse, "organizations").values()
    )


@pytest.mark.parametrize(
    ("endpoint", "table", "permission", "other_table"),
    [
        ("organizations", "organizations", "ManageOrganizations", "users"),
        ("users", "users", "ManageAccountMembership", "organizations"),
    ],
    ids=["organizations", "users"],
)
def test_directory_forbidden_listing_warns_once_and_the_sync_goes_on(
    simulator: Simulator,
    warehouse: Warehouse,
    caplog: pytest.LogCaptureFixture,
    endpoint: Any,
    table: str,
    permission: str,
    other_table: str,
) -> None:
    simulator.set_forbidden(True, endpoint=endpoint)
    settings = make_settings(simulator, warehouse)

    with caplog.at_level(logging.INFO):
        summary = sync_once(settings, warehouse.engine)

    assert summary is not None
    assert summary.counts.sessions_inserted == 40
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "etl.directory"
    assert permission in warnings[0].getMessage()
    assert simulator.config.api_key not in caplog.text
    assert stored(warehouse, table) == {}
    assert len(stored(warehouse, other_table)) > 0


def test_directory_refreshed_by_every_sync_unless_disabled(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    settings = make_settings(simulator, warehouse, sync={"refresh_directory": False})
    sync_once(settings, warehouse.engine)

    paths = {record.path for record in simulator.requests_log}
    assert paths == {"/v3/enterprise/sessions"}
    assert stored(warehouse, "organizations") == {}

    sync_once(make_settings(simulator, warehouse), warehouse.engine)

    paths = {record.path for record in simulator.requests_log}
    assert {ORGANIZATIONS_PATH, USERS_PATH} <= paths
    assert len(stored(warehouse, "users")) == len(generate_users(seed=7))


def test_directory_refuses_millisecond_timestamps_in_one_line(
    warehouse: Warehouse,
) -> None:
    organizations = generate_organizations(seed=7, now=NOW)
    organizations[0]["created_at"] *= 1000
    with Simulator([], organizations=organizations, users=[]) as simulator:
        settings = make_settings(simulator, warehouse)

        with pytest.raises(ApiContractError) as raised:
            sync_once(settings, warehouse.engine)

    message = str(raised.value)
    assert "milliseconds" in message
    assert organizations[0]["org_id"] in message
    assert "\n" not in message
    assert simulator.config.api_key not in message
    assert stored(warehouse, "organizations") == {}


class OnePage(requests.Session):
    """Answers the users listing with one page of ``items`` and the others
    with none: the simulator cannot hold a record without an id."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        super().__init__()
        self.items = items

    def get(self, url: str | bytes, **_: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        items = self.items if str(url).endswith(USERS_PATH) else []
        body = {"items": items, "has_next_page": False, "end_cursor": None}
        response._content = json.dumps(body).encode()
        return response


def test_directory_skips_items_without_an_id_with_a_warning(
    warehouse: Warehouse, caplog: pytest.LogCaptureFixture
) -> None:
    users = [*generate_users(seed=7)[:3], {"email": "x@example.com", "name": "X"}]
    settings = Settings(database=warehouse.settings.model_dump(by_alias=True))
    client = DevinClient(settings.api, "cog_test", http=OnePage(users))

    with caplog.at_level(logging.WARNING):
        results = refresh_directory(warehouse.engine, client, page_size=10)

    assert [r.listed for r in results] == [0, 3]
    assert f"GET {USERS_PATH} that has no user_id" in caplog.text
    assert set(stored(warehouse, "users")) == {u["user_id"] for u in users[:3]}
