"""balance engine: per-account payment cursor, command errors on decisions

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 08:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("central_account_states") as batch:
        batch.add_column(
            sa.Column("payments_taken_through", sa.BigInteger(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("balance_decisions") as batch:
        batch.add_column(sa.Column("command_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("balance_decisions") as batch:
        batch.drop_column("command_error")
    with op.batch_alter_table("central_account_states") as batch:
        batch.drop_column("payments_taken_through")
