"""Recovering arrears from a customer's purchases.

A utility moving a customer with arrears onto prepaid recovers the debt bit by bit: a
percentage of each purchase and/or a fixed amount per purchase, capped per purchase, and
never the whole purchase (the customer must always get some energy for their money)
unless the utility explicitly configures otherwise. Central-balance accounts may instead
repay a fixed instalment per week. Shares of a payment are rounded down (money rule 3).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vending.money import CurrencyMismatch, Money, share_down


class DebtRuleError(ValueError):
    code: ClassVar[str] = "debt_rule_invalid"


@dataclass(frozen=True, slots=True)
class DebtRecoveryRule:
    """How arrears are taken from purchases; amounts in minor units of the account's
    currency.

    - `percent_of_purchase`: share of every purchase (0-100), rounded down.
    - `fixed_per_purchase_minor`: added to the percentage share on every purchase.
    - `cap_per_purchase_minor`: most taken from one purchase (None: no cap).
    - `max_share_percent`: most taken from one purchase as a share of it (rounded down);
      100 is allowed only with `allow_whole_purchase`.
    - `weekly_instalment_minor`: for central-balance accounts, repaid per full week.
    """

    percent_of_purchase: Decimal = Decimal(0)
    fixed_per_purchase_minor: int = 0
    cap_per_purchase_minor: int | None = None
    max_share_percent: Decimal = Decimal(50)
    allow_whole_purchase: bool = False
    weekly_instalment_minor: int = 0

    def __post_init__(self) -> None:
        for name in ("percent_of_purchase", "max_share_percent"):
            value: Decimal = getattr(self, name)
            if not value.is_finite() or not Decimal(0) <= value <= Decimal(100):
                raise DebtRuleError(f"{name} must be within 0..100, got {value}")
        if self.max_share_percent == 100 and not self.allow_whole_purchase:
            raise DebtRuleError(
                "max_share_percent 100 takes whole purchases: set allow_whole_purchase"
            )
        for name in ("fixed_per_purchase_minor", "weekly_instalment_minor"):
            if getattr(self, name) < 0:
                raise DebtRuleError(f"{name} must not be negative")
        if self.cap_per_purchase_minor is not None and self.cap_per_purchase_minor < 0:
            raise DebtRuleError("cap_per_purchase_minor must not be negative")

    def to_document(self) -> dict[str, object]:
        """The rule as a JSON-ready dict (e.g. an account's `debt_recovery` column)."""
        return DebtRecoveryDocument.model_validate(self, from_attributes=True).model_dump(
            mode="json"
        )

    @classmethod
    def from_document(cls, document: object) -> DebtRecoveryRule:
        """The rule from its stored dict; DebtRuleError for unknown keys or bad values.
        An empty dict is "no recovery"."""
        if cls is DebtRecoveryRule and isinstance(document, dict):
            # Every vend reads its account's rule: the same few documents, validated once.
            try:
                return _rule_of_items(tuple(sorted(document.items())))
            except TypeError:  # a value that cannot be a cache key (a list, a dict)
                pass
        return cls._validated(document)

    @classmethod
    def _validated(cls, document: object) -> DebtRecoveryRule:
        try:
            doc = DebtRecoveryDocument.model_validate(document)
        except ValidationError as exc:
            raise DebtRuleError(f"invalid debt recovery rule: {exc}") from exc
        return cls(**doc.model_dump())


@functools.lru_cache(maxsize=256)
def _rule_of_items(items: tuple[tuple[object, object], ...]) -> DebtRecoveryRule:
    # Rules are frozen: one instance may serve every account with an equal document.
    return DebtRecoveryRule._validated(dict(items))


class DebtRecoveryDocument(BaseModel):
    """The stored form of a DebtRecoveryRule: same fields, percentages as strings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    percent_of_purchase: Decimal = Field(default=Decimal(0), allow_inf_nan=False)
    fixed_per_purchase_minor: int = 0
    cap_per_purchase_minor: int | None = None
    max_share_percent: Decimal = Field(default=Decimal(50), allow_inf_nan=False)
    allow_whole_purchase: bool = False
    weekly_instalment_minor: int = 0


NO_RECOVERY = DebtRecoveryRule()


def recover_from_purchase(purchase: Money, debt: Money, rule: DebtRecoveryRule) -> Money:
    """The part of `purchase` that goes to repay `debt` under `rule`.

    Never more than the debt, the per-purchase cap, `max_share_percent` of the purchase
    or (unless `allow_whole_purchase`) the purchase less one minor unit. Taking more from
    a larger purchase never leaves the customer with less: the result grows by at most
    one minor unit per minor unit of purchase. Zero for a zero purchase or no debt.

    Raises CurrencyMismatch if the currencies differ, DebtRuleError for a negative
    purchase or debt.
    """
    if purchase.currency != debt.currency:
        raise CurrencyMismatch(
            f"purchase in {purchase.currency.code}, debt in {debt.currency.code}"
        )
    if purchase.minor < 0 or debt.minor < 0:
        raise DebtRuleError("purchase and debt must not be negative")
    if purchase.minor == 0 or debt.minor == 0:
        return Money.zero(purchase.currency)
    wanted = share_down(purchase, rule.percent_of_purchase).minor + rule.fixed_per_purchase_minor
    limits = [wanted, debt.minor, share_down(purchase, rule.max_share_percent).minor]
    if rule.cap_per_purchase_minor is not None:
        limits.append(rule.cap_per_purchase_minor)
    if not rule.allow_whole_purchase:
        limits.append(purchase.minor - 1)
    return Money(max(0, min(limits)), purchase.currency)


def weekly_instalments_due(debt: Money, rule: DebtRecoveryRule, full_weeks: int) -> Money:
    """What a central-balance account owes for `full_weeks` weeks of instalments, never
    more than the debt. Raises DebtRuleError for negative weeks or debt."""
    if full_weeks < 0 or debt.minor < 0:
        raise DebtRuleError("weeks and debt must not be negative")
    return Money(min(debt.minor, rule.weekly_instalment_minor * full_weeks), debt.currency)
