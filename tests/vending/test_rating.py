import itertools
from collections import Counter
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vending.factories import (
    ALL_DAYS,
    PROPERTY,
    ZAR,
    ZONES,
    commercial_tou,
    instants,
    residential_stepped,
    stepped_blocks,
    tariffs,
    time_of_use,
    utc,
)
from vending.charging import Charges, LineKind
from vending.localtime import NaiveDatetime, day_start, days_in_month
from vending.money import Money
from vending.pricing import VendAccount, price_vend
from vending.rating import (
    EmptyInterval,
    IntervalCharge,
    NegativeConsumption,
    rate_demand,
    rate_interval,
)
from vending.tariffs import (
    AccountTerms,
    DaySchedule,
    DemandCharge,
    FixedCharge,
    FlatRate,
    MissingCapacity,
    NoTariffInForce,
    Period,
    Season,
    SteppedBlocks,
    Tariff,
    TariffVersion,
    TimeOfUse,
)

D = Decimal
CAPACITY_25 = AccountTerms(capacity_kva=D(25))


def energy_by_label(charge: IntervalCharge) -> dict[str, Fraction]:
    result: dict[str, Fraction] = {}
    for line in charge.charges.energy:
        assert line.kwh is not None
        result[line.label] = result.get(line.label, Fraction(0)) + line.kwh
    return result


# Worked examples (also in docs/tariffs.md) ----------------------------------------------
def test_an_hour_across_the_start_of_morning_peak_is_split_between_the_bands() -> None:
    # Wednesday 1 July 2026, 06:30-07:30 in Johannesburg (UTC+2); peak starts at 07:00.
    charge = rate_interval(
        commercial_tou(), utc(2026, 7, 1, 4, 30), utc(2026, 7, 1, 5, 30), D(10), D(0), CAPACITY_25
    )
    assert [(line.label, line.kwh, str(line.amount)) for line in charge.charges.energy] == [
        ("peak", 5, "21.26 ZAR"),
        ("standard", 5, "9.82 ZAR"),
    ]
    assert [(line.label, str(line.amount)) for line in charge.charges.fixed] == [
        ("network charge", "0.83 ZAR"),  # 620.00 / 31 days / 24 hours
        ("capacity charge", "1.62 ZAR"),  # 25 kVA x 48.30 / 31 / 24
    ]
    assert [str(line.amount) for line in charge.charges.levies] == ["0.26 ZAR"]
    assert [str(line.amount) for line in charge.charges.tax] == ["5.07 ZAR"]
    assert charge.total == charge.charges.total
    assert str(charge.total) == "38.86 ZAR"


def test_consumption_straddling_a_block_threshold_is_split_exactly_at_it() -> None:
    charge = rate_interval(
        residential_stepped(), utc(2026, 8, 10, 8), utc(2026, 8, 10, 8, 30), D(20), D(340)
    )
    assert energy_by_label(charge) == {
        "block 1 (0-350 kWh)": 10,
        "block 2 (above 350 kWh)": 10,
    }
    assert charge.month_to_date_kwh_after == 360


def test_an_interval_across_the_month_end_restarts_blocks_and_free_units() -> None:
    # 23:30 31 August to 00:30 1 September, local time.
    charge = rate_interval(
        residential_stepped(), utc(2026, 8, 31, 21, 30), utc(2026, 8, 31, 22, 30), D(2), D(400)
    )
    assert energy_by_label(charge) == {"free units": 1, "block 2 (above 350 kWh)": 1}
    assert charge.month_to_date_kwh_after == 1


def test_an_interval_ending_at_midnight_on_the_first_hands_on_a_fresh_month() -> None:
    charge = rate_interval(
        residential_stepped(), utc(2026, 8, 31, 21), utc(2026, 8, 31, 22), D(2), D(400)
    )
    assert charge.month_to_date_kwh_after == 0


def test_a_short_daylight_saving_day_still_carries_a_full_day_of_fixed_charges() -> None:
    london = Tariff(
        "UK",
        "uk",
        ZAR,
        "Europe/London",
        (TariffVersion(date(2026, 1, 1), FlatRate(D("0.25")), (FixedCharge("standing", D(31)),)),),
    )
    day = date(2026, 3, 29)  # 23 hours long
    tz = ZoneInfo("Europe/London")
    charge = rate_interval(
        london, day_start(day, tz), day_start(day + timedelta(days=1), tz), D(0), D(0)
    )
    assert charge.charges.fixed[0].exact_minor == 100  # 31.00 / 31 days


