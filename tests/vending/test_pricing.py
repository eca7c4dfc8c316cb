import contextlib
import json
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.vending.factories import (
    PROPERTY,
    UGX,
    ZAR,
    commercial_tou,
    instants,
    residential_stepped,
    tariffs,
    utc,
)
from vending.charging import Charges, LineKind
from vending.debt import DebtRecoveryRule
from vending.localtime import NaiveDatetime, local_date, wall_segments
from vending.money import Currency, CurrencyMismatch, InvalidAmount, Money
from vending.pricing import (
    AmountBelowMinimum,
    InvalidAccountState,
    PurchaseOutOfOrder,
    VendAccount,
    VendBreakdown,
    minimum_tender,
    price_units,
    price_vend,
    tender_for_units,
)
from vending.rating import rate_interval
from vending.tariffs import (
    AccountTerms,
    DaySchedule,
    DayType,
    FixedCharge,
    FixedChargeMode,
    MissingCapacity,
    NoTariffInForce,
    Period,
    Season,
    Tariff,
    TariffVersion,
    TimeOfUse,
)

D = Decimal
# 10:00 on Monday 3 August 2026 in Johannesburg (UTC+2).
AUG_3 = utc(2026, 8, 3, 8)


def lines(b: VendBreakdown) -> list[tuple[str, str, Decimal | None]]:
    return [(line.label, str(line.amount), line.kwh_decimal) for line in b.charges.lines]


def assert_sums_to_tendered(b: VendBreakdown) -> None:
    assert b.tendered + b.carry_in == b.debt_recovered + b.charges.total + b.carry_out
    assert b.total_charged == b.fixed_amount + b.energy_amount + b.levy_amount + b.tax_amount


# Worked examples (also in docs/tariffs.md) ----------------------------------------------
def test_residential_vend_gives_free_units_then_block_one_with_levy_and_vat() -> None:
    b = price_vend(residential_stepped(), Money(50000, ZAR), VendAccount.new(ZAR), AUG_3)
    assert lines(b) == [
        ("free units", "0.00 ZAR", D(50)),
        ("block 1 (0-350 kWh)", "421.50 ZAR", D("236.2")),
        ("service charge", "4.84 ZAR", None),
        ("environmental levy", "8.27 ZAR", D("236.2")),
        ("VAT 15%", "65.19 ZAR", None),
    ]
    assert b.units_kwh == D("286.2")
    assert b.free_units_kwh == D(50)
    assert b.carry_out == Money(20, ZAR)
    assert_sums_to_tendered(b)
    # 0.1 kWh more would cost 500.01: the vend gave the most the money buys.
    more = price_units(residential_stepped(), VendAccount.new(ZAR), AUG_3, D("286.3"))
    assert more.total == Money(50001, ZAR)


def test_a_second_vend_in_the_month_continues_on_the_blocks_and_uses_the_change() -> None:
    tariff = residential_stepped()
    first = price_vend(tariff, Money(50000, ZAR), VendAccount.new(ZAR), AUG_3)
    second = price_vend(tariff, Money(50000, ZAR), first.account_after, AUG_3 + timedelta(days=2))
    assert second.carry_in == Money(20, ZAR)
    assert [(line.label, line.kwh_decimal) for line in second.charges.energy] == [
        ("block 1 (0-350 kWh)", D("63.8")),
        ("block 2 (above 350 kWh)", D("121.1")),
    ]
    # Two more days of the service charge: 2 x 150/31.
    assert second.charges.fixed[0].exact_minor == Fraction(2 * 15000, 31)
    assert second.account_after.month_to_date_kwh == D("471.1")
    assert second.carry_out == Money(18, ZAR)
    assert_sums_to_tendered(second)


def test_blocks_and_free_units_restart_in_a_new_month() -> None:
    tariff = residential_stepped()
    august = price_vend(tariff, Money(100000, ZAR), VendAccount.new(ZAR), AUG_3)
    september = price_vend(tariff, Money(30000, ZAR), august.account_after, utc(2026, 9, 1, 6))
    assert september.free_units_kwh == D(50)
    assert [line.label for line in september.charges.energy][:2] == [
        "free units",
        "block 1 (0-350 kWh)",
    ]


