"""Index stored events by outcome and id instead of outcome and receipt time.

`events list --outcome` reads the newest events first, by id. With the old
index SQLite took every event of that outcome and sorted them, which took
over a second on a million events; this index returns them in id order.
The reconciler's query on unmatched events uses it as well.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_webhook_events_outcome_id", "webhook_events", ["outcome", "id"])
    op.drop_index("ix_webhook_events_outcome_received_at", table_name="webhook_events")


def downgrade() -> None:
    op.create_index(
        "ix_webhook_events_outcome_received_at", "webhook_events", ["outcome", "received_at"]
    )
    op.drop_index("ix_webhook_events_outcome_id", table_name="webhook_events")
