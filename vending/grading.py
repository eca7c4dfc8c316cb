"""Customer grading: ordinary or one to three stars, as utilities grade their customers.

A grade rewards large, reliable customers (priority service, relaxed disconnection
handling, larger emergency credit). It is decided by three facts about the last twelve
months: annual consumption, the supply voltage, and the payment record. Each grade has
its own thresholds; a customer gets the highest grade whose every threshold they meet.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import ClassVar


class GradingError(ValueError):
    code: ClassVar[str] = "grading_invalid"


class Grade(enum.IntEnum):
    ORDINARY = 0
    ONE_STAR = 1
    TWO_STAR = 2
    THREE_STAR = 3

    @property
    def label(self) -> str:
        return "ordinary" if self is Grade.ORDINARY else f"{int(self)}-star"


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    """The account's last twelve months of paying: late payments (or months ending in
    arrears) and disconnections for non-payment."""

    late_payments_12m: int = 0
    disconnections_12m: int = 0

    def __post_init__(self) -> None:
        if self.late_payments_12m < 0 or self.disconnections_12m < 0:
            raise GradingError("payment record counts must not be negative")


@dataclass(frozen=True, slots=True)
class GradeThreshold:
    """What a customer must reach for one grade."""

    min_annual_kwh: Decimal
    min_supply_voltage_v: int
    max_late_payments_12m: int
    max_disconnections_12m: int = 0


def _default_thresholds() -> Mapping[Grade, GradeThreshold]:
    return {
        Grade.ONE_STAR: GradeThreshold(Decimal(50_000), 230, 2, 1),
        Grade.TWO_STAR: GradeThreshold(Decimal(500_000), 400, 1, 0),
        Grade.THREE_STAR: GradeThreshold(Decimal(5_000_000), 11_000, 0, 0),
    }


@dataclass(frozen=True, slots=True)
class GradingPolicy:
    """Thresholds for the star grades; a higher grade must be at least as strict as the
    one below it on every criterion (GradingError otherwise)."""

    thresholds: Mapping[Grade, GradeThreshold] = field(default_factory=_default_thresholds)

    def __post_init__(self) -> None:
        if Grade.ORDINARY in self.thresholds:
            raise GradingError("ordinary is the grade without thresholds")
        object.__setattr__(self, "thresholds", MappingProxyType(dict(self.thresholds)))
        ranked = sorted(self.thresholds.items())
        for (low_grade, low), (high_grade, high) in itertools.pairwise(ranked):
            if (
                high.min_annual_kwh < low.min_annual_kwh
                or high.min_supply_voltage_v < low.min_supply_voltage_v
                or high.max_late_payments_12m > low.max_late_payments_12m
                or high.max_disconnections_12m > low.max_disconnections_12m
            ):
                raise GradingError(
                    f"{high_grade.label} thresholds are looser than {low_grade.label}'s"
                )
        for grade, t in ranked:
            if t.min_annual_kwh < 0 or t.min_supply_voltage_v < 0:
                raise GradingError(f"{grade.label} thresholds must not be negative")
            if t.max_late_payments_12m < 0 or t.max_disconnections_12m < 0:
                raise GradingError(f"{grade.label} thresholds must not be negative")


def grade_customer(
    annual_kwh: Decimal,
    supply_voltage_v: int,
    payments: PaymentRecord,
    policy: GradingPolicy | None = None,
) -> Grade:
    """The highest grade whose thresholds the customer meets (ORDINARY if none).

    `annual_kwh` is the last twelve months' consumption, `supply_voltage_v` the nominal
    supply voltage in volts (230, 400, 11 000...). Raises GradingError for negative or
    non-finite figures.
    """
    policy = policy or GradingPolicy()
    if not annual_kwh.is_finite() or annual_kwh < 0 or supply_voltage_v < 0:
        raise GradingError("annual_kwh and supply_voltage_v must be finite and >= 0")
    best = Grade.ORDINARY
    for grade, t in sorted(policy.thresholds.items()):
        if (
            annual_kwh >= t.min_annual_kwh
            and supply_voltage_v >= t.min_supply_voltage_v
            and payments.late_payments_12m <= t.max_late_payments_12m
            and payments.disconnections_12m <= t.max_disconnections_12m
        ):
            best = grade
    return best
