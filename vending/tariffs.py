"""Tariff definitions: typed, immutable, validated on construction, versioned by date.

A `Tariff` is a named sequence of `TariffVersion`s, each in force from its local
`effective_from` date (local midnight in the tariff's time zone) until the next one. A
version prices energy one way (`FlatRate`, `SteppedBlocks` or `TimeOfUse`) and may add
fixed monthly charges, a capacity charge per contracted kVA, a demand charge per kW of the
month's maximum demand, free basic units per month,
levies and VAT. Every figure is a `Decimal` in the currency's major unit and excludes
VAT, the way regulators publish tariffs. The JSON form lives in `tariff_documents`.

Construction raises a specific `TariffError` subclass for every inconsistency, so an
invalid tariff can never reach pricing or rating.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from types import MappingProxyType
from typing import ClassVar
from zoneinfo import ZoneInfo

from vending import localtime
from vending.money import Currency


class TariffError(ValueError):
    """Base of tariff validation errors; `code` is the stable machine-readable reason."""

    code: ClassVar[str] = "tariff_invalid"


class NegativeRate(TariffError):
    code = "negative_rate"


class NonIncreasingBlocks(TariffError):
    code = "non_increasing_block_thresholds"


class UnboundedLastBlock(TariffError):
    code = "last_block_must_be_unbounded"


class NoChargeableRate(TariffError):
    code = "no_chargeable_rate"


class OverlappingBands(TariffError):
    code = "overlapping_bands"


class GapInDay(TariffError):
    code = "gap_in_day"


class InvalidPeriodTime(TariffError):
    code = "invalid_period_time"


class UnknownBand(TariffError):
    code = "unknown_band"


class DayTypeCoverage(TariffError):
    code = "day_type_coverage"


class SeasonCoverage(TariffError):
    code = "season_coverage"


class InvalidPercentage(TariffError):
    code = "invalid_percentage"


class DuplicateName(TariffError):
    code = "duplicate_name"


class VersionOrder(TariffError):
    code = "version_order"


class NoTariffInForce(TariffError):
    """Asked for a price at an instant before the tariff's first version."""

    code = "no_tariff_in_force"


class MissingCapacity(TariffError):
    """The tariff has a capacity charge but the account has no contracted kVA."""

    code = "missing_capacity"


def _non_negative(value: Decimal, what: str) -> None:
    if not value.is_finite() or value < 0:
        raise NegativeRate(f"{what} must be a finite amount >= 0, got {value}")


def _percentage(value: Decimal, what: str) -> None:
    if not value.is_finite() or not Decimal(0) <= value <= Decimal(100):
        raise InvalidPercentage(f"{what} must be within 0..100, got {value}")


# Energy charges -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FlatRate:
    """One price per kWh, at any time and any monthly consumption."""

    rate_per_kwh: Decimal

    def __post_init__(self) -> None:
        _non_negative(self.rate_per_kwh, "rate_per_kwh")
        if self.rate_per_kwh == 0:
            raise NoChargeableRate("a flat rate of 0 would sell unlimited energy")


@dataclass(frozen=True, slots=True)
class Block:
    """Consumption in the calendar month up to `up_to_kwh` (None: without limit) costs
    `rate_per_kwh`; a block starts where the previous one ends."""

    up_to_kwh: Decimal | None
    rate_per_kwh: Decimal


