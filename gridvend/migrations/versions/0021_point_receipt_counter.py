"""vending points: a running count of the receipts each has issued

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03 15:40:00

A counter vend takes its receipt number from its vending point's counter, in the same
statement that adds the cash. Numbers made before came from the vend's id: every point's
counter starts above the highest vend id, so no new number repeats an old one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vending_points", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("receipts_issued", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.execute(
        "UPDATE vending_points SET receipts_issued = (SELECT coalesce(max(id), 0) FROM vends)"
    )


def downgrade() -> None:
    with op.batch_alter_table("vending_points", schema=None) as batch_op:
        batch_op.drop_column("receipts_issued")
