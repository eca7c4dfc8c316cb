from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vending.balance.alerts import thresholds_crossed
from vending.balance.policy import (
    AccountSituation,
    Action,
    DisconnectPolicy,
    decide,
    next_disconnect_window,
    protected_reason,
)

# Africa/Johannesburg is UTC+2 all year: local = UTC + 2 h.
POLICY = DisconnectPolicy(timezone="Africa/Johannesburg", holidays=frozenset({date(2026, 12, 16)}))
CONVERTED = datetime(2026, 1, 5, tzinfo=UTC)


def local(day: int, hour: int, minute: int = 0, month: int = 12) -> datetime:
    return datetime(2026, month, day, hour - 2, minute, tzinfo=UTC)


def situation(balance: int, exhausted_since: datetime | None, **kw: object) -> AccountSituation:
    values: dict[str, object] = {
        "balance_minor": balance,
        "exhausted_since": exhausted_since,
        "converted_at": CONVERTED,
        "protection": None,
        "supply_connected": True,
    }
    values.update(kw)
    return AccountSituation(**values)  # type: ignore[arg-type]


def test_an_exhausted_balance_is_disconnected_on_a_weekday_morning_after_the_grace() -> None:
    decision = decide(POLICY, situation(-10, local(14, 9)), local(14, 10, 30))
    assert decision.action is Action.DISCONNECT  # Monday 14 December, 10:30


def test_no_disconnection_inside_the_grace_period_after_exhaustion() -> None:
    decision = decide(POLICY, situation(0, local(14, 10)), local(14, 10, 30))
    assert decision.action is Action.DEFER
    assert decision.not_before == local(14, 11)


@pytest.mark.parametrize(
    ("now", "expected_next", "why"),
    [
        (local(14, 19), local(15, 8), "friendly hours"),  # Monday evening -> Tuesday 08:00
        (local(15, 7, 59), local(15, 8), "friendly hours"),
        (local(12, 11), local(14, 8), "weekend"),  # Saturday -> Monday 08:00
        (local(16, 11), local(17, 8), "public holiday"),  # Wednesday 16 Dec holiday
    ],
)
def test_protected_periods_defer_to_the_next_allowed_minute(
    now: datetime, expected_next: datetime, why: str
) -> None:
    decision = decide(POLICY, situation(-1, now - timedelta(days=1)), now)
    assert decision.action is Action.DEFER
    assert why in decision.reason
    assert decision.not_before == expected_next


def test_a_protected_customer_goes_on_the_operator_list_instead() -> None:
    decision = decide(
        POLICY, situation(-500, local(14, 9), protection="life_support"), local(14, 11)
    )
    assert decision.action is Action.OPERATOR_LIST
    assert "life_support" in decision.reason


def test_no_disconnection_within_the_grace_after_conversion_to_prepaid() -> None:
    converted = local(1, 9)
    decision = decide(POLICY, situation(-1, local(10, 9), converted_at=converted), local(14, 11))
    assert decision.action is Action.DEFER
    assert decision.not_before == converted + POLICY.grace_after_conversion


@pytest.mark.parametrize("now", [local(12, 3), local(14, 23), local(16, 12)])
def test_reconnection_is_never_held_back_by_protected_periods(now: datetime) -> None:
    decision = decide(POLICY, situation(5_000, None, supply_connected=False), now)
    assert decision.action is Action.RECONNECT


def test_reconnection_waits_for_the_reconnect_minimum() -> None:
    policy = DisconnectPolicy(timezone="Africa/Johannesburg", reconnect_minimum_minor=2_000)
    decision = decide(policy, situation(1_500, None, supply_connected=False), local(14, 11))
    assert decision.action is Action.NONE


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31)))
def test_the_next_window_is_never_protected_and_never_earlier(naive: datetime) -> None:
    at = naive.replace(tzinfo=UTC)
    window = next_disconnect_window(POLICY, at)
    assert window >= at
    assert protected_reason(POLICY, window) is None
    assert window - at < timedelta(days=5)


def test_friendly_hours_may_be_switched_off() -> None:
    policy = DisconnectPolicy(
        timezone="Africa/Johannesburg",
        friendly_from=time(0),
        friendly_until=time(0),
        no_disconnect_on_weekends=False,
    )
    assert protected_reason(policy, local(12, 23)) is None


def test_each_low_balance_threshold_is_announced_once_per_crossing() -> None:
    sent: set[Decimal] = set()
    assert thresholds_crossed(8_000, 10_000, sent) == []
    first = thresholds_crossed(2_500, 10_000, sent)
    assert first == [Decimal(30)]
    sent.update(first)
    assert thresholds_crossed(2_400, 10_000, sent) == []
    assert thresholds_crossed(0, 10_000, sent) == [Decimal(10), Decimal(0)]
