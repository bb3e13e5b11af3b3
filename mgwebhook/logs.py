"""Log formatting for `mgwebhook serve`: plain text or one JSON object per line."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime

from mgwebhook.config import LOG_FORMATS
from mgwebhook.errors import ConfigError

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RECIPIENT_HASH_LENGTH = 12

# Attributes every LogRecord has. Any other attribute came from `extra=` and is
# written as a key of its own in JSON output.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__
) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, then `extra=` fields.

    `time` is ISO 8601 in UTC with milliseconds. A traceback goes into
    `exception`, so every record stays on one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def make_formatter(log_format: str) -> logging.Formatter:
    """Return the formatter for "text" or "json"; raise ConfigError for any other value."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ConfigError(f"log format {log_format!r} is invalid; use {' or '.join(LOG_FORMATS)}")


def configure_logging(level: str, log_format: str) -> None:
    """Send every log record at `level` or above to stderr in `log_format`.

    Replaces the handlers of the root logger. Raises ConfigError for an unknown
    level or format.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigError(f"log level {level!r} is invalid; use DEBUG, INFO, WARNING or ERROR")
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(log_format))
    handler.addFilter(_quiet_bad_requests)
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    # At DEBUG, aiosqlite logs every statement with its parameters, which would
    # put raw payloads and recipients in the log whatever log_recipients is set to.
    logging.getLogger("aiosqlite").setLevel(max(numeric, logging.INFO))
    # Alembic logs each migration step and, on import, each of its plugins at
    # INFO; the commands print their own summary instead.
    logging.getLogger("alembic").setLevel(max(numeric, logging.WARNING))


def _quiet_bad_requests(record: logging.LogRecord) -> bool:
    """Log a client's malformed HTTP message as one warning line instead of a traceback.

    aiohttp's server logs these at ERROR with a traceback, so any client could
    fill the log. The request already got 400, or its connection was closed.
    """
    if record.name != "aiohttp.server" or not record.exc_info:
        return True
    # Imported here because most commands never start a server.
    from aiohttp.http_exceptions import HttpProcessingError

    error = record.exc_info[1]
    if isinstance(error, HttpProcessingError):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = "malformed HTTP request: %s", (error,)
        record.exc_info, record.exc_text = None, None
    return True


def hash_recipient(recipient: str) -> str:
    """Return the first 12 hex digits of the SHA-256 of the trimmed, lower-cased address.

    Lower-casing gives one hash per mailbox whatever case Mailgun reports. The
    hash hides the address from a casual reader only: anyone holding a list of
    addresses can compute their hashes and match them.
    """
    digest = hashlib.sha256(recipient.strip().lower().encode("utf-8")).hexdigest()
    return digest[:RECIPIENT_HASH_LENGTH]


def recipient_for_log(recipient: str | None, mode: str) -> str | None:
    """Return the recipient as the per-webhook line shows it under `mode`, or None to omit it.

    `mode` is logging.log_recipients: "hash", "plain", or anything else to omit
    it. A request with no known recipient shows "-" under "hash" and "plain".
    """
    if mode not in ("hash", "plain"):
        return None
    if recipient is None:
        return "-"
    if mode == "hash":
        return hash_recipient(recipient)
    return recipient
