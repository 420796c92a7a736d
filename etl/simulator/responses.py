"""The bytes the Devin API simulator sends back: JSON bodies and their headers.

Pages are assembled from records encoded once in advance, so that a page costs
a join rather than a fresh encoding. Errors come in one of two shapes (see
``ErrorShape``), because the API documentation does not say which it uses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from etl.simulator.data import Record

ErrorShape = Literal["problem", "fastapi"]

_JSON = (("Content-Type", "application/json"),)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = _JSON


class RequestError(Exception):
    """A request the API would reject; becomes an error body in the set shape."""

    def __init__(self, status: int, detail: str, issues: Sequence[Record] = ()):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.issues = list(issues)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, non-ASCII characters left as they are."""
    return _ENCODER.encode(value).encode()


def encode_item(record: Record) -> bytes:
    """The served JSON of a record: keys starting with ``_`` are internal."""
    return dumps({key: value for key, value in record.items() if key[:1] != "_"})


def page_response(
    items: list[bytes], has_next_page: bool, cursor: str | None, total: int | None
) -> Response:
    """A 200 page of already encoded items; ``total`` None leaves the key out."""
    tail: Record = {"has_next_page": has_next_page, "end_cursor": cursor}
    if total is not None:
        tail["total"] = total
    body = b'{"items":[' + b",".join(items) + b"]," + dumps(tail)[1:]
    return Response(200, body)


def error_response(
    shape: ErrorShape,
    status: int,
    detail: str,
    issues: Sequence[Record],
    retry_after: str | None,
) -> Response:
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
    return Response(status, dumps(body), tuple(headers))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
