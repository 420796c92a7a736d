"""Turn API items into the normalized frames the loader writes.

A batch of items becomes four frames: sessions, tags, pull requests and
child links. Enum-like fields stay free text, optional fields may be null or
absent, and timestamps stay unix seconds (UTC) until the loader converts
them. Items without an identity are rejected and counted, never guessed.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from etl.errors import ApiContractError

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("session_id", "org_id", "created_at", "updated_at")
TEXT_FIELDS = (
    "session_id",
    "org_id",
    "user_id",
    "service_user_id",
    "parent_session_id",
    "playbook_id",
    "title",
    "url",
    "status",
    "status_detail",
    "origin",
    "category",
    "subcategory",
)
SESSION_COLUMNS = (
    *TEXT_FIELDS,
    "is_archived",
    "acus_consumed",
    "structured_output",
    "created_at",
    "updated_at",
)
TAG_COLUMNS = ("session_id", "tag")
PULL_REQUEST_COLUMNS = ("session_id", "pr_url", "pr_state", "repo", "pr_number")
CHILD_COLUMNS = ("session_id", "child_session_id")

# Unix seconds above this are milliseconds (the year 5138 in seconds).
MAX_EPOCH_SECONDS = 100_000_000_000

PR_PATTERNS = (
    re.compile(r"https?://[^/]*github[^/]*/(?P<repo>[^/]+/[^/]+)/pull/(?P<number>\d+)"),
    re.compile(
        r"https?://[^/]*gitlab[^/]*/(?P<repo>[^/]+(?:/[^/]+)+?)"
        r"/-/merge_requests/(?P<number>\d+)"
    ),
)


@dataclass(frozen=True)
class Batch:
    """The normalized rows of one batch of pages, one frame per table.

    ``sessions`` holds one row per session id (the newest version seen in
    the batch); ``created_at``/``updated_at`` are int64 unix seconds and
    ``structured_output`` is JSON text or None.
    """

    sessions: pd.DataFrame
    tags: pd.DataFrame
    pull_requests: pd.DataFrame
    children: pd.DataFrame
    rejected: int

    @property
    def child_frames(self) -> dict[str, pd.DataFrame]:
        return {
            "session_tags": self.tags,
            "session_pull_requests": self.pull_requests,
            "session_children": self.children,
        }


def normalize_items(items: Sequence[dict[str, Any]]) -> Batch:
    """Normalize the items of a batch of pages.

    Raises :class:`ApiContractError` when a timestamp looks like
    milliseconds: storing it would put sessions in the year 50000.
    """
    accepted = [item for item in items if _is_identified(item)]
    frame = _session_frame(accepted)
    frame = frame.sort_values("updated_at", kind="stable")
    frame = frame.drop_duplicates("session_id", keep="last")
    latest = frame.index

    return Batch(
        sessions=frame.reset_index(drop=True),
        tags=_tag_frame(accepted, latest),
        pull_requests=_pull_request_frame(accepted, latest),
        children=_child_frame(accepted, latest),
        rejected=len(items) - len(accepted),
    )


def _is_identified(item: dict[str, Any]) -> bool:
    problem = _identity_problem(item)
    if problem is None:
        return True
    log.warning(
        "Skipping a session item that %s (session_id=%r, url=%r)",
        problem,
        item.get("session_id"),
        item.get("url"),
    )
    return False


def _identity_problem(item: dict[str, Any]) -> str | None:
    missing = [name for name in REQUIRED_FIELDS if item.get(name) in (None, "")]
    if missing:
        return "has no " + ", ".join(missing)
    for name in ("session_id", "org_id"):
        if not isinstance(item[name], str):
            return f"has a {name} that is not text"
    for name in ("created_at", "updated_at"):
        value = item[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"has a {name} that is not a number"
    return None


def _session_frame(items: Sequence[dict[str, Any]]) -> pd.DataFrame:
    columns = {name: [item.get(name) for item in items] for name in SESSION_COLUMNS}
    for name in TEXT_FIELDS:
        columns[name] = _text_values(columns[name])
    columns["structured_output"] = [_as_json(v) for v in columns["structured_output"]]
    columns["is_archived"] = [_as_bool(v) for v in columns["is_archived"]]
    frame = pd.DataFrame(
        {name: pd.Series(values, dtype=object) for name, values in columns.items()}
    )
    for name in ("created_at", "updated_at"):
        frame[name] = _epoch_seconds(frame, name)
    frame["acus_consumed"] = pd.to_numeric(frame["acus_consumed"], errors="coerce")
    frame["is_archived"] = frame["is_archived"].astype("boolean")
    return frame


def _epoch_seconds(frame: pd.DataFrame, name: str) -> pd.Series:
    values = frame[name].astype("float64")
    too_large = values > MAX_EPOCH_SECONDS
    if too_large.any():
        row = frame.loc[too_large].iloc[0]
        raise ApiContractError(
            f"session {row['session_id']} has {name}={int(row[name])}, which "
            "looks like milliseconds, not unix seconds; refusing to store it: "
            "report the API change, nothing was written for this batch"
        )
    return values.astype("int64")


def _as_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _as_json(value: Any) -> str | None:
    if value is None:
        return None
    # PostgreSQL json cannot hold \u0000; nothing meaningful is lost with it.
    return json.dumps(value, ensure_ascii=False).replace("\\u0000", "")


def _text_values(values: list[Any]) -> list[str | None]:
    return [
        value if type(value) is str and "\x00" not in value else _clean_text(value)
        for value in values
    ]


def _clean_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = value if isinstance(value, str) else str(value)
    # PostgreSQL text cannot hold NUL characters.
    return text.replace("\x00", "") if "\x00" in text else text


def _child_lists(
    items: Sequence[dict[str, Any]], latest: pd.Index, field: str
) -> list[tuple[str, Any]]:
    return [
        (items[position]["session_id"], child)
        for position in latest
        for child in (items[position].get(field) or ())
    ]


def _tag_frame(items: Sequence[dict[str, Any]], latest: pd.Index) -> pd.DataFrame:
    return _link_frame(_child_lists(items, latest, "tags"), TAG_COLUMNS)


def _child_frame(items: Sequence[dict[str, Any]], latest: pd.Index) -> pd.DataFrame:
    rows = _child_lists(items, latest, "child_session_ids")
    return _link_frame(rows, CHILD_COLUMNS)


def _link_frame(rows: list[tuple[str, Any]], names: Sequence[str]) -> pd.DataFrame:
    """A two-column frame of (session, value) without nulls or repeats."""
    session_ids = [session_id for session_id, _ in rows]
    values = _text_values([value for _, value in rows])
    frame = pd.DataFrame(
        {
            names[0]: pd.Series(session_ids, dtype=object),
            names[1]: pd.Series(values, dtype=object),
        }
    )
    return frame.dropna().drop_duplicates(ignore_index=True)


def _pull_request_frame(
    items: Sequence[dict[str, Any]], latest: pd.Index
) -> pd.DataFrame:
    pulls = [
        (session_id, pr)
        for session_id, pr in _child_lists(items, latest, "pull_requests")
        if isinstance(pr, dict)
    ]
    urls = _text_values([pr.get("pr_url") for _, pr in pulls])
    parsed = [parse_pull_request_url(url) for url in urls]
    frame = pd.DataFrame(
        {
            "session_id": pd.Series([sid for sid, _ in pulls], dtype=object),
            "pr_url": pd.Series(urls, dtype=object),
            "pr_state": pd.Series(
                _text_values([pr.get("pr_state") for _, pr in pulls]), dtype=object
            ),
            "repo": pd.Series([repo for repo, _ in parsed], dtype=object),
            "pr_number": pd.array([number for _, number in parsed], dtype="Int64"),
        }
    )
    frame = frame.dropna(subset=["pr_url"])
    frame = frame.drop_duplicates(["session_id", "pr_url"], keep="last")
    return frame.reset_index(drop=True)


def parse_pull_request_url(url: str | None) -> tuple[str | None, int | None]:
    """``(repo, number)`` of a GitHub or GitLab pull request URL, else Nones.

    GitHub gives ``owner/name``; GitLab gives the full project path, which
    may have subgroups (``group/sub/name``).
    """
    if url:
        for pattern in PR_PATTERNS:
            match = pattern.match(url)
            if match:
                return match["repo"], int(match["number"])
    return None, None
