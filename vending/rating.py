"""Rating one interval of a central-balance meter's consumption into money.

The head-end reports "E kWh were used between t1 and t2". Rating assumes the energy
flowed evenly over the interval, cuts the interval wherever the price can change (local
midnight, time-of-use period starts, daylight-saving jumps, a new tariff version or a new
month), gives each piece its share of E and of the monthly fixed charges, and prices all
pieces together with `charging.compute_charges` -- the same lines and rounding a token vend
uses. Because each line is rounded once per call, rating an interval in pieces gives the
same exact total as rating it whole, and a rounded total that differs by no more than the
pieces' `rounding_bound`s.

Fixed and capacity charges accrue by local calendar day: each day carries 1/(days in its
month) of the monthly amount, spread over the day in proportion to elapsed time (so a
23-hour daylight-saving day still carries a full day's share).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import ClassVar

from vending import localtime
from vending.charging import Accrual, Charges, Usage, compute_charges
from vending.money import Money, exact
from vending.tariffs import AccountTerms, Tariff, TimeOfUse

_US = timedelta(microseconds=1)


class RatingError(ValueError):
    code: ClassVar[str] = "rating_error"


class NegativeConsumption(RatingError):
    code = "negative_consumption"


class EmptyInterval(RatingError):
    code = "empty_interval"


@dataclass(frozen=True, slots=True)
class IntervalCharge:
    """The priced interval [start, end) (UTC).

    `month_to_date_kwh_after` is the consumption of the local month containing `end`
    up to `end`: pass it as the next interval's `month_to_date_kwh`.
    """

    start: datetime
    end: datetime
    energy_kwh: Fraction
    charges: Charges
    month_to_date_kwh_after: Fraction

    @property
    def total(self) -> Money:
        return self.charges.total


def rate_interval(
    tariff: Tariff,
    start: datetime,
    end: datetime,
    energy_kwh: Decimal | Fraction,
    month_to_date_kwh: Decimal | Fraction,
    terms: AccountTerms | None = None,
    *,
    include_fixed: bool = True,
) -> IntervalCharge:
    """Price `energy_kwh` used evenly over [start, end) by an account on `tariff`.

    `month_to_date_kwh` is the account's consumption in the local calendar month
    containing `start`, before `start` (it places the energy on the stepped blocks and
    the free units). `include_fixed=False` leaves out the daily share of fixed and
    capacity charges (for an engine that posts them once a day by rating an empty
    interval over the day). All amounts are in the tariff's currency, VAT included.

    Raises NaiveDatetime, EmptyInterval (end <= start), NegativeConsumption (negative or
    non-finite energy or month-to-date), NoTariffInForce (part of the interval precedes
    the tariff's first version) and MissingCapacity.
    """
    terms = terms or AccountTerms()
    t1 = localtime.require_aware(start, "start")
    t2 = localtime.require_aware(end, "end")
    if t2 <= t1:
        raise EmptyInterval(f"interval end {t2.isoformat()} is not after start {t1.isoformat()}")
    energy = _non_negative(energy_kwh, "energy_kwh")
    position = _non_negative(month_to_date_kwh, "month_to_date_kwh")
    tz = tariff.tz

    def boundaries(day: date) -> tuple[time, ...]:
        energy_charge = tariff.version_on(day).energy
        if isinstance(energy_charge, TimeOfUse):
            return energy_charge.schedule_for(day).boundaries()
        return ()

    total_us = (t2 - t1) // _US
    usages: list[Usage] = []
    accruals: list[Accrual] = []
    month = _month_of(localtime.local_date(t1, tz))
    day_lengths: dict[date, int] = {}
    for seg in localtime.wall_segments(t1, t2, tz, boundaries):
        day = seg.wall_start.date()
        if _month_of(day) != month:
            month, position = _month_of(day), Fraction(0)
        version = tariff.version_on(day)
        seg_us = seg.duration // _US
        kwh = energy * seg_us / total_us
        band = (
            version.energy.band_at(seg.wall_start)
            if isinstance(version.energy, TimeOfUse)
            else None
        )
        usages.append(Usage(version, position, kwh, band, terms.free_units_eligible))
        position += kwh
        if include_fixed and (version.fixed_charges or version.capacity is not None):
            if day not in day_lengths:
                day_lengths[day] = localtime.day_length(day, tz) // _US
            share = Fraction(seg_us, day_lengths[day] * localtime.days_in_month(day))
            accruals.append(Accrual(version, share, terms.capacity_kva))
    if _month_of(localtime.local_date(t2, tz)) != month:
        position = Fraction(0)
    charges = compute_charges(tariff.currency, usages, accruals)
    return IntervalCharge(t1, t2, energy, charges, position)


def _month_of(day: date) -> tuple[int, int]:
    return day.year, day.month


def _non_negative(value: Decimal | Fraction, what: str) -> Fraction:
    if isinstance(value, Decimal) and not value.is_finite():
        raise NegativeConsumption(f"{what} must be a finite number of kWh, got {value}")
    result = exact(value)
    if result < 0:
        raise NegativeConsumption(f"{what} must not be negative, got {value}")
    return result
