"""A fake Devin API v3 served over loopback HTTP, for tests, demos and benchmarks.

It serves ``GET /v3/enterprise/sessions`` with the filters and pagination of the
published OpenAPI description, plus the organizations and users directories,
and lets a test steer it from Python while a client pages through it: change
data mid-listing, shift the server clock, refuse permissions, and inject
faults. The undocumented behaviours (cursor kind, order, inclusive bounds,
error shape, ``total``) are switches in ``SimulatorConfig``, so a client can be
tested against each answer.

Speed comes from caching: every session's JSON is encoded once (again only when
it changes) and each filtered, ordered listing is built once per data version;
a keyset cursor is then found by bisection. Times are unix seconds (UTC).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import copy
import hmac
import itertools
import json
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from email.utils import formatdate
from functools import cached_property
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, TypeGuard, cast, get_args
from urllib.parse import parse_qsl, urlsplit

from etl.simulator import data
from etl.simulator.data import Record

SESSIONS_PATH = "/v3/enterprise/sessions"
ORGANIZATIONS_PATH = "/v3/enterprise/organizations"
USERS_PATH = "/v3/enterprise/members/users"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 200
DEFAULT_SESSION_COUNT = 500
LOG_LIMIT = 100_000  # requests kept in requests_log, so a long serve() stays small

Endpoint = Literal["sessions", "organizations", "users"]
CursorKind = Literal["keyset", "offset"]
Order = Literal["created_desc", "created_asc", "updated_asc", "updated_desc"]
ErrorShape = Literal["problem", "fastapi"]
FaultKind = Literal["status", "drop", "broken_json", "no_items", "slow"]
PageHook = Callable[["Simulator", int], None]

_ENDPOINTS: dict[str, Endpoint] = {
    SESSIONS_PATH: "sessions",
    ORGANIZATIONS_PATH: "organizations",
    USERS_PATH: "users",
}
_PERMISSIONS: dict[Endpoint, str] = {
    "sessions": "ViewAccountSessions",
    "organizations": "ManageOrganizations",
    "users": "ManageAccountMembership",
}
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
_ENUMS = {"origins": data.ORIGINS, "category": data.CATEGORIES}
_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})
_INTEGER = re.compile(r"\s*-?\d+\s*")
_JSON = (("Content-Type", "application/json"),)
_UNENCODED_CURSOR = "The 'after' cursor was sent without URL-encoding ('=' as %3D)"
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class SimulatorConfig:
    """The answers the simulator gives to what the API documentation leaves open.

    ``updated_after_inclusive`` also governs ``created_after``; the ``*_before``
    bounds are always exclusive. ``clock_offset`` (seconds) is added to the host
    clock for the ``Date`` header and for the ``updated_at`` stamped on changes.
    """

    api_key: str = "cog_simulator_key"
    cursor: CursorKind = "keyset"
    order: Order = "created_desc"
    updated_after_inclusive: bool = False
    clock_offset: int = 0
    error_shape: ErrorShape = "problem"
    include_total: bool = True
    send_date_header: bool = True

    def __post_init__(self) -> None:
        choices = {"cursor": CursorKind, "order": Order, "error_shape": ErrorShape}
        for name, allowed in choices.items():
            if getattr(self, name) not in get_args(allowed):
                raise ValueError(f"SimulatorConfig.{name} must be one of {allowed}")


_DEFAULT_CONFIG = SimulatorConfig()


@dataclass(frozen=True)
class Fault:
    """One misbehaviour, applied to one upcoming sessions request.

    Build faults with the constructors: ``Fault.status(429, retry_after="1")``,
    ``Fault.drop()``, ``Fault.broken_json()``, ``Fault.no_items()``,
    ``Fault.slow(2.0)``. ``delay`` is in seconds.
    """

    kind: FaultKind
    code: int = 500
    retry_after: str | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if not 100 <= self.code <= 599 or self.delay < 0:
            raise ValueError(f"invalid fault: {self}")

    @classmethod
    def status(cls, code: int, *, retry_after: str | None = None) -> Fault:
        """Answer ``code`` with an error body; ``retry_after`` is sent verbatim."""
        return cls("status", code=code, retry_after=retry_after)

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without sending a response."""
        return cls("drop")

    @classmethod
    def broken_json(cls) -> Fault:
        """Answer 200 with the first half of the real body."""
        return cls("broken_json")

    @classmethod
    def no_items(cls) -> Fault:
        """Answer 200 with ``{"has_next_page": false}`` and no ``items`` key."""
        return cls("no_items")

    @classmethod
    def slow(cls, delay: float) -> Fault:
        """Wait ``delay`` seconds, then answer normally."""
        return cls("slow", delay=delay)


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it; the API key itself is never kept.

    ``status`` is None when a fault dropped the connection.
    """

    path: str
    query: tuple[tuple[str, str], ...]
    status: int | None
    has_authorization: bool


@dataclass(frozen=True)
class _Request:
    path: str
    raw_query: str  # still URL-encoded
    authorization: str | None

    @cached_property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(self.raw_query, keep_blank_values=True)


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = _JSON


class _RequestError(Exception):
    """A request the API would reject; becomes an error body in the set shape."""

    def __init__(self, status: int, detail: str, issues: Sequence[Record] = ()):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.issues = list(issues)


@dataclass(frozen=True)
class _Filters:
    """A parsed, hashable set of session filters (the key of a cached listing)."""

    any_of: tuple[tuple[str, frozenset[str]], ...]
    equal_to: tuple[tuple[str, str], ...]
    time_bounds: tuple[tuple[str, int], ...]
    is_archived: bool | None
    include_deleted_orgs: bool


class _SessionStore:
    """Sessions with their encoded JSON and cached listings. Not thread-safe:
    the simulator holds its lock around every call."""

    def __init__(self, sessions: Iterable[Record], config: SimulatorConfig) -> None:
        self.deleted_orgs: set[str] = set()
        self.sort_field, self.sign = _ORDERS[config.order]
        self._is_inclusive = config.updated_after_inclusive
        self._sessions: dict[str, Record] = {}
        self._encoded: dict[str, bytes] = {}
        self._listings: dict[_Filters, list[tuple[int, str]]] = {}
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
        self._encoded[session_id] = _encode_item(session)
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

    def listing(self, filters: _Filters) -> list[tuple[int, str]]:
        """The matching sessions as ascending ``(signed sort value, id)`` keys,
        so that bisection finds a keyset position in any order."""
        keys = self._listings.get(filters)
        if keys is None:
            keys = sorted(
                (self.sign * session[self.sort_field], session_id)
                for session_id, session in self._sessions.items()
                if self._matches(session, filters)
            )
            if len(self._listings) >= 64:
                self._listings.clear()
            self._listings[filters] = keys
        return keys

    def _matches(self, session: Record, filters: _Filters) -> bool:
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


class Simulator:
    """A fake Devin API over HTTP, started with ``with Simulator(...)``.

    Without ``sessions`` it serves ``DEFAULT_SESSION_COUNT`` generated sessions
    with matching organizations and users; given ``sessions`` it serves shallow
    copies of them and no organizations or users unless those are given too.
    It binds ``host`` (loopback unless told); ``port`` 0 picks a free port.
    Every method is thread-safe and may be called while a client is paging.
    """

    def __init__(
        self,
        sessions: Sequence[Record] | None = None,
        config: SimulatorConfig = _DEFAULT_CONFIG,
        organizations: Sequence[Record] | None = None,
        users: Sequence[Record] | None = None,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._clock_offset = config.clock_offset
        if sessions is None:
            sessions, organizations, users = _default_data(
                self.now(), organizations, users
            )
        self._store = _SessionStore(sessions, config)
        self._directories: dict[Endpoint, dict[str, Record]] = {
            "organizations": {o["org_id"]: dict(o) for o in organizations or ()},
            "users": {u["user_id"]: dict(u) for u in users or ()},
        }
        self._forbidden: set[Endpoint] = set()
        self._faults: deque[Fault] = deque()
        self._hooks: list[tuple[PageHook, Iterator[int]]] = []
        self._log: deque[RequestRecord] = deque(maxlen=LOG_LIMIT)
        self._rng = random.Random(f"created:{len(sessions)}")
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Bind the port and serve from a daemon thread; returns at once."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="devin-api-simulator",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close every open connection, kept-alive ones too."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, without a trailing slash."""
        if self._server is None:
            raise RuntimeError("the simulator is not running: call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since start: shows whether clients reuse one."""
        return 0 if self._server is None else self._server.accepted

    def now(self) -> int:
        """The server clock: host time plus the clock offset, in unix seconds."""
        return int(time.time()) + self._clock_offset

    def set_clock_offset(self, seconds: int) -> None:
        """Shift the server clock relative to the host clock from now on."""
        with self._lock:
            self._clock_offset = seconds

    def update_session(self, session_id: str, /, **changes: Any) -> Record:
        """Set fields of a session and return it as served.

        ``updated_at`` is stamped with ``now()`` unless given. Raises KeyError
        for an unknown session and ValueError on an attempt to change its id.
        """
        if "session_id" in changes:
            raise ValueError("a session id cannot change: delete and create")
        with self._lock:
            session = self._store.get(session_id)
            session.update(copy.deepcopy(changes))
            if "updated_at" not in changes:
                session["updated_at"] = self.now()
            self._store.put(session)
            return self._served(session_id)

    def create_session(self, **fields: Any) -> Record:
        """Add a just-created session (``created_at = updated_at = now()``).

        Unspecified fields get generated values. A given ``parent_session_id``
        that exists gains the child in ``child_session_ids``, which stamps the
        parent's ``updated_at``. Raises ValueError if the id is taken.
        """
        with self._lock:
            now = self.now()
            session_id = fields.get("session_id")
            session = data.new_session(self._rng, created_at=now, session_id=session_id)
            session.update(copy.deepcopy(fields))
            if self._store.has(session["session_id"]):
                raise ValueError(f"session {session['session_id']!r} already exists")
            self._store.put(session)
            self._link_to_parent(session, now)
            return self._served(session["session_id"])

    def delete_session(self, session_id: str) -> None:
        """Remove a session; it vanishes from listings. Raises KeyError if absent."""
        with self._lock:
            self._store.remove(session_id)

    def delete_org(self, org_id: str) -> None:
        """Mark an organization deleted: its sessions are listed only with
        ``include_deleted_orgs=true`` and it leaves the organizations listing."""
        with self._lock:
            self._store.deleted_orgs.add(org_id)
            self._store.forget_listings()

    def sessions_snapshot(self) -> list[Record]:
        """Fresh copies of every session as served (no internal keys)."""
        with self._lock:
            encoded = self._store.all_encoded()
        return [json.loads(item) for item in encoded]

    def expected_sessions(self, **filters: Any) -> list[Record]:
        """What a complete listing with these filters returns right now, in order.

        Filters are the endpoint's query parameters as Python values (lists for
        array filters, ints, bools); None means not given. Raises ValueError for
        an unknown filter or a value the endpoint would reject with 422.
        """
        try:
            parsed, _ = _parse_query(_filter_params(filters))
        except _RequestError as exc:
            raise ValueError(exc.detail) from exc
        with self._lock:
            keys = self._store.listing(parsed)
            encoded = [self._store.encoded(session_id) for _, session_id in keys]
        return [json.loads(item) for item in encoded]

    def on_page(self, callback: PageHook) -> None:
        """Run ``callback(simulator, n)`` after the n-th sessions page (counted
        from 1 since this registration) is computed and before it is sent."""
        with self._lock:
            self._hooks.append((callback, itertools.count(1)))

    def clear_hooks(self) -> None:
        with self._lock:
            self._hooks.clear()

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each upcoming sessions request consumes one, in order."""
        with self._lock:
            self._faults.extend(faults)

    def set_forbidden(
        self, is_forbidden: bool = True, *, endpoint: Endpoint = "sessions"
    ) -> None:
        """Make the key lack (or regain) the permission ``endpoint`` needs: 403."""
        with self._lock:
            if is_forbidden:
                self._forbidden.add(endpoint)
            else:
                self._forbidden.discard(endpoint)

    @property
    def requests_log(self) -> list[RequestRecord]:
        """The requests received so far (the last ``LOG_LIMIT``), oldest first."""
        with self._lock:
            return list(self._log)

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()

    def _respond(self, request: _Request) -> _Response | None:
        """Answer one request (the HTTP handler's entry point); None means drop
        the connection without an answer."""
        is_sessions = request.path == SESSIONS_PATH
        fault = self._take_fault() if is_sessions else None
        response: _Response | None
        if fault is None:
            response = self._route(request)
        else:
            response = self._respond_with_fault(fault, request)
        status = None if response is None else response.status
        has_authorization = request.authorization is not None
        record = RequestRecord(
            request.path, tuple(request.query), status, has_authorization
        )
        with self._lock:
            self._log.append(record)
        return response

    def _served(self, session_id: str) -> Record:
        return cast(Record, json.loads(self._store.encoded(session_id)))

    def _link_to_parent(self, child: Record, now: int) -> None:
        parent_id = child.get("parent_session_id")
        if not isinstance(parent_id, str) or not self._store.has(parent_id):
            return
        parent = self._store.get(parent_id)
        siblings = parent.get("child_session_ids") or []
        parent.update(child_session_ids=[*siblings, child["session_id"]])
        parent["updated_at"] = now
        self._store.put(parent)

    def _take_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _respond_with_fault(self, fault: Fault, request: _Request) -> _Response | None:
        if fault.kind == "drop":
            return None
        if fault.kind == "status":
            return self._error(fault.code, "Injected fault", fault.retry_after)
        if fault.kind == "no_items":
            return _Response(200, b'{"has_next_page":false}')
        time.sleep(fault.delay)
        response = self._route(request)
        if fault.kind == "broken_json":
            return replace(response, body=response.body[: len(response.body) // 2])
        return response

    def _route(self, request: _Request) -> _Response:
        endpoint = _ENDPOINTS.get(request.path)
        if endpoint is None:
            return self._error(404, f"No endpoint at {request.path}")
        if not _is_bearer(request.authorization, self.config.api_key):
            return self._error(
                401, "Missing or invalid API key (Authorization: Bearer)"
            )
        with self._lock:
            is_forbidden = endpoint in self._forbidden
        if is_forbidden:
            permission = _PERMISSIONS[endpoint]
            return self._error(403, f"This key lacks the {permission} permission")
        params = _group(request.query)
        try:
            if _is_cursor_unencoded(request.raw_query):
                raise _RequestError(400, _UNENCODED_CURSOR)
            if endpoint == "sessions":
                return self._sessions_page(params)
            return self._directory_page(endpoint, params)
        except _RequestError as exc:
            return self._error(exc.status, exc.detail, issues=exc.issues)

    def _sessions_page(self, params: Mapping[str, list[str]]) -> _Response:
        filters, first = _parse_query(params)
        with self._lock:
            keys = self._store.listing(filters)
            start = self._page_start(keys, _last(params, "after"))
            page = keys[start : start + first]
            items = [self._store.encoded(session_id) for _, session_id in page]
            has_next_page = start + len(page) < len(keys)
            cursor = self._end_cursor(page, start) if has_next_page else None
        self._run_page_hooks()
        return _page_response(items, has_next_page, cursor, self._total(len(keys)))

    def _page_start(self, keys: list[tuple[int, str]], after: str | None) -> int:
        if not after:
            return 0
        payload = _decode_cursor(after)
        if self.config.cursor == "offset":
            return _offset_of(payload)
        last_id, key = payload.get("last_id"), payload.get("key")
        if not isinstance(last_id, str) or not _is_sort_key(key):
            raise _bad_cursor()
        return bisect.bisect_right(keys, (self._store.sign * key[0], last_id))

    def _end_cursor(self, page: list[tuple[int, str]], start: int) -> str:
        if self.config.cursor == "offset":
            return _encode_cursor({"offset": start + len(page)})
        signed_value, last_id = page[-1]
        value = self._store.sign * signed_value
        return _encode_cursor({"last_id": last_id, "key": [value]})

    def _run_page_hooks(self) -> None:
        with self._lock:
            hooks = list(self._hooks)
        for callback, counter in hooks:
            try:
                callback(self, next(counter))
            except Exception as exc:  # surface it to the client, not to stderr
                raise _RequestError(500, f"A page hook raised {exc!r}") from exc

    def _directory_page(
        self, endpoint: Endpoint, params: Mapping[str, list[str]]
    ) -> _Response:
        first = _parse_first_only(params)
        with self._lock:
            records = self._directories[endpoint]
            hidden = self._store.deleted_orgs if endpoint == "organizations" else ()
            ids = sorted(record_id for record_id in records if record_id not in hidden)
            after = _last(params, "after")
            start = bisect.bisect_right(ids, _last_id_of(after)) if after else 0
            page_ids = ids[start : start + first]
            items = [_encode_item(records[record_id]) for record_id in page_ids]
        has_next_page = start + len(page_ids) < len(ids)
        cursor = _encode_cursor({"last_id": page_ids[-1]}) if has_next_page else None
        return _page_response(items, has_next_page, cursor, self._total(len(ids)))

    def _total(self, count: int) -> int | None:
        return count if self.config.include_total else None

    def _error(
        self,
        status: int,
        detail: str,
        retry_after: str | None = None,
        *,
        issues: Sequence[Record] = (),
    ) -> _Response:
        return _error_response(
            self.config.error_shape, status, detail, issues, retry_after
        )


class _Server(ThreadingHTTPServer):
    """Tracks open connections so that ``stop()`` can close kept-alive ones."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        self.simulator = simulator
        self.accepted = 0
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
            self.accepted += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # the client closed it first
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: clients that hang up mid-response are part of the tests."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a client can reuse one socket
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server_version = "devin-api-simulator"
    sys_version = ""

    @property
    def simulator(self) -> Simulator:
        return cast(_Server, self.server).simulator

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        authorization = self.headers.get("Authorization")
        request = _Request(url.path, url.query, authorization)
        response = self.simulator._respond(request)
        if response is None:
            self.close_connection = True
            return
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def send_response(self, code: int, message: str | None = None) -> None:
        """Like the base class, but the Date header follows the server clock."""
        self.send_response_only(code, message)
        self.send_header("Server", self.version_string())
        if self.simulator.config.send_date_header:
            self.send_header("Date", formatdate(self.simulator.now(), usegmt=True))

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and benchmarks make thousands of requests."""


def serve(sessions_count: int, port: int, seed: int, host: str = "127.0.0.1") -> None:
    """Serve generated data on ``host:port`` until Ctrl-C.

    Prints the base URL and the API key to stdout first. Binding anything but
    loopback exposes the fake API (and its well-known key) to the network.
    """
    now = int(time.time())
    simulator = Simulator(
        data.generate_sessions(sessions_count, seed=seed, now=now),
        organizations=data.generate_organizations(seed=seed, now=now),
        users=data.generate_users(seed=seed),
        port=port,
        host=host,
    )
    with simulator:
        print(f"Devin API simulator listening on {simulator.base_url}", flush=True)
        print(f"API key: {simulator.config.api_key}", flush=True)
        try:
            while True:
                time.sleep(3_600)
        except KeyboardInterrupt:
            print("Simulator stopped.", flush=True)


def _default_data(
    now: int,
    organizations: Sequence[Record] | None,
    users: Sequence[Record] | None,
) -> tuple[Sequence[Record], Sequence[Record], Sequence[Record]]:
    """Generated seed-0 data, keeping the organizations or users given."""
    return (
        data.generate_sessions(DEFAULT_SESSION_COUNT, now=now),
        data.generate_organizations(now=now)
        if organizations is None
        else organizations,
        data.generate_users() if users is None else users,
    )


def _group(query: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for name, value in query:
        params.setdefault(name, []).append(value)
    return params


def _last(params: Mapping[str, list[str]], name: str) -> str | None:
    """A scalar parameter given several times takes its last value, as FastAPI."""
    values = params.get(name)
    return values[-1] if values else None


def _parse_query(params: Mapping[str, list[str]]) -> tuple[_Filters, int]:
    """Validate ``first`` and the filters together; raise one 422 listing every
    problem. Unknown parameters are ignored, as the real API does."""
    issues: list[Record] = []
    first = _parse_first(params.get("first"), issues)
    filters = _Filters(
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


def _parse_first_only(params: Mapping[str, list[str]]) -> int:
    issues: list[Record] = []
    first = _parse_first(params.get("first"), issues)
    _raise_if_invalid(issues)
    return first


def _raise_if_invalid(issues: list[Record]) -> None:
    if issues:
        problems = "; ".join(f"{issue['loc'][-1]}: {issue['msg']}" for issue in issues)
        raise _RequestError(422, f"Invalid query parameters: {problems}", issues)


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
        raw = _last(params, name)
        value = None if raw is None else _parse_int(name, raw, issues)
        if value is not None:
            bounds.append((name, value))
    return tuple(bounds)


def _parse_bool(
    name: str, params: Mapping[str, list[str]], issues: list[Record]
) -> bool | None:
    raw = _last(params, name)
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


def _is_bearer(authorization: str | None, api_key: str) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    is_match = hmac.compare_digest(token.encode(), api_key.encode())
    return scheme.lower() == "bearer" and is_match


def _encode_cursor(payload: Record) -> str:
    """Standard base64 of JSON, padded so that the cursor always ends in ``=``
    (which ``_is_cursor_unencoded`` then insists arrives as ``%3D``)."""
    text = json.dumps(payload, separators=(",", ":"))
    if len(text) % 3 == 0:
        text += " "
    return base64.b64encode(text.encode()).decode()


def _is_cursor_unencoded(raw_query: str) -> bool:
    """True when an ``after`` value holds a bare ``=``: the client did not
    URL-encode the cursor. Lenient parsers cope; this one refuses, so that a
    client which skips encoding fails here rather than behind some proxy."""
    name = "after="
    parts = raw_query.split("&")
    return any("=" in part[len(name) :] for part in parts if part.startswith(name))


def _decode_cursor(cursor: str) -> Record:
    try:
        payload = json.loads(base64.b64decode(cursor, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise _bad_cursor() from exc
    if not isinstance(payload, dict):
        raise _bad_cursor()
    return payload


def _bad_cursor() -> _RequestError:
    return _RequestError(400, "The 'after' cursor is malformed or from another API")


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


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def _encode_item(record: Record) -> bytes:
    """The served JSON of a record: keys starting with ``_`` are internal."""
    return _dumps({key: value for key, value in record.items() if key[:1] != "_"})


def _page_response(
    items: list[bytes], has_next_page: bool, cursor: str | None, total: int | None
) -> _Response:
    tail: Record = {"has_next_page": has_next_page, "end_cursor": cursor}
    if total is not None:
        tail["total"] = total
    body = b'{"items":[' + b",".join(items) + b"]," + _dumps(tail)[1:]
    return _Response(200, body)


def _error_response(
    shape: ErrorShape,
    status: int,
    detail: str,
    issues: Sequence[Record],
    retry_after: str | None,
) -> _Response:
    """An error body as RFC 9457 problem+json or as FastAPI's default shape."""
    if status == 422 and not issues:
        issues = [{"loc": ["query"], "msg": detail, "type": "value_error"}]
    body: Record = {"detail": list(issues) if status == 422 else detail}
    content_type = "application/json"
    if shape == "problem":
        body = {"type": "about:blank", "title": _phrase(status), "status": status}
        body |= (
            {"detail": detail, "errors": list(issues)} if issues else {"detail": detail}
        )
        content_type = "application/problem+json"
    headers = [("Content-Type", content_type)]
    if retry_after is not None:
        headers.append(("Retry-After", retry_after))
    if status == 401:
        headers.append(("WWW-Authenticate", "Bearer"))
    return _Response(status, _dumps(body), tuple(headers))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
