"""Audit entries and status moves of events applied one after another to row states."""

from __future__ import annotations

from mgwebhook.statuses import AuditType
from mgwebhook.trail import AuditEntry, RowState, apply_event


def row(subject_id: str, status: str | None = "SENT", recorded: set[str] | None = None) -> RowState:
    return RowState("document", subject_id, (subject_id,), status, recorded or set())


def test_delivered_moves_sent_row():
    state = row("INV-1")
    entries = apply_event([state], "event-1", AuditType.EMAIL_DELIVERED)
    assert entries == [AuditEntry(state, "SENT", "DELIVERED", True)]
    assert state.status == "DELIVERED"
    assert state.moved is True
    assert state.recorded == {"event-1"}


def test_row_with_event_gets_no_entry():
    recorded = row("INV-1", recorded={"event-1"})
    fresh = row("INV-2")
    entries = apply_event([recorded, fresh], "event-1", AuditType.EMAIL_DELIVERED)
    assert entries == [AuditEntry(fresh, "SENT", "DELIVERED", True)]
    assert recorded.status == "SENT"
    assert recorded.moved is False


def test_same_event_twice_records_once():
    state = row("INV-1")
    apply_event([state], "event-1", AuditType.EMAIL_DELIVERED)
    assert apply_event([state], "event-1", AuditType.EMAIL_DELIVERED) == []


def test_later_lower_event_keeps_status():
    state = row("INV-1")
    apply_event([state], "event-1", AuditType.EMAIL_COMPLAINED)
    entries = apply_event([state], "event-2", AuditType.EMAIL_DELIVERED)
    assert entries == [AuditEntry(state, "COMPLAINED", "COMPLAINED", False)]
    assert state.status == "COMPLAINED"


def test_temporary_failure_is_audited_without_move():
    state = row("INV-1", status=None)
    entries = apply_event([state], "event-1", AuditType.EMAIL_TEMP_FAILED)
    assert entries == [AuditEntry(state, None, None, False)]
    assert state.moved is False
