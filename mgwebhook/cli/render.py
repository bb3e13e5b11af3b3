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


def webhook_changes(heading: str, rows: list[tuple[str, list[str], list[str], str]]) -> None:
    """Print a heading and one row per webhook id: id, URLs before, URLs after, action."""
    cells = [
        [escape(webhook_id), _url_cell(before), _url_cell(after), escape(action)]
        for webhook_id, before, after, action in rows
    ]
    _print_webhook_table(heading, ["Webhook id", "Before", "After", "Action"], cells)


def webhook_urls(heading: str, rows: list[tuple[str, str, bool]]) -> None:
    """Print a heading and one row per webhook URL: id, URL, and "yes" for our URL."""
    cells = [
        [escape(webhook_id), escape(url), "yes" if ours else ""] for webhook_id, url, ours in rows
    ]
    _print_webhook_table(heading, ["Webhook id", "URL", "Ours"], cells)


def _print_webhook_table(heading: str, headers: list[str], cells: list[list[str]]) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    for header in headers:
        table.add_column(header, no_wrap=True)
    for row in cells:
        table.add_row(*row)
    console.print(heading, markup=False)
    console.print(table)


def _url_cell(urls: list[str]) -> str:
    return "\n".join(escape(url) for url in urls) if urls else "-"
