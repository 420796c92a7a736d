"""Migrations: upgrade, downgrade, upgrade again, and no drift from etl.schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from etl import bi, db
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


def reader_privileges(engine: sa.Engine) -> tuple[bool, set[str]]:
    """Whether devin_reader may use the engine's schema, and what it may read."""
    query = sa.text(
        "SELECT has_schema_privilege('devin_reader', current_schema(), 'USAGE'), "
        "array(SELECT c.relname FROM pg_class AS c "
        "WHERE c.relnamespace = current_schema()::regnamespace "
        "AND c.relkind IN ('r', 'v') "
        "AND has_table_privilege('devin_reader', c.oid, 'SELECT'))"
    )
    with engine.connect() as connection:
        usage, relations = connection.execute(query).one()
    return bool(usage), set(relations)


def migrated(
    postgres_url: str, prefix: str = "r"
) -> tuple[sa.Engine, DatabaseSettings]:
    settings = make_database_settings(postgres_url, f"{prefix}_{uuid.uuid4().hex[:12]}")
    engine = db.create_warehouse_engine(settings)
    db.upgrade_schema(engine, settings)
    return engine, settings


def test_migrations_reader_role_may_read_the_views_only(postgres_url: str) -> None:
    engine, _ = migrated(postgres_url)

    assert reader_privileges(engine) == (True, set(bi.VIEWS))
    engine.dispose()


def test_migrations_downgrade_keeps_the_reader_role_another_schema_uses(
    postgres_url: str,
) -> None:
    first, first_settings = migrated(postgres_url)
    second, _ = migrated(postgres_url)

    command.downgrade(db.alembic_config(first, first_settings), "0002")

    assert reader_privileges(first) == (False, set())
    assert reader_privileges(second) == (True, set(bi.VIEWS))
    first.dispose()
    second.dispose()


@pytest.fixture
def owner_without_createrole(postgres_url: str) -> Iterator[str]:
    """A login role that may create schemas but not roles, dropped afterwards."""
    name = f"etl_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    database = sa.make_url(postgres_url).database
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {name} LOGIN NOCREATEROLE"))
        connection.execute(sa.text(f'GRANT CREATE ON DATABASE "{database}" TO {name}'))
    try:
        yield sa.make_url(postgres_url).set(username=name).render_as_string(False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP OWNED BY {name} CASCADE"))
            connection.execute(sa.text(f"DROP ROLE {name}"))
        admin.dispose()


def test_migrations_run_by_an_owner_without_createrole_once_the_role_exists(
    postgres_url: str, owner_without_createrole: str
) -> None:
    migrated(postgres_url)[0].dispose()  # the reader role now exists

    engine, _ = migrated(owner_without_createrole, prefix="o")

    assert reader_privileges(engine) == (True, set(bi.VIEWS))
    engine.dispose()


def test_upgrade_schema_refused_by_the_database_says_why_in_one_line(
    empty_database: DatabaseSettings,
) -> None:
    engine = db.create_warehouse_engine(empty_database)
    command.upgrade(db.alembic_config(engine, empty_database), "0002")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE bi_settings (id integer)"))

    with pytest.raises(SchemaError, match="refused a migration") as raised:
        db.upgrade_schema(engine, empty_database)

    message = str(raised.value)
    assert "bi_settings" in message
    assert "\n" not in message
    assert db.current_revision(engine) == "0002"
    engine.dispose()


def test_head_revision_constant_matches_the_migration_scripts() -> None:
    assert db.head_revision() == db.HEAD_REVISION
