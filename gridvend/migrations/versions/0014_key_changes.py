"""key changes as a vending workflow

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 08:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "key_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("meter_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("from_supply_group_code", sa.String(length=6), nullable=False),
        sa.Column("from_tariff_index", sa.String(length=2), nullable=False),
        sa.Column("from_key_revision", sa.Integer(), nullable=False),
        sa.Column("from_base_date", sa.Integer(), nullable=False),
        sa.Column("to_supply_group_code", sa.String(length=6), nullable=False),
        sa.Column("to_tariff_index", sa.String(length=2), nullable=False),
        sa.Column("to_key_revision", sa.Integer(), nullable=False),
        sa.Column("to_base_date", sa.Integer(), nullable=False),
        sa.Column("to_key_expiry_number", sa.Integer(), nullable=False),
        sa.Column("rollover", sa.Boolean(), nullable=False),
        sa.Column("tokens", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_by", sa.String(length=64), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_vend_channel", sa.String(length=32), nullable=True),
        sa.Column("completed_vend_reference", sa.String(length=64), nullable=True),
        sa.Column("cancelled_by", sa.String(length=64), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_changes")),
    )
    with op.batch_alter_table("key_changes", schema=None) as batch_op:
        batch_op.create_index(
            "uq_key_changes_one_pending_per_meter",
            ["meter_id"],
            unique=True,
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("key_changes", schema=None) as batch_op:
        batch_op.drop_index("uq_key_changes_one_pending_per_meter")
    op.drop_table("key_changes")
