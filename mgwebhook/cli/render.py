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


# Output of `mgwebhook events`, `history` and `send-test`.

from contextlib import contextmanager  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from mgwebhook.replay import ReplayResult
    from mgwebhook.retention import PruneResult


def json_line(record: dict[str, Any]) -> None:
    """Print `record` as one line of JSON."""
    import json

    console.out(json.dumps(record, ensure_ascii=False), highlight=False)


def raw_text(text: str) -> None:
    """Print `text` unchanged: no markup, wrapping or highlighting."""
    console.out(text, highlight=False)


def event_table(records: list[dict[str, Any]], next_before_id: int | None) -> None:
    """Print stored events as a table, and how to get the next page if there is one."""
    if not records:
        console.print("No stored events match.", markup=False)
        return
    table = _table(
        ["Id", "Received", "Event", "Severity", "Message id", "Recipient", "Outcome", "Subject"]
    )
    for record in records:
        table.add_row(
            *_cells(
                record["id"],
                _short_time(record["received_at"]),
                record["event"],
                record["severity"],
                record["message_id"],
                record["recipient"],
                record["outcome"],
                ", ".join(record["subjects"]),
            )
        )
    console.print(table)
    if next_before_id is not None:
        console.print(
            f"More events match. Next page: repeat the command with --before-id {next_before_id}",
            markup=False,
        )


def event_detail(
    record: dict[str, Any], audit_records: list[dict[str, Any]], payload: str | None
) -> None:
    """Print one stored event: its fields, its outcome, its audit rows and its payload."""
    from rich.table import Table

    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column(overflow="fold")
    labels = {
        "id": "Id",
        "received_at": "Received",
        "occurred_at": "Occurred",
        "event": "Event",
        "severity": "Severity",
        "reason": "Reason",
        "delivery_code": "Delivery code",
        "message_id": "Message id",
        "recipient": "Recipient",
        "mailgun_event_id": "Mailgun event id",
        "payload_format": "Payload format",
        "outcome": "Outcome",
        "detail": "Why",
        "processed_at": "Processed",
    }
    for key, label in labels.items():
        fields.add_row(*_cells(label, record[key]))
    fields.add_row(*_cells("Subjects", ", ".join(record["subjects"])))
    console.print(fields)

    console.print()
    if audit_records:
        count = len(audit_records)
        console.print(f"Audit events recorded from this event ({count}):", markup=False)
        console.print(_audit_table(audit_records, with_subject=True))
    else:
        console.print("No audit events were recorded from this event.", markup=False)

    console.print()
    if payload is None:
        console.print("Raw payload: removed by `mgwebhook events prune`.", markup=False)
    else:
        console.print("Raw payload:", markup=False)
        raw_text(payload)


def history(records: list[dict[str, Any]]) -> None:
    """Print each row's current email_status and its audit timeline."""
    for index, record in enumerate(records):
        if index:
            console.print()
        updated = _short_time(record["email_status_updated_at"])
        console.print(
            f"{record['subject_type']} {record['subject_id']}: email_status "
            f"{record['email_status'] or '-'} (updated {updated}), "
            f"message id {record['email_message_id'] or '-'}",
            markup=False,
        )
        if record["unmatched_events"]:
            console.print(
                f"{record['unmatched_events']} stored event(s) for this message id are unmatched; "
                "apply them with `mgwebhook events replay --outcome unmatched`",
                markup=False,
            )
        if record["events"]:
            console.print(_audit_table(record["events"], with_subject=False))
        else:
            console.print("No audit events yet.", markup=False)


