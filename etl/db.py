"""Connections to the warehouse, and the migrations that own its schema."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from etl.config import DatabaseSettings
from etl.errors import DatabaseUnavailableError, SchemaError

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
# The newest revision in migrations/versions (a test keeps the two equal).
# Every run checks it; reading it from the scripts would import Alembic and
# parse every revision on each start of `devin-etl sync`.
HEAD_REVISION = "0003"


def create_warehouse_engine(settings: DatabaseSettings) -> sa.Engine:
    """An engine whose connections see the configured schema first.

    SQLite gets foreign keys switched on and a busy timeout, so that its
    behaviour matches PostgreSQL's where the loader relies on it.
    """
    if settings.is_postgres:
        options = f"-csearch_path={settings.db_schema}"
        return sa.create_engine(
            settings.url,
            connect_args={"options": options},
            pool_pre_ping=True,
        )
    engine = sa.create_engine(settings.url, connect_args={"timeout": 30})
    sa.event.listen(engine, "connect", _configure_sqlite)
    return engine


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.close()


@contextmanager
def translate_connection_errors(settings: DatabaseSettings) -> Iterator[None]:
    """Turn "cannot connect" driver errors into :class:`DatabaseUnavailableError`."""
    try:
        yield
    except sa.exc.OperationalError as error:
        if not error.connection_invalidated and _is_connect_error(error):
            url = sa.make_url(settings.url).render_as_string(hide_password=True)
            raise DatabaseUnavailableError(
                f"cannot connect to the warehouse at {url}: "
                f"{_first_line(error.orig)}; check DATABASE_URL and that the "
                "server is running"
            ) from error
        raise


def _is_connect_error(error: sa.exc.OperationalError) -> bool:
    text = str(error.orig).lower()
    return any(
        word in text
        for word in ("connection", "connect", "unable to open", "does not exist")
    )


def _first_line(error: BaseException | None) -> str:
    return str(error).strip().splitlines()[0] if error else "unknown error"


def alembic_config(engine: sa.Engine, settings: DatabaseSettings) -> Config:
    """An Alembic config that runs this project's migrations on ``engine``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    config.attributes["db_schema"] = settings.db_schema
    return config


def upgrade_schema(engine: sa.Engine, settings: DatabaseSettings) -> str:
    """Apply every pending migration; returns the revision now applied.

    Raises :class:`SchemaError` when the database refuses a migration (a
    missing privilege, a table in the way), with the database's reason.
    """
    from alembic import command

    with translate_connection_errors(settings):
        try:
            command.upgrade(alembic_config(engine, settings), "head")
        except sa.exc.DBAPIError as error:
            if isinstance(error, sa.exc.OperationalError) and _is_connect_error(error):
                raise
            raise SchemaError(
                f"the warehouse refused a migration ({_first_line(error.orig)}): "
                "fix that in the database, then run `devin-etl migrate` again"
            ) from error
        return current_revision(engine) or "base"


def current_revision(engine: sa.Engine) -> str | None:
    """The revision recorded in ``alembic_version``, or None without one."""
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        query = sa.text("SELECT version_num FROM alembic_version")
        revision = connection.execute(query).scalar_one_or_none()
    return str(revision) if revision is not None else None


def head_revision() -> str:
    """The newest revision according to the migration scripts themselves."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None, "migrations/versions holds no revision"
    return head


def ensure_schema(engine: sa.Engine, settings: DatabaseSettings) -> None:
    """Check the warehouse is at the latest revision, or migrate it.

    Migrates when ``database.auto_migrate`` is set; raises
    :class:`SchemaError` telling to run ``devin-etl migrate`` otherwise.
    """
    with translate_connection_errors(settings):
        current = current_revision(engine)
    if current == HEAD_REVISION:
        return
    if settings.auto_migrate:
        log.info("Migrating the warehouse from %s to head", current or "empty")
        upgrade_schema(engine, settings)
        return
    state = "has no devin-etl schema" if current is None else "schema is outdated"
    raise SchemaError(
        f"the warehouse {state} (revision {current or 'none'}, expected "
        f"{HEAD_REVISION}): run `devin-etl migrate` first, or set "
        "database.auto_migrate = true"
    )
