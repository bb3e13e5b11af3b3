"""Realistic, signed Mailgun webhook payloads, shaped like Mailgun's documented samples.

Used by `mgwebhook send-test` and by the test suite to exercise the endpoint
without Mailgun.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from mgwebhook.signature import compute_signature

SAMPLE_DOMAIN = "mg.example.com"
SAMPLE_RECIPIENT = "alice@example.com"

_DELIVERY_STATUS = {
    "delivered": {"code": 250, "message": "OK", "description": "", "attempt-no": 1},
    ("failed", "permanent"): {
        "code": 550,
        "message": "5.1.1 The email account that you tried to reach does not exist.",
        "description": "",
        "attempt-no": 1,
    },
    ("failed", "temporary"): {
        "code": 452,
        "message": "4.2.2 The email account that you tried to reach is over quota.",
        "description": "",
        "attempt-no": 2,
        "retry-seconds": 600,
    },
}
_REASON = {"permanent": "bounce", "temporary": "generic"}


def signature_block(
    key: bytes, *, timestamp: int | str | None = None, token: str | None = None
) -> dict[str, str]:
    """Return a signature object signed with `key`; defaults are now and a fresh token."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = token if token is not None else secrets.token_hex(25)
    return {"timestamp": stamp, "token": token, "signature": compute_signature(key, stamp, token)}


def event_data(
    event: str,
    message_id: str,
    *,
    severity: str | None = None,
    recipient: str = SAMPLE_RECIPIENT,
    event_id: str | None = None,
    occurred_at: float | None = None,
) -> dict[str, Any]:
    """Return `event-data` for a delivered, failed, complained or opened event."""
    data: dict[str, Any] = {
        "id": event_id or secrets.token_urlsafe(16),
        "timestamp": time.time() if occurred_at is None else occurred_at,
        "log-level": "info",
        "event": event,
        "recipient": recipient,
        "recipient-domain": recipient.rpartition("@")[2],
        "tags": [],
        "user-variables": {},
        "flags": {"is-authenticated": True, "is-test-mode": False},
        "message": {
            "headers": {
                "to": recipient,
                "message-id": message_id.strip().strip("<>"),
                "from": f"Invoices <invoices@{SAMPLE_DOMAIN}>",
                "subject": "Your invoice",
            },
            "attachments": [],
            "size": 2048,
        },
    }
    if event == "delivered":
        data["delivery-status"] = dict(_DELIVERY_STATUS["delivered"])
    elif event == "failed":
        severity = severity or "permanent"
        data["log-level"] = "error" if severity == "permanent" else "warn"
        data["severity"] = severity
        data["reason"] = _REASON.get(severity, "generic")
        data["delivery-status"] = dict(_DELIVERY_STATUS[("failed", severity)])
    elif event == "complained":
        data["log-level"] = "warn"
    elif event == "opened":
        data["geolocation"] = {"country": "US", "region": "CA", "city": "San Francisco"}
        data["client-info"] = {"client-type": "browser", "client-name": "Firefox"}
        data["message"] = {"headers": {"message-id": message_id.strip().strip("<>")}}
    return data


def json_webhook(key: bytes, data: dict[str, Any], **signature: Any) -> dict[str, Any]:
    """Return a complete JSON webhook body for `data`, signed with `key`."""
    return {"signature": signature_block(key, **signature), "event-data": data}


def legacy_form(
    key: bytes, event: str, message_id: str, *, recipient: str = SAMPLE_RECIPIENT, **signature: Any
) -> dict[str, str]:
    """Return the fields of a legacy form webhook (delivered, bounced, dropped, ...)."""
    fields = {
        "event": event,
        "recipient": recipient,
        "domain": SAMPLE_DOMAIN,
        "Message-Id": f"<{message_id.strip().strip('<>')}>",
        "message-headers": "[]",
        **signature_block(key, **signature),
    }
    if event == "bounced":
        fields.update(code="550", error="5.1.1 The email account does not exist.")
    elif event == "dropped":
        fields.update(
            reason="hardfail", code="605", description="Not delivering to a bounced address"
        )
    return fields