@contextmanager
def replay_progress(total: int) -> Iterator[Callable[[], None]]:
    """Show a progress bar on a terminal's stderr; yield the function that advances it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    progress = Progress(
        "Replaying",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=error_console,
        transient=True,
        disable=not error_console.is_terminal,
    )
    with progress:
        task = progress.add_task("replay", total=total)
        yield lambda: progress.advance(task)


def replay_summary(results: list[ReplayResult], dry_run: bool) -> None:
    """Print the replayed events that changed or failed, then the count of each outcome."""
    from collections import Counter

    from mgwebhook.replay import ERROR, SKIPPED

    noteworthy = [
        result for result in results if not result.unchanged or result.outcome in (ERROR, SKIPPED)
    ]
    if noteworthy:
        table = _table(["Id", "Event", "Message id", "Outcome", "Status changes", "Detail"])
        for result in noteworthy:
            changes = "\n".join(
                f"{change.subject_type}:{change.subject_id} "
                f"{change.before or '-'} -> {change.after}"
                for change in result.changes
            )
            outcome = result.outcome
            if result.previous_outcome is not None:
                outcome = f"{result.previous_outcome} -> {result.outcome}"
            table.add_row(
                *_cells(
                    result.webhook_event_id,
                    result.event,
                    result.message_id,
                    outcome,
                    changes,
                    result.detail,
                )
            )
        console.print(table)

    counts = Counter(result.outcome for result in results)
    summary = ", ".join(f"{outcome} {count}" for outcome, count in sorted(counts.items()))
    verb = "Would replay" if dry_run else "Replayed"
    changed = sum(1 for result in results if not result.unchanged)
    line = f"{verb} {len(results)} event(s), {changed} changed" + (
        f"; outcomes: {summary}" if summary else ""
    )
    console.print(line, markup=False)
    if dry_run:
        console.print("Dry run: the changes were rolled back.", markup=False)


def prune_summary(result: PruneResult) -> None:
    """Print what a prune removed, or would remove in a dry run."""
    from mgwebhook.cli.times import format_time

    verb = "Would delete" if result.dry_run else "Deleted"
    console.print(
        f"{verb} {result.events_deleted} stored event(s) received before "
        f"{format_time(result.event_cutoff)}.",
        markup=False,
    )
    console.print(
        f"{'Would remove' if result.dry_run else 'Removed'} the raw payload of "
        f"{result.payloads_removed} older event(s) kept because audit events point to them.",
        markup=False,
    )
    console.print(
        f"{verb} {result.tokens_deleted} token(s) received and signed before "
        f"{format_time(result.token_cutoff)}.",
        markup=False,
    )


def send_test_response(event: str, message_id: str, url: str, status: int, body: str) -> None:
    """Print the server's response to `mgwebhook send-test`."""
    console.print(f"Sent {event} for message id {message_id} to {url}", markup=False)
    console.print(f"HTTP {status}: {body}", markup=False)


def _table(headers: list[str]) -> Any:
    from rich import box
    from rich.table import Table

    # Every column folds on a narrow terminal, so no value is cut off or hidden.
    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


def _audit_table(records: list[dict[str, Any]], *, with_subject: bool) -> Any:
    headers = ["Occurred", "Audit event", "Mailgun event", "Severity", "Reason", "Code"]
    headers += ["Subject"] if with_subject else []
    headers += ["Status", "Message id", "Stored event"]
    table = _table(headers)
    for record in records:
        status = f"{record['status_before'] or '-'} -> {record['status_after'] or '-'}"
        if not record["status_changed"]:
            status = f"{record['status_after'] or '-'} (unchanged)"
        subject = [f"{record['subject_type']}:{record['subject_id']}"] if with_subject else []
        table.add_row(
            *_cells(
                _short_time(record["occurred_at"]),
                record["event_type"],
                record["mailgun_event"],
                record["severity"],
                record["reason"],
                record["delivery_code"],
                *subject,
                status,
                record["message_id"],
                record["webhook_event_id"],
            )
        )
    return table


def _cells(*values: Any) -> list[Any]:
    """Return table cells that show each value literally, with `-` for None or empty."""
    from rich.text import Text

    return [Text("-" if value is None or value == "" else str(value)) for value in values]


def _short_time(iso: str | None) -> str:
    from datetime import datetime

    from mgwebhook.cli.times import format_time

    return format_time(datetime.fromisoformat(iso)) if iso is not None else "-"
