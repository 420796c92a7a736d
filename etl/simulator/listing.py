"""Listings of the Devin API simulator: filters, order, cursors and pages.

Turns the query of a listing request into filters and a page size, keeps the
sessions with their encoded JSON and one cached, ordered listing per filter
set, and cuts pages out of a listing with keyset or offset cursors. The
organizations and users directories are paged by id. A request the API would
refuse raises ``RequestError``. Nothing here locks: the simulator holds its
lock around every call. Times are unix seconds (UTC).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import re
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

from etl.simulator import data
from etl.simulator.data import Record
from etl.simulator.responses import RequestError, encode_item
from etl.simulator.vocabulary import CATEGORIES, ORIGINS

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 200

CursorKind = Literal["keyset", "offset"]
Order = Literal["created_desc", "created_asc", "updated_asc", "updated_desc"]

_ORDERS: dict[Order, tuple[str, int]] = {
    "created_desc": ("created_at", -1),
    "created_asc": ("created_at", 1),
    "updated_asc": ("updated_at", 1),
    "updated_desc": ("updated_at", -1),
}
# Query parameter -> the session field it is matched against.
_ARRAY_FILTERS = {
    "session_ids": "session_id",
    "org_ids": "org_id",
    "user_ids": "user_id",
    "service_user_ids": "service_user_id",
    "origins": "origin",
    "tags": "tags",
    "repo_names": "pull_requests",
}
_TEXT_FILTERS = {
    "category": "category",
    "playbook_id": "playbook_id",
    "schedule_id": "_schedule_id",
}
_TIME_FILTERS = ("created_after", "created_before", "updated_after", "updated_before")
_BOOL_FILTERS = ("is_archived", "include_deleted_orgs")
_ENUMS = {"origins": ORIGINS, "category": CATEGORIES}
_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})
_INTEGER = re.compile(r"\s*-?\d+\s*")
_UNENCODED_CURSOR = "The 'after' cursor was sent without URL-encoding ('=' as %3D)"


@dataclass(frozen=True)
class Filters:
    """A parsed, hashable set of session filters (the key of a cached listing)."""

    any_of: tuple[tuple[str, frozenset[str]], ...]
    equal_to: tuple[tuple[str, str], ...]
    time_bounds: tuple[tuple[str, int], ...]
    is_archived: bool | None
    include_deleted_orgs: bool


@dataclass(frozen=True)
class Page:
    """One page of a listing; ``total`` counts the whole listing."""

    items: list[bytes]
    has_next_page: bool
    end_cursor: str | None
    total: int


class SessionStore:
    """Sessions with their encoded JSON and cached listings. Not thread-safe:
    the simulator holds its lock around every call.

    ``is_after_inclusive`` makes ``created_after`` and ``updated_after`` match
    a session stamped exactly at the bound; the ``*_before`` bounds never do.
    """

    def __init__(
        self,
        sessions: Iterable[Record],
        *,
        order: Order,
        cursor: CursorKind,
        is_after_inclusive: bool,
    ) -> None:
        self.deleted_orgs: set[str] = set()
        self._sort_field, self._sign = _ORDERS[order]
        self._cursor = cursor
        self._is_inclusive = is_after_inclusive
        self._sessions: dict[str, Record] = {}
        self._encoded: dict[str, bytes] = {}
        self._listings: dict[Filters, list[tuple[int, str]]] = {}
        with data.paused_gc():
            for session in sessions:
                self.put(dict(session))

    def has(self, session_id: str) -> bool:
        return session_id in self._sessions

    def get(self, session_id: str) -> Record:
        if session_id not in self._sessions:
            raise KeyError(f"no session {session_id!r} in the simulator")
        return self._sessions[session_id]

    def put(self, session: Record) -> None:
        """Store a new or changed session and invalidate what depended on it."""
        session_id = session["session_id"]
        self._sessions[session_id] = session
        self._encoded[session_id] = encode_item(session)
        self._listings.clear()

    def remove(self, session_id: str) -> None:
        self.get(session_id)
        del self._sessions[session_id], self._encoded[session_id]
        self._listings.clear()

    def forget_listings(self) -> None:
        self._listings.clear()

    def encoded(self, session_id: str) -> bytes:
        return self._encoded[session_id]

    def all_encoded(self) -> list[bytes]:
        return list(self._encoded.values())

    def encoded_listing(self, filters: Filters) -> list[bytes]:
        """Every matching session's JSON, in listing order."""
        return [self._encoded[session_id] for _, session_id in self._listing(filters)]

    def page(self, filters: Filters, after: str | None, first: int) -> Page:
        """The ``first`` matching sessions after the ``after`` cursor.

        Raises RequestError (400) for a cursor this store could not have made.
        """
        keys = self._listing(filters)
        start = self._page_start(keys, after)
        page_keys = keys[start : start + first]
        has_next_page = start + len(page_keys) < len(keys)
        cursor = self._end_cursor(page_keys, start) if has_next_page else None
        items = [self._encoded[session_id] for _, session_id in page_keys]
        return Page(items, has_next_page, cursor, len(keys))

    def _listing(self, filters: Filters) -> list[tuple[int, str]]:
        """The matching sessions as ascending ``(signed sort value, id)`` keys,
        so that bisection finds a keyset position in any order."""
        keys = self._listings.get(filters)
        if keys is None:
            keys = sorted(
                (self._sign * session[self._sort_field], session_id)
                for session_id, session in self._sessions.items()
                if self._matches(session, filters)
            )
            if len(self._listings) >= 64:
                self._listings.clear()
            self._listings[filters] = keys
        return keys

    def _matches(self, session: Record, filters: Filters) -> bool:
        is_org_hidden = session["org_id"] in self.deleted_orgs
        if is_org_hidden and not filters.include_deleted_orgs:
            return False
        wanted = filters.is_archived
        if wanted is not None and wanted != bool(session.get("is_archived")):
            return False
        return (
            all(
                not values.isdisjoint(_values_of(session, name))
                for name, values in filters.any_of
            )
            and all(
                session.get(_TEXT_FILTERS[name]) == value
                for name, value in filters.equal_to
            )
            and all(
                _is_within(session, name, bound, self._is_inclusive)
                for name, bound in filters.time_bounds
            )
        )

    def _page_start(self, keys: list[tuple[int, str]], after: str | None) -> int:
        if not after:
            return 0
        payload = _decode_cursor(after)
        if self._cursor == "offset":
            return _offset_of(payload)
        last_id, key = payload.get("last_id"), payload.get("key")
        if not isinstance(last_id, str) or not _is_sort_key(key):
            raise _bad_cursor()
        return bisect.bisect_right(keys, (self._sign * key[0], last_id))

    def _end_cursor(self, page_keys: list[tuple[int, str]], start: int) -> str:
        if self._cursor == "offset":
            return _encode_cursor({"offset": start + len(page_keys)})
        signed_value, last_id = page_keys[-1]
        value = self._sign * signed_value
        return _encode_cursor({"last_id": last_id, "key": [value]})


