"""The engine's announcements reach the outbox once per channel, worded for the
customer, and the dispatcher delivers them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.vending.balance.test_engine import (
    MORNING,
    POLICY,
    Clock,
    Commands,
    _balance,
    _exhaust,
)
from tests.vending.world import VendingWorld, build_world, drn
from vending.balance.engine import BalanceEngine, EngineSettings
from vending.models import Notification
from vending.notifications import NotificationDispatcher, RecordingAdapter


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> VendingWorld:
    return build_world(session_factory)


def test_each_alert_is_written_once_per_channel_with_meter_and_balance(
    world: VendingWorld,
) -> None:
    account_id, _, stream = _exhaust(world, 41)
    clock = Clock(MORNING)
    engine = BalanceEngine(
        world.session_factory,
        source=stream,
        commands=Commands(),
        audit=world.audit,
        settings=EngineSettings(policy=POLICY, notification_channels=("record", "sms")),
        clock=clock,
    )
    engine.run_once()
    engine.run_once()  # nothing new: each crossing is announced once

    with world.session_factory() as session:
        rows = session.scalars(
            select(Notification)
            .where(Notification.account_id == account_id)
            .order_by(Notification.id)
        ).all()
    kinds = [(n.kind, n.channel) for n in rows]
    assert kinds == [
        (kind, channel)
        for kind in ("low_balance_30", "low_balance_10", "low_balance_0")
        for channel in ("record", "sms")
    ]
    balance = _balance(world, account_id)
    shown = f"{Decimal(balance).scaleb(-2):.2f} ZAR"
    first = rows[0].message
    assert first.startswith(f"Meter {drn(41)}: balance {shown}, at or below 30%")
    assert all(n.status == "pending" and n.attempts == 0 for n in rows)

    recorder = RecordingAdapter()
    report = NotificationDispatcher(
        world.session_factory, [recorder], worker_id="test", clock=clock
    ).run_once()
    assert [d.kind for d in recorder.delivered] == [
        "low_balance_30",
        "low_balance_10",
        "low_balance_0",
    ]
    assert len(report.delivered) == 3  # the SMS rows wait for an SMS adapter
