"""`mgwebhook track`: record that an email was sent for a document or tenant."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from mgwebhook.cli import render
from mgwebhook.cli.common import ConfigOption, fail, run, settings_from
from mgwebhook.db.engine import create_engine, create_schema
from mgwebhook.tracking import TrackResult, track_email


class Subject(StrEnum):
    document = "document"
    tenant = "tenant"


def track(
    subject: Annotated[Subject, typer.Argument(help="Kind of row the email was sent for.")],
    subject_id: Annotated[str, typer.Argument(metavar="ID", help="Document or tenant id.")],
    message_id: Annotated[
        str, typer.Argument(help="Message id returned by Mailgun's send API, brackets optional.")
    ],
    config: ConfigOption = None,
) -> None:
    """Record that an email was sent for a row: store its message id with status SENT."""
    settings = settings_from(config)

    async def record() -> TrackResult:
        engine = create_engine(settings.database.url)
        try:
            if engine.dialect.name == "sqlite":
                await create_schema(engine)
            return await track_email(engine, subject.value, subject_id, message_id)
        finally:
            await engine.dispose()

    try:
        result = run(record())
    except ValueError as error:
        fail(str(error))
    render.tracked(result)
