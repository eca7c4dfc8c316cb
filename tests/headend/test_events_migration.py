"""Migration 0018 gives events stored before it the severity they would get now."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from alembic import command
from sqlalchemy import Engine, text

from gridvend.db import alembic_config, upgrade

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_0018_classifies_the_events_already_stored(engine: Engine) -> None:
    command.downgrade(alembic_config(engine), "0017")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO meters (serial, comm_id, model, phases, protocol, prepaid_mode,"
                " lifecycle, created_at, location) VALUES ('M-1', 'M-1', '', 1, 'mqtt', 'token',"
                " 'installed', :now, '')"
            ),
            {"now": NOW},
        )
        meter_id = connection.execute(text("SELECT id FROM meters")).scalar_one()
        events = [
            ("cover_open", {}),
            ("relay_changed", {"closed": False, "reason": "tamper"}),
            ("relay_changed", {"closed": False, "reason": "remote"}),
            ("token_accepted", {"tid": 1}),
        ]
        for seq, (kind, detail) in enumerate(events):
            connection.execute(
                text(
                    "INSERT INTO meter_events (meter_id, seq, ts, kind, detail, received_at)"
                    " VALUES (:meter, :seq, :now, :kind, :detail, :now)"
                ),
                {
                    "meter": meter_id,
                    "seq": seq,
                    "now": NOW,
                    "kind": kind,
                    "detail": json.dumps(detail),
                },
            )
    upgrade(engine)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT severity, acknowledged_at, ack_note FROM meter_events ORDER BY seq")
        ).all()
    assert [tuple(r) for r in rows] == [
        ("critical", None, ""),
        ("major", None, ""),
        ("info", None, ""),
        ("info", None, ""),
    ]
