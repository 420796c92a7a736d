"""Tests of the simulator's data generators: sessions, organizations and users."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from etl.simulator import generate_organizations, generate_sessions, generate_users
from etl.simulator.data import repo_name
from simulator_client import DATA, DAY, NOW, ids

REQUIRED_KEYS = {
    "session_id",
    "url",
    "status",
    "tags",
    "org_id",
    "created_at",
    "updated_at",
    "acus_consumed",
    "pull_requests",
}

OPTIONAL_KEYS = {"title", "category", "user_id", "structured_output", "is_archived"}

WIDE_DATA = generate_sessions(4_000, seed=5, now=NOW)


def test_generate_sessions_is_deterministic_per_seed() -> None:
    again = generate_sessions(600, seed=3, now=NOW)
    other_seed = generate_sessions(600, seed=4, now=NOW)
    later = generate_sessions(600, seed=3, now=NOW + DAY)

    assert again == DATA
    assert ids(other_seed) != ids(DATA)
    assert [s["created_at"] - DAY for s in later] == [s["created_at"] for s in DATA]


def test_generate_sessions_follows_the_api_shape() -> None:
    hex_id = re.compile(r"devin-([0-9a-f]{32})")

    assert len(set(ids(DATA))) == len(DATA)
    for session in DATA:
        assert session.keys() >= REQUIRED_KEYS
        assert {key for key in session if key.startswith("_")} == {"_schedule_id"}
        match = hex_id.fullmatch(session["session_id"])
        assert match is not None
        assert session["url"] == f"https://app.devin.ai/sessions/{match[1]}"
        assert NOW - 400 * DAY <= session["created_at"] <= session["updated_at"] <= NOW
        assert 0 <= len(session["tags"]) <= 4
        assert 0 <= len(session["pull_requests"]) <= 3
        assert isinstance(session["acus_consumed"], float)
        assert session["org_id"].startswith("org-")


def test_generate_sessions_links_parents_and_children_both_ways() -> None:
    by_id = {s["session_id"]: s for s in DATA}
    children = [s for s in DATA if s.get("parent_session_id")]

    assert len(children) >= 20
    for child in children:
        parent = by_id[child["parent_session_id"]]
        assert child["session_id"] in parent["child_session_ids"]
        assert parent["created_at"] <= child["created_at"]
    for session in DATA:
        for child_id in session.get("child_session_ids") or []:
            assert by_id[child_id]["parent_session_id"] == session["session_id"]


def _has_large_output(session: dict[str, Any]) -> bool:
    output = session.get("structured_output")
    return output is not None and len(json.dumps(output)) > 40_000


def _largest_updated_at_cluster(sessions: list[dict[str, Any]]) -> int:
    return Counter(s["updated_at"] for s in sessions).most_common(1)[0][1]


AWKWARD_CASES = {
    "title_null": lambda s: "title" in s and s["title"] is None,
    "optional_key_absent": lambda s: not s.keys() >= OPTIONAL_KEYS,
    "title_accents": lambda s: "é" in (s.get("title") or ""),
    "title_cjk": lambda s: re.search("[\u4e00-\u9fff]", s.get("title") or ""),
    "title_emoji": lambda s: re.search("[\U0001f300-\U0001faff]", s.get("title") or ""),
    "status_unknown": lambda s: s["status"] == "paused",
    "origin_unknown": lambda s: s.get("origin") == "vscode",
    "category_unknown": lambda s: s.get("category") == "new_kind",
    "user_with_pipe": lambda s: "|" in (s.get("user_id") or ""),
    "service_user_only": lambda s: s.get("service_user_id") and not s.get("user_id"),
    "pr_github": lambda s: any(
        "github.com/" in p["pr_url"] for p in s["pull_requests"]
    ),
    "pr_gitlab": lambda s: any(
        "/-/merge_requests/" in p["pr_url"] for p in s["pull_requests"]
    ),
    "pr_bitbucket": lambda s: any(
        "bitbucket.org" in p["pr_url"] for p in s["pull_requests"]
    ),
    "pr_odd_url": lambda s: any(
        repo_name(p["pr_url"]) is None for p in s["pull_requests"]
    ),
    "pr_state_null": lambda s: any(p["pr_state"] is None for p in s["pull_requests"]),
    "pr_state_draft": lambda s: any(
        p["pr_state"] == "draft" for p in s["pull_requests"]
    ),
    "acus_zero": lambda s: s["acus_consumed"] == 0.0,
    "archived": lambda s: s.get("is_archived") is True,
    "output_small": lambda s: s.get("structured_output") and not _has_large_output(s),
    "output_large": _has_large_output,
}


@pytest.mark.parametrize("predicate", AWKWARD_CASES.values(), ids=AWKWARD_CASES.keys())
def test_generate_sessions_includes_awkward_value(
    predicate: Callable[[Any], Any],
) -> None:
    matching = [s for s in WIDE_DATA if predicate(s)]

    assert matching
    assert len(matching) < len(WIDE_DATA)


def test_generate_sessions_clusters_updated_at_seconds() -> None:
    assert _largest_updated_at_cluster(DATA) >= 25
    assert _largest_updated_at_cluster(WIDE_DATA) >= 150


def test_generate_organizations_and_users_cover_session_ids() -> None:
    organizations = generate_organizations(seed=3, now=NOW)
    users = generate_users(seed=3)
    user_ids = {s.get("user_id") for s in DATA} - {None}

    assert {s["org_id"] for s in DATA} <= {o["org_id"] for o in organizations}
    assert user_ids <= {u["user_id"] for u in users}
    assert any(o["max_session_acu_limit"] is None for o in organizations)
    assert all(o["created_at"] <= o["updated_at"] <= NOW for o in organizations)
    assert all(
        "@" in u["email"] and isinstance(u["role_assignments"], list) for u in users
    )
    assert generate_users(seed=3) == users