def directory_page(
    records: Mapping[str, Record],
    hidden: Container[str],
    after: str | None,
    first: int,
) -> Page:
    """The ``first`` records after the ``after`` cursor, by id, skipping the
    ``hidden`` ids. Raises RequestError (400) for a malformed cursor."""
    ids = sorted(record_id for record_id in records if record_id not in hidden)
    start = bisect.bisect_right(ids, _last_id_of(after)) if after else 0
    page_ids = ids[start : start + first]
    has_next_page = start + len(page_ids) < len(ids)
    cursor = _encode_cursor({"last_id": page_ids[-1]}) if has_next_page else None
    items = [encode_item(records[record_id]) for record_id in page_ids]
    return Page(items, has_next_page, cursor, len(ids))


def group_params(query: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Query pairs grouped by name, values in the order they came."""
    params: dict[str, list[str]] = {}
    for name, value in query:
        params.setdefault(name, []).append(value)
    return params


def last_value(params: Mapping[str, list[str]], name: str) -> str | None:
    """A scalar parameter given several times takes its last value, as FastAPI."""
    values = params.get(name)
    return values[-1] if values else None


def parse_query(params: Mapping[str, list[str]]) -> tuple[Filters, int]:
    """Validate ``first`` and the filters together; raise one 422 listing every
    problem. Unknown parameters are ignored, as the real API does."""
    issues: list[Record] = []
    first = _parse_first(params.get("first"), issues)
    filters = Filters(
        any_of=tuple(
            (name, frozenset(_checked_enum(name, params[name], issues)))
            for name in _ARRAY_FILTERS
            if name in params
        ),
        equal_to=tuple(
            (name, _checked_enum(name, params[name], issues)[-1])
            for name in _TEXT_FILTERS
            if name in params
        ),
        time_bounds=_parse_time_bounds(params, issues),
        is_archived=_parse_bool("is_archived", params, issues),
        include_deleted_orgs=bool(_parse_bool("include_deleted_orgs", params, issues)),
    )
    _raise_if_invalid(issues)
    return filters, first


def parse_first_only(params: Mapping[str, list[str]]) -> int:
    """The page size of a listing that takes no filters; 422 if invalid."""
    issues: list[Record] = []
    first = _parse_first(params.get("first"), issues)
    _raise_if_invalid(issues)
    return first


def parse_filters(filters: Mapping[str, Any]) -> Filters:
    """Filters given as Python values (lists for array filters, ints, bools;
    None means not given). Raises ValueError for an unknown filter or a value
    the endpoint would reject with 422."""
    try:
        parsed, _ = parse_query(_filter_params(filters))
    except RequestError as exc:
        raise ValueError(exc.detail) from exc
    return parsed


def reject_unencoded_cursor(raw_query: str) -> None:
    """Raise RequestError (400) when an ``after`` value holds a bare ``=``:
    the client did not URL-encode the cursor. Lenient parsers cope; this one
    refuses, so that a client which skips encoding fails here rather than
    behind some proxy."""
    name = "after="
    parts = raw_query.split("&")
    if any("=" in part[len(name) :] for part in parts if part.startswith(name)):
        raise RequestError(400, _UNENCODED_CURSOR)


def _raise_if_invalid(issues: list[Record]) -> None:
    if issues:
        problems = "; ".join(f"{issue['loc'][-1]}: {issue['msg']}" for issue in issues)
        raise RequestError(422, f"Invalid query parameters: {problems}", issues)


def _issue(name: str, message: str, kind: str) -> Record:
    return {"loc": ["query", name], "msg": message, "type": kind}


def _parse_first(values: list[str] | None, issues: list[Record]) -> int:
    if not values:
        return DEFAULT_PAGE_SIZE
    first = _parse_int("first", values[-1], issues)
    if first is not None and first < 1:
        issues.append(_issue("first", "Input should be >= 1", "greater_than_equal"))
    if first is not None and first > MAX_PAGE_SIZE:
        message = f"Input should be <= {MAX_PAGE_SIZE}"
        issues.append(_issue("first", message, "less_than_equal"))
    return DEFAULT_PAGE_SIZE if first is None else first


def _parse_int(name: str, raw: str, issues: list[Record]) -> int | None:
    if _INTEGER.fullmatch(raw):
        return int(raw)
    issues.append(_issue(name, "Input should be a valid integer", "int_parsing"))
    return None


def _parse_time_bounds(
    params: Mapping[str, list[str]], issues: list[Record]
) -> tuple[tuple[str, int], ...]:
    bounds = []
    for name in _TIME_FILTERS:
        raw = last_value(params, name)
        value = None if raw is None else _parse_int(name, raw, issues)
        if value is not None:
            bounds.append((name, value))
    return tuple(bounds)


def _parse_bool(
    name: str, params: Mapping[str, list[str]], issues: list[Record]
) -> bool | None:
    raw = last_value(params, name)
    if raw is None:
        return None
    word = raw.strip().lower()
    if word not in _TRUE | _FALSE:
        issues.append(_issue(name, "Input should be a valid boolean", "bool_parsing"))
        return None
    return word in _TRUE


def _checked_enum(name: str, values: list[str], issues: list[Record]) -> list[str]:
    allowed = _ENUMS.get(name, ())
    for value in values:
        if allowed and value not in allowed:
            message = f"Input should be one of {', '.join(allowed)}"
            issues.append(_issue(name, message, "enum"))
    return values


def _filter_params(filters: Mapping[str, Any]) -> dict[str, list[str]]:
    """Turn Python filter values into the query values the endpoint would see."""
    known = {*_ARRAY_FILTERS, *_TEXT_FILTERS, *_TIME_FILTERS, *_BOOL_FILTERS}
    unknown = sorted(set(filters) - known)
    if unknown:
        raise ValueError(f"unknown session filters: {', '.join(unknown)}")
    return {
        name: _as_query_values(value)
        for name, value in filters.items()
        if value is not None
    }


def _as_query_values(value: Any) -> list[str]:
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, list | tuple | set | frozenset):
        return [str(item) for item in value]
    return [str(value)]


def _values_of(session: Record, filter_name: str) -> Iterable[Any]:
    if filter_name == "tags":
        return session.get("tags") or ()
    if filter_name == "repo_names":
        pull_requests = session.get("pull_requests") or ()
        return {data.repo_name(pr["pr_url"]) for pr in pull_requests}
    return (session.get(_ARRAY_FILTERS[filter_name]),)


def _is_within(session: Record, name: str, bound: int, is_inclusive: bool) -> bool:
    field, edge = name.split("_")
    value: int = session[f"{field}_at"]
    if edge == "before":
        return value < bound
    return value >= bound if is_inclusive else value > bound


def _encode_cursor(payload: Record) -> str:
    """Standard base64 of JSON, padded so that the cursor always ends in ``=``
    (which ``reject_unencoded_cursor`` then insists arrives as ``%3D``)."""
    text = json.dumps(payload, separators=(",", ":"))
    if len(text) % 3 == 0:
        text += " "
    return base64.b64encode(text.encode()).decode()


def _decode_cursor(cursor: str) -> Record:
    try:
        payload = json.loads(base64.b64decode(cursor, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise _bad_cursor() from exc
    if not isinstance(payload, dict):
        raise _bad_cursor()
    return payload


def _bad_cursor() -> RequestError:
    return RequestError(400, "The 'after' cursor is malformed or from another API")


def _is_sort_key(key: object) -> TypeGuard[list[int]]:
    return isinstance(key, list) and len(key) == 1 and type(key[0]) is int


def _offset_of(payload: Record) -> int:
    offset = payload.get("offset")
    if type(offset) is not int or offset < 0:
        raise _bad_cursor()
    return offset


def _last_id_of(cursor: str) -> str:
    last_id = _decode_cursor(cursor).get("last_id")
    if not isinstance(last_id, str):
        raise _bad_cursor()
    return last_id
