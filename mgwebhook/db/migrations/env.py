"""Alembic environment: migrations run only through mgwebhook.db.migrate on its connection."""

from __future__ import annotations

from alembic import context

from mgwebhook.db.migrate import VERSION_TABLE
from mgwebhook.db.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
