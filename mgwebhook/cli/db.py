"""`mgwebhook db`: schema management."""

from __future__ import annotations

import typer
from sqlalchemy.engine import make_url

from mgwebhook.cli import render
from mgwebhook.cli.common import ConfigOption, run, settings_from
from mgwebhook.db.engine import create_engine, create_schema

app = typer.Typer(help="Manage the database schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(config: ConfigOption = None) -> None:
    """Create or update mgwebhook's tables on the configured database."""
    settings = settings_from(config)

    async def upgrade_schema() -> None:
        engine = create_engine(settings.database.url)
        try:
            await create_schema(engine)
        finally:
            await engine.dispose()

    run(upgrade_schema())
    database = make_url(settings.database.url).render_as_string(hide_password=True)
    render.info(f"Schema is up to date on {database}")
