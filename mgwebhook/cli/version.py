"""`mgwebhook --version`, read from the installed package's metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

DISTRIBUTION = "mgwebhook"


def installed_version() -> str:
    """Return the version pip installed, or "unknown" when no package metadata exists."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        # Only when run from a source tree that was never installed.
        return "unknown (not installed; run `pip install -e .` in the source tree)"


def _print_version(requested: bool) -> None:
    if requested:
        typer.echo(f"{DISTRIBUTION} {installed_version()}")
        raise typer.Exit()


def global_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the mgwebhook version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    # No docstring: Typer would show it in place of the app's help text.
    pass
