"""``/healthz`` and ``/metrics`` over loopback HTTP, after real runs.

The runs are the daemon's own jobs (:meth:`Daemon.run_sync`) against the
simulator and a real warehouse; the endpoints are the daemon's server on a
free port. Every expected value follows from what the runs did.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from etl.health import check_health
from etl.metrics import serve_endpoints
from etl.scheduler import Daemon
from etl.simulator import Fault, Simulator
from support import Warehouse, make_database_settings, make_settings, start_simulator

HEALTH_KEYS = {"status", "last_success_at", "age_seconds", "max_age_seconds", "reason"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@contextmanager
def serving(daemon: Daemon, settings: Any, engine: sa.Engine) -> Iterator[str]:
    """The daemon's endpoints on a free loopback port; yields the base URL."""
    health = partial(check_health, engine, settings)
    with serve_endpoints("127.0.0.1", 0, daemon.metrics, health) as (host, port):
        yield f"http://{host}:{port}"


def scrape(url: str) -> Samples:
    response = requests.get(f"{url}/metrics", timeout=5)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def never_synced(daemon: Daemon, warehouse: Warehouse) -> None:
    """Nothing has run."""


def synced(daemon: Daemon, warehouse: Warehouse) -> None:
    assert daemon.run_sync() == "succeeded"


def synced_two_hours_ago(daemon: Daemon, warehouse: Warehouse) -> None:
    synced(daemon, warehouse)
    with warehouse.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE sync_state SET last_success_at = :at"),
            {"at": datetime.now(UTC) - timedelta(hours=2)},
        )


@pytest.mark.parametrize(
    ("prepare", "code", "status", "reason", "age"),
    [
        (never_synced, 503, "unhealthy", "no successful run of source", None),
        (synced, 200, "healthy", "s ago, within 3600s", (0, 60)),
        (
            synced_two_hours_ago,
            503,
            "unhealthy",
            "s ago, more than 3600s",
            (7190, 7260),
        ),
    ],
    ids=["never-synced", "fresh", "stale"],
)
def test_healthz_follows_the_last_success_in_sync_state(
    simulator: Simulator,
    warehouse: Warehouse,
    prepare: Callable[[Daemon, Warehouse], None],
    code: int,
    status: str,
    reason: str,
    age: tuple[float, float] | None,
) -> None:
    settings = make_settings(simulator, warehouse)
    daemon = Daemon(settings, warehouse.engine)
    prepare(daemon, warehouse)

    with serving(daemon, settings, warehouse.engine) as url:
        response = requests.get(f"{url}/healthz", timeout=5)

    body = response.json()
    assert response.status_code == code
    assert set(body) == HEALTH_KEYS
    assert body["status"] == status
    assert reason in body["reason"]
    assert body["max_age_seconds"] == 3600
    if age is None:
        assert (body["age_seconds"], body["last_success_at"]) == (None, None)
    else:
        assert age[0] <= body["age_seconds"] <= age[1]


