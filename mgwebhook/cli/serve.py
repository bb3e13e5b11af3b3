"""`mgwebhook serve`: run the webhook endpoint."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from sqlalchemy.engine import make_url

from mgwebhook.cli.common import ConfigOption, fail, settings_from
from mgwebhook.config import load_signing_keys
from mgwebhook.errors import ConfigError
from mgwebhook.logs import configure_logging as configure_log_output
from mgwebhook.server import WEBHOOK_PATH

logger = logging.getLogger("mgwebhook")


def serve(
    host: Annotated[
        str | None,
        typer.Option(help="Address to listen on (default: 127.0.0.1).", show_default=False),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port to listen on (default: 8080).", show_default=False)
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="TCP port that serves only GET /metrics; 0 serves it on --port (default: 0).",
            show_default=False,
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            help="Log output: text, or json for one object per line (default: text).",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            help="Lowest level logged: DEBUG, INFO, WARNING or ERROR (default: INFO).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes sharing the port; more than 1 is for PostgreSQL.",
        ),
    ] = 1,
    config: ConfigOption = None,
) -> None:
    """Run the webhook endpoint at POST /v1/mailgun/webhook."""
    # Imported here so that other commands do not load the server.
    from mgwebhook.server.startup import schema_problem
    from mgwebhook.server.supervisor import worker_metrics_port
    from mgwebhook.server.workers import check_port, run_server, run_workers

    overrides = {
        "server.host": host,
        "server.port": port,
        "server.metrics_port": metrics_port,
        "logging.format": log_format,
        "logging.level": log_level,
    }
    settings = settings_from(config, overrides)
    try:
        keys = load_signing_keys(settings)
    except ConfigError as error:
        fail(str(error))
    configure_logging(settings.logging.level, settings.logging.format)

    problem = schema_problem(settings)
    if problem is not None:
        fail(problem)
    database = make_url(settings.database.url).render_as_string(hide_password=True)
    if workers > 1 and settings.database.url.startswith("sqlite"):
        logger.warning(
            "--workers %d on SQLite: the processes take turns on one write lock, "
            "so throughput does not grow; use PostgreSQL for several workers",
            workers,
        )
    if workers > 1 and settings.server.metrics_port == 0:
        logger.warning(
            "--workers %d without --metrics-port: a GET /metrics on port %d reaches one "
            "worker, which counts only its own requests; pass --metrics-port PORT so that "
            "worker i serves its metrics on PORT + i",
            workers,
            settings.server.port,
        )
    logger.info(
        "mgwebhook listening on http://%s:%d%s with %d signing key(s), database %s",
        settings.server.host,
        settings.server.port,
        WEBHOOK_PATH,
        len(keys),
        database,
    )
    try:
        if workers > 1:
            # The supervisor replaces this process and logs when it stops.
            check_port(settings.server.host, settings.server.port)
            for number in range(workers):
                if worker_metrics_port(settings, number):
                    check_port(settings.server.host, worker_metrics_port(settings, number))
            run_workers(settings, keys, workers)
        else:
            run_server(settings, keys)
    except OSError as error:
        # A listening port that is taken or not allowed.
        fail(f"cannot start the server: {error}")
    logger.info("mgwebhook stopped")


def configure_logging(level: str, log_format: str = "text") -> None:
    """Set up log output as `mgwebhook serve` does; a bad level or format ends with exit 1."""
    try:
        configure_log_output(level, log_format)
    except ConfigError as error:
        fail(str(error))