def test_fixed_charge_on_first_purchase_of_the_month_is_charged_once() -> None:
    base = residential_stepped()
    version = replace(base.versions[0], fixed_charge_mode=FixedChargeMode.FIRST_PURCHASE_OF_MONTH)
    tariff = replace(base, versions=(version,))
    first = price_vend(tariff, Money(50000, ZAR), VendAccount.new(ZAR), AUG_3)
    assert first.fixed_amount == Money(15000, ZAR)
    assert first.account_after.fixed_charged_through == date(2026, 8, 31)
    again = price_vend(tariff, Money(50000, ZAR), first.account_after, AUG_3 + timedelta(days=9))
    assert again.fixed_amount == Money(0, ZAR)
    next_month = price_vend(tariff, Money(50000, ZAR), again.account_after, utc(2026, 9, 2))
    assert next_month.fixed_amount == Money(15000, ZAR)


def test_debt_is_recovered_first_and_the_rest_buys_energy() -> None:
    account = replace(
        VendAccount.new(ZAR, debt_recovery=DebtRecoveryRule(percent_of_purchase=D(25))),
        debt=Money(30000, ZAR),
    )
    b = price_vend(residential_stepped(), Money(50000, ZAR), account, AUG_3)
    assert b.debt_recovered == Money(12500, ZAR)
    assert b.account_after.debt == Money(17500, ZAR)
    assert_sums_to_tendered(b)


def test_a_token_vend_on_time_of_use_is_priced_at_the_band_of_the_purchase() -> None:
    tariff = commercial_tou()
    account = VendAccount.new(
        ZAR, terms=AccountTerms(capacity_kva=D(25)), fixed_charged_through=date(2026, 8, 2)
    )
    peak = price_vend(tariff, Money(100000, ZAR), account, utc(2026, 8, 3, 6))  # 08:00
    night = price_vend(tariff, Money(100000, ZAR), account, utc(2026, 8, 3, 21))  # 23:00
    assert [line.label for line in peak.charges.energy] == ["peak"]
    assert [line.label for line in night.charges.energy] == ["off-peak"]
    assert night.units_kwh > peak.units_kwh
    assert {line.label for line in peak.charges.fixed} == {"network charge", "capacity charge"}
    # One day of 25 kVA x 48.30/month in a 31-day month.
    capacity = next(line for line in peak.charges.fixed if line.kind is LineKind.CAPACITY)
    assert capacity.exact_minor == Fraction(25 * 4830, 31)


def test_a_capacity_tariff_needs_the_contracted_capacity() -> None:
    with pytest.raises(MissingCapacity):
        price_vend(commercial_tou(), Money(100000, ZAR), VendAccount.new(ZAR), AUG_3)


def test_an_amount_below_the_charges_due_is_refused_with_the_minimum() -> None:
    account = VendAccount.new(ZAR, fixed_charged_through=date(2026, 7, 3))  # a month unpaid
    with pytest.raises(AmountBelowMinimum) as raised:
        price_vend(residential_stepped(), Money(1000, ZAR), account, AUG_3)
    assert raised.value.code == "amount_below_minimum"
    minimum = raised.value.minimum
    assert price_vend(residential_stepped(), minimum, account, AUG_3).units_kwh >= D("0.1")


@pytest.mark.parametrize(
    ("tendered", "account", "at", "error"),
    [
        (Money(100, UGX), VendAccount.new(ZAR), AUG_3, CurrencyMismatch),
        (Money(-1, ZAR), VendAccount.new(ZAR), AUG_3, InvalidAmount),
        (Money(100, ZAR), VendAccount.new(ZAR), datetime(2026, 8, 3), NaiveDatetime),
        (Money(100, ZAR), VendAccount.new(ZAR), utc(2026, 1, 1), NoTariffInForce),
        (
            Money(100, ZAR),
            replace(VendAccount.new(ZAR), last_purchase_at=AUG_3 + timedelta(hours=1)),
            AUG_3,
            PurchaseOutOfOrder,
        ),
        (
            Money(100, ZAR),
            replace(VendAccount.new(ZAR), month_to_date_kwh=D(-1)),
            AUG_3,
            InvalidAccountState,
        ),
        (
            Money(100, ZAR),
            replace(VendAccount.new(ZAR), debt=Money(-5, ZAR)),
            AUG_3,
            InvalidAccountState,
        ),
    ],
)
def test_bad_vend_input_raises_a_specific_error(
    tendered: Money, account: VendAccount, at: datetime, error: type[Exception]
) -> None:
    with pytest.raises(error):
        price_vend(residential_stepped(), tendered, account, at)


def test_units_to_quote_must_be_whole_tenths_of_a_kwh() -> None:
    with pytest.raises(InvalidAmount):
        price_units(residential_stepped(), VendAccount.new(ZAR), AUG_3, D("1.05"))


