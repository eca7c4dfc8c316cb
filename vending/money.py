"""Exact money and the rounding rules of gridvend's tariffs, in one place.

Money is an integer count of a currency's minor unit (cents for ZAR, none for UGX), so
adding and subtracting can never create or lose a cent. Tariff figures (rates per kWh,
monthly charges, percentages) are `Decimal` in major units and may be finer than the
minor unit; every computation between them is done with exact fractions and turned into
minor units by exactly one of the rules below. Nothing else in gridvend rounds money.

The rules (see docs/tariffs.md for worked examples):

1. `round_charge` -- a charge line (energy of one block/band, a fixed charge, a levy,
   the VAT of a transaction) is its exact value rounded to the nearest minor unit, ties
   to even (banker's rounding: unbiased over many lines). VAT is computed on the sum of
   the transaction's rounded taxable lines, because tariffs quote rates before VAT.
2. `units_down` -- energy handed to a prepaid customer is rounded DOWN to the unit step
   (0.1 kWh, the resolution of an STS credit token): never more than was paid for. A vend
   applies it by searching for the most whole steps whose priced lines fit the money
   (`pricing.price_vend`); `units_down` serves plain kWh conversions.
3. `share_down` -- a percentage share taken from a payment (debt recovery) is rounded
   DOWN: never more than the stated percentage of the customer's money.
4. `allocate` -- when one amount must be split into parts (e.g. a refund over lines),
   the parts are floor values plus the leftover minor units handed out by largest
   remainder, so the parts always sum to the whole.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import ClassVar

# The resolution of prepaid energy: an STS credit token carries 0.1 kWh.
UNIT_STEP_KWH = Decimal("0.1")

Exact = Fraction | Decimal | int


class MoneyError(ValueError):
    """Base of money errors; `code` is the stable machine-readable reason."""

    code: ClassVar[str] = "money_error"


class CurrencyMismatch(MoneyError):
    code = "currency_mismatch"


class UnknownCurrency(MoneyError):
    code = "unknown_currency"


class InvalidAmount(MoneyError):
    code = "invalid_amount"


@dataclass(frozen=True, slots=True)
class Currency:
    """An ISO 4217 currency: its code and how many decimal digits its minor unit has."""

    code: str
    minor_digits: int

    def __post_init__(self) -> None:
        if len(self.code) != 3 or not self.code.isalpha() or not self.code.isupper():
            raise UnknownCurrency(f"currency code must be 3 upper-case letters, got {self.code!r}")
        if not 0 <= self.minor_digits <= 4:
            raise UnknownCurrency(f"minor_digits must be 0..4, got {self.minor_digits}")

    @property
    def minor_per_major(self) -> int:
        return 10**self.minor_digits

    @classmethod
    def of(cls, code: str, minor_digits: int | None = None) -> Currency:
        """The currency for `code`; `minor_digits` is needed only for codes not listed here.

        Raises UnknownCurrency for an unlisted code without digits, or digits that
        contradict ISO 4217 for a listed code.
        """
        known = _ISO_MINOR_DIGITS.get(code)
        if known is None:
            if minor_digits is None:
                raise UnknownCurrency(f"unknown currency {code!r}: give its minor_digits")
            return cls(code, minor_digits)
        if minor_digits is not None and minor_digits != known:
            raise UnknownCurrency(f"{code} has {known} minor digits, not {minor_digits}")
        return cls(code, known)


# Currencies of the markets prepaid metering is common in, plus the usual majors.
_ISO_MINOR_DIGITS: dict[str, int] = {
    "ZAR": 2, "NAD": 2, "BWP": 2, "KES": 2, "TZS": 2, "UGX": 0, "RWF": 0, "NGN": 2,
    "GHS": 2, "ZMW": 2, "MWK": 2, "ETB": 2, "XOF": 0, "XAF": 0, "EGP": 2, "MAD": 2,
    "INR": 2, "PKR": 2, "BDT": 2, "LKR": 2, "CNY": 2, "IDR": 2, "PHP": 2, "GBP": 2,
    "EUR": 2, "USD": 2, "JPY": 0, "KWD": 3, "BHD": 3, "OMR": 3, "JOD": 3, "TND": 3,
}  # fmt: skip


@dataclass(frozen=True, slots=True, order=False)
class Money:
    """An exact amount: `minor` units of `currency` (may be negative, e.g. a refund)."""

    minor: int
    currency: Currency

    def __post_init__(self) -> None:
        # bool is an int subclass; True cents is a bug, not an amount.
        if not isinstance(self.minor, int) or isinstance(self.minor, bool):
            raise InvalidAmount(f"minor units must be an int, got {self.minor!r}")

    @classmethod
    def zero(cls, currency: Currency) -> Money:
        return cls(0, currency)

    @classmethod
    def parse(cls, text: str | Decimal, currency: Currency) -> Money:
        """Money from a major-unit amount such as "150.00"; exact or InvalidAmount.

        Refuses NaN, infinities and amounts finer than the minor unit (a clerk typing
        "10.005" ZAR gets an error, not a silently rounded payment).
        """
        try:
            value = Decimal(text)
        except ArithmeticError as exc:
            raise InvalidAmount(f"not a number: {text!r}") from exc
        if not value.is_finite():
            raise InvalidAmount(f"not a finite amount: {text!r}")
        minor = value * currency.minor_per_major
        if minor != minor.to_integral_value():
            raise InvalidAmount(
                f"{text} {currency.code} is finer than the minor unit "
                f"({currency.minor_digits} decimal places)"
            )
        return cls(int(minor), currency)

    def to_decimal(self) -> Decimal:
        """The amount in major units, exactly (e.g. Decimal('150.00'))."""
        return Decimal(self.minor).scaleb(-self.currency.minor_digits)

    def __str__(self) -> str:
        return f"{self.to_decimal():.{self.currency.minor_digits}f} {self.currency.code}"

    def _same(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency.code} and {other.currency.code} do not mix")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor - other.minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.minor < other.minor

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.minor <= other.minor

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.minor > other.minor

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.minor >= other.minor

    def min(self, other: Money) -> Money:
        return self if self <= other else other

    def max(self, other: Money) -> Money:
        return self if self >= other else other

    def is_zero(self) -> bool:
        return self.minor == 0


def total(amounts: list[Money] | tuple[Money, ...], currency: Currency) -> Money:
    """The exact sum of `amounts` (zero for none); CurrencyMismatch on mixed currencies."""
    result = Money.zero(currency)
    for amount in amounts:
        result = result + amount
    return result


def exact(value: Exact) -> Fraction:
    """`value` as an exact fraction (Decimal and int convert without loss)."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, Decimal) and value.is_finite():
        return _fraction(value)
    return Fraction(value)  # an int, or a NaN or infinity for Fraction to refuse


