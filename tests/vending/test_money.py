from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vending.factories import KWD, PROPERTY, UGX, ZAR
from vending.money import (
    Currency,
    CurrencyMismatch,
    InvalidAmount,
    Money,
    UnknownCurrency,
    allocate,
    round_charge,
    share_down,
    total,
    units_down,
)

D = Decimal
minor_amounts = st.integers(-(10**12), 10**12)


def test_money_parses_major_units_exactly_and_prints_them_back() -> None:
    assert Money.parse("150.00", ZAR) == Money(15000, ZAR)
    assert str(Money(15000, ZAR)) == "150.00 ZAR"
    assert str(Money(1500, UGX)) == "1500 UGX"
    assert str(Money(1234, KWD)) == "1.234 KWD"


@pytest.mark.parametrize("text", ["10.005", "NaN", "Infinity", "abc", "1e-3"])
def test_money_refuses_text_that_is_not_an_exact_amount(text: str) -> None:
    with pytest.raises(InvalidAmount):
        Money.parse(text, ZAR)


def test_money_refuses_float_and_bool_minor_units() -> None:
    with pytest.raises(InvalidAmount):
        Money(1.5, ZAR)  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        Money(True, ZAR)


def test_currencies_do_not_mix() -> None:
    with pytest.raises(CurrencyMismatch):
        Money(1, ZAR) + Money(1, UGX)
    with pytest.raises(CurrencyMismatch):
        _ = Money(1, ZAR) < Money(1, KWD)


def test_unknown_currency_needs_its_minor_digits() -> None:
    with pytest.raises(UnknownCurrency):
        Currency.of("XYZ")
    assert Currency.of("XYZ", 2).minor_per_major == 100
    with pytest.raises(UnknownCurrency):
        Currency.of("ZAR", 3)


@PROPERTY
@given(minor_amounts, minor_amounts, minor_amounts)
def test_addition_and_subtraction_never_create_or_lose_a_cent(a: int, b: int, c: int) -> None:
    x, y, z = Money(a, ZAR), Money(b, ZAR), Money(c, ZAR)
    assert (x + y) + z == x + (y + z)
    assert (x + y) - y == x
    assert total([x, y, z], ZAR).minor == a + b + c


@PROPERTY
@given(st.integers(0, 10**9), st.lists(st.integers(0, 1000), min_size=1, max_size=8))
def test_allocation_sums_to_the_whole_and_each_part_is_within_a_cent(
    amount: int, weights: list[int]
) -> None:
    if sum(weights) == 0:
        weights = [*weights[:-1], 1]
    parts = allocate(Money(amount, ZAR), weights)
    assert sum(p.minor for p in parts) == amount
    for part, w in zip(parts, weights, strict=True):
        assert abs(part.minor - Fraction(amount * w, sum(weights))) < 1


@PROPERTY
@given(st.fractions(min_value=-(10**9), max_value=10**9))
def test_a_charge_is_rounded_to_the_nearest_minor_unit_with_ties_to_even(x: Fraction) -> None:
    rounded = round_charge(x)
    assert abs(rounded - x) <= Fraction(1, 2)
    if abs(rounded - x) == Fraction(1, 2):
        assert rounded % 2 == 0


def test_charge_rounding_ties_go_to_the_even_cent() -> None:
    assert round_charge(Fraction(5, 2)) == 2
    assert round_charge(Fraction(7, 2)) == 4
    assert round_charge(Fraction(-5, 2)) == -2


@PROPERTY
@given(st.decimals(min_value=0, max_value=10**6, places=6))
def test_units_for_a_customer_are_rounded_down_to_a_tenth_of_a_kwh(kwh: Decimal) -> None:
    units = units_down(kwh)
    assert units <= kwh < units + D("0.1")
    assert units == units.quantize(D("0.1"))


@PROPERTY
@given(st.integers(0, 10**10), st.decimals(min_value=0, max_value=100, places=3))
def test_a_share_of_a_payment_never_exceeds_its_percentage(amount: int, pct: Decimal) -> None:
    share = share_down(Money(amount, ZAR), pct)
    exact_share = Fraction(amount) * Fraction(pct) / 100
    assert exact_share - 1 < share.minor <= exact_share


def test_share_outside_0_to_100_percent_is_refused() -> None:
    with pytest.raises(InvalidAmount):
        share_down(Money(100, ZAR), D(101))
