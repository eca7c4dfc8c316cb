"""Low-balance alerts: each threshold is announced once per crossing (pure)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from decimal import Decimal

DEFAULT_THRESHOLDS_PERCENT: tuple[Decimal, ...] = (Decimal(30), Decimal(10), Decimal(0))


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
