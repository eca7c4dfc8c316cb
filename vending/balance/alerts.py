"""Low-balance alerts: each threshold is announced once per crossing (pure)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import timedelta
from decimal import Decimal

DEFAULT_THRESHOLDS_PERCENT: tuple[Decimal, ...] = (Decimal(30), Decimal(10), Decimal(0))
SECONDS_PER_DAY = Decimal(86_400)


def thresholds_crossed(
    balance_minor: int,
    last_top_up_minor: int,
    already_sent: Collection[Decimal],
    thresholds_percent: Sequence[Decimal] = DEFAULT_THRESHOLDS_PERCENT,
) -> list[Decimal]:
    """Thresholds (percent of the last top-up) the balance is now at or below and that
    have not been announced since that top-up, highest first.

    A zero threshold fires when the balance is exhausted (at or below zero).
    """
    if last_top_up_minor <= 0:
        return []
    crossed = []
    for percent in sorted(thresholds_percent, reverse=True):
        if percent in already_sent:
            continue
        limit = Decimal(last_top_up_minor) * percent / 100
        if Decimal(balance_minor) <= limit:
            crossed.append(percent)
    return crossed


def days_left(balance_minor: int, spent_minor: int, over: timedelta) -> Decimal | None:
    """Days the balance lasts at the rate ``spent_minor`` was used during ``over``, or None
    when nothing was spent (no estimate). An exhausted balance has zero days left.

    Raises:
        ValueError: ``over`` is not positive.
    """
    if over <= timedelta(0):
        raise ValueError("over must be positive")
    if spent_minor <= 0:
        return None
    if balance_minor <= 0:
        return Decimal(0)
    over_days = Decimal(over.total_seconds()) / SECONDS_PER_DAY
    return Decimal(balance_minor) * over_days / spent_minor


def days_left_crossed(
    estimate: Decimal | None, already_sent: Collection[int], thresholds_days: Sequence[int]
) -> list[int]:
    """Day thresholds the estimate is now at or below and not yet announced since the last
    top-up, highest first (the same once-per-crossing rule as the percentages)."""
    if estimate is None:
        return []
    return [
        days
        for days in sorted(thresholds_days, reverse=True)
        if days not in already_sent and estimate <= days
    ]
