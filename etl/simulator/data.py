"""Deterministic, realistic records for the Devin API simulator.

Every generator is a pure function of its ``seed`` (and ``now``): the same
arguments give the same records on every machine and every run. Timestamps are
unix seconds (UTC). Keys that start with ``_`` are internal to the simulator
(filters need them) and are never served.

Sessions, organizations and users drawn with the same seed share one pool of
ids, so joins between them line up. The values they draw from (enums, titles,
tags, names) are listed in ``vocabulary``.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar
from urllib.parse import urlsplit

from etl.simulator.vocabulary import (
    BITBUCKET_REPOS,
    CATEGORIES,
    FIRST_NAMES,
    GITHUB_REPOS,
    GITLAB_PROJECTS,
    LAST_NAMES,
    ODD_PR_URLS,
    ORG_NAMES,
    ORIGINS,
    ROLES,
    STATUS_DETAILS,
    STATUSES,
    SUBCATEGORIES,
    TAGS,
    TITLES,
    UNKNOWN_CATEGORY,
    UNKNOWN_ORIGIN,
    UNKNOWN_PR_STATE,
    UNKNOWN_STATUS,
    UNKNOWN_STATUS_DETAIL,
)

Record = dict[str, Any]
_T = TypeVar("_T")

DAY = 86_400
WINDOW_SECONDS = 400 * DAY
LARGE_OUTPUT_EVERY = 2_000

# Optional session keys that are sometimes left out: absent must read as null.
OMITTABLE_KEYS = (
    "title",
    "status_detail",
    "origin",
    "category",
    "subcategory",
    "user_id",
    "service_user_id",
    "parent_session_id",
    "child_session_ids",
    "playbook_id",
    "is_archived",
    "structured_output",
)


@dataclass(frozen=True)
class _Pools:
    """The ids that sessions, organizations and users of one seed share."""

    org_ids: tuple[str, ...]
    user_ids: tuple[str, ...]
    service_user_ids: tuple[str, ...]
    playbook_ids: tuple[str, ...]
    schedule_ids: tuple[str, ...]


@dataclass(frozen=True)
class _Clock:
    """Where one generated data set sits in time."""

    now: int
    bulk_update_at: int  # one second at which a bulk job touched many sessions
    bursts: tuple[int, ...]  # smaller clusters of shared updated_at seconds


def generate_sessions(count: int, *, seed: int = 0, now: int) -> list[Record]:
    """Return ``count`` sessions in the shape of the API's ``SessionResponse``.

    Sessions are created over the ``WINDOW_SECONDS`` before ``now`` and listed in
    creation order. Many share one ``updated_at`` second, some are children of
    others (linked both ways), a few carry enum values the published API does not
    list, and some omit optional keys entirely. ``_schedule_id`` is internal.
    """
    rng = random.Random(f"sessions:{seed}")
    pools = _pools(seed)
    clock = _clock(rng, now)
    with paused_gc():
        sessions = [
            _session(rng, pools, index, created_at, _updated_at(rng, created_at, clock))
            for index, created_at in enumerate(_creation_times(rng, count, now))
        ]
    for session in sessions:
        if session["updated_at"] == clock.bulk_update_at:
            session["is_archived"] = True
    _link_children(rng, sessions)
    _omit_optional_keys(rng, sessions)
    return sessions


def new_session(
    rng: random.Random, *, created_at: int, session_id: str | None = None
) -> Record:
    """Return a just-created session (status ``new``, no work done yet).

    Its owner and org come from the seed-0 pools; callers override what matters.
    """
    session = _session(rng, _pools(0), -1, created_at, created_at)
    session.update(status="new", status_detail=None, pull_requests=[])
    session.update(acus_consumed=0.0, is_archived=False, structured_output=None)
    if session_id is not None:
        hex_id = session_id.removeprefix("devin-")
        session.update(session_id=session_id, url=_session_url(hex_id))
    return session


def generate_organizations(*, seed: int = 0, now: int) -> list[Record]:
    """Return the organizations whose ids the sessions of ``seed`` use.

    Either ACU limit may be null (no limit set).
    """
    rng = random.Random(f"organizations:{seed}")
    organizations = []
    for index, org_id in enumerate(_pools(seed).org_ids):
        created_at = now - WINDOW_SECONDS - rng.randrange(DAY, 300 * DAY)
        organizations.append(
            {
                "org_id": org_id,
                "name": ORG_NAMES[index % len(ORG_NAMES)],
                "created_at": created_at,
                "updated_at": rng.randrange(created_at, now + 1),
                "max_session_acu_limit": rng.choice((None, 50, 100, 250)),
                "max_cycle_acu_limit": rng.choice((None, 2_000, 10_000)),
            }
        )
    return organizations


def generate_users(*, seed: int = 0) -> list[Record]:
    """Return the users whose ids the sessions of ``seed`` use.

    A role assignment with a null ``org_id`` applies to the whole enterprise.
    """
    rng = random.Random(f"users:{seed}")
    pools = _pools(seed)
    users = []
    for user_id in pools.user_ids:
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        users.append(
            {
                "user_id": user_id,
                "email": f"{_ascii(first)}.{_ascii(last)}@example.com",
                "name": None if rng.random() < 0.1 else f"{first} {last}",
                "role_assignments": _role_assignments(rng, pools.org_ids),
            }
        )
    return users


def repo_name(pr_url: str) -> str | None:
    """Return the repository path a pull-request URL points at, if recognisable.

    GitHub and Bitbucket give ``owner/repo``; GitLab gives the full project path
    (``group/sub/repo``). Other hosts and malformed URLs give None.
    """
    parts = urlsplit(pr_url)
    segments = [segment for segment in parts.path.split("/") if segment]
    marker = {"github.com": "pull", "bitbucket.org": "pull-requests"}
    if parts.hostname in marker:
        is_pr = len(segments) >= 4 and segments[2] == marker[parts.hostname]
        return "/".join(segments[:2]) if is_pr else None
    if parts.hostname == "gitlab.com" and "-" in segments:
        cut = segments.index("-")
        return "/".join(segments[:cut]) if cut >= 2 else None
    return None


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the (process-wide) cycle collector while building many records.

    Each of millions of fresh containers would otherwise count towards full
    collections of an ever larger heap, which doubles the time to build them.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@cache
def _pools(seed: int) -> _Pools:
    rng = random.Random(f"pools:{seed}")
    return _Pools(
        org_ids=tuple(f"org-{_hex(rng, 64)}" for _ in range(8)),
        user_ids=tuple(_user_id(rng, index) for index in range(60)),
        service_user_ids=tuple(f"service-user-{_hex(rng, 64)}" for _ in range(5)),
        playbook_ids=tuple(f"playbook-{_hex(rng, 64)}" for _ in range(10)),
        schedule_ids=tuple(f"schedule-{_hex(rng, 64)}" for _ in range(6)),
    )


def _user_id(rng: random.Random, index: int) -> str:
    """Auth0-style ids: most contain ``|``, which must survive URL encoding."""
    kind = index % 4
    if kind == 0:
        return f"github|{rng.randrange(10**6, 10**8)}"
    if kind == 1:
        return f"google-oauth2|{rng.randrange(10**20, 10**21)}"
    if kind == 2:
        return f"samlp|acme|{_hex(rng, 32)}"
    return f"email|{_hex(rng, 96)}"


def _clock(rng: random.Random, now: int) -> _Clock:
    bursts = sorted(now - rng.randrange(DAY, WINDOW_SECONDS) for _ in range(12))
    return _Clock(now, now - 3 * DAY - 1_234, tuple(bursts))


def _creation_times(rng: random.Random, count: int, now: int) -> list[int]:
    """Creation seconds, oldest first; recent days are busier, and some sessions
    are created in the same second as the one before (batch launches)."""
    times = sorted(
        now - int(WINDOW_SECONDS * rng.random() ** 1.4) for _ in range(count)
    )
    for index in range(1, count):
        if rng.random() < 0.05:
            times[index] = times[index - 1]
    return times


def _updated_at(rng: random.Random, created_at: int, clock: _Clock) -> int:
    roll = rng.random()
    if roll < 0.06 and created_at <= clock.bulk_update_at:
        return clock.bulk_update_at
    if roll < 0.12:
        burst = rng.choice(clock.bursts)
        if burst >= created_at:
            return burst
    if roll > 0.9:  # long-lived: touched at any time since it was created
        return rng.randrange(created_at, clock.now + 1)
    return min(clock.now, created_at + int(rng.expovariate(1 / 5_400)))


def _session(
    rng: random.Random,
    pools: _Pools,
    index: int,
    created_at: int,
    updated_at: int,
) -> Record:
    hex_id = _hex(rng, 128)
    status = _status(rng)
    category = _category(rng)
    schedule_id = _pick(rng, pools.schedule_ids) if rng.random() < 0.06 else None
    user_id, service_user_id = _owner(rng, pools)
    return {
        "session_id": f"devin-{hex_id}",
        "url": _session_url(hex_id),
        "status": status,
        "status_detail": _status_detail(rng, status),
        "origin": "automation" if schedule_id else _origin(rng),
        "category": category,
        "subcategory": _subcategory(rng, category),
        "tags": list(_pick(rng, _TAG_SETS)),
        "org_id": pools.org_ids[_pick(rng, _ORG_TABLE)],
        "user_id": user_id,
        "service_user_id": service_user_id,
        "parent_session_id": None,
        "child_session_ids": [] if rng.random() < 0.5 else None,
        "playbook_id": _pick(rng, pools.playbook_ids) if rng.random() < 0.2 else None,
        "title": _pick(rng, TITLES),
        "created_at": created_at,
        "updated_at": updated_at,
        "acus_consumed": _acus(rng),
        "is_archived": rng.random() < 0.08,
        "pull_requests": _pull_requests(rng),
        "structured_output": _structured_output(rng, index),
        "_schedule_id": schedule_id,
    }


def _session_url(hex_id: str) -> str:
    return f"https://app.devin.ai/sessions/{hex_id}"


def _status(rng: random.Random) -> str:
    if rng.random() < 0.003:
        return UNKNOWN_STATUS
    return _pick(rng, _STATUS_TABLE)


def _status_detail(rng: random.Random, status: str) -> str | None:
    details = STATUS_DETAILS.get(status)
    if details is None:
        return None
    if rng.random() < 0.005:
        return UNKNOWN_STATUS_DETAIL
    return _pick(rng, details)


def _origin(rng: random.Random) -> str | None:
    roll = rng.random()
    if roll < 0.005:
        return UNKNOWN_ORIGIN
    return None if roll < 0.03 else _pick(rng, ORIGINS)


def _category(rng: random.Random) -> str | None:
    roll = rng.random()
    if roll < 0.003:
        return UNKNOWN_CATEGORY
    return None if roll < 0.15 else _pick(rng, CATEGORIES)


def _subcategory(rng: random.Random, category: str | None) -> str | None:
    if category is None:
        return None
    return _pick(rng, SUBCATEGORIES)


def _owner(rng: random.Random, pools: _Pools) -> tuple[str | None, str | None]:
    """A person, a service user, or (rarely) a service user acting for a person."""
    roll = rng.random()
    user_id = _pick(rng, pools.user_ids)
    service_user_id = _pick(rng, pools.service_user_ids)
    if roll < 0.83:
        return user_id, None
    if roll < 0.98:
        return None, service_user_id
    return user_id, service_user_id


def _acus(rng: random.Random) -> float:
    if rng.random() < 0.08:
        return 0.0
    return round(rng.expovariate(0.25), 3)


def _pull_requests(rng: random.Random) -> list[Record]:
    count = _pick(rng, _PR_COUNT_TABLE)
    return [{"pr_url": _pr_url(rng), "pr_state": _pr_state(rng)} for _ in range(count)]


def _pr_url(rng: random.Random) -> str:
    roll = rng.random()
    number = 1 + int(rng.random() * 20_000)
    if roll < 0.7:
        return f"https://github.com/{_pick(rng, GITHUB_REPOS)}/pull/{number}"
    if roll < 0.88:
        project = _pick(rng, GITLAB_PROJECTS)
        return f"https://gitlab.com/{project}/-/merge_requests/{number}"
    if roll < 0.95:
        repo = _pick(rng, BITBUCKET_REPOS)
        return f"https://bitbucket.org/{repo}/pull-requests/{number}"
    return _pick(rng, ODD_PR_URLS)


def _pr_state(rng: random.Random) -> str | None:
    roll = rng.random()
    if roll < 0.01:
        return UNKNOWN_PR_STATE
    if roll < 0.1:
        return None
    return _pick(rng, ("open", "closed", "merged", "merged"))


def _structured_output(rng: random.Random, index: int) -> Record | None:
    if index % LARGE_OUTPUT_EVERY == LARGE_OUTPUT_EVERY // 2:
        return _large_output(rng)
    if rng.random() < 0.88:
        return None
    return rng.choice(_SMALL_OUTPUTS)(rng)


def _test_report(rng: random.Random) -> Record:
    return {
        "tests_passed": rng.randrange(200),
        "tests_failed": rng.randrange(3),
        "files_changed": rng.sample(("src/app.py", "README.md", "ci.yml"), 2),
    }


def _risk_report(rng: random.Random) -> Record:
    return {
        "risk": rng.choice(("low", "medium", "high")),
        "confidence": round(rng.random(), 4),
        "notes": {"reviewer": None, "checks": [True, False, {"depth": [1, 2]}]},
    }


def _answer(rng: random.Random) -> Record:
    return {"answer": rng.choice(("yes", "no", "42", "ça dépend — 依情况而定"))}


_SMALL_OUTPUTS: tuple[Callable[[random.Random], Record], ...] = (
    _test_report,
    _risk_report,
    _answer,
)


def _large_output(rng: random.Random) -> Record:
    """An audit report of about 50 KB of JSON, near the API's 64 KB ceiling."""
    findings = [
        {
            "id": number,
            "file": f"src/module_{number % 37}/file_{number}.py",
            "line": rng.randrange(1, 900),
            "severity": rng.choice(("info", "warning", "error")),
            "message": "Unchecked input reaches the query builder; vérifier ✓",
        }
        for number in range(370)
    ]
    return {"kind": "audit_report", "findings": findings}


