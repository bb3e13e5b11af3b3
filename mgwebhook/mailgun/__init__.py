"""Mailgun API access: the webhooks client and the pure planning of webhook changes."""

from mgwebhook.mailgun.client import (
    REGION_BASE_URLS,
    MailgunClient,
    RetryPolicy,
    base_url_for,
    read_api_key,
)
from mgwebhook.mailgun.sync import (
    HANDLED_WEBHOOK_IDS,
    MAX_URLS_PER_WEBHOOK,
    Action,
    WebhookChange,
    check_webhook_url,
    plan_register,
    plan_remove,
    unapplied_changes,
)

__all__ = [
    "HANDLED_WEBHOOK_IDS",
    "MAX_URLS_PER_WEBHOOK",
    "REGION_BASE_URLS",
    "Action",
    "MailgunClient",
    "RetryPolicy",
    "WebhookChange",
    "base_url_for",
    "check_webhook_url",
    "plan_register",
    "plan_remove",
    "read_api_key",
    "unapplied_changes",
]
