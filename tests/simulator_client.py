"""Shared pieces of the simulator tests: sample data and a small HTTP client.

The simulator is reached over real loopback HTTP, with the requests a caller
would send; nothing here reaches into the server's internals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests

from etl.simulator import Simulator, SimulatorConfig, generate_sessions

NOW = 1_760_000_000
DAY = 86_400
SESSIONS = "/v3/enterprise/sessions"
ORGANIZATIONS = "/v3/enterprise/organizations"
USERS = "/v3/enterprise/members/users"

DATA = generate_sessions(600, seed=3, now=NOW)
ORG_IDS = sorted({s["org_id"] for s in DATA})

MakeSimulator = Callable[..., Simulator]


def served(session: dict[str, Any]) -> dict[str, Any]:
    """A generated session as the API must serve it: internal keys dropped."""
    return {key: value for key, value in session.items() if not key.startswith("_")}


@contextmanager
def running_simulators() -> Iterator[MakeSimulator]:
    """Start simulators on loopback (DATA unless told) and stop them on exit."""
    started: list[Simulator] = []

    def make(sessions: list[dict[str, Any]] | None = None, **config: Any) -> Simulator:
        simulator = Simulator(
            DATA if sessions is None else sessions, SimulatorConfig(**config)
        )
        simulator.start()
        started.append(simulator)
        return simulator

    try:
        yield make
    finally:
        for simulator in started:
            simulator.stop()


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
