"""Supervisors see an account's customer notifications and their delivery state."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.vending.counter_world import World, make_world
from vending.models import Account, Notification

WRITTEN = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> Iterator[World]:
    yield from make_world(session_factory)


def _add(world: World, **state: object) -> None:
    with world.session_factory() as session, session.begin():
        account = session.scalar(
            select(Account).where(Account.account_number == world.account_number)
        )
        assert account is not None
        session.add(
            Notification(
                account_id=account.id,
                kind="low_balance_30",
                channel="sms",
                message="Meter 1: balance 9.00 ZAR, at or below 30% of your last top-up.",
                created_at=WRITTEN,
                **{"status": "pending", "attempts": 0, **state},
            )
        )


def test_notifications_are_listed_newest_first_with_their_delivery_state(world: World) -> None:
    _add(world, status="delivered", attempts=1, delivered_at=WRITTEN + timedelta(seconds=2))
    _add(
        world,
        status="pending",
        attempts=2,
        last_error="sms receiver answered 503: busy",
        next_attempt_at=WRITTEN + timedelta(minutes=1),
    )
    listed = world.get(f"/accounts/{world.account_number}/notifications", "supervisor").json()
    assert [(n["status"], n["attempts"]) for n in listed] == [("pending", 2), ("delivered", 1)]
    assert listed[0]["last_error"] == "sms receiver answered 503: busy"
    assert listed[0]["next_attempt_at"] == (WRITTEN + timedelta(minutes=1)).isoformat()
    assert listed[1]["channel"] == "sms"

    failed_only = world.get(
        f"/accounts/{world.account_number}/notifications",
        "supervisor",
        params={"status": "failed"},
    ).json()
    assert failed_only == []


def test_clerks_may_not_list_notifications_and_bad_filters_are_refused(world: World) -> None:
    path = f"/accounts/{world.account_number}/notifications"
    assert world.get(path, "clerk").status_code == 403
    bad = world.get(path, "supervisor", params={"status": "lost"})
    assert bad.status_code == 422
    assert bad.json()["detail"]["code"] == "invalid_request"
    missing = world.get("/accounts/NOPE/notifications", "supervisor")
    assert missing.status_code == 404
    assert missing.json()["detail"]["code"] == "account_not_found"
