"""Liveness and readiness probes: GET /healthz and GET /readyz.

Both are unauthenticated, cheap and not logged per request. A failing readiness
check is logged once each time its reason changes, and the recovery once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from mgwebhook.db.probe import read_within
from mgwebhook.db.schema import SCHEMA_REVISION, SUBJECT_TABLES, VERSION_TABLE, metadata
from mgwebhook.errors import DatabaseUnavailable
from mgwebhook.server.keys import ENGINE

logger = logging.getLogger(__name__)

HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
# Max seconds to wait for the database before /readyz returns 503.
READY_TIMEOUT_SECONDS = 2.0
READY_REASON = "database answers and its schema is at the code's revision"


@dataclass
class _ReadinessLog:
    """Last readiness result of one application, so repeated failures are logged once."""

    failures: int = 0
    last_reason: str | None = None

    def record(self, ready: bool, reason: str, detail: str) -> None:
        if ready:
            if self.failures:
                logger.info("ready again after %d failed readiness check(s)", self.failures)
            self.failures = 0
            self.last_reason = None
            return
        self.failures += 1
        if reason != self.last_reason:
            logger.warning("not ready: %s%s", reason, f" ({detail})" if detail else "")
            self.last_reason = reason


_READINESS_LOG = web.AppKey("readiness_log", _ReadinessLog)


def add_routes(app: web.Application) -> None:
    """Add GET /healthz and GET /readyz to `app`."""
    app[_READINESS_LOG] = _ReadinessLog()
    app.router.add_get(HEALTHZ_PATH, healthz)
    app.router.add_get(READYZ_PATH, readyz)


async def healthz(request: web.Request) -> web.Response:
    """Return 200 while the process runs; nothing else is checked."""
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """Return 200 when `check_ready` passes, else 503, with its reason in the body."""
    ready, reason = await check_ready(request.app)
    return web.json_response({"ok": ready, "reason": reason}, status=200 if ready else 503)


async def check_ready(app: web.Application) -> tuple[bool, str]:
    """Check that the database responds within READY_TIMEOUT_SECONDS and is at the code's revision.

    Returns (True, READY_REASON) or (False, reason). The reason goes to
    unauthenticated clients, so it names the error type but neither the database
    address nor the driver's message: the log line gets those.
    """
    engine = app.get(ENGINE)
    if engine is None:
        ready, reason, detail = False, "the database engine is not set up yet", ""
    else:
        ready, reason, detail = await _check_database(engine)
    readiness_log = app.get(_READINESS_LOG)
    if readiness_log is not None:
        readiness_log.record(ready, reason, detail)
    return ready, reason


async def _check_database(engine: AsyncEngine) -> tuple[bool, str, str]:
    """Return (ready, reason for the response, detail for the log only)."""
    try:
        existing, revision = await read_within(engine, _tables_and_revision, READY_TIMEOUT_SECONDS)
    except TimeoutError:
        return False, f"database query timed out after {READY_TIMEOUT_SECONDS:g} s", ""
    except DatabaseUnavailable as error:
        return False, f"database query failed ({_error_type(error)})", str(error)

    expected = set(metadata.tables) | {
        subject.table.name for subject in SUBJECT_TABLES.values() if subject.table.schema is None
    }
    missing = sorted(expected - existing)
    if missing:
        names = ", ".join(missing)
        reason = f"tables missing: {names}; run `mgwebhook db upgrade`"
        return False, reason, ""
    if revision != SCHEMA_REVISION:
        reason = (
            f"schema revision is {revision}, the code needs {SCHEMA_REVISION}; "
            "run `mgwebhook db upgrade`"
        )
        return False, reason, ""
    return True, READY_REASON, ""


def _tables_and_revision(connection: Connection) -> tuple[set[str], str | None]:
    """Run `SELECT 1`, then return the table names of the default schema and the revision."""
    connection.execute(text("SELECT 1"))
    tables = set(inspect(connection).get_table_names())
    if VERSION_TABLE not in tables:
        return tables, None
    revision = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return tables, revision


def _error_type(error: DatabaseUnavailable) -> str:
    cause = error.__cause__ or error
    original = getattr(cause, "orig", None) or cause
    return type(original).__name__
