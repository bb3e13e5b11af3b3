"""Mailgun events to audit types, and the order in which email_status may move; pure.

Mailgun delivers webhooks at least once and in no particular order, so the
status only ever moves up ``SENT < DELIVERED < FAILED < COMPLAINED``. The final
status then does not depend on arrival order: a delayed bounce still turns
DELIVERED into FAILED, and a late `delivered` never hides a complaint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class EmailStatus(StrEnum):
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    COMPLAINED = "COMPLAINED"


class AuditType(StrEnum):
    EMAIL_DELIVERED = "EMAIL_DELIVERED"
    EMAIL_FAILED = "EMAIL_FAILED"
    EMAIL_TEMP_FAILED = "EMAIL_TEMP_FAILED"
    EMAIL_COMPLAINED = "EMAIL_COMPLAINED"


class Severity(StrEnum):
    PERMANENT = "permanent"
    TEMPORARY = "temporary"


# Any status the invoicing API wrote that is not listed (SENT, QUEUED, ...) ranks 0.
_RANK = {EmailStatus.DELIVERED: 1, EmailStatus.FAILED: 2, EmailStatus.COMPLAINED: 3}

_STATUS_FOR_AUDIT = {
    AuditType.EMAIL_DELIVERED: EmailStatus.DELIVERED,
    AuditType.EMAIL_FAILED: EmailStatus.FAILED,
    AuditType.EMAIL_TEMP_FAILED: None,
    AuditType.EMAIL_COMPLAINED: EmailStatus.COMPLAINED,
}

# Event names of current JSON webhooks and of legacy form webhooks. `bounced` and
# `dropped` exist only in the legacy format; both mean Mailgun gave up for good.
_FIXED_AUDIT_TYPE = {
    "delivered": AuditType.EMAIL_DELIVERED,
    "complained": AuditType.EMAIL_COMPLAINED,
    "bounced": AuditType.EMAIL_FAILED,
    "dropped": AuditType.EMAIL_FAILED,
}

TRACKED_EVENTS = frozenset({*_FIXED_AUDIT_TYPE, "failed"})

# Suppressed sends (605 bounce list, 606 unsubscribe list, 607 complaint list)
# carry reasons such as `suppress-bounce`; they were never attempted.
_PERMANENT_REASON = re.compile(r"bounce|suppress-.*")


@dataclass(frozen=True)
class Classification:
    """Audit type and severity recorded for one tracked Mailgun event."""

    audit_type: AuditType
    severity: Severity | None
    severity_inferred: bool = False


def rank(status: str | None) -> int:
    """Return the position of `status` in the status order; unknown values rank lowest."""
    if status is None:
        return 0
    try:
        return _RANK.get(EmailStatus(status), 0)
    except ValueError:
        return 0


def classify(
    event: str,
    severity: str | None,
    reason: str | None,
    delivery_code: int | None,
) -> Classification | None:
    """Return how to record a Mailgun event, or None when its type is not tracked."""
    fixed = _FIXED_AUDIT_TYPE.get(event)
    if fixed is not None:
        legacy_failure = fixed is AuditType.EMAIL_FAILED
        return Classification(fixed, Severity.PERMANENT if legacy_failure else None)
    if event != "failed":
        return None

    if severity in (Severity.PERMANENT, Severity.TEMPORARY):
        known = Severity(severity)
        return Classification(_failure_audit_type(known), known)
    inferred = infer_severity(reason, delivery_code)
    return Classification(_failure_audit_type(inferred), inferred, severity_inferred=True)


def infer_severity(reason: str | None, delivery_code: int | None) -> Severity:
    """Classify a `failed` event that has no usable severity from its evidence.

    A bounce, a suppression, or an SMTP code of 500 or more is permanent.
    Anything else may still be retried by Mailgun, so it counts as temporary.
    """
    if reason is not None and _PERMANENT_REASON.fullmatch(reason):
        return Severity.PERMANENT
    if delivery_code is not None and delivery_code >= 500:
        return Severity.PERMANENT
    return Severity.TEMPORARY


def next_status(current: str | None, audit_type: AuditType) -> EmailStatus | None:
    """Return the status a row moves to, or None when it stays as it is."""
    target = _STATUS_FOR_AUDIT[audit_type]
    if target is None or rank(target) <= rank(current):
        return None
    return target


def _failure_audit_type(severity: Severity) -> AuditType:
    if severity is Severity.PERMANENT:
        return AuditType.EMAIL_FAILED
    return AuditType.EMAIL_TEMP_FAILED
