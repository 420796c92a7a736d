"""The window a sync run lists, and the verdict on one listing of it.

A run lists ``updated_after = watermark - lookback`` with no upper bound.
:class:`Listing` watches the pages go by and decides whether the listing
was a complete snapshot (stable), and which server time it started at;
:func:`reference_time` turns that into the next watermark.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from etl import state
from etl.extract import Page

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """Where a listing starts, and the server time a sane clock shows now.

    ``expected_server_now`` is the last watermark plus the time this host saw
    pass since that run started: only differences of the host clock are used.
    """

    start: datetime | None
    expected_server_now: datetime | None


class ServerClockWentBackError(Exception):
    """The server's clock is behind where the last run left it, by ``by``.

    Internal to a run, which answers it by listing a wider window.
    """

    def __init__(self, by: timedelta) -> None:
        super().__init__(f"server clock went back by {by}")
        self.by = by


@dataclass
class Listing:
    """What one pass over the window saw, for the stability verdict.

    A listing is unstable when an offset cursor may have skipped a session:
    something left the listed set (``total`` went down) or a session moved
    within the order (it came again with another ``updated_at``). Sessions
    that only joined the set, or came twice unchanged, skip nothing.
    """

    server_time: datetime | None = None
    newest_update: int | None = None
    last_total: int | None = None
    is_stable: bool = True
    versions: dict[int, int] = field(default_factory=dict)

    def observe(self, page: Page) -> None:
        if self.server_time is None and not self.versions:
            self.server_time = page.server_time
        if page.total is not None:
            if self.last_total is not None and page.total < self.last_total:
                self.is_stable = False
            self.last_total = page.total
        for session_id, updated_at in _versions(page.items):
            seen = self.versions.setdefault(hash(session_id), updated_at)
            if seen != updated_at:
                self.is_stable = False
            self.newest_update = max(self.newest_update or 0, updated_at)


def _versions(items: list[dict[str, Any]]) -> Iterator[tuple[str, int]]:
    for item in items:
        session_id, updated_at = item.get("session_id"), item.get("updated_at")
        if isinstance(session_id, str) and isinstance(updated_at, int):
            yield session_id, updated_at


def reference_time(listing: Listing) -> datetime | None:
    if listing.server_time is not None:
        return listing.server_time
    if listing.newest_update is None:
        return None
    log.warning(
        "The API sent no Date header: using the newest updated_at seen as the watermark"
    )
    return datetime.fromtimestamp(listing.newest_update, tz=UTC)


def expected_server_now(stored: state.SourceState) -> datetime | None:
    if stored.watermark is None or stored.last_run_started_at is None:
        return None
    return stored.watermark + (state.utc_now() - stored.last_run_started_at)
