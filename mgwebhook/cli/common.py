"""Options and helpers shared by every command."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from mgwebhook.cli import render
from mgwebhook.config import Settings, load_settings
from mgwebhook.db.subjects import configure_subjects
from mgwebhook.errors import MgwebhookError

T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML config file (default: $MGWEBHOOK_CONFIG, else built-in defaults).",
        dir_okay=False,
        show_default=False,
    ),
]


def fail(message: str) -> NoReturn:
    """Print `message` as an error and end the command with exit code 1."""
    render.error(message)
    raise typer.Exit(1)


def settings_from(config: Path | None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Load the settings for a command, turning a configuration error into exit 1."""
    try:
        settings = load_settings(config, overrides=overrides)
    except MgwebhookError as error:
        fail(str(error))
    configure_subjects(settings.subjects)
    return settings


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to completion; an mgwebhook error ends the command with exit 1."""
    try:
        return asyncio.run(coroutine)
    except MgwebhookError as error:
        fail(str(error))