@dataclass(frozen=True, slots=True)
class SteppedBlocks:
    """Inclining (or declining) blocks on the month's cumulative kWh, reset on the 1st."""

    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        if not self.blocks:
            raise NoChargeableRate("stepped blocks need at least one block")
        previous = Decimal(0)
        for i, block in enumerate(self.blocks):
            _non_negative(block.rate_per_kwh, f"block {i + 1} rate_per_kwh")
            last = i == len(self.blocks) - 1
            if block.up_to_kwh is None:
                if not last:
                    raise UnboundedLastBlock(f"block {i + 1} has no limit but is not the last")
                continue
            if last:
                raise UnboundedLastBlock("the last block must have no upper limit (up_to_kwh null)")
            if not block.up_to_kwh.is_finite() or block.up_to_kwh <= previous:
                raise NonIncreasingBlocks(
                    f"block {i + 1} threshold {block.up_to_kwh} kWh must exceed {previous} kWh"
                )
            previous = block.up_to_kwh
        if self.blocks[-1].rate_per_kwh == 0:
            raise NoChargeableRate("the last block's rate of 0 would sell unlimited energy")

    def starts(self) -> tuple[Decimal, ...]:
        """The month-to-date kWh at which each block starts."""
        return (
            Decimal(0),
            *tuple(b.up_to_kwh for b in self.blocks[:-1] if b.up_to_kwh is not None),
        )


class DayType(enum.StrEnum):
    WEEKDAY = "weekday"
    SATURDAY = "saturday"
    SUNDAY = "sunday"

    @classmethod
    def of(cls, day: date, holidays: frozenset[date]) -> DayType:
        """Public holidays are priced as Sundays, as time-of-use tariffs usually state."""
        if day in holidays or day.weekday() == 6:
            return cls.SUNDAY
        return cls.SATURDAY if day.weekday() == 5 else cls.WEEKDAY


@dataclass(frozen=True, slots=True)
class Period:
    """Wall-clock time [start, end) in `band`; `end` None means midnight at the day's end."""

    start: time
    end: time | None
    band: str


@dataclass(frozen=True, slots=True)
class DaySchedule:
    """The bands of a whole local day for the listed day types."""

    day_types: frozenset[DayType]
    periods: tuple[Period, ...]

    def __post_init__(self) -> None:
        if not self.day_types:
            raise DayTypeCoverage("a day schedule must name at least one day type")
        if not self.periods:
            raise GapInDay("a day schedule needs periods covering 00:00-24:00")
        ordered = sorted(self.periods, key=lambda p: p.start)
        cursor = time(0)
        for p in ordered:
            for t in (p.start, p.end):
                if t is not None and (t.tzinfo is not None or t.second or t.microsecond):
                    raise InvalidPeriodTime(
                        f"period times are whole minutes of local wall-clock time, got {t}"
                    )
            if p.end is not None and p.end <= p.start:
                raise OverlappingBands(
                    f"period {p.start:%H:%M}-{p.end:%H:%M} ends before it starts "
                    "(split periods that cross midnight in two)"
                )
            if p.start < cursor:
                raise OverlappingBands(f"period starting {p.start:%H:%M} overlaps the previous one")
            if p.start > cursor:
                raise GapInDay(f"no band between {cursor:%H:%M} and {p.start:%H:%M}")
            if p.end is None:
                if p is not ordered[-1]:
                    raise OverlappingBands("only the last period of a day may run to 24:00")
                cursor = time(0)
                break
            cursor = p.end
        else:
            raise GapInDay(f"no band between {cursor:%H:%M} and 24:00")
        object.__setattr__(self, "periods", tuple(ordered))

    def boundaries(self) -> tuple[time, ...]:
        return tuple(p.start for p in self.periods if p.start != time(0))

    def band_at(self, wall: time) -> str:
        band = self.periods[0].band
        for p in self.periods:
            if p.start <= wall:
                band = p.band
        return band


@dataclass(frozen=True, slots=True)
class Season:
    """Months (1-12) sharing one set of day schedules, e.g. a high-demand winter."""

    name: str
    months: frozenset[int]
    days: tuple[DaySchedule, ...]

    def __post_init__(self) -> None:
        if not self.months or not self.months <= frozenset(range(1, 13)):
            raise SeasonCoverage(f"season {self.name!r} months must be within 1..12")
        seen: set[DayType] = set()
        for schedule in self.days:
            if seen & schedule.day_types:
                raise DayTypeCoverage(
                    f"season {self.name!r} defines {sorted(seen & schedule.day_types)} twice"
                )
            seen |= schedule.day_types
        if seen != set(DayType):
            missing = sorted(set(DayType) - seen)
            raise DayTypeCoverage(f"season {self.name!r} has no schedule for {missing}")

    def schedule_for(self, day_type: DayType) -> DaySchedule:
        return next(s for s in self.days if day_type in s.day_types)


