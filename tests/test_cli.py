"""The command line as a user meets it: real processes, exit codes, exact lines."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from etl.simulator import Simulator
from support import CLEARED_ENV, start_simulator

COMMANDS = [
    "sync",
    "migrate",
    "status",
    "demo",
    "simulate",
    "daemon",
    "reconcile",
    "backfill",
]


def devin_etl(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``devin-etl`` in a clean environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    return subprocess.run(
        [sys.executable, "-m", "etl", *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The ``Error:`` line of a failed run: exactly one, last, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert [line for line in lines if line.startswith("Error: ")] == lines[-1:]
    assert "Traceback" not in result.stderr
    return lines[-1]


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with start_simulator(count=60) as running:
        yield running


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'w.db'}"


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_every_command_has_help_with_an_example(
    command: str, tmp_path: Path
) -> None:
    result = devin_etl(command, "--help", cwd=tmp_path)

    assert result.returncode == 0
    assert "Example:" in result.stdout


def test_cli_usage_error_exits_2(tmp_path: Path) -> None:
    result = devin_etl("sync", "--no-such-option", cwd=tmp_path)

    assert result.returncode == 2
    assert "No such option" in result.stderr


def test_cli_sync_without_key_says_how_to_set_it(
    tmp_path: Path, sqlite_url: str
) -> None:
    devin_etl("migrate", cwd=tmp_path, DATABASE_URL=sqlite_url)

    result = devin_etl("sync", cwd=tmp_path, DATABASE_URL=sqlite_url)

    assert "DEVIN_API_KEY is not set" in error_line(result)


def test_cli_sync_before_migrate_says_to_migrate(
    tmp_path: Path, sqlite_url: str, simulator: Simulator
) -> None:
    result = devin_etl(
        "sync",
        cwd=tmp_path,
        DATABASE_URL=sqlite_url,
        DEVIN_API_KEY=simulator.config.api_key,
        DEVIN_API_BASE_URL=simulator.base_url,
    )

    assert "run `devin-etl migrate` first" in error_line(result)


def test_cli_sync_with_wrong_key_never_prints_it(
    tmp_path: Path, sqlite_url: str, simulator: Simulator
) -> None:
    devin_etl("migrate", cwd=tmp_path, DATABASE_URL=sqlite_url)

    result = devin_etl(
        "sync",
        cwd=tmp_path,
        DATABASE_URL=sqlite_url,
        DEVIN_API_KEY="cog_not_the_right_one",
        DEVIN_API_BASE_URL=simulator.base_url,
    )

    line = error_line(result)
    assert "401" in line
    assert "check DEVIN_API_KEY" in line
    assert "cog_not_the_right_one" not in result.stderr + result.stdout


def test_cli_debug_shows_the_traceback(tmp_path: Path, sqlite_url: str) -> None:
    result = devin_etl("--debug", "sync", cwd=tmp_path, DATABASE_URL=sqlite_url)

    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_cli_bad_setting_names_the_key(tmp_path: Path) -> None:
    result = devin_etl("status", cwd=tmp_path, DEVIN_ETL_SYNC__BATCH_PAGES="zero")

    assert "invalid setting sync.batch_pages" in error_line(result)


def test_cli_unreachable_database_is_one_line(tmp_path: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:9/nowhere"

    result = devin_etl("migrate", cwd=tmp_path, DATABASE_URL=url)

    assert "cannot connect to the warehouse" in error_line(result)


def test_cli_migrate_sync_status_on_postgres(
    tmp_path: Path, postgres_url: str, simulator: Simulator
) -> None:
    env = {
        "DATABASE_URL": postgres_url,
        "DEVIN_ETL_DATABASE__SCHEMA": "cli_test",
        "DEVIN_API_KEY": simulator.config.api_key,
        "DEVIN_API_BASE_URL": simulator.base_url,
    }

    migrated = devin_etl("migrate", cwd=tmp_path, **env)
    synced = devin_etl("sync", cwd=tmp_path, **env)
    status = devin_etl("status", cwd=tmp_path, **env)

    assert migrated.stdout.startswith("Warehouse schema is at revision ")
    assert synced.returncode == 0, synced.stderr
    assert "60 sessions seen, 60 new" in synced.stdout
    assert status.returncode == 0, status.stderr
    assert "succeeded" in status.stdout
    assert "sessions" in status.stdout
    assert " 60" in status.stdout
    assert simulator.config.api_key not in synced.stderr + status.stdout


def test_cli_demo_runs_without_key_or_server(tmp_path: Path) -> None:
    result = devin_etl("demo", "--sessions", "300", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "First sync (everything): 300 sessions read" in result.stdout
    assert "Second sync (incremental)" in result.stdout
    assert "Pull requests by repository" in result.stdout
    assert (tmp_path / "devin_sessions.db").exists()


def test_cli_demo_refuses_a_warehouse_with_real_data(
    tmp_path: Path, sqlite_url: str, simulator: Simulator
) -> None:
    env = {
        "DATABASE_URL": sqlite_url,
        "DEVIN_API_KEY": simulator.config.api_key,
        "DEVIN_API_BASE_URL": simulator.base_url,
    }
    devin_etl("migrate", cwd=tmp_path, **env)
    devin_etl("sync", cwd=tmp_path, **env)

    result = devin_etl("demo", "--sessions", "50", cwd=tmp_path, **env)

    assert "--database-url" in error_line(result)
