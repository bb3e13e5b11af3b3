"""Schema migrations with Alembic, run on mgwebhook's own connection.

The revision is kept in `mgwebhook_alembic_version` (`schema.VERSION_TABLE`), so
an invoicing API that uses Alembic on the same database keeps its own
`alembic_version` table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from mgwebhook.db.errors import translate_errors
from mgwebhook.db.schema import VERSION_TABLE

__all__ = ["VERSION_TABLE", "current_revision", "head_revision", "upgrade_schema"]

# Alembic reports every step at INFO; the commands print their own summary.
logging.getLogger("alembic").setLevel(logging.WARNING)
MIGRATIONS = Path(__file__).with_name("migrations")


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """Return the revision the code expects."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


async def upgrade_schema(engine: AsyncEngine, revision: str = "head") -> None:
    """Create or update mgwebhook's tables to `revision`."""

    def upgrade(connection: Connection) -> None:
        command.upgrade(_config(connection), revision)

    async with translate_errors(), engine.begin() as connection:
        await connection.run_sync(upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    """Return the database's revision, or None when mgwebhook's tables were never created."""

    def read(connection: Connection) -> str | None:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()

    async with translate_errors(), engine.connect() as connection:
        return await connection.run_sync(read)
