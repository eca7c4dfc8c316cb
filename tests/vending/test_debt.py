import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vending.factories import PROPERTY, UGX, ZAR
from vending.debt import (
    DebtRecoveryRule,
    DebtRuleError,
    recover_from_purchase,
    weekly_instalments_due,
)
from vending.money import CurrencyMismatch, Money

D = Decimal

rules = st.builds(
    DebtRecoveryRule,
    percent_of_purchase=st.decimals(min_value=0, max_value=100, places=2),
    fixed_per_purchase_minor=st.integers(0, 10_000),
    cap_per_purchase_minor=st.none() | st.integers(0, 50_000),
    max_share_percent=st.decimals(min_value=0, max_value=D("99.99"), places=2),
    allow_whole_purchase=st.just(False),
)


def test_a_quarter_of_each_purchase_goes_to_the_debt_until_it_is_paid() -> None:
    rule = DebtRecoveryRule(percent_of_purchase=D(25))
    assert recover_from_purchase(Money(20000, ZAR), Money(100_000, ZAR), rule) == Money(5000, ZAR)
    assert recover_from_purchase(Money(20000, ZAR), Money(1234, ZAR), rule) == Money(1234, ZAR)
    assert recover_from_purchase(Money(20000, ZAR), Money(0, ZAR), rule) == Money(0, ZAR)


def test_a_fixed_amount_per_purchase_is_capped_and_never_takes_the_whole_purchase() -> None:
    rule = DebtRecoveryRule(fixed_per_purchase_minor=3000, cap_per_purchase_minor=2500)
    assert recover_from_purchase(Money(20000, ZAR), Money(10**6, ZAR), rule) == Money(2500, ZAR)
    # Half of a small purchase at most (the default max share is 50%).
    assert recover_from_purchase(Money(1000, ZAR), Money(10**6, ZAR), rule) == Money(500, ZAR)


def test_taking_the_whole_purchase_must_be_configured_explicitly() -> None:
    with pytest.raises(DebtRuleError):
        DebtRecoveryRule(max_share_percent=D(100))
    rule = DebtRecoveryRule(
        percent_of_purchase=D(100), max_share_percent=D(100), allow_whole_purchase=True
    )
    assert recover_from_purchase(Money(500, UGX), Money(10**6, UGX), rule) == Money(500, UGX)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"percent_of_purchase": D(-1)},
        {"percent_of_purchase": D(101)},
        {"fixed_per_purchase_minor": -1},
        {"cap_per_purchase_minor": -1},
        {"weekly_instalment_minor": -5},
    ],
)
def test_an_invalid_rule_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(DebtRuleError):
        DebtRecoveryRule(**kwargs)  # type: ignore[arg-type]


def test_debt_and_purchase_must_share_a_currency() -> None:
    with pytest.raises(CurrencyMismatch):
        recover_from_purchase(Money(1, ZAR), Money(1, UGX), DebtRecoveryRule())


@PROPERTY
@given(st.integers(0, 10**8), st.integers(0, 10**8), rules)
def test_recovery_never_exceeds_the_cap_the_debt_the_share_or_the_purchase(
    purchase: int, debt: int, rule: DebtRecoveryRule
) -> None:
    taken = recover_from_purchase(Money(purchase, ZAR), Money(debt, ZAR), rule).minor
    assert 0 <= taken <= debt
    assert rule.cap_per_purchase_minor is None or taken <= rule.cap_per_purchase_minor
    assert taken <= purchase * rule.max_share_percent / 100
    assert purchase == 0 or taken < purchase


@PROPERTY
@given(st.integers(0, 10**8), st.integers(0, 10**8), rules)
def test_a_larger_purchase_never_leaves_the_customer_with_less(
    purchase: int, debt: int, rule: DebtRecoveryRule
) -> None:
    def left(amount: int) -> int:
        return amount - recover_from_purchase(Money(amount, ZAR), Money(debt, ZAR), rule).minor

    assert left(purchase + 1) >= left(purchase)


def test_weekly_instalments_stop_at_the_debt() -> None:
    rule = DebtRecoveryRule(weekly_instalment_minor=5000)
    assert weekly_instalments_due(Money(12_000, ZAR), rule, 2) == Money(10_000, ZAR)
    assert weekly_instalments_due(Money(12_000, ZAR), rule, 3) == Money(12_000, ZAR)
    with pytest.raises(DebtRuleError):
        weekly_instalments_due(Money(12_000, ZAR), rule, -1)


@PROPERTY
@given(rules)
def test_a_rule_survives_its_stored_form(rule: DebtRecoveryRule) -> None:
    stored = json.loads(json.dumps(rule.to_document()))
    assert DebtRecoveryRule.from_document(stored) == rule


@pytest.mark.parametrize(
    "document",
    [{"percent": "25"}, {"percent_of_purchase": "abc"}, {"max_share_percent": "100"}, [1]],
)
def test_a_bad_stored_rule_is_refused(document: object) -> None:
    with pytest.raises(DebtRuleError):
        DebtRecoveryRule.from_document(document)


def test_an_empty_stored_rule_recovers_nothing() -> None:
    rule = DebtRecoveryRule.from_document({})
    assert recover_from_purchase(Money(1000, ZAR), Money(1000, ZAR), rule) == Money(0, ZAR)


def test_a_stored_rule_is_read_once_and_a_bad_one_refused_every_time() -> None:
    document = {"percent_of_purchase": "25", "cap_per_purchase_minor": 5000}
    first = DebtRecoveryRule.from_document(dict(document))
    assert DebtRecoveryRule.from_document(dict(document)) is first
    assert first == DebtRecoveryRule(percent_of_purchase=Decimal(25), cap_per_purchase_minor=5000)
    assert DebtRecoveryRule.from_document({}) == DebtRecoveryRule()
    for bad in ({"percent_of_purchase": "250"}, {"unknown": 1}, {"percent_of_purchase": [1]}):
        for _ in range(2):
            with pytest.raises(DebtRuleError):
                DebtRecoveryRule.from_document(bad)