# Pricing converts the same tariff rates, VAT and levy figures on every vend; a
# Decimal's conversion costs ten times a cache look-up. Equal values (1.0 and 1.00) are
# the same fraction, so sharing an entry is exact.
@functools.lru_cache(maxsize=4096)
def _fraction(value: Decimal) -> Fraction:
    return Fraction(value)


def major_to_minor(value: Exact, currency: Currency) -> Fraction:
    """A major-unit figure (e.g. a rate of 1.7845 ZAR) as exact minor units (178.45)."""
    return exact(value) * currency.minor_per_major


# Rule 1 ---------------------------------------------------------------------------------
def round_charge(minor_exact: Fraction) -> int:
    """Rule 1: an exact charge in minor units, to the nearest minor unit, ties to even."""
    # Python's round() on a Fraction is exact and rounds halves to even.
    return round(minor_exact)


# Rule 2 ---------------------------------------------------------------------------------
def units_down(kwh: Exact) -> Decimal:
    """Rule 2: energy for a customer rounded DOWN to UNIT_STEP_KWH (0.1 kWh)."""
    return units_from_steps(math.floor(exact(kwh) / exact(UNIT_STEP_KWH)))


def units_from_steps(steps: int) -> Decimal:
    """`steps` x 0.1 kWh as a Decimal with one decimal place."""
    return (Decimal(steps) * UNIT_STEP_KWH).quantize(UNIT_STEP_KWH)


# Rule 3 ---------------------------------------------------------------------------------
def share_down(amount: Money, percent: Decimal) -> Money:
    """Rule 3: `percent` % of `amount`, rounded DOWN (towards zero) to the minor unit.

    Raises InvalidAmount for a percentage outside 0..100.
    """
    if not Decimal(0) <= percent <= Decimal(100):
        raise InvalidAmount(f"percent must be within 0..100, got {percent}")
    share = exact(amount.minor) * exact(percent) / 100
    return Money(math.trunc(share), amount.currency)


# Rule 4 ---------------------------------------------------------------------------------
def allocate(amount: Money, weights: list[int] | tuple[int, ...]) -> list[Money]:
    """Rule 4: split `amount` in proportion to non-negative `weights`, summing exactly.

    Each part is the floor of its exact share; the minor units left over go one each to
    the parts with the largest remainders (earliest first on ties). Raises InvalidAmount
    for a negative amount, a negative weight or all-zero weights.
    """
    if amount.minor < 0:
        raise InvalidAmount("cannot allocate a negative amount")
    if not weights or any(w < 0 for w in weights) or sum(weights) == 0:
        raise InvalidAmount("weights must be non-negative and not all zero")
    whole = sum(weights)
    shares = [Fraction(amount.minor * w, whole) for w in weights]
    parts = [math.floor(s) for s in shares]
    leftover = amount.minor - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-(shares[i] - parts[i]), i))
    for i in order[:leftover]:
        parts[i] += 1
    return [Money(p, amount.currency) for p in parts]
