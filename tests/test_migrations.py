"""Migrations: upgrade, downgrade, upgrade again, and no drift from etl.schema."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from etl import db
from etl.config import DatabaseSettings
from etl.errors import SchemaError
from support import make_database_settings

DATA_TABLES = {
    "sessions",
    "session_tags",
    "session_pull_requests",
    "session_children",
    "sync_state",
    "sync_runs",
}


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> DatabaseSettings:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        return make_database_settings(url, f"m_{uuid.uuid4().hex[:12]}")
    return make_database_settings(f"sqlite:///{tmp_path / 'm.db'}")


def table_names(engine: sa.Engine, settings: DatabaseSettings) -> set[str]:
    schema = settings.db_schema if settings.is_postgres else None
    return set(sa.inspect(engine).get_table_names(schema=schema)) - {"alembic_version"}


def test_migrations_upgrade_downgrade_upgrade_leaves_no_drift(
    empty_database: DatabaseSettings,
) -> None:
    engine = db.create_warehouse_engine(empty_database)
    config = db.alembic_config(engine, empty_database)

    command.upgrade(config, "head")
    assert table_names(engine, empty_database) >= DATA_TABLES
    command.downgrade(config, "base")
    assert table_names(engine, empty_database) == set()
    command.upgrade(config, "head")
    command.check(config)  # raises when etl.schema and the revisions differ

    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()


def test_ensure_schema_on_empty_warehouse_says_to_migrate(
    empty_database: DatabaseSettings,
) -> None:
    engine = db.create_warehouse_engine(empty_database)

    with pytest.raises(SchemaError, match="run `devin-etl migrate` first"):
        db.ensure_schema(engine, empty_database)
    engine.dispose()


def test_ensure_schema_migrates_when_configured(
    empty_database: DatabaseSettings,
) -> None:
    settings = empty_database.model_copy(update={"auto_migrate": True})
    engine = db.create_warehouse_engine(settings)

    db.ensure_schema(engine, settings)

    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()
