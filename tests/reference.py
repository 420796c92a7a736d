"""What the BI views must show, computed in Python from what the API served.

A test hands :class:`Observations` the sessions the API listed after each
sync; the functions below derive each view's numbers from those alone, with
none of the warehouse's SQL, so a view and its reference can only agree by
both being right. Times are unix seconds (UTC); a BI day starts at ``hour``.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

Record = dict[str, Any]
TRACKED = ("updated_at", "status", "status_detail", "acus_consumed", "is_archived")
REPO_PATTERNS = (
    re.compile(r"^https?://[^/]*github[^/]*/([^/]+/[^/]+)/pull/\d+"),
    re.compile(r"^https?://[^/]*gitlab[^/]*/(.+?)/-/merge_requests/\d+"),
)


def bi_day(seconds: int, hour: int = 0) -> date:
    """The BI day of a moment: days start at ``hour`` o'clock UTC."""
    return datetime.fromtimestamp(seconds - hour * 3600, UTC).date()


def monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def repo_of(pr_url: str) -> str | None:
    for pattern in REPO_PATTERNS:
        found = pattern.match(pr_url)
        if found:
            return found.group(1)
    return None


def pr_states(session: Record) -> dict[str, str | None]:
    """A session's pull requests by URL; a repeated URL keeps its last state."""
    return {
        pr["pr_url"]: pr.get("pr_state") for pr in session.get("pull_requests") or ()
    }


def version_of(session: Record) -> tuple[Any, ...]:
    """What makes a new version: tracked fields, tags and pull request states."""
    tags = tuple(sorted(set(session.get("tags") or ())))
    pulls = tuple(sorted(pr_states(session).items(), key=lambda pair: pair[0]))
    return (*(session.get(name) for name in TRACKED), session.get("title"), tags, pulls)


@dataclass
class Observations:
    """The versions of each session that the syncs saw, oldest first."""

    versions: dict[str, list[Record]] = field(default_factory=dict)

    def observe(self, listed: list[Record]) -> None:
        """Record what a complete listing showed right after a sync."""
        for session in listed:
            seen = self.versions.setdefault(session["session_id"], [])
            if not seen or version_of(seen[-1]) != version_of(session):
                seen.append(session)

    def latest(self) -> dict[str, Record]:
        return {key: versions[-1] for key, versions in self.versions.items()}

    def without(self, session_ids: set[str]) -> Observations:
        kept = {k: v for k, v in self.versions.items() if k not in session_ids}
        return Observations(kept)


def acu_daily(seen: Observations, hour: int = 0) -> dict[tuple[Any, ...], float]:
    """ACU growth per (day, org_id, user_id): each version adds its growth
    since the previous one on the day of its ``updated_at``."""
    totals: dict[tuple[Any, ...], float] = defaultdict(float)
    for versions in seen.versions.values():
        owner = versions[-1]
        previous = 0.0
        for version in versions:
            acus = version.get("acus_consumed") or 0.0
            key = (bi_day(version["updated_at"], hour), owner["org_id"])
            totals[(*key, owner.get("user_id"))] += acus - previous
            previous = acus
    return dict(totals)


def sessions_daily(sessions: list[Record], hour: int = 0) -> Counter[tuple[Any, ...]]:
    return Counter(
        (
            bi_day(s["created_at"], hour),
            s["org_id"],
            s.get("origin"),
            s.get("category"),
            s.get("status"),
        )
        for s in sessions
    )


def tags_daily(sessions: list[Record], hour: int = 0) -> Counter[tuple[Any, ...]]:
    return Counter(
        (bi_day(s["created_at"], hour), s["org_id"], tag)
        for s in sessions
        for tag in set(s.get("tags") or ())
    )


def pr_outcomes(seen: Observations, hour: int = 0) -> dict[tuple[Any, ...], list[int]]:
    """[opened, merged, closed] per (week, repo), from the first version that
    showed each pull request, and first showed it merged or closed."""
    outcomes: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0])
    for versions in seen.versions.values():
        current = pr_states(versions[-1])
        for url in current:
            repo = repo_of(url)
            if repo is None:
                continue
            for column, state in enumerate((None, "merged", "closed")):
                first = first_seen(versions, url, state)
                if first is not None:
                    outcomes[(monday(bi_day(first, hour)), repo)][column] += 1
    return dict(outcomes)


def first_seen(versions: list[Record], url: str, state: str | None) -> int | None:
    """``updated_at`` of the first version listing ``url`` (in ``state``)."""
    for version in versions:
        states = pr_states(version)
        if url in states and (state is None or states[url] == state):
            return int(version["updated_at"])
    return None


def is_terminal(session: Record) -> bool:
    status = session.get("status")
    return status in ("exit", "error") or (
        status == "running" and session.get("status_detail") == "finished"
    )


def durations(seen: Observations) -> dict[str, int]:
    """Seconds from creation to the first terminal version, per ended session."""
    ended = {}
    for session_id, versions in seen.versions.items():
        first = next((v for v in versions if is_terminal(v)), None)
        if first is not None:
            ended[session_id] = first["updated_at"] - first["created_at"]
    return ended


def as_epoch(value: datetime | str) -> int:
    """A view's timestamp as unix seconds; SQLite keeps UTC text."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value).replace(tzinfo=UTC)
    return int(value.timestamp())


def as_date(value: Any) -> date:
    """A view's day: a date on PostgreSQL, ``YYYY-MM-DD`` text on SQLite."""
    return value if isinstance(value, date) else date.fromisoformat(str(value))