def test_a_new_tariff_version_applies_from_local_midnight_within_an_interval() -> None:
    old = TariffVersion(date(2026, 1, 1), FlatRate(D(1)))
    new = TariffVersion(date(2026, 7, 1), FlatRate(D(2)))
    tariff = Tariff("T", "t", ZAR, "Africa/Johannesburg", (old, new))
    charge = rate_interval(tariff, utc(2026, 6, 30, 21), utc(2026, 6, 30, 23), D(2), D(0))
    assert [
        (line.effective_from, line.kwh, line.amount.minor) for line in charge.charges.energy
    ] == [
        (date(2026, 1, 1), 1, 100),
        (date(2026, 7, 1), 1, 200),
    ]
    assert len(charge.charges.tax) == 2


@pytest.mark.parametrize(
    ("start", "end", "kwh", "error"),
    [
        (utc(2026, 8, 1), utc(2026, 8, 1, 1), D("-0.001"), NegativeConsumption),
        (utc(2026, 8, 1), utc(2026, 8, 1, 1), D("NaN"), NegativeConsumption),
        (utc(2026, 8, 1), utc(2026, 8, 1), D(1), EmptyInterval),
        (utc(2026, 8, 1, 1), utc(2026, 8, 1), D(1), EmptyInterval),
        (datetime(2026, 8, 1), utc(2026, 8, 1, 1), D(1), NaiveDatetime),
        (utc(2026, 6, 30, 21), utc(2026, 6, 30, 23), D(1), NoTariffInForce),
    ],
)
def test_bad_readings_raise_a_specific_error(
    start: datetime, end: datetime, kwh: Decimal, error: type[Exception]
) -> None:
    with pytest.raises(error):
        rate_interval(residential_stepped(), start, end, kwh, D(0))


def test_a_capacity_tariff_needs_the_contracted_capacity_to_rate() -> None:
    with pytest.raises(MissingCapacity):
        rate_interval(commercial_tou(), utc(2026, 8, 3), utc(2026, 8, 3, 1), D(1), D(0))


# Properties ----------------------------------------------------------------------------
durations = st.integers(1, 3 * 86400)
energies = st.integers(0, 10**6).map(lambda n: Decimal(n) / 1000)
month_positions = st.integers(0, 30_000).map(lambda n: Decimal(n) / 10)
terms = st.builds(AccountTerms, capacity_kva=st.just(D(40)), free_units_eligible=st.booleans())


def assert_rounding_bounded(charges: Charges) -> None:
    for line in charges.energy + charges.fixed:
        assert abs(line.amount.minor - line.exact_minor) <= Fraction(1, 2)
    assert abs(charges.total.minor - charges.exact_total) <= charges.rounding_bound


