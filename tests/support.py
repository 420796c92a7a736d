"""Helpers shared by the tests: warehouses, simulators and settings."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from etl.config import DatabaseSettings, Settings
from etl.simulator import (
    Simulator,
    SimulatorConfig,
    generate_organizations,
    generate_sessions,
    generate_users,
)

NOW = 1_790_000_000  # a fixed "now" for generated data: 2026-09-21 UTC


@dataclass(frozen=True)
class Warehouse:
    """A migrated, empty warehouse for one test."""

    settings: DatabaseSettings
    engine: sa.Engine

    @property
    def is_postgres(self) -> bool:
        return self.settings.is_postgres


def make_database_settings(url: str, schema: str = "devin") -> DatabaseSettings:
    return DatabaseSettings.model_validate({"url": url, "schema": schema})


def start_simulator(count: int = 300, *, seed: int = 7, **config: Any) -> Simulator:
    sessions = generate_sessions(count, seed=seed, now=NOW)
    return Simulator(sessions, SimulatorConfig(**config))


def start_simulator_with_directory(
    count: int = 300, *, seed: int = 7, **config: Any
) -> Simulator:
    """Like :func:`start_simulator`, also serving the organizations and users
    that the generated sessions refer to."""
    return Simulator(
        generate_sessions(count, seed=seed, now=NOW),
        SimulatorConfig(**config),
        organizations=generate_organizations(seed=seed, now=NOW),
        users=generate_users(seed=seed),
    )


def make_settings(
    simulator: Simulator, warehouse: Warehouse, **sections: dict[str, Any]
) -> Settings:
    """Settings pointing at ``simulator`` and ``warehouse``, with fast retries.

    ``sections`` override whole keys of a section, e.g. ``sync={"max_passes": 1}``.
    """
    values: dict[str, Any] = {
        "api": {
            "base_url": simulator.base_url,
            "key": simulator.config.api_key,
            "page_size": 50,
            "read_timeout_seconds": 5,
            "retry": {
                "max_attempts": 4,
                "backoff_seconds": 0.01,
                "max_backoff_seconds": 0.05,
            },
        },
        "database": warehouse.settings.model_dump(by_alias=True),
        "sync": {"batch_pages": 2},
    }
    for name, overrides in sections.items():
        values[name] = {**values.get(name, {}), **overrides}
    return Settings(**values)


CLEARED_ENV = (
    "DEVIN_API_KEY",
    "DEVIN_API_BASE_URL",
    "DATABASE_URL",
    "DEVIN_ETL_CONFIG",
)


def cli_env(simulator: Simulator, warehouse: Warehouse, **extra: str) -> dict[str, str]:
    """The environment of a ``devin-etl`` process reading ``simulator`` into
    ``warehouse``, with the small pages and batches of :func:`make_settings`."""
    base = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    return {
        **base,
        "DEVIN_API_KEY": simulator.config.api_key,
        "DEVIN_API_BASE_URL": simulator.base_url,
        "DATABASE_URL": warehouse.settings.url,
        "DEVIN_ETL_DATABASE__SCHEMA": warehouse.settings.db_schema,
        "DEVIN_ETL_API__PAGE_SIZE": "50",
        "DEVIN_ETL_SYNC__BATCH_PAGES": "2",
        **extra,
    }


def start_cli(
    simulator: Simulator, warehouse: Warehouse, *args: str, **extra_env: str
) -> subprocess.Popen[str]:
    """Start ``devin-etl ARGS`` with its output piped, as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "etl", *args],
        env=cli_env(simulator, warehouse, **extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(
    simulator: Simulator, warehouse: Warehouse, *args: str, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``devin-etl ARGS`` to its end and return what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "etl", *args],
        env=cli_env(simulator, warehouse, **extra_env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
