"""Create mgwebhook's tables, and the subject tables when mgwebhook manages them.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mgwebhook.db.schema import SUBJECT_TABLES

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)
Identifier = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    bind = op.get_bind()
    for subject in SUBJECT_TABLES.values():
        if subject.managed:
            subject.table.create(bind, checkfirst=True)

    op.create_table(
        "webhook_tokens",
        sa.Column("token", sa.Text, primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("signed_at", Timestamp, nullable=False),
        sa.Column("received_at", Timestamp, nullable=False),
    )
    op.create_index("ix_webhook_tokens_received_at", "webhook_tokens", ["received_at"])

    op.create_table(
        "webhook_events",
        sa.Column("id", Identifier, primary_key=True, autoincrement=True),
        sa.Column("received_at", Timestamp, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("payload_format", sa.String(8), nullable=False),
        sa.Column("raw_payload", sa.Text, nullable=False),
        sa.Column("event", sa.String(64)),
        sa.Column("mailgun_event_id", sa.Text),
        sa.Column("message_id", sa.Text),
        sa.Column("recipient", sa.Text),
        sa.Column("severity", sa.String(32)),
        sa.Column("reason", sa.Text),
        sa.Column("delivery_code", sa.Integer),
        sa.Column("occurred_at", Timestamp),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("processed_at", Timestamp),
    )
    op.create_index("ix_webhook_events_received_at", "webhook_events", ["received_at"])
    op.create_index(
        "ix_webhook_events_outcome_received_at", "webhook_events", ["outcome", "received_at"]
    )
    op.create_index("ix_webhook_events_message_id", "webhook_events", ["message_id"])

    op.create_table(
        "email_events",
        sa.Column("id", Identifier, primary_key=True, autoincrement=True),
        sa.Column("subject_type", sa.String(16), nullable=False),
        sa.Column("subject_id", sa.String(255), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("mailgun_event", sa.String(64), nullable=False),
        sa.Column("mailgun_event_id", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("occurred_at", Timestamp, nullable=False),
        sa.Column("recipient", sa.Text),
        sa.Column("severity", sa.String(32)),
        sa.Column("reason", sa.Text),
        sa.Column("delivery_code", sa.Integer),
        sa.Column("status_before", sa.String(32)),
        sa.Column("status_after", sa.String(32)),
        sa.Column("status_changed", sa.Boolean, nullable=False),
        sa.Column(
            "webhook_event_id", Identifier, sa.ForeignKey("webhook_events.id"), nullable=True
        ),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.UniqueConstraint(
            "subject_type", "subject_id", "mailgun_event_id", name="uq_email_events_subject_event"
        ),
    )
    op.create_index("ix_email_events_message_id", "email_events", ["message_id"])
    op.create_index("ix_email_events_webhook_event_id", "email_events", ["webhook_event_id"])


def downgrade() -> None:
    op.drop_table("email_events")
    op.drop_table("webhook_events")
    op.drop_table("webhook_tokens")