@dataclass(frozen=True, slots=True)
class TimeOfUse:
    """Rates per band; which band applies depends on season, day type and wall time.

    Consumption of a central-balance meter is rated in the band it was used in. A token
    meter cannot apply bands, so a vend of units is priced at `token_band` when the
    utility names one (e.g. "standard"), otherwise at the band in force at the moment of
    purchase.
    """

    band_rates: Mapping[str, Decimal]
    seasons: tuple[Season, ...]
    holidays: frozenset[date] = frozenset()
    token_band: str | None = None

    def __post_init__(self) -> None:
        if not self.band_rates:
            raise UnknownBand("time-of-use needs at least one band rate")
        for band, rate in self.band_rates.items():
            _non_negative(rate, f"band {band!r} rate_per_kwh")
        object.__setattr__(self, "band_rates", MappingProxyType(dict(self.band_rates)))
        names = [s.name for s in self.seasons]
        if len(set(names)) != len(names):
            raise DuplicateName(f"season names repeat: {names}")
        covered: list[int] = sorted(m for s in self.seasons for m in s.months)
        if covered != list(range(1, 13)):
            raise SeasonCoverage(
                f"seasons must cover every month exactly once, got months {covered}"
            )
        for season in self.seasons:
            for schedule in season.days:
                for p in schedule.periods:
                    if p.band not in self.band_rates:
                        raise UnknownBand(f"season {season.name!r} uses unpriced band {p.band!r}")
        if self.token_band is not None:
            if self.token_band not in self.band_rates:
                raise UnknownBand(f"token_band {self.token_band!r} has no rate")
            if self.band_rates[self.token_band] == 0:
                raise NoChargeableRate(f"token_band {self.token_band!r} is free")

    def __hash__(self) -> int:
        return hash(
            (tuple(sorted(self.band_rates.items())), self.seasons, self.holidays, self.token_band)
        )

    def vend_band(self, wall: datetime) -> str:
        """The band a token vend at local wall-clock reading `wall` is priced at."""
        return self.token_band if self.token_band is not None else self.band_at(wall)

    def schedule_for(self, day: date) -> DaySchedule:
        season = next(s for s in self.seasons if day.month in s.months)
        return season.schedule_for(DayType.of(day, self.holidays))

    def band_at(self, wall: datetime) -> str:
        """The band in force at local wall-clock reading `wall`."""
        return self.schedule_for(wall.date()).band_at(wall.time())


EnergyCharge = FlatRate | SteppedBlocks | TimeOfUse


# Fixed charges, levies and the version --------------------------------------------------
class FixedChargeMode(enum.StrEnum):
    """How a token vend collects a monthly charge (rating always accrues it daily)."""

    # Every day since the last charged day carries 1/(days in its month) of the charge.
    PRO_RATA = "pro_rata"
    # The whole month's charge on the month's first purchase; months without a
    # purchase are not charged.
    FIRST_PURCHASE_OF_MONTH = "first_purchase_of_month"


@dataclass(frozen=True, slots=True)
class FixedCharge:
    """A monthly charge, e.g. a service or network charge, in major units before VAT."""

    name: str
    amount_per_month: Decimal

    def __post_init__(self) -> None:
        _non_negative(self.amount_per_month, f"fixed charge {self.name!r}")


@dataclass(frozen=True, slots=True)
class CapacityCharge:
    """Two-part tariffs: a monthly charge per kVA of the account's contracted capacity."""

    rate_per_kva_month: Decimal

    def __post_init__(self) -> None:
        _non_negative(self.rate_per_kva_month, "capacity rate_per_kva_month")


