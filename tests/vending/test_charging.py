from decimal import Decimal
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from tests.vending.factories import PROPERTY, tariffs
from vending.charging import Accrual, Usage, UsageCostCurve, compute_charges
from vending.tariffs import Tariff, TimeOfUse

positions = st.integers(0, 30_000).map(lambda n: Fraction(n, 10))
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
    for n in quantities:
        kwh = Fraction(n, 10)
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
