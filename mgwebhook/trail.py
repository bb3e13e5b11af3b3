"""Audit entries and status moves that one tracked event makes on its matched rows; pure.

A batch can carry several events for the same row, so each row's status and
the Mailgun events it already has are kept in a `RowState` that every event
of the batch updates in turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mgwebhook import statuses


@dataclass(eq=False)
class RowState:
    """A matched row as the events of one transaction have left it so far."""

    subject_type: str
    subject_id: str
    # The ids as the database returns them (text, integer or UUID); subject_id is
    # their text. Two rows share a state only when their ids have the same text.
    keys: tuple[Any, ...]
    status: str | None
    # Mailgun event keys already in this row's audit trail.
    recorded: set[str] = field(default_factory=set)
    # Whether an event of this transaction moved the status.
    moved: bool = False


@dataclass(frozen=True)
class AuditEntry:
    """One audit row to append for one matched row."""

    row: RowState
    status_before: str | None
    status_after: str | None
    status_changed: bool


def apply_event(
    rows: list[RowState], event_key: str, audit_type: statuses.AuditType
) -> list[AuditEntry]:
    """Record one Mailgun event on its rows; rows that already have it get no entry.

    The returned entries are what the audit trail gains; each row's state moves
    on as the event is applied.
    """
    entries = []
    for row in rows:
        if event_key in row.recorded:
            continue
        row.recorded.add(event_key)
        before = row.status
        target = statuses.next_status(before, audit_type)
        if target is not None:
            row.status = target
            row.moved = True
        entries.append(AuditEntry(row, before, row.status, target is not None))
    return entries
