"""A fake Devin API v3 served over loopback HTTP, for tests, demos and benchmarks.

It serves ``GET /v3/enterprise/sessions`` with the filters and pagination of the
published OpenAPI description, plus the organizations and users directories,
and lets a test steer it from Python while a client pages through it: change
data mid-listing, shift the server clock, refuse permissions, and inject
faults. The undocumented behaviours (cursor kind, order, inclusive bounds,
error shape, ``total``) are switches in ``SimulatorConfig``, so a client can be
tested against each answer.

This module holds the control API, the faults and ``serve``; filters, order,
cursors and pages are in ``listing``, response bodies in ``responses`` and the
HTTP server in ``transport``. Speed comes from caching in ``listing``: every
session's JSON is encoded once (again only when it changes) and each filtered,
ordered listing is built once per data version; a keyset cursor is then found
by bisection. Times are unix seconds (UTC).
"""

from __future__ import annotations

import copy
import hmac
import itertools
import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import Any, Literal, cast, get_args

from etl.simulator import data
from etl.simulator.data import Record
from etl.simulator.listing import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    CursorKind,
    Order,
    Page,
    SessionStore,
    directory_page,
    group_params,
    last_value,
    parse_filters,
    parse_first_only,
    parse_query,
    reject_unencoded_cursor,
)
from etl.simulator.responses import (
    ErrorShape,
    RequestError,
    Response,
    error_response,
    page_response,
)
from etl.simulator.transport import LoopbackServer, Request

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_SESSION_COUNT",
    "LOG_LIMIT",
    "MAX_PAGE_SIZE",
    "ORGANIZATIONS_PATH",
    "SESSIONS_PATH",
    "USERS_PATH",
    "CursorKind",
    "Endpoint",
    "ErrorShape",
    "Fault",
    "FaultKind",
    "Order",
    "PageHook",
    "RequestRecord",
    "Simulator",
    "SimulatorConfig",
    "serve",
]

SESSIONS_PATH = "/v3/enterprise/sessions"
ORGANIZATIONS_PATH = "/v3/enterprise/organizations"
USERS_PATH = "/v3/enterprise/members/users"
DEFAULT_SESSION_COUNT = 500
LOG_LIMIT = 100_000  # requests kept in requests_log, so a long serve() stays small

Endpoint = Literal["sessions", "organizations", "users"]
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
        self._store = SessionStore(
            sessions,
            order=config.order,
            cursor=config.cursor,
            is_after_inclusive=config.updated_after_inclusive,
        )
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
        self._server: LoopbackServer | None = None
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
        self._server = LoopbackServer(self._address, self._respond, self._date_header)
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
        parsed = parse_filters(filters)
        with self._lock:
            encoded = self._store.encoded_listing(parsed)
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

    def _respond(self, request: Request) -> Response | None:
        """Answer one request (the HTTP handler's entry point); None means drop
        the connection without an answer."""
        is_sessions = request.path == SESSIONS_PATH
        fault = self._take_fault() if is_sessions else None
        response: Response | None
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

    def _date_header(self) -> str | None:
        if not self.config.send_date_header:
            return None
        return formatdate(self.now(), usegmt=True)

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

    def _respond_with_fault(self, fault: Fault, request: Request) -> Response | None:
        if fault.kind == "drop":
            return None
        if fault.kind == "status":
            return self._error(fault.code, "Injected fault", fault.retry_after)
        if fault.kind == "no_items":
            return Response(200, b'{"has_next_page":false}')
        time.sleep(fault.delay)
        response = self._route(request)
        if fault.kind == "broken_json":
            return replace(response, body=response.body[: len(response.body) // 2])
        return response

    def _route(self, request: Request) -> Response:
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
        params = group_params(request.query)
        try:
            reject_unencoded_cursor(request.raw_query)
            if endpoint == "sessions":
                return self._sessions_page(params)
            return self._directory_page(endpoint, params)
        except RequestError as exc:
            return self._error(exc.status, exc.detail, issues=exc.issues)

    def _sessions_page(self, params: Mapping[str, list[str]]) -> Response:
        filters, first = parse_query(params)
        after = last_value(params, "after")
        with self._lock:
            page = self._store.page(filters, after, first)
        self._run_page_hooks()
        return self._page_response(page)

    def _run_page_hooks(self) -> None:
        with self._lock:
            hooks = list(self._hooks)
        for callback, counter in hooks:
            try:
                callback(self, next(counter))
            except Exception as exc:  # surface it to the client, not to stderr
                raise RequestError(500, f"A page hook raised {exc!r}") from exc

    def _directory_page(
        self, endpoint: Endpoint, params: Mapping[str, list[str]]
    ) -> Response:
        first = parse_first_only(params)
        after = last_value(params, "after")
        with self._lock:
            records = self._directories[endpoint]
            hidden = self._store.deleted_orgs if endpoint == "organizations" else ()
            page = directory_page(records, hidden, after, first)
        return self._page_response(page)

    def _page_response(self, page: Page) -> Response:
        total = page.total if self.config.include_total else None
        return page_response(page.items, page.has_next_page, page.end_cursor, total)

    def _error(
        self,
        status: int,
        detail: str,
        retry_after: str | None = None,
        *,
        issues: Sequence[Record] = (),
    ) -> Response:
        return error_response(
            self.config.error_shape, status, detail, issues, retry_after
        )


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


def _is_bearer(authorization: str | None, api_key: str) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    is_match = hmac.compare_digest(token.encode(), api_key.encode())
    return scheme.lower() == "bearer" and is_match
