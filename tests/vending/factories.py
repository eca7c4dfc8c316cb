"""Realistic tariffs and hypothesis strategies shared by the vending money tests."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

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

D = Decimal
ZAR = Currency.of("ZAR")
UGX = Currency.of("UGX")
KWD = Currency.of("KWD")

# Deterministic property tests: the same examples on every run and every machine.
PROPERTY = settings(
    derandomize=True,
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

ALL_DAYS = frozenset(DayType)
WEEKDAY = frozenset({DayType.WEEKDAY})
WEEKEND = frozenset({DayType.SATURDAY, DayType.SUNDAY})


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def residential_stepped() -> Tariff:
    """A South African style residential tariff: two inclining blocks, 50 kWh free
    basic electricity, a monthly service charge, an environmental levy, VAT 15%."""
    return Tariff(
        code="RES-STEP",
        name="Residential stepped",
        currency=ZAR,
        timezone="Africa/Johannesburg",
        versions=(
            TariffVersion(
                effective_from=date(2026, 7, 1),
                energy=SteppedBlocks(
                    (Block(D(350), D("1.7845")), Block(None, D("2.5169"))),
                ),
                fixed_charges=(FixedCharge("service charge", D("150.00")),),
                fixed_charge_mode=FixedChargeMode.PRO_RATA,
                free_units_kwh_per_month=D(50),
                levies=(Levy("environmental levy", per_kwh=D("0.035")),),
                vat_percent=D(15),
            ),
        ),
    )


def commercial_tou() -> Tariff:
    """A commercial time-of-use tariff with a high-demand winter season, weekday and
    weekend schedules, a capacity charge per kVA and VAT 15%."""
    weekday = DaySchedule(
        WEEKDAY,
        (
            Period(time(0), time(6), "off-peak"),
            Period(time(6), time(7), "standard"),
            Period(time(7), time(10), "peak"),
            Period(time(10), time(18), "standard"),
            Period(time(18), time(20), "peak"),
            Period(time(20), time(22), "standard"),
            Period(time(22), None, "off-peak"),
        ),
    )
    saturday = DaySchedule(
        frozenset({DayType.SATURDAY}),
        (
            Period(time(0), time(7), "off-peak"),
            Period(time(7), time(12), "standard"),
            Period(time(12), time(18), "off-peak"),
            Period(time(18), time(20), "standard"),
            Period(time(20), None, "off-peak"),
        ),
    )
    sunday = DaySchedule(frozenset({DayType.SUNDAY}), (Period(time(0), None, "off-peak"),))
    return Tariff(
        code="COM-TOU",
        name="Commercial time of use",
        currency=ZAR,
        timezone="Africa/Johannesburg",
        versions=(
            TariffVersion(
                effective_from=date(2026, 4, 1),
                energy=TimeOfUse(
                    band_rates={
                        "peak": D("4.2512"),
                        "standard": D("1.9634"),
                        "off-peak": D("1.0852"),
                    },
                    seasons=(
                        Season("high demand", frozenset({6, 7, 8}), (weekday, saturday, sunday)),
                        Season(
                            "low demand",
                            frozenset({1, 2, 3, 4, 5, 9, 10, 11, 12}),
                            (weekday, saturday, sunday),
                        ),
                    ),
                    holidays=frozenset({date(2026, 6, 16), date(2026, 8, 10)}),
                ),
                fixed_charges=(FixedCharge("network charge", D("620.00")),),
                capacity=CapacityCharge(D("48.30")),
                levies=(Levy("electrification levy", per_kwh=D("0.0264"), taxable=True),),
                vat_percent=D(15),
            ),
        ),
    )


# Strategies -----------------------------------------------------------------------------
ZONES = [
    "Africa/Johannesburg",
    "Europe/London",
    "America/New_York",
    "Australia/Lord_Howe",  # a 30-minute daylight-saving shift
    "America/Santiago",  # daylight saving changes at midnight
]

rates = st.decimals(min_value=D("0.001"), max_value=D("999.9999"), places=4)
money_rates = st.decimals(min_value=D(0), max_value=D("999.99"), places=2)
percents = st.decimals(min_value=D(0), max_value=D(30), places=2)


# Strategies are built once here: building them inside draws is slow.
_block_limits = st.sets(st.integers(1, 2000), max_size=3)
_period_cuts = st.sets(st.integers(1, 24 * 60 - 1), max_size=5)
_levies = st.lists(
    st.tuples(st.decimals(min_value=D(0), max_value=D("0.5"), places=4), percents, st.booleans()),
    max_size=2,
)
_fixed = st.lists(money_rates, max_size=2)
_capacity = st.none() | money_rates.map(CapacityCharge)
_demand = st.none() | money_rates.map(DemandCharge)
_free_units = st.sampled_from([D(0), D(0), D(50), D(100)])
_vat = st.sampled_from([D(0), D(15), D("7.5"), D(16), D(18)])
_band_counts = st.integers(1, 3)
_season_split = st.integers(0, 11)


@st.composite
def stepped_blocks(draw: st.DrawFn) -> SteppedBlocks:
    limits = sorted(draw(_block_limits))
    blocks = [Block(D(limit), draw(rates)) for limit in limits]
    blocks.append(Block(None, draw(rates)))
    return SteppedBlocks(tuple(blocks))


@st.composite
def day_schedules(draw: st.DrawFn, bands: list[str]) -> tuple[Period, ...]:
    cuts = sorted(draw(_period_cuts))
    starts = [0, *cuts]
    ends: list[int | None] = [*cuts, None]
    return tuple(
        Period(
            time(s // 60, s % 60),
            None if e is None else time(e // 60, e % 60),
            draw(st.sampled_from(bands)),
        )
        for s, e in zip(starts, ends, strict=True)
    )


@st.composite
def time_of_use(draw: st.DrawFn) -> TimeOfUse:
    bands = ["peak", "standard", "off-peak"][: draw(_band_counts)]
    band_rates = {b: draw(rates) for b in bands}
    split = draw(_season_split)
    month_sets = (
        [frozenset(range(1, 13))]
        if split == 0
        else [frozenset(range(1, split + 1)), frozenset(range(split + 1, 13))]
    )
    seasons = []
    for i, months in enumerate(month_sets):
        if draw(st.booleans()):
            days = (DaySchedule(ALL_DAYS, draw(day_schedules(bands))),)
        else:
            days = (
                DaySchedule(WEEKDAY, draw(day_schedules(bands))),
                DaySchedule(WEEKEND, draw(day_schedules(bands))),
            )
        seasons.append(Season(f"season {i}", months, days))
    token_band = draw(st.none() | st.sampled_from(bands))
    return TimeOfUse(band_rates, tuple(seasons), token_band=token_band)


energy_charges: st.SearchStrategy[EnergyCharge] = st.one_of(
    rates.map(FlatRate), stepped_blocks(), time_of_use()
)


@st.composite
def tariff_versions(draw: st.DrawFn, effective_from: date) -> TariffVersion:
    fixed = draw(_fixed)
    levies = draw(_levies)
    return TariffVersion(
        effective_from=effective_from,
        energy=draw(energy_charges),
        fixed_charges=tuple(FixedCharge(f"fixed {i}", a) for i, a in enumerate(fixed)),
        fixed_charge_mode=draw(st.sampled_from(FixedChargeMode)),
        capacity=draw(_capacity),
        free_units_kwh_per_month=draw(_free_units),
        levies=tuple(
            Levy(f"levy {i}", per_kwh, pct, taxable)
            for i, (per_kwh, pct, taxable) in enumerate(levies)
        ),
        vat_percent=draw(_vat),
        demand=draw(_demand),
    )


_version_offsets = {n: st.sets(st.integers(1, 360), max_size=n - 1) for n in (1, 2, 3)}
_currencies = st.sampled_from([ZAR, ZAR, UGX, KWD])
_zones = st.sampled_from(ZONES)


@st.composite
def tariffs(draw: st.DrawFn, max_versions: int = 2) -> Tariff:
    first = date(2026, 1, 1)
    offsets = sorted(draw(_version_offsets[max_versions]))
    dates = [first] + [first + timedelta(days=o) for o in offsets]
    return Tariff(
        code="T",
        name="generated",
        currency=draw(_currencies),
        timezone=draw(_zones),
        versions=tuple(draw(tariff_versions(d)) for d in dates),
    )


# Instants in 2026-2027, after every generated tariff's first version, to the second.
instants = st.integers(int(utc(2026, 1, 2).timestamp()), int(utc(2027, 12, 31).timestamp())).map(
    lambda s: datetime.fromtimestamp(s, UTC)
)
