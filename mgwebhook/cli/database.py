"""Database access for commands that read or change stored events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine

from mgwebhook.config import Settings
from mgwebhook.db.engine import create_engine, create_schema


@asynccontextmanager
async def open_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """Yield an engine on the configured database and dispose of it afterwards.

    As `mgwebhook track` does, the tables are created on SQLite, whose file the
    service owns; on PostgreSQL `mgwebhook db upgrade` creates them.
    """
    engine = create_engine(settings.database.url)
    try:
        if engine.dialect.name == "sqlite":
            await create_schema(engine)
        yield engine
    finally:
        await engine.dispose()
