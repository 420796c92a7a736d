"""The daemon as a user runs it: a real process, the simulator, real PostgreSQL.

Each test starts ``devin-etl daemon`` on a one-second interval (or a long
one, where only the first run matters), watches ``sync_runs`` and stops it
with a signal, then checks the warehouse against the API.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from compare import api_snapshot, assert_same, warehouse_snapshot
from etl.config import DaemonSettings
from etl.pipeline import sync_once
from etl.scheduler import reconcile_trigger, sync_trigger
from etl.simulator import Fault, Simulator
from support import (
    CLEARED_ENV,
    Warehouse,
    cli_env,
    make_settings,
    start_simulator,
)


@dataclass
class DaemonProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    http_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def stop(self, number: int = signal.SIGTERM) -> tuple[int, float]:
        """Send ``number``; return the exit code and the seconds it took."""
        sent = time.monotonic()
        self.process.send_signal(number)
        code = self.process.wait(timeout=60)
        return code, time.monotonic() - sent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def start_daemon(
    tmp_path: Path, pg_warehouse: Warehouse
) -> Iterator[Callable[..., DaemonProcess]]:
    """Start ``devin-etl daemon`` against a simulator; kill what is left."""
    started: list[DaemonProcess] = []

    def start(simulator: Simulator, **settings: str) -> DaemonProcess:
        port = free_port()
        defaults = {
            "DEVIN_ETL_API__RETRY__MAX_ATTEMPTS": "2",
            "DEVIN_ETL_API__RETRY__BACKOFF_SECONDS": "0.01",
            "DEVIN_ETL_DAEMON__SYNC_INTERVAL_SECONDS": "1",
            "DEVIN_ETL_DAEMON__HTTP_PORT": str(port),
        }
        env = cli_env(simulator, pg_warehouse, **{**defaults, **settings})
        log_path = tmp_path / f"daemon-{len(started)}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "etl", "daemon"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        started.append(DaemonProcess(process, log_path, port))
        return started[-1]

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def sync_runs(warehouse: Warehouse) -> list[dict[str, Any]]:
    with warehouse.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM sync_runs ORDER BY id"))
        return [dict(row) for row in rows.mappings()]


def wait_for_runs(
    warehouse: Warehouse,
    daemon: DaemonProcess,
    is_enough: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """Poll ``sync_runs`` until ``is_enough``; fail if the daemon died first."""
    deadline = time.monotonic() + timeout
    while not is_enough(runs := sync_runs(warehouse)):
        assert daemon.process.poll() is None, "\n".join(daemon.log_lines())
        assert time.monotonic() < deadline, f"runs so far: {runs}"
        time.sleep(0.1)
    return runs


def succeeded(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [run for run in runs if run["status"] == "succeeded"]


def assert_synced(simulator: Simulator, warehouse: Warehouse) -> None:
    expected = api_snapshot(simulator.expected_sessions())
    assert_same(warehouse_snapshot(warehouse.engine), expected)


def assert_json_log_without_key(daemon: DaemonProcess, key: str) -> list[str]:
    """Every log line is a JSON object, none holds the key; return messages."""
    entries = [json.loads(line) for line in daemon.log_lines()]
    assert all("Traceback" not in entry["message"] for entry in entries)
    assert key not in daemon.log_path.read_text()
    return [entry["message"] for entry in entries]


@pytest.mark.parametrize(
    "number", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"]
)
def test_daemon_runs_every_interval_and_stops_on_a_signal(
    start_daemon: Callable[..., DaemonProcess],
    pg_warehouse: Warehouse,
    number: int,
) -> None:
    with start_simulator(count=60) as simulator:
        daemon = start_daemon(simulator)
        runs = wait_for_runs(pg_warehouse, daemon, lambda r: len(succeeded(r)) >= 2)
        health = requests.get(f"{daemon.url}/healthz", timeout=5)

        code, seconds = daemon.stop(number)

        first, second = succeeded(runs)[:2]
        assert (second["started_at"] - first["started_at"]).total_seconds() >= 0.5
        assert first["sessions_inserted"] == 60
        assert health.status_code == 200
        assert health.json()["status"] == "healthy"
        assert code == 0
        assert seconds < 10
        assert all(run["status"] != "running" for run in sync_runs(pg_warehouse))
        assert_synced(simulator, pg_warehouse)
        messages = assert_json_log_without_key(daemon, simulator.config.api_key)
        assert messages[-1] == "Daemon stopped"


def hold_page_and_signal(
    started: list[DaemonProcess],
    warehouse: Warehouse,
    hold: float,
    signalled: list[float],
) -> Callable[[Simulator, int], None]:
    """On page 5: wait for a committed batch, SIGTERM the daemon, hold on.

    The daemon is ``started[0]``: the hook exists before the daemon does,
    so that it counts every page.
    """

    def hook(_simulator: Simulator, page: int) -> None:
        if page != 5:
            return
        deadline = time.monotonic() + 30
        while not warehouse_snapshot(warehouse.engine).sessions:
            assert time.monotonic() < deadline, "the daemon never committed a batch"
            time.sleep(0.05)
        started[0].process.send_signal(signal.SIGTERM)
        signalled.append(time.monotonic())
        time.sleep(hold)

    return hook


@pytest.mark.parametrize(
    ("stop_timeout", "hold", "status", "error"),
    [
        (20, 1.0, "failed", "stopped between batches"),
        (1, 5.0, "abandoned", "the process stopped before finishing"),
    ],
    ids=["batch-ends-in-time", "batch-outlasts-the-timeout"],
)
def test_daemon_sigterm_mid_run_keeps_whole_batches_and_exits_0(
    start_daemon: Callable[..., DaemonProcess],
    pg_warehouse: Warehouse,
    stop_timeout: int,
    hold: float,
    status: str,
    error: str,
) -> None:
    with start_simulator(count=600) as simulator:
        started: list[DaemonProcess] = []
        signalled: list[float] = []
        simulator.on_page(hold_page_and_signal(started, pg_warehouse, hold, signalled))
        started.append(
            start_daemon(
                simulator,
                DEVIN_ETL_DAEMON__SYNC_INTERVAL_SECONDS="3600",
                DEVIN_ETL_DAEMON__STOP_TIMEOUT_SECONDS=str(stop_timeout),
            )
        )

        code = started[0].process.wait(timeout=60)
        seconds = time.monotonic() - signalled[0]
        stored = warehouse_snapshot(pg_warehouse.engine)
        served = {s["session_id"]: s for s in simulator.expected_sessions()}
        simulator.clear_hooks()
        settings = make_settings(simulator, pg_warehouse)
        sync_once(settings, pg_warehouse.engine, wait=True)

        assert code == 0
        assert seconds < min(stop_timeout, hold) + 3
        assert len(stored.sessions) % 100 == 0
        assert 0 < len(stored.sessions) < 600
        assert_same(stored, api_snapshot([served[key] for key in stored.sessions]))
        interrupted, repair = sync_runs(pg_warehouse)
        assert (interrupted["status"], interrupted["window_end"]) == (status, None)
        assert error in interrupted["error"]
        assert repair["status"] == "succeeded"
        assert_synced(simulator, pg_warehouse)


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        ([Fault.status(401)], "answered 401: the API key was rejected"),
        ([Fault.status(503)] * 2, "answered 503"),
    ],
    ids=["unauthorized", "5xx-storm"],
)
def test_daemon_survives_a_failed_run_and_the_next_tick_succeeds(
    start_daemon: Callable[..., DaemonProcess],
    pg_warehouse: Warehouse,
    faults: list[Fault],
    error: str,
) -> None:
    with start_simulator(count=60) as simulator:
        simulator.inject(*faults)
        daemon = start_daemon(simulator)
        runs = wait_for_runs(pg_warehouse, daemon, lambda r: len(succeeded(r)) >= 1)

        code, _ = daemon.stop()

        assert runs[0]["status"] == "failed"
        assert error in runs[0]["error"]
        assert runs[1]["status"] == "succeeded"
        assert code == 0
        assert_synced(simulator, pg_warehouse)
        messages = assert_json_log_without_key(daemon, simulator.config.api_key)
        failures = [m for m in messages if m.startswith("The sync run failed")]
        assert len(failures) == 1
        assert error in failures[0]


def test_daemon_reconciles_early_when_sessions_were_deleted_upstream(
    start_daemon: Callable[..., DaemonProcess], pg_warehouse: Warehouse
) -> None:
    with start_simulator(count=60) as simulator:
        daemon = start_daemon(simulator)
        wait_for_runs(pg_warehouse, daemon, lambda r: len(succeeded(r)) >= 1)
        deleted = {s["session_id"] for s in simulator.sessions_snapshot()[:3]}
        for session_id in deleted:
            simulator.delete_session(session_id)

        runs = wait_for_runs(
            pg_warehouse,
            daemon,
            lambda r: any(run["kind"] == "reconcile" for run in succeeded(r)),
        )
        code, _ = daemon.stop()

    with pg_warehouse.engine.connect() as connection:
        marked = connection.execute(
            sa.text("SELECT session_id FROM sessions WHERE deleted_at IS NOT NULL")
        )
        assert set(marked.scalars()) == deleted
    reconciles = [run for run in runs if run["kind"] == "reconcile"]
    assert [(run["status"], run["sessions_deleted"]) for run in reconciles] == [
        ("succeeded", 3)
    ]
    assert code == 0


def test_daemon_without_key_exits_1_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'w.db'}"

    result = subprocess.run(
        [sys.executable, "-m", "etl", "daemon"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: DEVIN_API_KEY is not set: export it with a service-user key "
        "(cog_...) that has the ViewAccountSessions permission"
    ]


CRON = "cron[month='*', day='*', day_of_week='*', hour='{}', minute='{}']"


@pytest.mark.parametrize(
    ("settings", "sync", "reconcile"),
    [
        ({}, "interval[0:15:00]", CRON.format(3, 30)),
        ({"sync_cron": "*/5 * * * *"}, CRON.format("*", "*/5"), CRON.format(3, 30)),
        (
            {"reconcile_interval_seconds": 7200},
            "interval[0:15:00]",
            "interval[2:00:00]",
        ),
        (
            {"reconcile_interval_seconds": 7200, "reconcile_cron": "0 4 * * *"},
            "interval[0:15:00]",
            CRON.format(4, 0),
        ),
    ],
    ids=["defaults", "sync-cron", "reconcile-interval", "given-cron-wins"],
)
def test_scheduler_triggers_follow_the_settings(
    settings: dict[str, Any], sync: str, reconcile: str
) -> None:
    daemon = DaemonSettings.model_validate(settings)

    assert str(sync_trigger(daemon)) == sync
    assert str(reconcile_trigger(daemon)) == reconcile
