from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vending.factories import PROPERTY
from vending.grading import (
    Grade,
    GradeThreshold,
    GradingError,
    GradingPolicy,
    PaymentRecord,
    grade_customer,
)

D = Decimal


def test_a_household_on_230_v_is_ordinary() -> None:
    assert grade_customer(D(4_000), 230, PaymentRecord()) is Grade.ORDINARY


def test_a_large_reliable_high_voltage_customer_gets_three_stars() -> None:
    assert grade_customer(D(8_000_000), 11_000, PaymentRecord()) is Grade.THREE_STAR
    assert Grade.THREE_STAR.label == "3-star"


def test_late_payments_lower_the_grade() -> None:
    assert grade_customer(D(8_000_000), 11_000, PaymentRecord(late_payments_12m=1)) is (
        Grade.TWO_STAR
    )
    assert grade_customer(D(8_000_000), 11_000, PaymentRecord(disconnections_12m=1)) is (
        Grade.ONE_STAR
    )


def test_thresholds_are_configurable() -> None:
    policy = GradingPolicy({Grade.ONE_STAR: GradeThreshold(D(1000), 230, 0)})
    assert grade_customer(D(1000), 230, PaymentRecord(), policy) is Grade.ONE_STAR
    assert grade_customer(D(999), 230, PaymentRecord(), policy) is Grade.ORDINARY


def test_a_higher_grade_looser_than_a_lower_one_is_refused() -> None:
    with pytest.raises(GradingError):
        GradingPolicy(
            {
                Grade.ONE_STAR: GradeThreshold(D(1000), 230, 1),
                Grade.TWO_STAR: GradeThreshold(D(500), 230, 1),
            }
        )
    with pytest.raises(GradingError):
        grade_customer(D(-1), 230, PaymentRecord())


@PROPERTY
@given(
    st.decimals(min_value=0, max_value=10**8, places=1),
    st.sampled_from([230, 400, 11_000, 33_000]),
    st.integers(0, 5),
    st.integers(0, 3),
    st.decimals(min_value=0, max_value=10**6, places=1),
)
def test_more_consumption_and_better_payment_never_lower_the_grade(
    kwh: Decimal, volts: int, late: int, cuts: int, extra: Decimal
) -> None:
    base = grade_customer(kwh, volts, PaymentRecord(late, cuts))
    assert grade_customer(kwh + extra, volts, PaymentRecord(late, cuts)) >= base
    assert grade_customer(kwh, volts, PaymentRecord(max(0, late - 1), max(0, cuts - 1))) >= base
    assert grade_customer(kwh, volts * 2, PaymentRecord(late, cuts)) >= base
