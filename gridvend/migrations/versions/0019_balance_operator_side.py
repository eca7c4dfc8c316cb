"""balance engine operator side: held consumption resolution, operator reviews

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03 08:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("held_consumption", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resolved_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("resolution_note", sa.Text(), nullable=True))
    op.create_table(
        "balance_operator_reviews",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "decision_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_balance_operator_reviews_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["decision_id"],
            ["balance_decisions.id"],
            name=op.f("fk_balance_operator_reviews_decision_id_balance_decisions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_balance_operator_reviews")),
    )
    with op.batch_alter_table("balance_operator_reviews", schema=None) as batch_op:
        batch_op.create_index(
            "ix_balance_operator_reviews_decision", ["decision_id", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("balance_operator_reviews", schema=None) as batch_op:
        batch_op.drop_index("ix_balance_operator_reviews_decision")
    op.drop_table("balance_operator_reviews")
    with op.batch_alter_table("held_consumption", schema=None) as batch_op:
        batch_op.drop_column("resolution_note")
        batch_op.drop_column("resolved_by")
