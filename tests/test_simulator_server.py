"""Tests of the simulator server: authentication, errors, the clock, the
control API, injected faults, the directory endpoints and ``serve``."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
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
    generate_users,
)
from simulator_client import (
    DATA,
    NOW,
    ORG_IDS,
    ORGANIZATIONS,
    SESSIONS,
    USERS,
    MakeSimulator,
    client,
    get,
    ids,
    list_all,
    running_simulators,
    served,
)


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
