"""Tests of the Devin API simulator itself, over real loopback HTTP."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import requests

from etl.simulator import (
    Fault,
    Simulator,
    SimulatorConfig,
    generate_organizations,
    generate_sessions,
    generate_users,
)
from etl.simulator.data import repo_name

NOW = 1_760_000_000
DAY = 86_400
SESSIONS = "/v3/enterprise/sessions"
ORGANIZATIONS = "/v3/enterprise/organizations"
USERS = "/v3/enterprise/members/users"
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

DATA = generate_sessions(600, seed=3, now=NOW)
WIDE_DATA = generate_sessions(4_000, seed=5, now=NOW)

MakeSimulator = Callable[..., Simulator]


def served(session: dict[str, Any]) -> dict[str, Any]:
    """A generated session as the API must serve it: internal keys dropped."""
    return {key: value for key, value in session.items() if not key.startswith("_")}


def first_value(key: str, predicate: Callable[[Any], bool] = bool) -> Any:
    return next(s[key] for s in DATA if predicate(s.get(key)))


ORG_IDS = sorted({s["org_id"] for s in DATA})
PIPE_USER = first_value("user_id", lambda value: "|" in (value or ""))
SERVICE_USER = first_value("service_user_id")
PLAYBOOK = first_value("playbook_id")
SCHEDULE = first_value("_schedule_id")
TWO_IDS = [DATA[5]["session_id"], DATA[400]["session_id"]]


def repos_of(session: dict[str, Any]) -> set[str | None]:
    return {repo_name(pr["pr_url"]) for pr in session["pull_requests"]}


@pytest.fixture
def make_simulator() -> Iterator[MakeSimulator]:
    """Start simulators on loopback (DATA unless told) and stop them afterwards."""
    started: list[Simulator] = []

    def make(sessions: list[dict[str, Any]] | None = None, **config: Any) -> Simulator:
        simulator = Simulator(
            DATA if sessions is None else sessions, SimulatorConfig(**config)
        )
        simulator.start()
        started.append(simulator)
        return simulator

    yield make
    for simulator in started:
        simulator.stop()


@pytest.fixture
def simulator(make_simulator: MakeSimulator) -> Simulator:
    return make_simulator()


@pytest.fixture(scope="module")
def shared_simulator() -> Iterator[Simulator]:
    """One simulator over DATA for the tests that only read from it."""
    with Simulator(DATA) as simulator:
        yield simulator


def client(simulator: Simulator) -> requests.Session:
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {simulator.config.api_key}"
    return http


def get(simulator: Simulator, path: str = SESSIONS, **params: Any) -> requests.Response:
    """One authorized request on a fresh connection."""
    headers = {"Authorization": f"Bearer {simulator.config.api_key}"}
    url = simulator.base_url + path
    return requests.get(url, params=params, headers=headers, timeout=10)


def list_all(
    simulator: Simulator,
    path: str = SESSIONS,
    *,
    first: int = 50,
    **params: Any,
) -> list[dict[str, Any]]:
    """Follow cursors to the end over one connection; fail on a non-200 page
    or a listing that never ends."""
    http = client(simulator)
    items: list[dict[str, Any]] = []
    after = None
    for _ in range(10_000):
        query = {**params, "first": first} | ({"after": after} if after else {})
        response = http.get(simulator.base_url + path, params=query, timeout=10)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        if not page["has_next_page"]:
            assert page["end_cursor"] is None
            return items
        after = page["end_cursor"]
    raise AssertionError("the listing never ended")


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["session_id"] for item in items]


# --- data -------------------------------------------------------------------


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


# --- authentication and permissions ------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer cog_wrong",
        "Basic cog_simulator_key",
        "Bearer",
        "cog_simulator_key",
    ],
    ids=["missing", "wrong_key", "wrong_scheme", "no_key", "no_scheme"],
)
def test_sessions_rejects_bad_credentials(
    shared_simulator: Simulator, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = requests.get(
        shared_simulator.base_url + SESSIONS, headers=headers, timeout=10
    )

    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 401
    assert shared_simulator.requests_log[-1].has_authorization is (
        authorization is not None
    )


@pytest.mark.parametrize(
    ("endpoint", "path", "permission"),
    [
        ("sessions", SESSIONS, "ViewAccountSessions"),
        ("organizations", ORGANIZATIONS, "ManageOrganizations"),
        ("users", USERS, "ManageAccountMembership"),
    ],
    ids=["sessions", "organizations", "users"],
)
def test_endpoint_forbidden_names_the_missing_permission(
    simulator: Simulator, endpoint: Any, path: str, permission: str
) -> None:
    simulator.set_forbidden(True, endpoint=endpoint)
    refused = get(simulator, path)
    others = [get(simulator, p).status_code for p in (SESSIONS, ORGANIZATIONS, USERS)]
    simulator.set_forbidden(False, endpoint=endpoint)

    assert refused.status_code == 403
    assert permission in refused.json()["detail"]
    assert sorted(others) == [200, 200, 403]
    assert get(simulator, path).status_code == 200


def test_simulator_answers_404_for_an_unknown_path(shared_simulator: Simulator) -> None:
    assert get(shared_simulator, "/v3/enterprise/nothing").status_code == 404


# --- listing -------------------------------------------------------------------


@pytest.mark.parametrize("cursor", ["keyset", "offset"])
@pytest.mark.parametrize(
    ("order", "field", "direction"),
    [
        ("created_desc", "created_at", -1),
        ("created_asc", "created_at", 1),
        ("updated_asc", "updated_at", 1),
        ("updated_desc", "updated_at", -1),
    ],
    ids=["created_desc", "created_asc", "updated_asc", "updated_desc"],
)
def test_sessions_full_listing_matches_expected(
    make_simulator: MakeSimulator, cursor: str, order: str, field: str, direction: int
) -> None:
    simulator = make_simulator(cursor=cursor, order=order)
    items = list_all(simulator, first=37)
    by_id = {s["session_id"]: s for s in DATA}
    keys = [(direction * item[field], item["session_id"]) for item in items]

    assert items == simulator.expected_sessions()
    assert len(set(ids(items))) == len(items) == len(DATA)
    assert all(item == served(by_id[item["session_id"]]) for item in items)
    assert keys == sorted(keys)


def test_sessions_page_reports_total_and_cursor(shared_simulator: Simulator) -> None:
    page = get(shared_simulator, first=10).json()

    assert len(page["items"]) == 10
    assert page["total"] == len(DATA)
    assert page["has_next_page"] is True
    assert page["end_cursor"].endswith("=")


def test_sessions_total_can_be_omitted(make_simulator: MakeSimulator) -> None:
    page = get(make_simulator(include_total=False)).json()

    assert "total" not in page
    assert len(page["items"]) == 100


@pytest.mark.parametrize("first", [1, 200])
def test_sessions_first_accepts_its_bounds(
    shared_simulator: Simulator, first: int
) -> None:
    assert len(get(shared_simulator, first=first).json()["items"]) == first


FILTER_CASES = {
    "session_ids": ({"session_ids": TWO_IDS}, lambda s: s["session_id"] in TWO_IDS),
    "org_ids": ({"org_ids": ORG_IDS[:2]}, lambda s: s["org_id"] in ORG_IDS[:2]),
    "user_ids_with_pipe": (
        {"user_ids": [PIPE_USER]},
        lambda s: s.get("user_id") == PIPE_USER,
    ),
    "service_user_ids": (
        {"service_user_ids": [SERVICE_USER]},
        lambda s: s.get("service_user_id") == SERVICE_USER,
    ),
    "tags": (
        {"tags": ["backend", "セキュリティ"]},
        lambda s: {"backend", "セキュリティ"} & set(s["tags"]),
    ),
    "origins": (
        {"origins": ["slack", "api"]},
        lambda s: s.get("origin") in ("slack", "api"),
    ),
    "repo_names_github": (
        {"repo_names": ["acme/web"]},
        lambda s: "acme/web" in repos_of(s),
    ),
    "repo_names_gitlab": (
        {"repo_names": ["platform/core/gateway"]},
        lambda s: "platform/core/gateway" in repos_of(s),
    ),
    "category": (
        {"category": "bug_fixing"},
        lambda s: s.get("category") == "bug_fixing",
    ),
    "playbook_id": (
        {"playbook_id": PLAYBOOK},
        lambda s: s.get("playbook_id") == PLAYBOOK,
    ),
    "schedule_id": ({"schedule_id": SCHEDULE}, lambda s: s["_schedule_id"] == SCHEDULE),
    "is_archived_true": (
        {"is_archived": "true"},
        lambda s: s.get("is_archived") is True,
    ),
    "is_archived_false": ({"is_archived": "false"}, lambda s: not s.get("is_archived")),
    "created_after": (
        {"created_after": NOW - 60 * DAY},
        lambda s: s["created_at"] > NOW - 60 * DAY,
    ),
    "created_before": (
        {"created_before": NOW - 60 * DAY},
        lambda s: s["created_at"] < NOW - 60 * DAY,
    ),
    "updated_after": (
        {"updated_after": NOW - 30 * DAY},
        lambda s: s["updated_at"] > NOW - 30 * DAY,
    ),
    "updated_before": (
        {"updated_before": NOW - 30 * DAY},
        lambda s: s["updated_at"] < NOW - 30 * DAY,
    ),
    "combined": (
        {
            "org_ids": ORG_IDS[:3],
            "is_archived": "false",
            "updated_after": NOW - 90 * DAY,
        },
        lambda s: (
            s["org_id"] in ORG_IDS[:3]
            and not s.get("is_archived")
            and s["updated_at"] > NOW - 90 * DAY
        ),
    ),
}


@pytest.mark.parametrize(
    ("params", "predicate"), FILTER_CASES.values(), ids=FILTER_CASES.keys()
)
def test_sessions_filter_selects_matching_sessions(
    shared_simulator: Simulator, params: dict[str, Any], predicate: Callable[[Any], Any]
) -> None:
    items = list_all(shared_simulator, **params)
    wanted = {s["session_id"] for s in DATA if predicate(s)}

    assert set(ids(items)) == wanted
    assert 0 < len(items) < len(DATA)
    assert items == shared_simulator.expected_sessions(**params)


def test_sessions_hide_deleted_orgs_unless_asked(simulator: Simulator) -> None:
    simulator.delete_org(ORG_IDS[0])

    visible = list_all(simulator)
    everything = list_all(simulator, include_deleted_orgs="true")

    assert {s["org_id"] for s in visible} == set(ORG_IDS[1:])
    assert len(everything) == len(DATA)
    assert visible == simulator.expected_sessions()
    assert everything == simulator.expected_sessions(include_deleted_orgs=True)


@pytest.mark.parametrize("is_inclusive", [True, False], ids=["inclusive", "exclusive"])
@pytest.mark.parametrize("field", ["updated", "created"])
def test_sessions_after_bound_follows_config(
    make_simulator: MakeSimulator, is_inclusive: bool, field: str
) -> None:
    simulator = make_simulator(updated_after_inclusive=is_inclusive)
    second, shared = Counter(s[f"{field}_at"] for s in DATA).most_common(1)[0]
    later = sum(s[f"{field}_at"] > second for s in DATA)

    after = list_all(simulator, **{f"{field}_after": second})
    before = list_all(simulator, **{f"{field}_before": second})

    assert shared > 1
    assert len(after) == later + (shared if is_inclusive else 0)
    assert len(before) == len(DATA) - later - shared


@pytest.mark.parametrize("shape", ["problem", "fastapi"])
@pytest.mark.parametrize("first", ["0", "201", "-5", "ten", "1.5"])
def test_sessions_invalid_first_is_422(
    make_simulator: MakeSimulator, shape: str, first: str
) -> None:
    response = get(make_simulator(error_shape=shape), first=first)
    body = response.json()

    assert response.status_code == 422
    if shape == "problem":
        assert response.headers["Content-Type"] == "application/problem+json"
        assert body["status"] == 422
        assert "first" in body["detail"]
        assert body["errors"][0]["loc"] == ["query", "first"]
    else:
        assert response.headers["Content-Type"] == "application/json"
        assert body["detail"][0]["loc"] == ["query", "first"]
        assert isinstance(body["detail"][0]["msg"], str)


@pytest.mark.parametrize(
    "params",
    [
        {"updated_after": "yesterday"},
        {"created_before": "1.5"},
        {"is_archived": "maybe"},
        {"origins": ["slack", "vscode"]},
        {"category": "new_kind"},
    ],
    ids=["updated_after", "created_before", "is_archived", "origins", "category"],
)
def test_sessions_invalid_filter_value_is_422(
    shared_simulator: Simulator, params: dict[str, Any]
) -> None:
    response = get(shared_simulator, **params)

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", next(iter(params))]
    with pytest.raises(ValueError, match="Invalid query"):
        shared_simulator.expected_sessions(**params)


def test_sessions_unknown_parameter_is_ignored(shared_simulator: Simulator) -> None:
    page = get(shared_simulator, orgs=ORG_IDS[0], sort="asc").json()

    assert page["total"] == len(DATA)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("cursor_kind", "after"),
    [
        ("keyset", "not base64 at all!"),
        ("keyset", b64("not json")),
        ("keyset", b64("[1, 2]")),
        ("keyset", b64('{"last_id": "devin-x"}')),
        ("keyset", b64('{"offset": 10}')),
        ("offset", b64('{"last_id": "devin-x", "key": [1]}')),
        ("offset", b64('{"offset": -1}')),
    ],
    ids=[
        "not_base64",
        "not_json",
        "not_object",
        "keyset_without_key",
        "offset_on_keyset",
        "keyset_on_offset",
        "negative_offset",
    ],
)
def test_sessions_malformed_cursor_is_400(
    make_simulator: MakeSimulator, cursor_kind: str, after: str
) -> None:
    response = get(make_simulator(cursor=cursor_kind), after=after)

    assert response.status_code == 400
    assert "cursor" in response.json()["detail"]


def test_sessions_cursor_must_be_url_encoded(shared_simulator: Simulator) -> None:
    http = client(shared_simulator)
    url = shared_simulator.base_url + SESSIONS
    cursors = [
        get(shared_simulator, first=first).json()["end_cursor"] for first in (1, 2, 3)
    ]

    raw = [http.get(f"{url}?after={cursor}", timeout=10) for cursor in cursors]
    encoded = [http.get(url, params={"after": c}, timeout=10) for c in cursors]

    assert all(cursor.endswith("=") for cursor in cursors)
    assert [response.status_code for response in raw] == [400, 400, 400]
    assert "URL-encoding" in raw[0].json()["detail"]
    assert [response.status_code for response in encoded] == [200, 200, 200]


@pytest.mark.parametrize(
    ("cursor", "missed"), [("offset", 1), ("keyset", 0)], ids=["offset", "keyset"]
)
def test_sessions_cursor_when_an_item_moves_mid_listing(
    make_simulator: MakeSimulator, cursor: str, missed: int
) -> None:
    simulator = make_simulator(cursor=cursor, order="updated_asc")
    before = ids(simulator.expected_sessions())
    moved = before[0]

    def touch_first_item(simulator: Simulator, page: int) -> None:
        if page == 1:
            simulator.update_session(moved, title="edited mid-listing")

    simulator.on_page(touch_first_item)
    seen = ids(list_all(simulator, first=50))
    missing = set(before) - set(seen)

    assert len(missing) == missed
    assert missing <= {before[50]}
    assert seen.count(moved) == 2
    assert seen[-1] == moved


def test_on_page_counts_pages_from_registration(simulator: Simulator) -> None:
    get(simulator)
    calls: list[int] = []
    simulator.on_page(lambda _, page: calls.append(page))

    list_all(simulator, first=200)
    simulator.clear_hooks()
    get(simulator)

    assert calls == [1, 2, 3]


def test_on_page_hook_failure_is_a_500(simulator: Simulator) -> None:
    def fail(simulator: Simulator, page: int) -> None:
        raise RuntimeError("boom")

    simulator.on_page(fail)

    assert get(simulator).status_code == 500


def test_sessions_paging_through_thousands_reuses_one_connection(
    make_simulator: MakeSimulator,
) -> None:
    simulator = make_simulator(generate_sessions(5_000, seed=11, now=NOW))

    items = list_all(simulator, first=200)

    assert len(set(ids(items))) == len(items) == 5_000
    assert simulator.connections_accepted == 1


# --- clock -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "offset", [0, -3_600, 86_400 * 3], ids=["none", "behind", "ahead"]
)
def test_date_header_follows_clock_offset(
    make_simulator: MakeSimulator, offset: int
) -> None:
    simulator = make_simulator(clock_offset=offset)

    date = parsedate_to_datetime(get(simulator).headers["Date"]).timestamp()

    assert abs(date - (time.time() + offset)) <= 2
    assert abs(simulator.now() - (time.time() + offset)) <= 1


def test_date_header_can_be_left_out(make_simulator: MakeSimulator) -> None:
    assert "Date" not in get(make_simulator(send_date_header=False)).headers


def test_update_session_stamps_the_shifted_clock(simulator: Simulator) -> None:
    simulator.set_clock_offset(-7_200)
    session_id = DATA[0]["session_id"]

    changed = simulator.update_session(session_id, status="exit", tags=["done"])
    pinned = simulator.update_session(session_id, updated_at=NOW)
    date = parsedate_to_datetime(get(simulator).headers["Date"]).timestamp()

    assert abs(changed["updated_at"] - (time.time() - 7_200)) <= 1
    assert (changed["status"], changed["tags"]) == ("exit", ["done"])
    assert pinned["updated_at"] == NOW
    assert abs(date - (time.time() - 7_200)) <= 2


# --- control API -------------------------------------------------------------


def test_create_session_links_parent_and_appears_in_listing(
    simulator: Simulator,
) -> None:
    parent_id = DATA[10]["session_id"]

    created = simulator.create_session(parent_session_id=parent_id, title="Nouveau ✨")
    listed = {item["session_id"]: item for item in list_all(simulator)}

    assert (
        created["created_at"]
        == created["updated_at"]
        == pytest.approx(time.time(), abs=1)
    )
    assert listed[created["session_id"]] == created
    assert created["session_id"] in listed[parent_id]["child_session_ids"]
    assert listed[parent_id]["updated_at"] == created["created_at"]
    assert len(listed) == len(DATA) + 1


def test_create_session_refuses_a_taken_id(simulator: Simulator) -> None:
    with pytest.raises(ValueError, match="already exists"):
        simulator.create_session(session_id=DATA[0]["session_id"])


def test_delete_session_removes_it_from_listings(simulator: Simulator) -> None:
    simulator.delete_session(DATA[0]["session_id"])

    assert DATA[0]["session_id"] not in ids(list_all(simulator))
    with pytest.raises(KeyError):
        simulator.delete_session(DATA[0]["session_id"])


@pytest.mark.parametrize(
    ("changes", "error"),
    [({"session_id": "devin-x"}, ValueError), ({"title": "x"}, KeyError)],
    ids=["changing_the_id", "unknown_session"],
)
def test_update_session_refuses(
    simulator: Simulator, changes: dict[str, Any], error: type[Exception]
) -> None:
    target = DATA[0]["session_id"] if error is ValueError else "devin-missing"

    with pytest.raises(error):
        simulator.update_session(target, **changes)


def test_sessions_snapshot_is_a_copy_without_internal_keys(
    simulator: Simulator,
) -> None:
    snapshot = simulator.sessions_snapshot()
    snapshot[0]["title"] = "changed by the test"

    assert snapshot[1:] == [served(s) for s in DATA[1:]]
    assert simulator.sessions_snapshot()[0] == served(DATA[0])


def test_simulator_leaves_the_callers_sessions_alone(simulator: Simulator) -> None:
    before = json.dumps(DATA)

    simulator.update_session(DATA[0]["session_id"], title="changed")

    assert json.dumps(DATA) == before


def test_expected_sessions_rejects_an_unknown_filter(simulator: Simulator) -> None:
    with pytest.raises(ValueError, match="orgs"):
        simulator.expected_sessions(orgs=["org-x"])


def test_requests_log_keeps_queries_but_never_the_key(simulator: Simulator) -> None:
    get(simulator, org_ids=ORG_IDS[:2], first=3)
    requests.get(simulator.base_url + USERS, timeout=10)

    log = simulator.requests_log
    simulator.reset_log()

    assert [(r.path, r.status, r.has_authorization) for r in log] == [
        (SESSIONS, 200, True),
        (USERS, 401, False),
    ]
    assert log[0].query == (
        ("org_ids", ORG_IDS[0]),
        ("org_ids", ORG_IDS[1]),
        ("first", "3"),
    )
    assert simulator.config.api_key not in repr(log)
    assert simulator.requests_log == []


def test_simulator_stop_closes_kept_alive_connections(
    make_simulator: MakeSimulator,
) -> None:
    simulator = make_simulator()
    http = client(simulator)
    url = simulator.base_url + SESSIONS
    assert http.get(url, timeout=10).ok

    simulator.stop()

    with pytest.raises(requests.ConnectionError):
        http.get(url, timeout=10)


@pytest.mark.parametrize(
    "build",
    [
        lambda: SimulatorConfig(cursor="page"),  # type: ignore[arg-type]
        lambda: SimulatorConfig(order="random"),  # type: ignore[arg-type]
        lambda: Fault.status(99),
        lambda: Fault.slow(-1.0),
    ],
    ids=["cursor", "order", "status_code", "negative_delay"],
)
def test_settings_refuse_invalid_values(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match=r"must be one of|invalid fault"):
        build()


# --- faults -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["problem", "fastapi"])
def test_fault_status_answers_the_code_then_recovers(
    make_simulator: MakeSimulator, shape: str
) -> None:
    simulator = make_simulator(error_shape=shape)
    simulator.inject(Fault.status(429, retry_after="7"), Fault.status(503))
    http = client(simulator)
    url = simulator.base_url + SESSIONS

    limited, unavailable, normal = (http.get(url, timeout=10) for _ in range(3))

    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "7")
    assert isinstance(limited.json()["detail"], str)
    assert "Retry-After" not in unavailable.headers
    assert unavailable.status_code == 503
    assert normal.status_code == 200


def test_fault_drop_closes_the_connection(simulator: Simulator) -> None:
    simulator.inject(Fault.drop())
    http = client(simulator)

    with pytest.raises(requests.ConnectionError):
        http.get(simulator.base_url + SESSIONS, timeout=10)

    assert http.get(simulator.base_url + SESSIONS, timeout=10).status_code == 200
    assert [r.status for r in simulator.requests_log] == [None, 200]


def test_fault_broken_json_truncates_a_200(simulator: Simulator) -> None:
    whole = get(simulator, first=20).content
    simulator.inject(Fault.broken_json())

    broken = get(simulator, first=20)

    assert broken.status_code == 200
    assert whole.startswith(broken.content)
    assert 0 < len(broken.content) < len(whole)
    with pytest.raises(requests.JSONDecodeError):
        broken.json()


def test_fault_no_items_leaves_out_the_items_key(simulator: Simulator) -> None:
    simulator.inject(Fault.no_items())

    response = get(simulator)

    assert response.status_code == 200
    assert response.json() == {"has_next_page": False}


def test_fault_slow_delays_a_normal_answer(simulator: Simulator) -> None:
    simulator.inject(Fault.slow(0.3))

    started = time.perf_counter()
    response = get(simulator, first=5)

    assert time.perf_counter() - started >= 0.3
    assert ids(response.json()["items"]) == ids(simulator.expected_sessions()[:5])


def test_inject_applies_faults_in_order_to_sessions_only(simulator: Simulator) -> None:
    simulator.inject(Fault.status(500), Fault.status(502))

    statuses = [
        get(simulator, path).status_code for path in (USERS, SESSIONS, SESSIONS)
    ]

    assert statuses == [200, 500, 502]
    assert get(simulator).status_code == 200


# --- organizations and users ---------------------------------------------------


ORGANIZATION_RECORDS = generate_organizations(seed=3, now=NOW)
USER_RECORDS = generate_users(seed=3)


@pytest.fixture
def directory_simulator() -> Iterator[Simulator]:
    simulator = Simulator(DATA, organizations=ORGANIZATION_RECORDS, users=USER_RECORDS)
    with simulator:
        yield simulator


@pytest.mark.parametrize(
    ("path", "key", "records"),
    [(ORGANIZATIONS, "org_id", ORGANIZATION_RECORDS), (USERS, "user_id", USER_RECORDS)],
    ids=["organizations", "users"],
)
def test_directory_lists_every_record_in_pages(
    directory_simulator: Simulator, path: str, key: str, records: list[dict[str, Any]]
) -> None:
    items = list_all(directory_simulator, path, first=7)
    page = get(directory_simulator, path, first=7).json()
    unauthorized = requests.get(directory_simulator.base_url + path, timeout=10)

    assert items == sorted(records, key=lambda record: record[key])
    assert page["total"] == len(records)
    assert unauthorized.status_code == 401


def test_organizations_leave_out_a_deleted_org(directory_simulator: Simulator) -> None:
    deleted = ORGANIZATION_RECORDS[0]["org_id"]
    directory_simulator.delete_org(deleted)

    org_ids = [item["org_id"] for item in list_all(directory_simulator, ORGANIZATIONS)]

    assert deleted not in org_ids
    assert len(org_ids) == len(ORGANIZATION_RECORDS) - 1


@pytest.mark.parametrize("path", [ORGANIZATIONS, USERS])
def test_directory_rejects_bad_first_and_cursor(
    directory_simulator: Simulator, path: str
) -> None:
    assert get(directory_simulator, path, first=0).status_code == 422
    assert get(directory_simulator, path, after="%%%").status_code == 400


def test_simulator_default_data_is_consistent() -> None:
    with Simulator() as simulator:
        sessions = list_all(simulator, first=200)
        org_ids = {item["org_id"] for item in list_all(simulator, ORGANIZATIONS)}
        user_ids = {item["user_id"] for item in list_all(simulator, USERS)}

    assert len(sessions) == 500
    assert {s["org_id"] for s in sessions} <= org_ids
    assert {s.get("user_id") for s in sessions} - {None} <= user_ids


def test_serve_prints_url_and_key_then_stops_on_ctrl_c() -> None:
    command = "from etl.simulator import serve; serve(50, 0, 7)"
    process = subprocess.Popen(
        [sys.executable, "-c", command], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().split()[-1]
        api_key = process.stdout.readline().split()[-1]
        response = requests.get(
            base_url + SESSIONS,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=10,
        )
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=10)
    finally:
        process.kill()

    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
    assert response.json()["total"] == 50
    assert process.returncode == 0
    assert "stopped" in output