def test_healthz_is_503_and_metrics_still_answer_without_a_warehouse(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    down = make_database_settings("postgresql://postgres@127.0.0.1:9/nowhere")
    settings = make_settings(simulator, warehouse).model_copy(update={"database": down})
    engine = sa.create_engine(down.url)
    daemon = Daemon(settings, engine)

    with serving(daemon, settings, engine) as url:
        health = requests.get(f"{url}/healthz", timeout=10)
        samples = scrape(url)

    assert health.status_code == 503
    assert health.json()["reason"].startswith("cannot read sync_state")
    assert value(samples, "devin_etl_runs_total", kind="sync", status="failed") == 0
    assert value(samples, "devin_etl_watermark_age_seconds") is None


@pytest.mark.parametrize(
    ("faults", "status", "faulty", "retries"),
    [
        ([], "succeeded", {}, 0),
        ([Fault.status(503)] * 2, "succeeded", {"503": 2}, 2),
        ([Fault.status(429, retry_after="0")], "succeeded", {"429": 1}, 1),
        ([Fault.drop()], "succeeded", {"none": 1}, 1),
        ([Fault.status(401)], "failed", {"401": 1}, 0),
        ([Fault.status(503)] * 4, "failed", {"503": 4}, 3),
    ],
    ids=["clean", "503-retried", "429-retried", "dropped", "401", "503-storm"],
)
def test_metrics_count_api_requests_by_status_code(
    pg_warehouse: Warehouse,
    faults: list[Fault],
    status: str,
    faulty: dict[str, int],
    retries: int,
) -> None:
    """The counts by code equal what the simulator answered, request by request."""
    with start_simulator(count=120) as simulator:
        settings = make_settings(simulator, pg_warehouse)
        daemon = Daemon(settings, pg_warehouse.engine)
        simulator.inject(*faults)

        outcome = daemon.run_sync()
        with serving(daemon, settings, pg_warehouse.engine) as url:
            samples = scrape(url)
        answered = Counter(str(r.status or "none") for r in simulator.requests_log)

    requests_total = "devin_etl_api_requests_total"
    assert outcome == status
    assert {code: answered[code] for code in faulty} == faulty
    assert (answered["200"] > 0) == (status == "succeeded")
    for code, count in answered.items():
        assert value(samples, requests_total, code=code) == count
    assert value(samples, "devin_etl_api_retries_total") == retries
    assert value(samples, "devin_etl_runs_total", kind="sync", status=status) == 1


def test_metrics_follow_runs_sessions_and_watermark(
    simulator: Simulator, pg_warehouse: Warehouse
) -> None:
    settings = make_settings(simulator, pg_warehouse)
    daemon = Daemon(settings, pg_warehouse.engine)
    daemon.run_sync()
    for session in simulator.sessions_snapshot()[:10]:
        simulator.update_session(session["session_id"], title="renamed")
    simulator.create_session()
    daemon.run_sync()

    with serving(daemon, settings, pg_warehouse.engine) as url:
        samples = scrape(url)

    total = len(simulator.expected_sessions())
    written = "devin_etl_sessions_written_total"
    runs = "devin_etl_runs_total"
    assert value(samples, written, action="inserted") == total
    assert value(samples, written, action="updated") == 10
    assert value(samples, runs, kind="sync", status="succeeded") == 2
    assert value(samples, runs, kind="sync", status="failed") == 0
    duration = "devin_etl_run_duration_seconds_count"
    assert value(samples, duration, kind="sync") == 2
    assert 0 <= (value(samples, "devin_etl_watermark_age_seconds") or -1) < 60
    last_success = value(samples, "devin_etl_last_success_timestamp_seconds")
    assert last_success is not None
    assert abs(last_success - datetime.now(UTC).timestamp()) < 60


def stop_after_first_commit(
    daemon: Daemon, warehouse: Warehouse, *, page: int
) -> Callable[[Simulator, int], None]:
    """Hold page ``page`` until a batch is committed, then ask for a stop.

    Pages are fetched ahead of the loader, so stopping on a page number
    alone could come before any batch was committed.
    """

    def hook(_simulator: Simulator, page_number: int) -> None:
        if page_number != page:
            return
        deadline = time.monotonic() + 30
        while not count_sessions(warehouse):
            assert time.monotonic() < deadline, "the sync never committed a batch"
            time.sleep(0.05)
        daemon.request_stop()

    return hook


def count_sessions(warehouse: Warehouse) -> int:
    with warehouse.engine.connect() as connection:
        query = sa.text("SELECT count(*) FROM sessions")
        return int(connection.execute(query).scalar_one())


def test_metrics_count_the_committed_batches_of_a_stopped_run(
    pg_warehouse: Warehouse,
) -> None:
    with start_simulator(count=600) as simulator:
        settings = make_settings(simulator, pg_warehouse)
        daemon = Daemon(settings, pg_warehouse.engine)
        simulator.on_page(stop_after_first_commit(daemon, pg_warehouse, page=5))

        outcome = daemon.run_sync()
        with serving(daemon, settings, pg_warehouse.engine) as url:
            samples = scrape(url)

    count = count_sessions(pg_warehouse)
    assert outcome == "stopped"
    assert 0 < count < 600
    written = "devin_etl_sessions_written_total"
    assert value(samples, written, action="inserted") == count
    assert value(samples, "devin_etl_runs_total", kind="sync", status="stopped") == 1
    assert value(samples, "devin_etl_watermark_age_seconds") is None


def test_endpoints_answer_404_elsewhere(
    simulator: Simulator, warehouse: Warehouse
) -> None:
    settings = make_settings(simulator, warehouse)
    daemon = Daemon(settings, warehouse.engine)

    with serving(daemon, settings, warehouse.engine) as url:
        response = requests.get(f"{url}/nothing-here", timeout=5)

    assert response.status_code == 404
    assert response.json() == {"error": "not found: try /healthz or /metrics"}


def test_metrics_count_reconcile_runs(
    simulator: Simulator, pg_warehouse: Warehouse
) -> None:
    settings = make_settings(simulator, pg_warehouse)
    daemon = Daemon(settings, pg_warehouse.engine)
    daemon.run_sync()
    simulator.delete_session(simulator.sessions_snapshot()[0]["session_id"])

    outcome = daemon.run_reconcile()
    with serving(daemon, settings, pg_warehouse.engine) as url:
        samples = scrape(url)

    runs = "devin_etl_runs_total"
    duration = "devin_etl_run_duration_seconds_count"
    assert outcome == "succeeded"
    assert value(samples, runs, kind="reconcile", status="succeeded") == 1
    assert value(samples, runs, kind="sync", status="succeeded") == 1
    assert value(samples, duration, kind="reconcile") == 1