# Properties over generated tariffs and accounts -----------------------------------------
_recovery_rules = st.builds(
    DebtRecoveryRule,
    percent_of_purchase=st.decimals(min_value=0, max_value=40, places=1),
    fixed_per_purchase_minor=st.integers(0, 2000),
    cap_per_purchase_minor=st.none() | st.integers(0, 20_000),
)
_terms = st.builds(
    AccountTerms,
    capacity_kva=st.integers(0, 200).map(Decimal),
    free_units_eligible=st.booleans(),
)
_seconds_since_last = st.none() | st.integers(0, 60 * 86400)
_days_charged_before = st.none() | st.integers(0, 45)
_debts = st.integers(0, 10**6)
_carries = st.integers(0, 500)
_month_to_date = st.integers(0, 20_000).map(lambda n: Decimal(n) / 10)
_tendered = st.integers(0, 2 * 10**6)


@st.composite
def vend_cases(draw: st.DrawFn) -> tuple[Tariff, VendAccount, Money, datetime]:
    tariff = draw(tariffs())
    at = draw(instants)
    cur = tariff.currency
    today = local_date(at, tariff.tz)
    since = draw(_seconds_since_last)
    charged_before = draw(_days_charged_before)
    account = VendAccount(
        debt=Money(draw(_debts), cur),
        carry_over=Money(draw(_carries), cur),
        month_to_date_kwh=draw(_month_to_date),
        last_purchase_at=None if since is None else at - timedelta(seconds=since),
        fixed_charged_through=(
            None if charged_before is None else today - timedelta(days=charged_before)
        ),
        terms=draw(_terms),
        debt_recovery=draw(_recovery_rules),
    )
    return tariff, account, Money(draw(_tendered), cur), at


def vend_or_minimum(
    tariff: Tariff, account: VendAccount, tendered: Money, at: datetime
) -> VendBreakdown:
    try:
        return price_vend(tariff, tendered, account, at)
    except AmountBelowMinimum as below:
        assert below.minimum > tendered
        assume(False)
        raise


@PROPERTY
@given(vend_cases())
def test_the_breakdown_always_sums_exactly_to_the_amount_tendered(
    case: tuple[Tariff, VendAccount, Money, datetime],
) -> None:
    b = vend_or_minimum(*case)
    assert_sums_to_tendered(b)
    assert b.carry_out.minor >= 0
    assert b.account_after.debt == case[1].debt - b.debt_recovered


@PROPERTY
@given(vend_cases())
def test_units_never_exceed_what_the_money_buys_and_no_more_could_be_bought(
    case: tuple[Tariff, VendAccount, Money, datetime],
) -> None:
    tariff, account, tendered, at = case
    b = vend_or_minimum(tariff, account, tendered, at)
    funds = tendered + account.carry_over - b.debt_recovered
    assert b.units_kwh == b.units_kwh.quantize(D("0.1")) and b.units_kwh >= 0
    assert price_units(tariff, account, at, b.units_kwh) == b.charges
    assert b.charges.total <= funds
    assert price_units(tariff, account, at, b.units_kwh + D("0.1")).total > funds


def assert_rounding_is_bounded(charges: Charges, tariff: Tariff) -> None:
    for line in charges.energy + charges.fixed:
        assert abs(line.amount.minor - line.exact_minor) <= Fraction(1, 2)
    assert abs(charges.total.minor - charges.exact_total) <= charges.rounding_bound
    for vat in charges.tax:
        version = next(v for v in tariff.versions if v.effective_from == vat.effective_from)
        taxable = {levy.name for levy in version.levies if levy.taxable}
        base = sum(
            line.amount.minor
            for line in charges.energy + charges.fixed + charges.levies
            if line.effective_from == vat.effective_from
            and (line.kind is not LineKind.LEVY or line.label in taxable)
        )
        # VAT is rule 1 applied to the sum of the version's rounded taxable lines.
        assert vat.amount.minor == round(base * Fraction(version.vat_percent) / 100)


@PROPERTY
@given(vend_cases())
def test_rounding_never_moves_a_line_more_than_half_a_minor_unit(
    case: tuple[Tariff, VendAccount, Money, datetime],
) -> None:
    assert_rounding_is_bounded(vend_or_minimum(*case).charges, case[0])


@PROPERTY
@given(vend_cases(), st.integers(1, 10**5))
def test_more_money_never_buys_fewer_units(
    case: tuple[Tariff, VendAccount, Money, datetime], extra: int
) -> None:
    tariff, account, tendered, at = case
    b = vend_or_minimum(tariff, account, tendered, at)
    bigger = price_vend(tariff, tendered + Money(extra, tendered.currency), account, at)
    assert bigger.units_kwh >= b.units_kwh