@dataclass(frozen=True, slots=True)
class DemandCharge:
    """Two-part tariffs with metered demand: a monthly charge per kW of the month's
    maximum demand. It is known only after the month, so it is billed by
    `rating.rate_demand`, never at a token vend."""

    rate_per_kw_month: Decimal

    def __post_init__(self) -> None:
        _non_negative(self.rate_per_kw_month, "demand rate_per_kw_month")


@dataclass(frozen=True, slots=True)
class Levy:
    """A levy on energy: an amount per chargeable kWh and/or a percentage of the energy
    amount. `taxable` levies are part of the VAT base."""

    name: str
    per_kwh: Decimal = Decimal(0)
    percent_of_energy: Decimal = Decimal(0)
    taxable: bool = True

    def __post_init__(self) -> None:
        _non_negative(self.per_kwh, f"levy {self.name!r} per_kwh")
        _percentage(self.percent_of_energy, f"levy {self.name!r} percent_of_energy")


@dataclass(frozen=True, slots=True)
class AccountTerms:
    """What an account brings to its tariff: contracted capacity for two-part tariffs,
    and whether it receives the tariff's free basic units (e.g. registered indigent)."""

    capacity_kva: Decimal | None = None
    free_units_eligible: bool = True

    def __post_init__(self) -> None:
        if self.capacity_kva is not None:
            _non_negative(self.capacity_kva, "capacity_kva")


@dataclass(frozen=True, slots=True)
class TariffVersion:
    """The tariff's terms from local midnight of `effective_from` until the next version."""

    effective_from: date
    energy: EnergyCharge
    fixed_charges: tuple[FixedCharge, ...] = ()
    fixed_charge_mode: FixedChargeMode = FixedChargeMode.PRO_RATA
    capacity: CapacityCharge | None = None
    free_units_kwh_per_month: Decimal = Decimal(0)
    levies: tuple[Levy, ...] = ()
    vat_percent: Decimal = Decimal(0)
    demand: DemandCharge | None = None

    def __post_init__(self) -> None:
        _non_negative(self.free_units_kwh_per_month, "free_units_kwh_per_month")
        _percentage(self.vat_percent, "vat_percent")
        for what, names in (
            ("fixed charge", [f.name for f in self.fixed_charges]),
            ("levy", [levy.name for levy in self.levies]),
        ):
            if len(set(names)) != len(names):
                raise DuplicateName(f"{what} names repeat: {names}")


@dataclass(frozen=True, slots=True)
class Tariff:
    """A named tariff in one currency and time zone, with versions in date order."""

    code: str
    name: str
    currency: Currency
    timezone: str
    versions: tuple[TariffVersion, ...]
    tz: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.code:
            raise TariffError("a tariff needs a code")
        object.__setattr__(self, "tz", localtime.zone(self.timezone))
        if not self.versions:
            raise VersionOrder("a tariff needs at least one version")
        dates = [v.effective_from for v in self.versions]
        if any(a >= b for a, b in itertools.pairwise(dates)):
            raise VersionOrder(f"versions must have strictly increasing effective dates: {dates}")

    def version_on(self, day: date) -> TariffVersion:
        """The version in force on local date `day`; NoTariffInForce before the first."""
        current: TariffVersion | None = None
        for v in self.versions:
            if v.effective_from <= day:
                current = v
        if current is None:
            raise NoTariffInForce(
                f"tariff {self.code!r} has no version in force on {day.isoformat()} "
                f"(first effective {self.versions[0].effective_from.isoformat()})"
            )
        return current

    def version_at(self, instant: datetime) -> TariffVersion:
        """The version in force at aware `instant` (NaiveDatetime, NoTariffInForce)."""
        return self.version_on(localtime.local_date(instant, self.tz))
