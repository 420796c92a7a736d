"""Alembic environment for the devin-etl warehouse.

Online mode runs on the engine that ``devin-etl migrate`` passes in
``config.attributes``, or on one built from the devin-etl settings when the
``alembic`` command is used directly. Offline mode prints the SQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from etl.config import load_settings
from etl.db import create_warehouse_engine
from etl.schema import metadata

config = context.config


def run_migrations_offline() -> None:
    """Emit the migration SQL to stdout instead of running it."""
    context.configure(
        url=load_settings().database.url,
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations in one transaction on the warehouse."""
    engine = config.attributes.get("engine")
    schema = config.attributes.get("db_schema")
    if engine is None:
        settings = load_settings().database
        engine = create_warehouse_engine(settings)
        schema = settings.db_schema

    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            _create_schema(connection, schema)
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


def _create_schema(connection: sa.Connection, schema: str) -> None:
    # The search_path already names the schema; it only has to exist before
    # the first unqualified CREATE TABLE lands in it.
    quoted = connection.dialect.identifier_preparer.quote_identifier(schema)
    connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
    connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
