"""The health verdict: is the last successful run of the source recent enough?

The warehouse is the truth: the verdict reads ``sync_state``, so it holds
across restarts and whichever process ran the sync. ``/healthz`` and
``devin-etl status`` both show it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from etl.config import Settings
from etl.logs import redact
from etl.state import read_source_state, utc_now

log = logging.getLogger(__name__)

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class Health:
    """A verdict with the facts behind it; ages are in seconds."""

    is_healthy: bool
    last_success_at: datetime | None
    age_seconds: float | None
    max_age_seconds: int
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {
            "status": HEALTHY if self.is_healthy else UNHEALTHY,
            "last_success_at": (
                self.last_success_at.isoformat() if self.last_success_at else None
            ),
            "age_seconds": (
                None if self.age_seconds is None else round(self.age_seconds, 1)
            ),
            "max_age_seconds": self.max_age_seconds,
            "reason": self.reason,
        }


def judge_health(
    source: str,
    last_success_at: datetime | None,
    max_age_seconds: int,
    now: datetime,
) -> Health:
    """Healthy while the last success is at most ``max_age_seconds`` old."""
    if last_success_at is None:
        reason = f"no successful run of source {source} is recorded yet"
        return Health(False, None, None, max_age_seconds, reason)
    age = (now - last_success_at).total_seconds()
    if age > max_age_seconds:
        reason = (
            f"the last successful run of source {source} was {age:.0f}s ago, "
            f"more than {max_age_seconds}s: look for failed runs in "
            "`devin-etl status` and the logs"
        )
        return Health(False, last_success_at, age, max_age_seconds, reason)
    reason = (
        f"the last successful run of source {source} was {age:.0f}s ago, "
        f"within {max_age_seconds}s"
    )
    return Health(True, last_success_at, age, max_age_seconds, reason)


def read_health(connection: sa.Connection, settings: Settings) -> Health:
    """The verdict for the configured source, from ``sync_state``."""
    source = settings.sync.source
    stored = read_source_state(connection, source)
    max_age = settings.daemon.healthy_max_age_seconds
    return judge_health(source, stored.last_success_at, max_age, utc_now())


def check_health(engine: sa.Engine, settings: Settings) -> Health:
    """Like :func:`read_health`, but an unreadable warehouse is unhealthy."""
    try:
        with engine.connect() as connection:
            return read_health(connection, settings)
    except sa.exc.SQLAlchemyError as error:
        reason = (
            f"cannot read sync_state in the warehouse ({_first_line(error)}): "
            "check DATABASE_URL, that the server runs and that `devin-etl "
            "migrate` was run"
        )
        log.warning("Health check failed: %s", reason)
        max_age = settings.daemon.healthy_max_age_seconds
        return Health(False, None, None, max_age, redact(reason))


def _first_line(error: sa.exc.SQLAlchemyError) -> str:
    cause = error.orig if isinstance(error, sa.exc.DBAPIError) else error
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(error).__name__
