"""The BI layer's settings and names: what the dashboards' views rely on.

The views (``v_*``) are created by the migrations and described in
``docs/schema.md``. The daily ones name a day by the UTC date it starts on,
and a day starts at ``bi.day_start_hour_utc`` (0 by default; the vendor's
billing day starts at 8). Views cannot read the settings file, so every sync
copies that setting into the one-row table ``bi_settings``: a changed
setting takes effect with the next sync. :func:`refresh_bi_inputs` does
that after each sync, and refreshes the organizations and users directory
whose names the views show.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from etl import schema
from etl.config import BiSettings, Settings
from etl.directory import refresh_directory
from etl.errors import TransientError
from etl.extract import DevinClient
from etl.state import utc_now

log = logging.getLogger(__name__)

# The views of the BI contract (docs/schema.md); devin_reader may read these only.
VIEWS = (
    "v_sessions",
    "v_sessions_daily",
    "v_pull_requests",
    "v_pr_outcomes",
    "v_session_durations",
    "v_tags",
    "v_acu_daily",
)


def refresh_bi_inputs(
    settings: Settings, engine: sa.Engine, client: DevinClient
) -> None:
    """Store the day boundary, then refresh the directory if configured.

    Runs after a session sync, under its lock. The sessions are what the
    run is for and they are committed by then, so an API that is down for
    the directory is a warning, retried by the next run. Anything a person
    must fix (millisecond timestamps, a rejected request) still fails.
    """
    with engine.begin() as connection:
        save_bi_settings(connection, settings.bi)
    if not settings.sync.refresh_directory:
        return
    try:
        refresh_directory(engine, client, page_size=settings.api.page_size)
    except TransientError as error:
        log.warning("Organizations and users were not refreshed: %s", error)


def save_bi_settings(connection: sa.Connection, settings: BiSettings) -> bool:
    """Store the day boundary in ``bi_settings``; True when it changed.

    Writes nothing when the stored value is already the configured one.
    """
    table = schema.bi_settings
    hour = settings.day_start_hour_utc
    stored = connection.execute(
        sa.select(table.c.day_start_hour_utc).where(table.c.id == 1)
    ).scalar_one_or_none()
    if stored == hour:
        return False

    values = {"day_start_hour_utc": hour, "updated_at": utc_now()}
    if stored is None:
        connection.execute(table.insert().values(id=1, **values))
    else:
        connection.execute(table.update().where(table.c.id == 1).values(values))
    log.info("BI days now start at %02d:00 UTC", hour)
    return True
