"""Read pages from the Devin API v3 list endpoints.

The client pages with ``first``/``after`` until ``has_next_page`` is false,
retries what is transient (see :class:`etl.config.RetrySettings`) and turns
everything else into one actionable :mod:`etl.errors` exception. ``requests``
exceptions never leave this module.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
import tenacity

from etl import __version__
from etl.config import ApiSettings, FilterSettings, RetrySettings
from etl.errors import (
    ApiAuthError,
    ApiContractError,
    ApiPermissionError,
    ApiRequestError,
    ApiUnavailableError,
)

log = logging.getLogger(__name__)

SESSIONS_PATH = "/v3/enterprise/sessions"
NO_RESPONSE = "none"
Params = list[tuple[str, str]]

PERMISSIONS = {
    SESSIONS_PATH: "ViewAccountSessions",
    "/v3/enterprise/organizations": "ManageOrganizations",
    "/v3/enterprise/members/users": "ManageAccountMembership",
}


@dataclass(frozen=True)
class Page:
    """One answer of a list endpoint.

    ``server_time`` is the server's ``Date`` header in UTC, or None when it
    sent none; the sync takes its reference time from it, not from this host.
    """

    items: list[dict[str, Any]]
    has_next_page: bool
    end_cursor: str | None
    total: int | None
    server_time: datetime | None


@dataclass
class RequestStats:
    """Counts of one client's HTTP traffic since it was created.

    ``by_status`` counts every response, retried ones included, by status
    code (``"200"``, ``"503"``); ``NO_RESPONSE`` counts requests that got
    none (timeouts, dropped connections).
    """

    requests: int = 0
    retries: int = 0
    by_status: Counter[str] = dataclasses.field(default_factory=Counter)


class DevinClient:
    """A client for the list endpoints of one Devin API deployment.

    ``http`` lets tests pass their own ``requests.Session``.
    """

    def __init__(
        self,
        settings: ApiSettings,
        api_key: str,
        *,
        http: requests.Session | None = None,
    ) -> None:
        self._base_url = settings.base_url
        self._api_key = api_key
        self._timeout = (
            settings.connect_timeout_seconds,
            settings.read_timeout_seconds,
        )
        self._retrying = build_retrying(settings.retry, self._count_retry)
        self._http = http or requests.Session()
        self._http.headers.update(
            {
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": f"devin-etl/{__version__}",
            }
        )
        self.stats = RequestStats()

    def close(self) -> None:
        self._http.close()

    def iter_pages(
        self, path: str, params: Params, *, page_size: int
    ) -> Iterator[Page]:
        """Yield every page of a listing, following ``end_cursor``.

        Only ``has_next_page`` ends the listing: a short page or ``total``
        does not. Raises :class:`ApiContractError` when a cursor repeats or
        is missing, since either would loop forever or stop early.
        """
        cursor: str | None = None
        seen_cursors: set[str] = set()
        while True:
            page_params = [*params, ("first", str(page_size))]
            if cursor is not None:
                page_params.append(("after", cursor))
            page = self.fetch_page(path, page_params)
            yield page

            if not page.has_next_page:
                return
            cursor = _next_cursor(page, path, seen_cursors)

    def fetch_page(self, path: str, params: Params) -> Page:
        """GET one page, retrying transient failures with backoff."""
        try:
            return self._retrying(self._get_page, path, params)
        except ApiUnavailableError as error:
            attempts = self._retrying.statistics.get("attempt_number", 1)
            raise ApiUnavailableError(
                f"{error} (gave up after {attempts} attempts; the API may be "
                "down or rate limiting: run again later)"
            ) from error

    def _get_page(self, path: str, params: Params) -> Page:
        self.stats.requests += 1
        started = time.monotonic()
        try:
            response = self._send(path, params)
        except ApiUnavailableError:
            self.stats.by_status[NO_RESPONSE] += 1
            raise
        self.stats.by_status[str(response.status_code)] += 1
        log.debug(
            "GET %s -> %s in %.3fs",
            path,
            response.status_code,
            time.monotonic() - started,
        )
        if response.status_code != 200:
            raise _error_for(response, path)
        return _parse_page(response, path)

    def _send(self, path: str, params: Params) -> requests.Response:
        url = self._base_url + path
        try:
            response = self._http.get(url, params=params, timeout=self._timeout)
            # Read the body here, so a connection dropped mid-body is retried.
            _ = response.content
        except requests.Timeout as error:
            raise ApiUnavailableError(f"GET {path} timed out") from error
        except requests.RequestException as error:
            message = _scrub(_first_line(error), self._api_key)
            raise ApiUnavailableError(f"GET {path} failed: {message}") from error
        return response

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        self.stats.retries += 1
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning("Retrying in %.1fs: %s", delay, error)


def build_retrying(
    settings: RetrySettings, before_sleep: Any = None
) -> tenacity.Retrying:
    """The retry policy: capped exponential backoff with jitter.

    A ``Retry-After`` from the server overrides the backoff, capped at
    ``max_backoff_seconds``.
    """
    backoff = tenacity.wait_exponential_jitter(
        multiplier=settings.backoff_seconds,
        jitter=settings.backoff_seconds,
        max=settings.max_backoff_seconds,
    )

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, ApiUnavailableError) and error.retry_after is not None:
            return min(error.retry_after, settings.max_backoff_seconds)
        return float(backoff(state))

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(settings.max_attempts),
        wait=wait,
        retry=tenacity.retry_if_exception_type(ApiUnavailableError),
        before_sleep=before_sleep,
        reraise=True,
    )


def _next_cursor(page: Page, path: str, seen: set[str]) -> str:
    if not page.end_cursor:
        raise ApiContractError(
            f"GET {path} said has_next_page without an end_cursor; the listing "
            "cannot continue: report this to Cognition support"
        )
    if page.end_cursor in seen:
        raise ApiContractError(
            f"GET {path} returned the same cursor twice; stopping instead of "
            "looping forever: check DEVIN_API_BASE_URL points at the v3 API"
        )
    seen.add(page.end_cursor)
    return page.end_cursor


def _parse_page(response: requests.Response, path: str) -> Page:
    try:
        body = response.json()
    except ValueError:
        raise ApiUnavailableError(
            f"GET {path} answered 200 with a body that is not JSON"
        ) from None
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise ApiUnavailableError(f"GET {path} answered 200 without an items list")
    total = body.get("total")
    return Page(
        items=body["items"],
        has_next_page=bool(body.get("has_next_page", False)),
        end_cursor=body.get("end_cursor"),
        total=total if isinstance(total, int) else None,
        server_time=_server_time(response),
    )


def _server_time(response: requests.Response) -> datetime | None:
    header = response.headers.get("Date")
    if not header:
        return None
    try:
        return parsedate_to_datetime(header).astimezone(UTC)
    except (TypeError, ValueError):
        log.warning("Ignoring an unreadable Date header: %r", header)
        return None


def _error_for(response: requests.Response, path: str) -> Exception:
    status = response.status_code
    detail = describe_problem(response)
    where = f"GET {path} answered {status}"
    if status == 429 or status >= 500:
        return ApiUnavailableError(
            f"{where}: {detail}", retry_after=_retry_after(response)
        )
    if status == 401:
        return ApiAuthError(
            f"{where}: the API key was rejected ({detail}); check DEVIN_API_KEY "
            "holds a valid service-user key (cog_...)"
        )
    if status == 403:
        permission = PERMISSIONS.get(path, "the required")
        return ApiPermissionError(
            f"{where}: the key lacks permission ({detail}); grant the service "
            f"user the {permission} permission"
        )
    return ApiRequestError(
        f"{where}: the request was rejected ({detail}); check the [filters] "
        "settings and DEVIN_API_BASE_URL"
    )


def describe_problem(response: requests.Response) -> str:
    """One line from either error shape the API uses.

    RFC 9457 problem+json (``title``, ``detail``, ``errors``) or the FastAPI
    shape (``detail`` as a string or a list of ``{loc, msg}``).
    """
    try:
        body = response.json()
    except ValueError:
        return _truncate(response.text.strip() or response.reason or "no detail")
    if not isinstance(body, dict):
        return _truncate(str(body))
    parts = [str(body["title"])] if body.get("title") else []
    parts += _detail_lines(body.get("detail"))
    parts += _detail_lines(body.get("errors"))
    return _truncate("; ".join(parts) or "no detail")


def _detail_lines(detail: Any) -> list[str]:
    if detail is None:
        return []
    if isinstance(detail, list):
        return [_validation_line(entry) for entry in detail]
    return [str(detail)]


def _validation_line(entry: Any) -> str:
    if not isinstance(entry, dict):
        return str(entry)
    location = entry.get("loc") or entry.get("pointer") or entry.get("field")
    if isinstance(location, list):
        location = ".".join(str(part) for part in location)
    message = entry.get("msg") or entry.get("detail") or entry.get("message")
    return f"{location}: {message}" if location else str(message)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _truncate(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def session_params(
    filters: FilterSettings, *, updated_after: int | None = None
) -> Params:
    """Query parameters for the configured filters and the window.

    Lists are sent as repeated keys; times as unix seconds.
    """
    params: Params = []
    for name in LIST_FILTERS:
        params += [(name, value) for value in getattr(filters, name)]
    for name in SCALAR_FILTERS:
        value = getattr(filters, name)
        if value is not None:
            params.append((name, _param_value(value)))
    params.append(("include_deleted_orgs", _param_value(filters.include_deleted_orgs)))
    if updated_after is not None:
        params.append(("updated_after", str(updated_after)))
    return params


LIST_FILTERS: Sequence[str] = (
    "session_ids",
    "org_ids",
    "user_ids",
    "service_user_ids",
    "tags",
    "origins",
    "repo_names",
)
SCALAR_FILTERS: Sequence[str] = (
    "category",
    "playbook_id",
    "schedule_id",
    "is_archived",
    "created_after",
    "created_before",
)


def _param_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return str(int(value.timestamp()))
    return str(value)


def check_filters(
    items: list[dict[str, Any]], filters: FilterSettings, *, consequence: str
) -> None:
    """Raise :class:`ApiContractError` for the first item outside ``filters``.

    ``consequence`` says what the caller therefore did not do, e.g. "nothing
    was marked".
    """
    for item in items:
        violated = find_filter_violation(item, filters)
        if violated:
            raise ApiContractError(
                f"GET {SESSIONS_PATH} returned session {item.get('session_id')} "
                f"outside the configured filter {violated}: the server ignored "
                f"the filter, so {consequence}; check DEVIN_API_BASE_URL points "
                "at an API that supports it"
            )


def find_filter_violation(item: dict[str, Any], filters: FilterSettings) -> str | None:
    """Name the configured filter that ``item`` does not satisfy, if any.

    Servers are reported to ignore parameters they do not know and answer
    200 with unfiltered data; loading that would fill the warehouse with
    sessions outside the configured scope. Fields the item lacks are not
    judged here: the transform rejects such items.
    """
    for name, field in MEMBERSHIP_CHECKS:
        allowed = getattr(filters, name)
        if allowed and field in item and item[field] not in allowed:
            return name
    if filters.tags and not set(item.get("tags") or ()) & set(filters.tags):
        return "tags"
    for name in ("category", "playbook_id", "is_archived"):
        wanted = getattr(filters, name)
        if wanted is not None and name in item and item[name] != wanted:
            return name
    return _created_violation(item, filters)


MEMBERSHIP_CHECKS: Sequence[tuple[str, str]] = (
    ("session_ids", "session_id"),
    ("org_ids", "org_id"),
    ("user_ids", "user_id"),
    ("service_user_ids", "service_user_id"),
    ("origins", "origin"),
)


def _created_violation(item: dict[str, Any], filters: FilterSettings) -> str | None:
    created = item.get("created_at")
    if not isinstance(created, int | float):
        return None
    after, before = filters.created_after, filters.created_before
    # One second of slack: whether the bounds are inclusive is undocumented.
    if after is not None and created < after.timestamp() - 1:
        return "created_after"
    if before is not None and created > before.timestamp() + 1:
        return "created_before"
    return None
