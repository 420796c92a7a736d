"""The API client over real loopback HTTP: paging, retries, and error lines."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from etl.config import ApiSettings
from etl.errors import (
    ApiAuthError,
    ApiContractError,
    ApiPermissionError,
    ApiRequestError,
    ApiUnavailableError,
)
from etl.extract import SESSIONS_PATH, DevinClient, session_params
from etl.simulator import Fault, Simulator
from support import start_simulator

FAST_RETRY = {"max_attempts": 3, "backoff_seconds": 0.01, "max_backoff_seconds": 0.05}


def make_client(
    simulator: Simulator, key: str | None = None, **api: Any
) -> DevinClient:
    settings = ApiSettings.model_validate(
        {"base_url": simulator.base_url, "retry": FAST_RETRY, **api}
    )
    return DevinClient(settings, key or simulator.config.api_key)


def list_all(
    client: DevinClient, page_size: int = 50, **params: Any
) -> list[dict[str, Any]]:
    pages = client.iter_pages(SESSIONS_PATH, list(params.items()), page_size=page_size)
    return [item for page in pages for item in page.items]


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with start_simulator(count=120) as running:
        yield running


def test_iter_pages_follows_cursors_to_the_end(simulator: Simulator) -> None:
    client = make_client(simulator)

    items = list_all(client, page_size=7)

    assert [i["session_id"] for i in items] == [
        s["session_id"] for s in simulator.expected_sessions()
    ]
    assert client.stats.requests == -(-120 // 7)


def test_iter_pages_reads_the_server_date(simulator: Simulator) -> None:
    client = make_client(simulator)

    page = next(client.iter_pages(SESSIONS_PATH, [], page_size=10))

    assert page.server_time is not None
    assert abs(page.server_time.timestamp() - simulator.now()) <= 2


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(429),
        Fault.status(429, retry_after="0"),
        Fault.status(500),
        Fault.status(502),
        Fault.status(503),
        Fault.drop(),
        Fault.broken_json(),
        Fault.no_items(),
    ],
    ids=[
        "429",
        "429-retry-after",
        "500",
        "502",
        "503",
        "drop",
        "broken-json",
        "no-items",
    ],
)
def test_fetch_page_retries_transient_failures(
    simulator: Simulator, fault: Fault
) -> None:
    simulator.inject(fault, fault)
    client = make_client(simulator)

    items = list_all(client)

    assert len(items) == 120
    assert client.stats.retries == 2


def test_fetch_page_gives_up_after_max_attempts(simulator: Simulator) -> None:
    simulator.inject(*[Fault.status(503)] * 3)
    client = make_client(simulator)

    with pytest.raises(ApiUnavailableError, match="gave up after 3 attempts"):
        list_all(client)


def test_fetch_page_obeys_retry_after(simulator: Simulator) -> None:
    simulator.inject(Fault.status(429, retry_after="1"))
    client = make_client(
        simulator,
        retry={"max_attempts": 2, "backoff_seconds": 0.01, "max_backoff_seconds": 5},
    )

    started = time.monotonic()
    list_all(client, page_size=200)

    assert time.monotonic() - started >= 1.0


def test_fetch_page_times_out_and_retries(simulator: Simulator) -> None:
    simulator.inject(Fault.slow(1.5))
    client = make_client(simulator, read_timeout_seconds=0.3)

    items = list_all(client, page_size=200)

    assert len(items) == 120
    assert client.stats.retries == 1


@pytest.mark.parametrize("shape", ["problem", "fastapi"])
@pytest.mark.parametrize(
    ("status", "error", "advice"),
    [
        (400, ApiRequestError, "check the \\[filters\\]"),
        (404, ApiRequestError, "DEVIN_API_BASE_URL"),
        (422, ApiRequestError, "rejected"),
        (401, ApiAuthError, "check DEVIN_API_KEY"),
        (403, ApiPermissionError, "ViewAccountSessions"),
    ],
    ids=["400", "404", "422", "401", "403"],
)
def test_fetch_page_fails_at_once_on_permanent_errors(
    shape: str, status: int, error: type[Exception], advice: str
) -> None:
    with start_simulator(count=5, error_shape=shape) as simulator:
        simulator.inject(Fault.status(status))
        client = make_client(simulator)

        with pytest.raises(error, match=advice) as raised:
            list_all(client)

    assert client.stats.requests == 1
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("shape", ["problem", "fastapi"])
def test_fetch_page_quotes_the_validation_detail_of_both_shapes(shape: str) -> None:
    with start_simulator(count=5, error_shape=shape) as simulator:
        client = make_client(simulator)

        with pytest.raises(ApiRequestError, match="first") as raised:
            list_all(client, page_size=500)

    assert "422" in str(raised.value)


def test_fetch_page_wrong_key_never_shows_the_key(simulator: Simulator) -> None:
    client = make_client(simulator, key="cog_wrong_secret_key")

    with pytest.raises(ApiAuthError) as raised:
        list_all(client)

    assert "cog_wrong_secret_key" not in str(raised.value)


def test_fetch_page_unreachable_server_is_transient() -> None:
    settings = ApiSettings.model_validate(
        {"base_url": "http://127.0.0.1:9", "retry": FAST_RETRY}
    )
    client = DevinClient(settings, "cog_key")

    with pytest.raises(ApiUnavailableError, match="gave up after 3 attempts"):
        list_all(client)


class RepeatingCursorSession(requests.Session):
    """Plays a server that ignores ``after``: the same page and cursor forever."""

    def request(  # type: ignore[override]
        self, method: str, url: str, params: Any = None, **kwargs: Any
    ) -> Any:
        kept = [(key, value) for key, value in params or () if key != "after"]
        return super().request(method, url, params=kept, **kwargs)


def test_iter_pages_stops_on_a_repeated_cursor(simulator: Simulator) -> None:
    settings = ApiSettings.model_validate(
        {"base_url": simulator.base_url, "retry": FAST_RETRY}
    )
    client = DevinClient(
        settings, simulator.config.api_key, http=RepeatingCursorSession()
    )

    with pytest.raises(ApiContractError, match="same cursor twice"):
        list_all(client, page_size=10)

    assert client.stats.requests == 2


def test_session_params_sends_lists_as_repeated_keys() -> None:
    from etl.config import FilterSettings

    filters = FilterSettings(org_ids=["a", "b"], is_archived=False, category="security")

    params = session_params(filters, updated_after=1_700_000_000)

    assert ("org_ids", "a") in params
    assert ("org_ids", "b") in params
    assert ("is_archived", "false") in params
    assert ("category", "security") in params
    assert ("updated_after", "1700000000") in params