def _link_children(rng: random.Random, sessions: list[Record]) -> None:
    """Make some sessions children of a recent, earlier one, linked both ways.

    A child inherits its parent's org and owner, as a spawned session would.
    """
    for index in range(1, len(sessions)):
        if rng.random() >= 0.07:
            continue
        child = sessions[index]
        parent = sessions[rng.randrange(max(0, index - 200), index)]
        child["parent_session_id"] = parent["session_id"]
        for key in ("org_id", "user_id", "service_user_id"):
            child[key] = parent[key]
        children = parent["child_session_ids"] or []
        parent["child_session_ids"] = [*children, child["session_id"]]


def _omit_optional_keys(rng: random.Random, sessions: Sequence[Record]) -> None:
    """Drop some empty optional keys: absent must read the same as null."""
    for session in sessions:
        if rng.random() >= 0.04:
            continue
        for key in rng.sample(OMITTABLE_KEYS, 4):
            if session[key] is None or session[key] is False or session[key] == []:
                del session[key]


def _role_assignments(rng: random.Random, org_ids: Sequence[str]) -> list[Record]:
    count = rng.choices(range(4), (10, 60, 20, 10))[0]
    return [
        {
            "role": rng.choice(ROLES),
            "org_id": None if rng.random() < 0.2 else rng.choice(org_ids),
        }
        for _ in range(count)
    ]


