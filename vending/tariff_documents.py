"""The JSON form of tariffs: pydantic documents <-> the internal `tariffs` types.

A tariff is stored as one JSON document per version (a `TariffVersionDocument`, e.g. a
row of a `tariff_versions` table keyed by tariff code and effective date) or as a whole
`TariffDocument`. Amounts are decimal strings in major units, times are "HH:MM" wall
clock ("24:00" ends a day), dates ISO 8601. `to_tariff()` / `to_version()` check the
document's shape with pydantic, then build the internal types, whose constructors raise
the specific `TariffError`s (overlapping bands, gaps, non-increasing blocks...).
"""

from __future__ import annotations

from datetime import date, time
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vending.money import Currency
from vending.tariffs import (
    Block,
    CapacityCharge,
    DaySchedule,
    DayType,
    DemandCharge,
    EnergyCharge,
    FixedCharge,
    FixedChargeMode,
    FlatRate,
    Levy,
    Period,
    Season,
    SteppedBlocks,
    Tariff,
    TariffVersion,
    TimeOfUse,
)


class _Document(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# Finite decimals only: NaN and infinity are not prices.
Amount = Annotated[Decimal, Field(allow_inf_nan=False)]


class FlatRateDocument(_Document):
    # No default: a dump with exclude_defaults must keep the discriminator.
    kind: Literal["flat"]
    rate_per_kwh: Amount


class BlockDocument(_Document):
    up_to_kwh: Amount | None
    rate_per_kwh: Amount


class SteppedBlocksDocument(_Document):
    kind: Literal["blocks"]
    blocks: list[BlockDocument]


class PeriodDocument(_Document):
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["07:00"])
    end: str = Field(pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$", examples=["10:00", "24:00"])
    band: str


class DayScheduleDocument(_Document):
    day_types: list[DayType] = Field(min_length=1)
    periods: list[PeriodDocument]


class SeasonDocument(_Document):
    name: str
    months: list[Annotated[int, Field(ge=1, le=12)]] = Field(min_length=1)
    days: list[DayScheduleDocument]


class TimeOfUseDocument(_Document):
    kind: Literal["time_of_use"]
    band_rates: dict[str, Amount]
    seasons: list[SeasonDocument]
    holidays: list[date] = []
    # The band token vends are priced at; none: the band in force at the purchase.
    token_band: str | None = None


EnergyDocument = Annotated[
    FlatRateDocument | SteppedBlocksDocument | TimeOfUseDocument, Field(discriminator="kind")
]


class FixedChargeDocument(_Document):
    name: str
    amount_per_month: Amount


class LevyDocument(_Document):
    name: str
    per_kwh: Amount = Decimal(0)
    percent_of_energy: Amount = Decimal(0)
    taxable: bool = True


class TariffVersionDocument(_Document):
    """One version of a tariff, as stored (figures exclude VAT, in major units)."""

    effective_from: date
    energy: EnergyDocument
    fixed_charges: list[FixedChargeDocument] = []
    fixed_charge_mode: FixedChargeMode = FixedChargeMode.PRO_RATA
    capacity_rate_per_kva_month: Amount | None = None
    demand_rate_per_kw_month: Amount | None = None
    free_units_kwh_per_month: Amount = Decimal(0)
    levies: list[LevyDocument] = []
    vat_percent: Amount = Decimal(0)

    def to_version(self) -> TariffVersion:
        """The internal version; raises the specific TariffError when inconsistent."""
        return TariffVersion(
            effective_from=self.effective_from,
            energy=_energy(self.energy),
            fixed_charges=tuple(
                FixedCharge(f.name, f.amount_per_month) for f in self.fixed_charges
            ),
            fixed_charge_mode=self.fixed_charge_mode,
            capacity=(
                None
                if self.capacity_rate_per_kva_month is None
                else CapacityCharge(self.capacity_rate_per_kva_month)
            ),
            demand=(
                None
                if self.demand_rate_per_kw_month is None
                else DemandCharge(self.demand_rate_per_kw_month)
            ),
            free_units_kwh_per_month=self.free_units_kwh_per_month,
            levies=tuple(
                Levy(lv.name, lv.per_kwh, lv.percent_of_energy, lv.taxable) for lv in self.levies
            ),
            vat_percent=self.vat_percent,
        )

    @classmethod
    def from_version(cls, version: TariffVersion) -> TariffVersionDocument:
        return cls(
            effective_from=version.effective_from,
            energy=_energy_document(version.energy),
            fixed_charges=[
                FixedChargeDocument(name=f.name, amount_per_month=f.amount_per_month)
                for f in version.fixed_charges
            ],
            fixed_charge_mode=version.fixed_charge_mode,
            capacity_rate_per_kva_month=(
                None if version.capacity is None else version.capacity.rate_per_kva_month
            ),
            demand_rate_per_kw_month=(
                None if version.demand is None else version.demand.rate_per_kw_month
            ),
            free_units_kwh_per_month=version.free_units_kwh_per_month,
            levies=[
                LevyDocument(
                    name=lv.name,
                    per_kwh=lv.per_kwh,
                    percent_of_energy=lv.percent_of_energy,
                    taxable=lv.taxable,
                )
                for lv in version.levies
            ],
            vat_percent=version.vat_percent,
        )


class TariffDocument(_Document):
    """A whole tariff: identity, currency, the utility's time zone and its versions."""

    code: str = Field(min_length=1, max_length=40)
    name: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    currency_minor_digits: int | None = Field(default=None, ge=0, le=4)
    timezone: str = Field(examples=["Africa/Johannesburg"])
    versions: list[TariffVersionDocument] = Field(min_length=1)

    @field_validator("versions")
    @classmethod
    def _versions_in_date_order(
        cls, versions: list[TariffVersionDocument]
    ) -> list[TariffVersionDocument]:
        # Accept any order in the document; the internal tariff insists on date order.
        return sorted(versions, key=lambda v: v.effective_from)

    def to_tariff(self) -> Tariff:
        """The internal tariff; raises TariffError / UnknownCurrency / UnknownTimeZone."""
        return Tariff(
            code=self.code,
            name=self.name,
            currency=Currency.of(self.currency, self.currency_minor_digits),
            timezone=self.timezone,
            versions=tuple(v.to_version() for v in self.versions),
        )

    @classmethod
    def from_tariff(cls, tariff: Tariff) -> TariffDocument:
        return cls(
            code=tariff.code,
            name=tariff.name,
            currency=tariff.currency.code,
            currency_minor_digits=tariff.currency.minor_digits,
            timezone=tariff.timezone,
            versions=[TariffVersionDocument.from_version(v) for v in tariff.versions],
        )


def _wall(text: str) -> time | None:
    """ "HH:MM" as a wall-clock time; "24:00" (end of day) as None."""
    if text == "24:00":
        return None
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _wall_text(value: time | None) -> str:
    return "24:00" if value is None else value.strftime("%H:%M")


def _energy(doc: FlatRateDocument | SteppedBlocksDocument | TimeOfUseDocument) -> EnergyCharge:
    if isinstance(doc, FlatRateDocument):
        return FlatRate(doc.rate_per_kwh)
    if isinstance(doc, SteppedBlocksDocument):
        return SteppedBlocks(tuple(Block(b.up_to_kwh, b.rate_per_kwh) for b in doc.blocks))
    return TimeOfUse(
        band_rates=dict(doc.band_rates),
        seasons=tuple(
            Season(
                name=s.name,
                months=frozenset(s.months),
                days=tuple(
                    DaySchedule(
                        day_types=frozenset(d.day_types),
                        periods=tuple(
                            Period(_start(p.start), _wall(p.end), p.band) for p in d.periods
                        ),
                    )
                    for d in s.days
                ),
            )
            for s in doc.seasons
        ),
        holidays=frozenset(doc.holidays),
        token_band=doc.token_band,
    )


def _start(text: str) -> time:
    # The pattern on PeriodDocument.start excludes "24:00".
    value = _wall(text)
    assert value is not None
    return value


def _energy_document(
    energy: EnergyCharge,
) -> FlatRateDocument | SteppedBlocksDocument | TimeOfUseDocument:
    if isinstance(energy, FlatRate):
        return FlatRateDocument(kind="flat", rate_per_kwh=energy.rate_per_kwh)
    if isinstance(energy, SteppedBlocks):
        return SteppedBlocksDocument(
            kind="blocks",
            blocks=[
                BlockDocument(up_to_kwh=b.up_to_kwh, rate_per_kwh=b.rate_per_kwh)
                for b in energy.blocks
            ],
        )
    return TimeOfUseDocument(
        kind="time_of_use",
        band_rates=dict(energy.band_rates),
        seasons=[
            SeasonDocument(
                name=s.name,
                months=sorted(s.months),
                days=[
                    DayScheduleDocument(
                        day_types=sorted(d.day_types, key=list(DayType).index),
                        periods=[
                            PeriodDocument(
                                start=_wall_text(p.start), end=_wall_text(p.end), band=p.band
                            )
                            for p in d.periods
                        ],
                    )
                    for d in s.days
                ],
            )
            for s in energy.seasons
        ],
        holidays=sorted(energy.holidays),
        token_band=energy.token_band,
    )