@PROPERTY
@given(tariffs(), instants, durations, energies, month_positions, terms, st.floats(0.001, 0.999))
def test_splitting_an_interval_changes_the_exact_charge_by_nothing_and_the_total_by_rounding(
    tariff: Tariff,
    start: datetime,
    seconds: int,
    kwh: Decimal,
    mtd: Decimal,
    account: AccountTerms,
    where: float,
) -> None:
    end = start + timedelta(seconds=seconds)
    split = start + timedelta(microseconds=int(seconds * 1_000_000 * where))
    whole = rate_interval(tariff, start, end, kwh, mtd, account)
    us = timedelta(microseconds=1)
    first_kwh = Fraction(kwh) * Fraction((split - start) // us, (end - start) // us)
    first = rate_interval(tariff, start, split, first_kwh, mtd, account)
    second = rate_interval(
        tariff, split, end, Fraction(kwh) - first_kwh, first.month_to_date_kwh_after, account
    )
    assert first.charges.exact_total + second.charges.exact_total == whole.charges.exact_total
    allowed = (
        first.charges.rounding_bound + second.charges.rounding_bound + whole.charges.rounding_bound
    )
    assert abs(first.total.minor + second.total.minor - whole.total.minor) <= allowed
    assert second.month_to_date_kwh_after == whole.month_to_date_kwh_after
    assert_rounding_bounded(whole.charges)


@PROPERTY
@given(tariffs(), instants, durations, energies, month_positions, terms)
def test_every_line_is_within_half_a_minor_unit_and_the_total_within_the_bound(
    tariff: Tariff,
    start: datetime,
    seconds: int,
    kwh: Decimal,
    mtd: Decimal,
    account: AccountTerms,
) -> None:
    charge = rate_interval(tariff, start, start + timedelta(seconds=seconds), kwh, mtd, account)
    assert_rounding_bounded(charge.charges)
    assert charge.charges.energy_kwh == kwh


@PROPERTY
@given(
    stepped_blocks(),
    st.sampled_from([D(0), D(50), D("12.5")]),
    month_positions,
    energies,
)
def test_block_boundaries_are_exact(
    blocks: SteppedBlocks, free: Decimal, mtd: Decimal, kwh: Decimal
) -> None:
    tariff = Tariff(
        "B",
        "b",
        ZAR,
        "Africa/Johannesburg",
        (TariffVersion(date(2026, 1, 1), blocks, free_units_kwh_per_month=free),),
    )
    charge = rate_interval(tariff, utc(2026, 5, 10), utc(2026, 5, 10, 1), kwh, mtd)
    got = energy_by_label(charge)
    lo, hi = Fraction(mtd), Fraction(mtd + kwh)
    starts = [Fraction(s) for s in blocks.starts()]
    expected: Counter[str] = Counter()
    expected["free units"] += max(Fraction(0), min(hi, Fraction(free)) - lo)
    for i, block in enumerate(blocks.blocks):
        a = max(starts[i], Fraction(free), lo)
        b = hi if block.up_to_kwh is None else min(Fraction(block.up_to_kwh), hi)
        if b > a:
            label = next(
                line.label
                for line in charge.charges.energy
                if line.label.startswith(f"block {i + 1} ")
            )
            expected[label] += b - a
    assert got == {k: v for k, v in expected.items() if v > 0}


# Instants within two days before and a few hours after daylight-saving changes.
DST_CHANGES = [
    utc(2026, 3, 29, 1),  # Europe/London forward
    utc(2026, 10, 25, 1),  # Europe/London back
    utc(2026, 3, 8, 7),  # America/New_York forward
    utc(2026, 11, 1, 6),  # America/New_York back
    utc(2026, 4, 4, 15),  # Australia/Lord_Howe back 30 minutes
    utc(2026, 10, 3, 15, 30),  # Australia/Lord_Howe forward 30 minutes
    utc(2026, 4, 5, 3),  # America/Santiago back at midnight
    utc(2026, 9, 6, 4),  # America/Santiago forward at midnight
]
near_dst = st.tuples(st.sampled_from(DST_CHANGES), st.integers(-48 * 60, 6 * 60)).map(
    lambda p: p[0] + timedelta(minutes=p[1])
)


@PROPERTY
@given(
    time_of_use(),
    st.sampled_from(ZONES),
    st.one_of(near_dst, instants.map(lambda t: t.replace(second=0))),
    st.integers(1, 2 * 24 * 60),
    energies,
)
def test_time_of_use_bands_get_energy_in_proportion_to_their_minutes_even_on_dst_days(
    tou: TimeOfUse, zone_name: str, start: datetime, minutes: int, kwh: Decimal
) -> None:
    tariff = Tariff("TOU", "tou", ZAR, zone_name, (TariffVersion(date(2025, 12, 1), tou),))
    tz = ZoneInfo(zone_name)
    # The independent oracle: read the wall clock at every minute of the interval.
    per_band: Counter[str] = Counter(
        tou.band_at((start + timedelta(minutes=m)).astimezone(tz).replace(tzinfo=None))
        for m in range(minutes)
    )
    charge = rate_interval(tariff, start, start + timedelta(minutes=minutes), kwh, D(0))
    expected = {band: Fraction(kwh) * n / minutes for band, n in per_band.items()}
    assert energy_by_label(charge) == {b: v for b, v in expected.items() if v > 0}


def test_a_band_starting_inside_the_skipped_hour_starts_when_the_clock_jumps() -> None:
    day = DaySchedule(
        ALL_DAYS, (Period(time(0), time(1, 30), "night"), Period(time(1, 30), None, "day"))
    )
    tou = TimeOfUse({"night": D(1), "day": D(2)}, (Season("all", frozenset(range(1, 13)), (day,)),))
    tariff = Tariff("TOU", "tou", ZAR, "Europe/London", (TariffVersion(date(2026, 1, 1), tou),))
    # 00:00-02:00 UTC on 29 March 2026 = 00:00-01:00 GMT then 02:00-03:00 BST.
    charge = rate_interval(tariff, utc(2026, 3, 29, 0), utc(2026, 3, 29, 2), D(2), D(0))
    assert energy_by_label(charge) == {"night": 1, "day": 1}


@PROPERTY
@given(tariffs(), st.sampled_from(ZONES), instants)
def test_a_whole_local_day_carries_one_day_of_each_monthly_charge(
    tariff: Tariff, zone_name: str, instant: datetime
) -> None:
    tariff = replace(tariff, timezone=zone_name)
    tz = ZoneInfo(zone_name)
    day = instant.astimezone(tz).date()
    start, end = day_start(day, tz), day_start(day + timedelta(days=1), tz)
    charge = rate_interval(tariff, start, end, D(0), D(0), AccountTerms(capacity_kva=D(10)))
    version = tariff.version_on(day)
    share = Fraction(1, days_in_month(day))
    scale = tariff.currency.minor_per_major
    fixed = {
        line.label: line.exact_minor for line in charge.charges.fixed if line.kind is LineKind.FIXED
    }
    assert fixed == {
        f.name: share * Fraction(f.amount_per_month) * scale for f in version.fixed_charges
    }
    if version.capacity is not None:
        capacity = next(line for line in charge.charges.fixed if line.kind is LineKind.CAPACITY)
        assert (
            capacity.exact_minor
            == share * 10 * Fraction(version.capacity.rate_per_kva_month) * scale
        )


def test_the_demand_charge_is_billed_on_the_months_maximum_demand_with_vat() -> None:
    version = replace(commercial_tou().versions[0], demand=DemandCharge(D("95.40")))
    tariff = replace(commercial_tou(), versions=(version,))
    charges = rate_demand(tariff, date(2026, 7, 15), D("42.5"))
    assert [(line.kind, str(line.amount)) for line in charges.lines] == [
        (LineKind.DEMAND, "4054.50 ZAR"),  # 42.5 kW x 95.40
        (LineKind.VAT, "608.18 ZAR"),  # 15% of 4054.50 = 608.175, tie to even
    ]


def test_a_tariff_change_mid_month_splits_the_demand_charge_by_days() -> None:
    old = TariffVersion(date(2026, 1, 1), FlatRate(D(1)), demand=DemandCharge(D(30)))
    new = TariffVersion(date(2026, 6, 11), FlatRate(D(1)), demand=DemandCharge(D(60)))
    tariff = Tariff("T", "t", ZAR, "Africa/Johannesburg", (old, new))
    charges = rate_demand(tariff, date(2026, 6, 1), D(10))
    # 10 days at 30/kW and 20 days at 60/kW of a 30-day month.
    assert sum(line.exact_minor for line in charges.fixed) == 10 * (30 * 10 + 60 * 20) * 100 / 30
    with pytest.raises(NegativeConsumption):
        rate_demand(tariff, date(2026, 6, 1), D(-1))
    with pytest.raises(NoTariffInForce):
        rate_demand(tariff, date(2025, 12, 1), D(1))


@PROPERTY
@given(
    tariffs(),
    instants,
    st.integers(60, 40 * 86400),
    energies,
    month_positions,
    terms,
    st.lists(st.integers(1, 10**6), min_size=1, max_size=12),
)
def test_rating_a_span_in_many_pieces_chains_month_to_date_and_keeps_the_exact_total(
    tariff: Tariff,
    start: datetime,
    seconds: int,
    kwh: Decimal,
    mtd: Decimal,
    account: AccountTerms,
    weights: list[int],
) -> None:
    us = timedelta(microseconds=1)
    end = start + timedelta(seconds=seconds)
    total_us = (end - start) // us
    cuts = sorted({total_us * w // (sum(weights) + 1) for w in weights} - {0})
    bounds = [start] + [start + c * us for c in cuts] + [end]
    whole = rate_interval(tariff, start, end, kwh, mtd, account)
    position: Fraction | Decimal = mtd
    exact_sum = Fraction(0)
    for a, b in itertools.pairwise(bounds):
        piece_kwh = Fraction(kwh) * Fraction((b - a) // us, total_us)
        piece = rate_interval(tariff, a, b, piece_kwh, position, account)
        exact_sum += piece.charges.exact_total
        position = piece.month_to_date_kwh_after
    assert exact_sum == whole.charges.exact_total
    assert position == whole.month_to_date_kwh_after


def test_a_month_bought_in_one_vend_costs_exactly_what_it_costs_rated_day_by_day() -> None:
    tariff = residential_stepped()
    tz = ZoneInfo(tariff.timezone)
    # A token customer pays on 31 August for the whole month's service charge...
    account = VendAccount.new(ZAR, fixed_charged_through=date(2026, 7, 31))
    vend = price_vend(tariff, Money(150_000, ZAR), account, utc(2026, 8, 31, 20))
    # ...and a central-balance twin uses the same kWh evenly over August, rated daily.
    position: Fraction | Decimal = D(0)
    exact_total, rounded_total, bound = Fraction(0), 0, Fraction(0)
    for day in range(1, 32):
        start = day_start(date(2026, 8, day), tz)
        end = day_start(date(2026, 8, day) + timedelta(days=1), tz)
        piece = rate_interval(tariff, start, end, Fraction(vend.units_kwh) / 31, position)
        position = piece.month_to_date_kwh_after
        exact_total += piece.charges.exact_total
        rounded_total += piece.total.minor
        bound += piece.charges.rounding_bound
    assert exact_total == vend.charges.exact_total
    assert abs(rounded_total - vend.charges.total.minor) <= bound + vend.charges.rounding_bound
