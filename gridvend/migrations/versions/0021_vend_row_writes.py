"""vends: receipt numbers counted per vending point, the reversal state on the vend's row

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03 15:40:00

A counter vend takes its receipt number from its vending point's counter, in the same
statement that adds the cash. Numbers made before came from the vend's id: every point's
counter starts above the highest vend id, so no new number repeats an old one.

The account's state before a counter vend (what a reversal puts back) moves from the
vend_account_snapshots table onto the vend's own row, written with it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("vending_points", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("receipts_issued", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.execute(
        "UPDATE vending_points SET receipts_issued = (SELECT coalesce(max(id), 0) FROM vends)"
    )
    with op.batch_alter_table("vends", schema=None) as batch_op:
        batch_op.add_column(sa.Column("account_before", sa.JSON(), nullable=True))
    op.execute(
        "UPDATE vends SET account_before = (SELECT s.state FROM vend_account_snapshots s"
        " WHERE s.vend_id = vends.id)"
    )
    op.drop_table("vend_account_snapshots")


def downgrade() -> None:
    op.create_table(
        "vend_account_snapshots",
        sa.Column("vend_id", _ID, autoincrement=False, nullable=False),
        sa.Column("account_id", _ID, nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_vend_account_snapshots_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["vend_id"], ["vends.id"], name=op.f("fk_vend_account_snapshots_vend_id_vends")
        ),
        sa.PrimaryKeyConstraint("vend_id", name=op.f("pk_vend_account_snapshots")),
    )
    op.execute(
        "INSERT INTO vend_account_snapshots (vend_id, account_id, state)"
        " SELECT id, account_id, account_before FROM vends WHERE account_before IS NOT NULL"
    )
    with op.batch_alter_table("vends", schema=None) as batch_op:
        batch_op.drop_column("account_before")
    with op.batch_alter_table("vending_points", schema=None) as batch_op:
        batch_op.drop_column("receipts_issued")
