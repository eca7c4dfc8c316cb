"""meter event alarms: severity and acknowledgement

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 08:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# headend.events.SEVERITY_BY_KIND as it stood when this migration was written (migrations
# do not import code that may change after them). Kinds not listed are "info".
_SEVERITY_BY_KIND = {
    "power_down": "minor",
    "cover_open": "critical",
    "magnetic_tamper": "critical",
    "power_limit_exceeded": "minor",
}
_EXPECTED_OPENING_REASONS = {"remote", "credit_exhausted", "power_limit_exceeded"}

_events = sa.table(
    "meter_events",
    sa.column("id", sa.BigInteger()),
    sa.column("kind", sa.String()),
    sa.column("detail", sa.JSON()),
    sa.column("severity", sa.String()),
)


def upgrade() -> None:
    with op.batch_alter_table("meter_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("severity", sa.String(length=16), server_default="info", nullable=False)
        )
        batch_op.add_column(sa.Column("acknowledged_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("ack_note", sa.Text(), server_default="", nullable=False))
        batch_op.create_index(
            "ix_meter_events_severity", ["severity", "acknowledged_at"], unique=False
        )

    # Events stored before this migration get the severity they would get now.
    for kind, severity in _SEVERITY_BY_KIND.items():
        op.execute(_events.update().where(_events.c.kind == kind).values(severity=severity))
    connection = op.get_bind()
    relay_events = connection.execute(
        sa.select(_events.c.id, _events.c.detail).where(_events.c.kind == "relay_changed")
    ).all()
    unexpected = [
        event_id
        for event_id, detail in relay_events
        if isinstance(detail, dict)
        and detail.get("closed") is False
        and detail.get("reason") not in _EXPECTED_OPENING_REASONS
    ]
    for event_id in unexpected:
        connection.execute(
            _events.update().where(_events.c.id == event_id).values(severity="major")
        )


def downgrade() -> None:
    with op.batch_alter_table("meter_events", schema=None) as batch_op:
        batch_op.drop_index("ix_meter_events_severity")
        batch_op.drop_column("ack_note")
        batch_op.drop_column("acknowledged_at")
        batch_op.drop_column("acknowledged_by")
        batch_op.drop_column("severity")