def _pick(rng: random.Random, choices: Sequence[_T]) -> _T:
    """``rng.choice`` at a third of the cost; generation speed matters here."""
    return choices[int(rng.random() * len(choices))]


def _weighted(weights: dict[_T, int]) -> tuple[_T, ...]:
    """A table in which each value appears as often as its weight says."""
    return tuple(value for value, weight in weights.items() for _ in range(weight))


def _tag_sets() -> tuple[tuple[str, ...], ...]:
    """Precomputed tag lists (0 to 4 distinct tags) to draw from quickly."""
    rng = random.Random("tags")
    sizes = _weighted({0: 30, 1: 30, 2: 20, 3: 12, 4: 8})
    return tuple(tuple(rng.sample(TAGS, _pick(rng, sizes))) for _ in range(997))


def _hex(rng: random.Random, bits: int) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _ascii(name: str) -> str:
    folded = name.lower().translate(_ASCII_FOLD)
    return folded.encode("ascii", "ignore").decode()


_ASCII_FOLD = str.maketrans("áàäéèíóöøüç", "aaaeeiooouc")
_STATUS_TABLE = _weighted(dict(zip(STATUSES, (50, 12, 25, 5, 2, 2, 2), strict=True)))
_ORG_TABLE = _weighted({rank: 840 // (rank + 1) for rank in range(8)})
_PR_COUNT_TABLE = _weighted({0: 45, 1: 35, 2: 14, 3: 6})
_TAG_SETS = _tag_sets()
