"""The exceptions devin-etl raises, grouped by what the caller does next.

::

    EtlError
    ├── TransientError          retry later: the same call may succeed
    │   ├── ApiUnavailableError     timeouts, dropped connections, 429, 5xx,
    │   │                           a 200 whose body is not a page
    │   ├── DatabaseUnavailableError  the warehouse cannot be reached
    │   ├── LockTimeoutError    another run held the source's lock too long
    │   └── RunStoppedError     the daemon is shutting down; the next run
    │                           reads the window again
    └── PermanentError          fix something first: retrying cannot help
        ├── ConfigError             a setting is missing or invalid
        ├── ApiAuthError            401: the API key is wrong or revoked
        ├── ApiPermissionError      403: the key lacks a permission
        ├── ApiRequestError         400/404/422: the API rejected the request
        ├── ApiContractError        the API broke a promise (repeated cursor,
        │                           ignored filter, millisecond timestamps)
        ├── SchemaError             the warehouse schema is missing or old
        ├── LoadError               the warehouse refused the data
        └── DeletionLimitError      a reconcile would mark too many sessions
                                    deleted (a wrong filter or listing?)

``requests`` exceptions never leave :mod:`etl.extract` and database driver
exceptions never leave :mod:`etl.load` and :mod:`etl.state`: they are
translated into this tree once, at that boundary, with ``raise ... from``.
Every message is one line that names what failed and what to do, and never
contains the API key.
"""

from __future__ import annotations


class EtlError(Exception):
    """Base of every error devin-etl raises on purpose."""


class TransientError(EtlError):
    """The call may succeed if repeated later."""


class ApiUnavailableError(TransientError):
    """The API did not answer with a usable page.

    ``retry_after`` is the delay in seconds the server asked for, if any.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DatabaseUnavailableError(TransientError):
    """The warehouse could not be reached or the connection dropped."""


class LockTimeoutError(TransientError):
    """Another run of the same source kept its lock past the wait limit."""


class RunStoppedError(TransientError):
    """A run was asked to stop and ended between two batches.

    Its committed batches stay, the watermark does not move, so the next run
    reads the same window again.
    """


class PermanentError(EtlError):
    """Retrying cannot help: a person must change something first."""


class ConfigError(PermanentError):
    """A setting is missing or invalid; the message names the key."""


class ApiAuthError(PermanentError):
    """The API rejected the key (401)."""


class ApiPermissionError(PermanentError):
    """The key is valid but lacks a permission (403)."""


class ApiRequestError(PermanentError):
    """The API rejected the request itself (400, 404, 422)."""


class ApiContractError(PermanentError):
    """The API answered in a way that breaks what the sync relies on."""


class SchemaError(PermanentError):
    """The warehouse schema is missing or older than this program."""


class LoadError(PermanentError):
    """The warehouse refused the data of a batch."""


class DeletionLimitError(PermanentError):
    """A reconcile would mark more than ``reconcile.max_deleted_share`` of the
    live sessions deleted; nothing was marked. ``--force`` overrides it."""
