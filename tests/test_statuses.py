"""Event classification and the status order with plain values."""

from __future__ import annotations

import itertools

import pytest

from mgwebhook.statuses import AuditType, Severity, classify, next_status, rank


@pytest.mark.parametrize(
    ("event", "severity", "audit_type", "expected_severity"),
    [
        ("delivered", None, AuditType.EMAIL_DELIVERED, None),
        ("failed", "permanent", AuditType.EMAIL_FAILED, Severity.PERMANENT),
        ("failed", "temporary", AuditType.EMAIL_TEMP_FAILED, Severity.TEMPORARY),
        ("complained", None, AuditType.EMAIL_COMPLAINED, None),
        ("bounced", None, AuditType.EMAIL_FAILED, Severity.PERMANENT),
        ("dropped", None, AuditType.EMAIL_FAILED, Severity.PERMANENT),
    ],
)
def test_classify_tracked(event, severity, audit_type, expected_severity):
    result = classify(event, severity, None, None)
    assert result is not None
    assert result.audit_type is audit_type
    assert result.severity == expected_severity
    assert result.severity_inferred is False


@pytest.mark.parametrize("event", ["opened", "clicked", "accepted", "rejected", "stored", ""])
def test_classify_ignored(event):
    assert classify(event, None, None, None) is None


@pytest.mark.parametrize(
    ("severity", "reason", "code", "expected"),
    [
        (None, "bounce", None, Severity.PERMANENT),
        (None, "suppress-bounce", 605, Severity.PERMANENT),
        (None, "suppress-complaint", 607, Severity.PERMANENT),
        (None, "generic", 550, Severity.PERMANENT),
        (None, "generic", 421, Severity.TEMPORARY),
        (None, None, None, Severity.TEMPORARY),
        ("unknown", "old", 500, Severity.PERMANENT),
        ("", None, 499, Severity.TEMPORARY),
    ],
)
def test_failed_without_severity_is_inferred(severity, reason, code, expected):
    result = classify("failed", severity, reason, code)
    assert result is not None
    assert result.severity is expected
    assert result.severity_inferred is True


@pytest.mark.parametrize(
    ("current", "audit_type", "expected"),
    [
        (None, AuditType.EMAIL_DELIVERED, "DELIVERED"),
        ("SENT", AuditType.EMAIL_DELIVERED, "DELIVERED"),
        ("QUEUED", AuditType.EMAIL_FAILED, "FAILED"),
        ("DELIVERED", AuditType.EMAIL_FAILED, "FAILED"),
        ("FAILED", AuditType.EMAIL_DELIVERED, None),
        ("COMPLAINED", AuditType.EMAIL_FAILED, None),
        ("FAILED", AuditType.EMAIL_COMPLAINED, "COMPLAINED"),
        ("SENT", AuditType.EMAIL_TEMP_FAILED, None),
        ("DELIVERED", AuditType.EMAIL_DELIVERED, None),
    ],
)
def test_next_status(current, audit_type, expected):
    assert next_status(current, audit_type) == expected


def test_rank_order():
    assert [rank(s) for s in (None, "SENT", "QUEUED", "DELIVERED", "FAILED", "COMPLAINED")] == [
        0,
        0,
        0,
        1,
        2,
        3,
    ]


def test_final_status_independent_of_order():
    events = list(AuditType)
    finals = set()
    for order in itertools.permutations(events):
        status: str | None = "SENT"
        for audit_type in order:
            status = next_status(status, audit_type) or status
        finals.add(status)
    assert finals == {"COMPLAINED"}
