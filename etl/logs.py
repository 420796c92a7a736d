"""Logging, configured once by the entry point.

Plain text for commands and terminals, JSON lines for a daemon whose output
is collected, unless the settings choose. A filter removes registered secrets
from every record, so that a key never reaches a log line, even through a
library's message.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_secrets: set[str] = set()


class SecretFilter(logging.Filter):
    """Replaces every registered secret in a record's message with ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            record.msg, record.args = redact(record.getMessage()), None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, error."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def register_secret(secret: str | None) -> None:
    """Never let ``secret`` appear in a log line from now on."""
    if secret:
        _secrets.add(secret)


def configure_logging(
    level: str = "INFO", log_format: str = "auto", *, is_daemon: bool = False
) -> None:
    """Send logs to stderr as ``text`` or ``json``.

    ``auto`` means JSON for a daemon whose stderr is not a terminal (a
    container or a service manager collects it), text otherwise.
    """
    if log_format == "auto":
        is_json = is_daemon and not sys.stderr.isatty()
        log_format = "json" if is_json else "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SecretFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter stays out of INFO.
    for name in ("urllib3", "alembic", "apscheduler"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
