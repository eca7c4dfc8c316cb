"""notification delivery and weekly debt instalments

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 08:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        # Rows written before channels existed go to the recording/log adapter.
        batch_op.add_column(
            sa.Column("channel", sa.String(length=16), server_default="record", nullable=False)
        )
        batch_op.add_column(
            sa.Column("status", sa.String(length=16), server_default="pending", nullable=False)
        )
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_notifications_due", ["status", "next_attempt_at"], unique=False)
    op.execute("UPDATE notifications SET status = 'delivered' WHERE delivered_at IS NOT NULL")

    with op.batch_alter_table("central_account_states", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("debt_instalments_from", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("debt_weeks_booked", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("central_account_states", schema=None) as batch_op:
        batch_op.drop_column("debt_weeks_booked")
        batch_op.drop_column("debt_instalments_from")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_due")
        batch_op.drop_column("claimed_until")
        batch_op.drop_column("claimed_by")
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("status")
        batch_op.drop_column("channel")
