"""Compare the warehouse with what the API returns, independently of etl.transform.

Both sides are reduced to plain sets and dicts, so a failing assertion shows
exactly which session or child row differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

SESSION_FIELDS = (
    "org_id",
    "user_id",
    "service_user_id",
    "parent_session_id",
    "playbook_id",
    "title",
    "url",
    "status",
    "status_detail",
    "origin",
    "category",
    "subcategory",
    "is_archived",
    "acus_consumed",
    "structured_output",
    "created_at",
    "updated_at",
)


@dataclass(frozen=True)
class Snapshot:
    sessions: dict[str, tuple[Any, ...]]
    tags: set[tuple[str, str]]
    pull_requests: set[tuple[str, str, str | None]]
    children: set[tuple[str, str]]


def api_snapshot(items: list[dict[str, Any]]) -> Snapshot:
    """What the warehouse must hold after syncing exactly ``items``."""
    return Snapshot(
        sessions={item["session_id"]: _api_session(item) for item in items},
        tags={(i["session_id"], tag) for i in items for tag in i.get("tags") or ()},
        pull_requests={
            (i["session_id"], pr["pr_url"], pr.get("pr_state"))
            for i in items
            for pr in i.get("pull_requests") or ()
        },
        children={
            (i["session_id"], child)
            for i in items
            for child in i.get("child_session_ids") or ()
        },
    )


def _api_session(item: dict[str, Any]) -> tuple[Any, ...]:
    values = []
    for name in SESSION_FIELDS:
        value = item.get(name)
        if name in ("created_at", "updated_at"):
            value = int(value)
        elif name == "structured_output" and value is not None:
            value = json.dumps(value, sort_keys=True)
        elif name == "acus_consumed" and value is not None:
            value = round(float(value), 6)
        values.append(value)
    return tuple(values)


def warehouse_snapshot(engine: sa.Engine) -> Snapshot:
    """The warehouse's session tables, reduced like :func:`api_snapshot`."""
    with engine.connect() as connection:
        sessions = {
            row.session_id: _stored_session(row._mapping)
            for row in connection.execute(sa.text("SELECT * FROM sessions"))
        }
        tags = set(
            connection.execute(sa.text("SELECT session_id, tag FROM session_tags"))
        )
        pulls = set(
            connection.execute(
                sa.text(
                    "SELECT session_id, pr_url, pr_state FROM session_pull_requests"
                )
            )
        )
        children = set(
            connection.execute(
                sa.text("SELECT session_id, child_session_id FROM session_children")
            )
        )
    return Snapshot(
        sessions=sessions,
        tags={tuple(row) for row in tags},
        pull_requests={tuple(row) for row in pulls},
        children={tuple(row) for row in children},
    )


def _stored_session(row: Any) -> tuple[Any, ...]:
    values = []
    for name in SESSION_FIELDS:
        value = row[name]
        if name in ("created_at", "updated_at"):
            value = _epoch(value)
        elif name == "structured_output" and value is not None:
            value = json.dumps(_as_object(value), sort_keys=True)
        elif name == "acus_consumed" and value is not None:
            value = round(float(value), 6)
        elif name == "is_archived" and value is not None:
            value = bool(value)
        values.append(value)
    return tuple(values)


def _epoch(value: datetime | str) -> int:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def _as_object(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def assert_same(actual: Snapshot, expected: Snapshot) -> None:
    """Assert equality table by table, naming the differing keys."""
    missing = expected.sessions.keys() - actual.sessions.keys()
    extra = actual.sessions.keys() - expected.sessions.keys()
    assert not missing, f"sessions missing from the warehouse: {sorted(missing)[:5]}"
    assert not extra, f"sessions the API does not return: {sorted(extra)[:5]}"
    stale = [k for k, v in expected.sessions.items() if actual.sessions[k] != v]
    for key in stale[:1]:
        raise AssertionError(
            f"{len(stale)} stale sessions, e.g. {key}: "
            f"{actual.sessions[key]} != {expected.sessions[key]}"
        )
    assert actual.tags == expected.tags
    assert actual.pull_requests == expected.pull_requests
    assert actual.children == expected.children
