"""`mgwebhook db`: schema management."""

from __future__ import annotations

import typer
from sqlalchemy.engine import make_url

from mgwebhook.cli import render
from mgwebhook.cli.common import ConfigOption, fail, run, settings_from
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


@app.command("current")
def current(config: ConfigOption = None) -> None:
    """Print the schema revision of the configured database and the code's revision."""
    from mgwebhook.db.migrate import current_revision, head_revision

    settings = settings_from(config)

    async def read() -> str | None:
        engine = create_engine(settings.database.url)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    revision = run(read())
    head = head_revision()
    if revision is None:
        render.info(f"No mgwebhook schema yet (the code needs {head}); run: mgwebhook db upgrade")
    elif revision == head:
        render.info(f"{revision} (up to date)")
    else:
        render.info(f"{revision} (the code needs {head}; run: mgwebhook db upgrade)")


@app.command("check")
def check(config: ConfigOption = None) -> None:
    """Check the documents and tenants tables: configured columns, and statistics on PostgreSQL."""
    from mgwebhook.db.check import check_subject_tables

    settings = settings_from(config)

    async def inspect() -> list[str]:
        engine = create_engine(settings.database.url)
        try:
            return await check_subject_tables(engine)
        finally:
            await engine.dispose()

    problems = run(inspect())
    if problems:
        fail("the subject tables are not usable:\n" + "\n".join(f"- {p}" for p in problems))
    render.info("The documents and tenants tables have every configured column.")
