"""Shared fixtures: real warehouses (PostgreSQL and SQLite) and the simulator.

PostgreSQL tests use the server named by ``TEST_DATABASE_URL``; the run
creates a throwaway database and gives every test its own schema in it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from etl import db
from etl.config import DatabaseSettings
from etl.simulator import Simulator
from support import Warehouse, make_database_settings, start_simulator

DEFAULT_TEST_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _server_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway database on the test server, dropped after the run."""
    server = sa.make_url(_server_url())
    name = f"devin_etl_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(
                sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            )
        admin.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    """A migrated warehouse on each backend."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        settings = make_database_settings(url, f"t_{uuid.uuid4().hex[:12]}")
    else:
        settings = make_database_settings(f"sqlite:///{tmp_path / 'warehouse.db'}")
    yield from migrated_warehouse(settings)


@pytest.fixture
def pg_warehouse(postgres_url: str) -> Iterator[Warehouse]:
    """A migrated warehouse on PostgreSQL only, in a schema of its own."""
    settings = make_database_settings(postgres_url, f"t_{uuid.uuid4().hex[:12]}")
    yield from migrated_warehouse(settings)


def migrated_warehouse(settings: DatabaseSettings) -> Iterator[Warehouse]:
    engine = db.create_warehouse_engine(settings)
    db.upgrade_schema(engine, settings)
    try:
        yield Warehouse(settings, engine)
    finally:
        engine.dispose()


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    """A running simulator with 300 generated sessions and default behaviour."""
    with start_simulator() as running:
        yield running
