"""`mgwebhook serve`: run the webhook endpoint."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from aiohttp import web
from sqlalchemy.engine import make_url

from mgwebhook.cli.common import ConfigOption, fail, settings_from
from mgwebhook.config import load_signing_keys
from mgwebhook.errors import ConfigError
from mgwebhook.server.app import WEBHOOK_PATH, create_app

logger = logging.getLogger("mgwebhook")


def serve(
    host: Annotated[
        str | None,
        typer.Option(help="Address to listen on [default: 127.0.0.1].", show_default=False),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port to listen on [default: 8080].", show_default=False)
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run the webhook endpoint at POST /v1/mailgun/webhook."""
    settings = settings_from(config, {"server.host": host, "server.port": port})
    try:
        keys = load_signing_keys(settings)
    except ConfigError as error:
        fail(str(error))
    configure_logging(settings.logging.level)

    database = make_url(settings.database.url).render_as_string(hide_password=True)
    logger.info(
        "mgwebhook listening on http://%s:%d%s with %d signing key(s), database %s",
        settings.server.host,
        settings.server.port,
        WEBHOOK_PATH,
        len(keys),
        database,
    )
    web.run_app(
        create_app(settings, keys),
        host=settings.server.host,
        port=settings.server.port,
        access_log=None,
        print=None,
    )
    logger.info("mgwebhook stopped")


def configure_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        fail(f"log level {level!r} is invalid; use DEBUG, INFO, WARNING or ERROR")
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
