"""Store Mailgun's event name, severity and the statuses as unbounded text.

Mailgun sends these values; a longer one than the old column length made
PostgreSQL reject the whole transaction, so Mailgun retried it for hours.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_WIDENED = {
    "webhook_events": [("event", sa.String(64)), ("severity", sa.String(32))],
    "email_events": [
        ("mailgun_event", sa.String(64)),
        ("severity", sa.String(32)),
        ("status_before", sa.String(32)),
        ("status_after", sa.String(32)),
    ],
}


def upgrade() -> None:
    for table, columns in _WIDENED.items():
        with op.batch_alter_table(table) as batch:
            for name, old_type in columns:
                batch.alter_column(name, type_=sa.Text(), existing_type=old_type)


def downgrade() -> None:
    for table, columns in _WIDENED.items():
        with op.batch_alter_table(table) as batch:
            for name, old_type in columns:
                batch.alter_column(name, type_=old_type, existing_type=sa.Text())
