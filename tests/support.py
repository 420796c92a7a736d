"""Helpers shared by the tests: warehouses, simulators and settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from etl.config import DatabaseSettings, Settings
from etl.simulator import Simulator, SimulatorConfig, generate_sessions

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
