"""All terminal output of the CLI: rich tables, messages and errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from mgwebhook.tracking import TrackResult

console = Console(highlight=False, soft_wrap=True)
error_console = Console(stderr=True, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    error_console.print(f"[bold red]Error:[/] {escape(message)}", markup=True)


def warning(message: str) -> None:
    error_console.print(f"[yellow]Warning:[/] {escape(message)}", markup=True)


def info(message: str) -> None:
    console.print(message, markup=False)


def tracked(result: TrackResult) -> None:
    console.print(
        f"Tracked {result.subject_type} {result.subject_id}: message id {result.message_id}, "
        f"status {result.status}",
        markup=False,
    )
    if result.applied_events:
        ids = ", ".join(str(event_id) for event_id in result.applied_events)
        console.print(f"Applied {len(result.applied_events)} stored event(s): {ids}", markup=False)
