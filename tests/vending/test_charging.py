from decimal import Decimal
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from tests.vending.factories import PROPERTY, tariffs
from vending.charging import (
    Accrual,
    Usage,
    UsageCostCurve,
    _round_half_even,
    compute_charges,
)
from vending.money import round_charge
from vending.tariffs import Tariff, TimeOfUse

# Vends start at tenths of a kWh; rating and other units may leave any fraction.
positions = st.integers(0, 30_000).map(lambda n: Fraction(n, 10)) | st.fractions(
    min_value=0, max_value=3_000, max_denominator=997
)
steps = st.lists(st.integers(0, 200_000), min_size=1, max_size=6)
shares = st.lists(st.fractions(min_value=0, max_value=3, max_denominator=31), max_size=3)


@PROPERTY
@given(tariffs(max_versions=3), positions, steps, shares, st.booleans(), st.data())
def test_the_vend_search_curve_prices_exactly_like_compute_charges(
    tariff: Tariff,
    position: Fraction,
    quantities: list[int],
    accrual_shares: list[Fraction],
    free_units: bool,
    data: st.DataObject,
) -> None:
    version = data.draw(st.sampled_from(tariff.versions))
    band = None
    if isinstance(version.energy, TimeOfUse):
        band = data.draw(st.sampled_from(sorted(version.energy.band_rates)))
    accruals = [
        Accrual(data.draw(st.sampled_from(tariff.versions)), share, Decimal(7))
        for share in accrual_shares
    ]
    curve = UsageCostCurve(tariff.currency, version, position, band, free_units, accruals)
    denominator = data.draw(st.sampled_from([10, 1, 3, 1_000]))
    for n in quantities:
        kwh = Fraction(n, denominator)
        charges = compute_charges(
            tariff.currency, [Usage(version, position, kwh, band, free_units)], accruals
        )
        assert curve.total(kwh) == charges.total.minor
        assert curve.exact(kwh) == charges.exact_total


@PROPERTY
@given(tariffs(), positions, st.integers(0, 100_000), st.integers(1, 5_000), st.data())
def test_more_units_never_cost_less_so_the_vend_search_is_sound(
    tariff: Tariff, position: Fraction, steps: int, more: int, data: st.DataObject
) -> None:
    version = data.draw(st.sampled_from(tariff.versions))
    band = None
    if isinstance(version.energy, TimeOfUse):
        band = data.draw(st.sampled_from(sorted(version.energy.band_rates)))
    curve = UsageCostCurve(tariff.currency, version, position, band, True, [])
    assert curve.total(Fraction(steps, 10)) <= curve.total(Fraction(steps + more, 10))
    assert curve.total(Fraction(steps, 10)) <= curve.total(Fraction(steps + 1, 10))


@given(st.integers(-(10**30), 10**30), st.integers(1, 10**15))
def test_integer_rounding_is_round_charge_of_the_same_fraction(
    numerator: int, denominator: int
) -> None:
    assert _round_half_even(numerator, denominator) == round_charge(
        Fraction(numerator, denominator)
    )


@given(st.integers(-(10**6), 10**6), st.sampled_from([2, 4, 10, 1_000]))
def test_integer_rounding_sends_halves_to_the_even_neighbour(whole: int, denominator: int) -> None:
    half = whole * denominator + denominator // 2
    assert _round_half_even(half, denominator) == whole + whole % 2