@PROPERTY
@given(vend_cases())
def test_minimum_tender_is_the_least_amount_that_vends_a_tenth_of_a_kwh(
    case: tuple[Tariff, VendAccount, Money, datetime],
) -> None:
    tariff, account, _tendered, at = case
    minimum = minimum_tender(tariff, account, at)
    assert price_vend(tariff, minimum, account, at).units_kwh >= D("0.1")
    if minimum.minor > 0:
        less = minimum - Money(1, minimum.currency)
        with contextlib.suppress(AmountBelowMinimum):
            assert price_vend(tariff, less, account, at).units_kwh == 0


@PROPERTY
@given(vend_cases())
def test_vended_units_cost_what_rating_the_same_kwh_in_the_same_band_costs(
    case: tuple[Tariff, VendAccount, Money, datetime],
) -> None:
    tariff, account, tendered, at = case
    # Price vends at the band in force, as rating does.
    tariff = replace(
        tariff,
        versions=tuple(
            replace(v, energy=replace(v.energy, token_band=None))
            if isinstance(v.energy, TimeOfUse)
            else v
            for v in tariff.versions
        ),
    )
    # Leave fixed charges out: vends collect them per purchase, rating per day.
    account = replace(account, fixed_charged_through=date(2100, 1, 1))
    b = vend_or_minimum(tariff, account, tendered, at)
    assume(b.units_kwh > 0)
    piece = next(wall_segments(at, at + timedelta(seconds=1), tariff.tz))
    month_to_date = b.account_after.month_to_date_kwh - b.units_kwh
    rated = rate_interval(
        tariff,
        piece.start,
        piece.end,
        b.units_kwh,
        month_to_date,
        account.terms,
        include_fixed=False,
    )
    assert rated.charges == b.charges


def test_a_breakdown_has_a_json_form_for_storage_and_receipts() -> None:
    b = price_vend(residential_stepped(), Money(50000, ZAR), VendAccount.new(ZAR), AUG_3)
    stored = json.loads(json.dumps(b.to_dict()))
    assert stored["units_kwh"] == "286.2"
    assert stored["carry_out_minor"] == 20
    assert stored["charges"]["total_minor"] == 49980
    assert [line["amount_minor"] for line in stored["charges"]["lines"]] == [
        0,
        42150,
        484,
        827,
        6519,
    ]


def test_pro_rata_days_are_charged_under_the_version_in_force_on_each_day() -> None:
    base = residential_stepped().versions[0]
    june = replace(
        base,
        effective_from=date(2026, 1, 1),
        fixed_charges=(FixedCharge("service charge", D(100)),),
    )
    july = replace(base, effective_from=date(2026, 7, 1))
    tariff = replace(residential_stepped(), versions=(june, july))
    account = VendAccount.new(ZAR, fixed_charged_through=date(2026, 6, 28))
    b = price_vend(tariff, Money(20000, ZAR), account, utc(2026, 7, 2, 8))
    assert [(line.effective_from, line.exact_minor) for line in b.charges.fixed] == [
        (date(2026, 1, 1), Fraction(2 * 10000, 30)),  # 29 and 30 June
        (date(2026, 7, 1), Fraction(2 * 15000, 31)),  # 1 and 2 July
    ]
    assert [line.effective_from for line in b.charges.tax] == [date(2026, 1, 1), date(2026, 7, 1)]
    assert {line.effective_from for line in b.charges.energy} == {date(2026, 7, 1)}
    assert b.account_after.fixed_charged_through == date(2026, 7, 2)
    assert_sums_to_tendered(b)


def test_a_time_of_use_vend_changes_band_exactly_at_the_period_start() -> None:
    account = VendAccount.new(
        ZAR, terms=AccountTerms(capacity_kva=D(25)), fixed_charged_through=date(2026, 8, 3)
    )
    # Monday 3 August 2026: peak starts at 07:00 SAST = 05:00 UTC.
    before = price_vend(commercial_tou(), Money(10000, ZAR), account, utc(2026, 8, 3, 4, 59, 59))
    at = price_vend(commercial_tou(), Money(10000, ZAR), account, utc(2026, 8, 3, 5))
    assert [line.label for line in before.charges.energy] == ["standard"]
    assert [line.label for line in at.charges.energy] == ["peak"]


