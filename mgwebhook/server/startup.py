"""Checks `mgwebhook serve` makes before it listens."""

from __future__ import annotations

import asyncio
import logging

from mgwebhook.config import Settings
from mgwebhook.db.engine import create_engine, schema_behind
from mgwebhook.errors import DatabaseUnavailable

logger = logging.getLogger("mgwebhook")


def schema_problem(settings: Settings) -> str | None:
    """Return why serve must not start on this database's schema, or None.

    SQLite is upgraded by the server itself on startup. An unreachable database
    does not stop the start: requests get 503 until it is back.
    """
    if settings.database.url.startswith("sqlite"):
        return None

    async def check() -> str | None:
        engine = create_engine(settings.database.url)
        try:
            return await schema_behind(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(check())
    except DatabaseUnavailable as error:
        logger.warning("cannot check the schema revision, starting anyway: %s", error)
        return None
