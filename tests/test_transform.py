"""Normalizing API items into frames: shapes, nulls, rejections, PR parsing."""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd
import pytest

from etl.errors import ApiContractError
from etl.transform import normalize_items


def make_item(**fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "session_id": "devin-1",
        "url": "https://app.devin.ai/sessions/1",
        "status": "running",
        "tags": [],
        "org_id": "org-1",
        "created_at": 1_700_000_000,
        "updated_at": 1_700_000_100,
        "acus_consumed": 1.5,
        "pull_requests": [],
    }
    item.update(fields)
    return item


def test_normalize_items_keeps_minimal_item_with_optional_fields_absent() -> None:
    item = {
        "session_id": "devin-1",
        "org_id": "org-1",
        "created_at": 1_700_000_000,
        "updated_at": 1_700_000_100,
    }

    batch = normalize_items([item])

    row = batch.sessions.iloc[0]
    assert row["session_id"] == "devin-1"
    assert row["user_id"] is None
    assert row["structured_output"] is None
    assert batch.tags.empty
    assert batch.pull_requests.empty
    assert batch.children.empty
    assert batch.rejected == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "paused_by_admin"),
        ("status_detail", "new_detail"),
        ("origin", "vscode"),
        ("category", "a_new_category"),
    ],
    ids=["status", "status_detail", "origin", "category"],
)
def test_normalize_items_keeps_unknown_enum_values_as_text(
    field: str, value: str
) -> None:
    batch = normalize_items([make_item(**{field: value})])

    assert batch.sessions.iloc[0][field] == value


@pytest.mark.parametrize(
    "missing",
    ["session_id", "org_id", "created_at", "updated_at"],
)
def test_normalize_items_rejects_and_counts_item_without_identity(
    missing: str, caplog: pytest.LogCaptureFixture
) -> None:
    broken = make_item(session_id="devin-broken", url="https://app.devin.ai/x")
    del broken[missing]
    good = make_item(session_id="devin-good")

    with caplog.at_level(logging.WARNING):
        batch = normalize_items([broken, good])

    assert list(batch.sessions["session_id"]) == ["devin-good"]
    assert batch.rejected == 1
    assert missing in caplog.text
    assert "https://app.devin.ai/x" in caplog.text


@pytest.mark.parametrize(
    ("field", "value"),
    [("created_at", 1_700_000_000_000), ("updated_at", 1_700_000_100_000)],
    ids=["created_at", "updated_at"],
)
def test_normalize_items_refuses_millisecond_timestamps(field: str, value: int) -> None:
    with pytest.raises(ApiContractError, match=f"{field}=.*milliseconds"):
        normalize_items([make_item(**{field: value})])


def test_normalize_items_keeps_newest_version_of_a_repeated_session() -> None:
    old = make_item(updated_at=1_700_000_100, title="old", tags=["a"])
    new = make_item(updated_at=1_700_000_200, title="new", tags=["b"])

    batch = normalize_items([new, old])

    assert list(batch.sessions["title"]) == ["new"]
    assert list(batch.tags["tag"]) == ["b"]


def test_normalize_items_keeps_structured_output_as_json_text() -> None:
    output = {"summary": "ünïcödé ✓", "items": [1, 2, {"nested": None}]}

    batch = normalize_items([make_item(structured_output=output)])

    assert json.loads(batch.sessions.iloc[0]["structured_output"]) == output


def test_normalize_items_strips_nul_characters_postgres_cannot_store() -> None:
    item = make_item(title="a\x00b", structured_output={"k": "x\u0000y"})

    row = normalize_items([item]).sessions.iloc[0]

    assert row["title"] == "ab"
    assert json.loads(row["structured_output"]) == {"k": "xy"}


@pytest.mark.parametrize(
    ("url", "repo", "number"),
    [
        ("https://github.com/acme/widgets/pull/42", "acme/widgets", 42),
        ("https://github.com/acme/widgets/pull/42/files", "acme/widgets", 42),
        (
            "https://gitlab.com/group/sub/project/-/merge_requests/7",
            "group/sub/project",
            7,
        ),
        ("https://gitlab.acme.io/team/app/-/merge_requests/9", "team/app", 9),
        ("https://bitbucket.org/acme/widgets/pull-requests/3", None, None),
        ("not a url", None, None),
    ],
    ids=[
        "github",
        "github-subpage",
        "gitlab-nested",
        "gitlab-self-hosted",
        "bitbucket",
        "junk",
    ],
)
def test_normalize_items_parses_pull_request_urls(
    url: str, repo: str | None, number: int | None
) -> None:
    item = make_item(pull_requests=[{"pr_url": url, "pr_state": "merged"}])

    row = normalize_items([item]).pull_requests.iloc[0]

    assert row["repo"] == repo
    assert (None if pd.isna(row["pr_number"]) else int(row["pr_number"])) == number


def test_normalize_items_builds_child_rows_without_duplicates() -> None:
    item = make_item(
        tags=["x", "x", "y"],
        child_session_ids=["devin-2", "devin-3"],
        pull_requests=[
            {"pr_url": "https://github.com/a/b/pull/1", "pr_state": None},
            {"pr_url": "https://github.com/a/b/pull/2", "pr_state": "draft"},
        ],
    )

    batch = normalize_items([item])

    assert sorted(batch.tags["tag"]) == ["x", "y"]
    assert sorted(batch.children["child_session_id"]) == ["devin-2", "devin-3"]
    assert list(batch.pull_requests["pr_state"]) == [None, "draft"]


def test_normalize_items_handles_an_empty_page() -> None:
    batch = normalize_items([])

    assert batch.sessions.empty
    assert batch.rejected == 0
