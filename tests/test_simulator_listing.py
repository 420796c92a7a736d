"""Tests of session listing: order, filters, cursors and pagination."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from etl.simulator import Simulator, generate_sessions
from etl.simulator.data import repo_name
from simulator_client import (
    DATA,
    DAY,
    NOW,
    ORG_IDS,
    SESSIONS,
    MakeSimulator,
    client,
    get,
    ids,
    list_all,
    running_simulators,
    served,
)


def first_value(key: str, predicate: Callable[[Any], bool] = bool) -> Any:
    return next(s[key] for s in DATA if predicate(s.get(key)))


PIPE_USER = first_value("user_id", lambda value: "|" in (value or ""))
SERVICE_USER = first_value("service_user_id")
PLAYBOOK = first_value("playbook_id")
SCHEDULE = first_value("_schedule_id")
TWO_IDS = [DATA[5]["session_id"], DATA[400]["session_id"]]


def repos_of(session: dict[str, Any]) -> set[str | None]:
    return {repo_name(pr["pr_url"]) for pr in session["pull_requests"]}


@pytest.fixture
def make_simulator() -> Iterator[MakeSimulator]:
    with running_simulators() as make:
        yield make


@pytest.fixture
def simulator(make_simulator: MakeSimulator) -> Simulator:
    return make_simulator()


@pytest.fixture(scope="module")
def shared_simulator() -> Iterator[Simulator]:
    """One simulator over DATA for the tests that only read from it."""
    with Simulator(DATA) as simulator:
        yield simulator


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