def test_a_utility_can_price_all_token_vends_at_one_band() -> None:
    version = commercial_tou().versions[0]
    assert isinstance(version.energy, TimeOfUse)
    standard = replace(version, energy=replace(version.energy, token_band="standard"))
    tariff = replace(commercial_tou(), versions=(standard,))
    account = VendAccount.new(
        ZAR, terms=AccountTerms(capacity_kva=D(25)), fixed_charged_through=date(2026, 8, 3)
    )
    for hour in (0, 5, 12, 21):  # off-peak, peak, standard, off-peak on the wall clock
        b = price_vend(tariff, Money(10000, ZAR), account, utc(2026, 8, 3, hour))
        assert [line.label for line in b.charges.energy] == ["standard"]


def test_a_time_of_use_vend_on_a_daylight_saving_day_reads_the_wall_clock() -> None:
    day = DaySchedule(
        frozenset(DayType), (Period(time(0), time(2), "night"), Period(time(2), None, "day"))
    )
    tou = TimeOfUse(
        {"night": D("0.10"), "day": D("0.30")}, (Season("all", frozenset(range(1, 13)), (day,)),)
    )
    gbp = Currency.of("GBP")
    tariff = Tariff("UK-TOU", "uk", gbp, "Europe/London", (TariffVersion(date(2026, 1, 1), tou),))
    account = VendAccount.new(gbp)
    # 29 March 2026: at 01:00 UTC the clock jumps from 01:00 GMT to 02:00 BST.
    night = price_vend(tariff, Money(1000, gbp), account, utc(2026, 3, 29, 0, 59))
    day_ = price_vend(tariff, Money(1000, gbp), account, utc(2026, 3, 29, 1, 0))
    assert (night.charges.energy[0].label, night.units_kwh) == ("night", D(100))
    assert (day_.charges.energy[0].label, day_.units_kwh) == ("day", D("33.3"))


def test_minimum_tender_covers_the_debt_share_the_charges_and_a_tenth_of_a_kwh() -> None:
    account = replace(
        VendAccount.new(ZAR, debt_recovery=DebtRecoveryRule(percent_of_purchase=D(25))),
        debt=Money(10**6, ZAR),
        month_to_date_kwh=D(60),
        last_purchase_at=utc(2026, 8, 1),
        fixed_charged_through=date(2026, 8, 2),
    )
    minimum = minimum_tender(residential_stepped(), account, AUG_3)
    b = price_vend(residential_stepped(), minimum, account, AUG_3)
    assert b.units_kwh == D("0.1")
    assert b.debt_recovered == Money(minimum.minor // 4, ZAR)
    with pytest.raises(AmountBelowMinimum):
        price_vend(residential_stepped(), Money(1, ZAR), account, AUG_3)


@PROPERTY
@given(
    vend_cases(),
    st.lists(st.tuples(st.integers(0, 40 * 86400), st.integers(0, 300_000)), max_size=6),
)
def test_over_a_run_of_vends_every_cent_tendered_is_accounted_for(
    case: tuple[Tariff, VendAccount, Money, datetime], later: list[tuple[int, int]]
) -> None:
    tariff, account, tendered, at = case
    cur = tariff.currency
    paid = accounted = 0
    start_carry = account.carry_over.minor
    for gap, amount in [(0, tendered.minor), *later]:
        at += timedelta(seconds=gap)
        try:
            b = price_vend(tariff, Money(amount, cur), account, at)
        except AmountBelowMinimum:
            continue
        paid += amount
        accounted += b.debt_recovered.minor + b.charges.total.minor
        account = b.account_after
    # In = out: what was paid plus the change brought in is what was charged, recovered
    # or is still carried.
    assert paid + start_carry == accounted + account.carry_over.minor


def test_the_amount_for_a_number_of_units_buys_them_and_a_cent_less_does_not() -> None:
    tariff, account = residential_stepped(), VendAccount.new(ZAR)
    amount = tender_for_units(tariff, account, AUG_3, D(100))
    assert price_vend(tariff, amount, account, AUG_3).units_kwh == D(100)
    assert price_vend(tariff, amount - Money(1, ZAR), account, AUG_3).units_kwh == D("99.9")
    with pytest.raises(InvalidAmount):
        tender_for_units(tariff, account, AUG_3, D("NaN"))


@PROPERTY
@given(vend_cases(), st.integers(0, 20_000))
def test_tender_for_units_is_the_least_amount_that_buys_them(
    case: tuple[Tariff, VendAccount, Money, datetime], steps: int
) -> None:
    tariff, account, _tendered, at = case
    units = Decimal(steps) / 10
    amount = tender_for_units(tariff, account, at, units)
    assert price_vend(tariff, amount, account, at).units_kwh >= units
    if amount.minor > 0:
        with contextlib.suppress(AmountBelowMinimum):
            less = price_vend(tariff, amount - Money(1, amount.currency), account, at)
            assert less.units_kwh < units
