"""Pricing a vend: money tendered at the counter -> a full breakdown and the units.

The order is fixed and documented in docs/tariffs.md:

1. debt recovery takes its share of the amount tendered (`debt.recover_from_purchase`);
2. the rest, plus the change carried from the account's previous vend, are the funds;
3. monthly fixed and capacity charges due at this purchase are charged first;
4. the funds left buy the most energy, in 0.1 kWh steps, whose priced lines (energy per
   free-units/block/band line, levies, VAT on the whole transaction, all rounded by
   `money.round_charge`) fit in the funds -- the same `charging.compute_charges` that
   rates central-balance consumption;
5. what is left (less than the price of the next 0.1 kWh) is carried to the next vend:
   no cent is kept for energy not delivered, and none is given away.

So for every vend: tendered + carry_in == debt_recovered + fixed + energy + levies + tax
+ carry_out, exactly, in minor units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import ClassVar

from vending import localtime
from vending.charging import (
    Accrual,
    Charges,
    Usage,
    UsageCostCurve,
    compute_charges,
    fraction_to_decimal,
    price_breaks,
)
from vending.debt import NO_RECOVERY, DebtRecoveryRule, recover_from_purchase
from vending.money import (
    UNIT_STEP_KWH,
    Currency,
    CurrencyMismatch,
    InvalidAmount,
    Money,
    exact,
    units_from_steps,
)
from vending.tariffs import (
    AccountTerms,
    FixedChargeMode,
    NoChargeableRate,
    NoTariffInForce,
    Tariff,
    TariffVersion,
    TimeOfUse,
)

# 10^11 kWh: far beyond any token; it only stops a search on a broken tariff.
_MAX_STEPS = 10**12


class PricingError(ValueError):
    code: ClassVar[str] = "pricing_error"


class AmountBelowMinimum(PricingError):
    """The amount tendered does not cover the debt share and the charges due."""

    code = "amount_below_minimum"

    def __init__(self, message: str, minimum: Money) -> None:
        super().__init__(message)
        self.minimum = minimum


class InvalidAccountState(PricingError):
    code = "invalid_account_state"


class PurchaseOutOfOrder(PricingError):
    code = "purchase_before_last_purchase"


@dataclass(frozen=True, slots=True)
class VendAccount:
    """What pricing needs to know about a token-meter account, as stored.

    - `month_to_date_kwh`: units vended in the local calendar month of
      `last_purchase_at` (free units included); pricing resets it in a new month.
    - `debt`, `carry_over`: arrears owed and change carried from the last vend (>= 0).
    - `fixed_charged_through`: the last local date whose fixed charges are paid (None:
      none yet; a new account should start at the day before its supply starts).
    """

    debt: Money
    carry_over: Money
    month_to_date_kwh: Decimal = Decimal(0)
    last_purchase_at: datetime | None = None
    fixed_charged_through: date | None = None
    terms: AccountTerms = field(default_factory=AccountTerms)
    debt_recovery: DebtRecoveryRule = NO_RECOVERY

    @classmethod
    def new(
        cls,
        currency: Currency,
        *,
        terms: AccountTerms | None = None,
        debt_recovery: DebtRecoveryRule = NO_RECOVERY,
        fixed_charged_through: date | None = None,
    ) -> VendAccount:
        """A fresh account with no debt, no change carried and no purchase yet."""
        zero = Money.zero(currency)
        return cls(
            debt=zero,
            carry_over=zero,
            fixed_charged_through=fixed_charged_through,
            terms=terms or AccountTerms(),
            debt_recovery=debt_recovery,
        )


@dataclass(frozen=True, slots=True)
class VendBreakdown:
    """Everything a receipt and the ledger need about one vend.

    `units_kwh` (a multiple of 0.1 kWh, free units included) is what the token
    carries; `account_after` is the account state to store with the vend.
    """

    tariff_code: str
    effective_from: date
    at: datetime
    tendered: Money
    carry_in: Money
    debt_recovered: Money
    charges: Charges
    units_kwh: Decimal
    free_units_kwh: Decimal
    carry_out: Money
    account_after: VendAccount

    @property
    def fixed_amount(self) -> Money:
        return self.charges.fixed_amount

    @property
    def energy_amount(self) -> Money:
        return self.charges.energy_amount

    @property
    def levy_amount(self) -> Money:
        return self.charges.levy_amount

    @property
    def tax_amount(self) -> Money:
        return self.charges.tax_amount

    @property
    def total_charged(self) -> Money:
        """Fixed + energy + levies + VAT: what the customer paid for supply."""
        return self.charges.total

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready breakdown to store with the vend and print on the receipt."""
        return {
            "tariff_code": self.tariff_code,
            "effective_from": self.effective_from.isoformat(),
            "at": self.at.isoformat(),
            "currency": self.tendered.currency.code,
            "tendered_minor": self.tendered.minor,
            "carry_in_minor": self.carry_in.minor,
            "debt_recovered_minor": self.debt_recovered.minor,
            "units_kwh": str(self.units_kwh),
            "free_units_kwh": str(self.free_units_kwh),
            "carry_out_minor": self.carry_out.minor,
            "charges": self.charges.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything about a vend that does not depend on the amount tendered."""

    tariff: Tariff
    account: VendAccount
    at: datetime
    version: TariffVersion
    band: str | None
    month_to_date: Fraction
    accruals: tuple[Accrual, ...]
    charged_through: date | None
    curve: UsageCostCurve

    def funds(self, tendered: Money) -> tuple[Money, Money]:
        recovered = recover_from_purchase(tendered, self.account.debt, self.account.debt_recovery)
        return recovered, tendered + self.account.carry_over - recovered

    def charges(self, steps: int) -> Charges:
        usage = Usage(
            self.version,
            self.month_to_date,
            steps * exact(UNIT_STEP_KWH),
            self.band,
            self.account.terms.free_units_eligible,
        )
        return compute_charges(self.tariff.currency, [usage], self.accruals)

    def cost(self, steps: int) -> int:
        return self.curve.total(steps * exact(UNIT_STEP_KWH))

    def exact_cost(self, kwh: Fraction) -> Fraction:
        return self.curve.exact(kwh)

    def estimate_steps(self, funds: Money) -> int:
        """Where the unrounded cost reaches `funds`: it is linear between price breaks,
        so a walk over the breaks finds it with a handful of evaluations."""
        budget = Fraction(funds.minor)
        breaks = [
            b - self.month_to_date
            for b in price_breaks(self.version, self.band, self.account.terms.free_units_eligible)
            if b > self.month_to_date
        ]
        lo_kwh, lo_cost = Fraction(0), self.exact_cost(Fraction(0))
        for hi_kwh in [*breaks, None]:
            probe = lo_kwh + 1 if hi_kwh is None else hi_kwh
            hi_cost = self.exact_cost(probe)
            if hi_kwh is not None and hi_cost <= budget:
                lo_kwh, lo_cost = hi_kwh, hi_cost
                continue
            if hi_cost == lo_cost:
                if hi_kwh is None:
                    raise NoChargeableRate("the tariff sells energy without a price limit")
                # A free stretch: it costs nothing, whatever rounding makes of the rest.
                return math.floor(hi_kwh / exact(UNIT_STEP_KWH))
            kwh = lo_kwh + (budget - lo_cost) * (probe - lo_kwh) / (hi_cost - lo_cost)
            return max(0, math.floor(kwh / exact(UNIT_STEP_KWH)))
        raise AssertionError("unreachable: the last break is unbounded")

    def most_steps(self, funds: Money) -> int:
        """The most 0.1 kWh steps whose cost fits in `funds` (cost(0) must fit).

        Starts from the unrounded estimate, which rounding can move by a few steps only,
        and gallops out from it to bracket the answer before bisecting.
        """
        guess = self.estimate_steps(funds)
        if self.cost(guess) <= funds.minor:
            lo, step = guess, 1
            while self.cost(guess + step) <= funds.minor:
                lo, step = guess + step, step * 2
                if guess + step > _MAX_STEPS:
                    raise NoChargeableRate("the tariff sells energy without a price limit")
            hi = guess + step
        else:
            hi, step = guess, 1
            while guess - step > 0 and self.cost(guess - step) > funds.minor:
                hi, step = guess - step, step * 2
            lo = max(0, guess - step)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.cost(mid) <= funds.minor:
                lo = mid
            else:
                hi = mid
        return lo


def price_vend(
    tariff: Tariff, tendered: Money, account: VendAccount, at: datetime
) -> VendBreakdown:
    """Price a token vend of `tendered` (VAT-inclusive money) at aware instant `at`.

    Raises CurrencyMismatch, InvalidAmount (negative amount), InvalidAccountState,
    NaiveDatetime, PurchaseOutOfOrder (`at` before the last purchase), NoTariffInForce,
    MissingCapacity, NoChargeableRate (the band in force is free) and AmountBelowMinimum
    (carrying the minimum amount) when the money does not cover the debt share and the
    charges due. Pure: the caller stores `account_after` with the vend.
    """
    plan = _plan(tariff, account, at)
    if tendered.currency != tariff.currency:
        raise CurrencyMismatch(
            f"tendered {tendered.currency.code} on a {tariff.currency.code} tariff"
        )
    if tendered.minor < 0:
        raise InvalidAmount(f"amount tendered must not be negative, got {tendered}")
    recovered, funds = plan.funds(tendered)
    if plan.cost(0) > funds.minor:
        minimum = minimum_tender(tariff, account, at)
        raise AmountBelowMinimum(
            f"{tendered} does not cover the debt share and charges due; minimum {minimum}",
            minimum,
        )
    steps = plan.most_steps(funds)
    charges = plan.charges(steps)
    units = units_from_steps(steps)
    carry_out = funds - charges.total
    after = replace(
        account,
        debt=account.debt - recovered,
        carry_over=carry_out,
        month_to_date_kwh=fraction_to_decimal(plan.month_to_date) + units,
        last_purchase_at=plan.at,
        fixed_charged_through=plan.charged_through,
    )
    return VendBreakdown(
        tariff_code=tariff.code,
        effective_from=plan.version.effective_from,
        at=plan.at,
        tendered=tendered,
        carry_in=account.carry_over,
        debt_recovered=recovered,
        charges=charges,
        units_kwh=units,
        free_units_kwh=fraction_to_decimal(charges.free_kwh),
        carry_out=carry_out,
        account_after=after,
    )


def price_units(tariff: Tariff, account: VendAccount, at: datetime, units_kwh: Decimal) -> Charges:
    """What vending exactly `units_kwh` (a multiple of 0.1 kWh) at `at` would charge,
    including the fixed charges due: the cost function `price_vend` inverts. Useful for
    a "buy N kWh" counter and for checking that a vend gave the most units it could.

    Raises InvalidAmount for negative units or units finer than 0.1 kWh, and as
    `price_vend` does for a bad account, tariff or instant.
    """
    return _plan(tariff, account, at).charges(_steps(units_kwh))


def minimum_tender(tariff: Tariff, account: VendAccount, at: datetime) -> Money:
    """The smallest amount that vends at least 0.1 kWh at `at` (for a pre-vend lookup).

    It covers the debt share taken from it, the charges due and the price of 0.1 kWh,
    less the change carried; zero when carried change or free units already suffice.
    Raises as `price_vend` does for a bad account, tariff or instant.
    """
    return tender_for_units(tariff, account, at, UNIT_STEP_KWH)


def tender_for_units(
    tariff: Tariff, account: VendAccount, at: datetime, units_kwh: Decimal
) -> Money:
    """The smallest amount whose vend at `at` gives at least `units_kwh` (a multiple of
    0.1 kWh): "how much must I pay for 100 kWh?", debt share and charges due included.

    Raises InvalidAmount for units that are negative or finer than 0.1 kWh, and as
    `price_vend` does for a bad account, tariff or instant.
    """
    steps = _steps(units_kwh)
    plan = _plan(tariff, account, at)
    need = plan.cost(steps)

    def enough(amount: int) -> bool:
        return plan.funds(Money(amount, tariff.currency))[1].minor >= need

    if enough(0):
        return Money.zero(tariff.currency)
    lo, hi = 0, 1
    while not enough(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return Money(hi, tariff.currency)


def _steps(units_kwh: Decimal) -> int:
    if not units_kwh.is_finite():
        raise InvalidAmount(f"units must be a finite number of kWh, got {units_kwh}")
    steps = exact(units_kwh) / exact(UNIT_STEP_KWH)
    if steps < 0 or steps.denominator != 1:
        raise InvalidAmount(f"units must be a non-negative multiple of 0.1 kWh, got {units_kwh}")
    return int(steps)


def _plan(tariff: Tariff, account: VendAccount, at: datetime) -> _Plan:
    instant = localtime.require_aware(at, "at")
    _check_account(tariff, account, instant)
    tz = tariff.tz
    version = tariff.version_at(instant)
    wall = localtime.wall_clock(instant, tz)
    band = None
    if isinstance(version.energy, TimeOfUse):
        band = version.energy.vend_band(wall)
        if version.energy.band_rates[band] == 0:
            raise NoChargeableRate(f"band {band!r} is free: it cannot be sold as units")
    last = account.last_purchase_at
    same_month = last is not None and localtime.same_local_month(last, instant, tz)
    month_to_date = exact(account.month_to_date_kwh) if same_month else Fraction(0)
    accruals, charged_through = _fixed_accruals(tariff, version, account, wall.date())
    curve = UsageCostCurve(
        tariff.currency,
        version,
        month_to_date,
        band,
        account.terms.free_units_eligible,
        accruals,
    )
    return _Plan(
        tariff, account, instant, version, band, month_to_date, accruals, charged_through, curve
    )


def _check_account(tariff: Tariff, account: VendAccount, at: datetime) -> None:
    for name in ("debt", "carry_over"):
        amount: Money = getattr(account, name)
        if amount.currency != tariff.currency:
            raise CurrencyMismatch(
                f"account {name} in {amount.currency.code} on a {tariff.currency.code} tariff"
            )
        if amount.minor < 0:
            raise InvalidAccountState(f"account {name} must not be negative, got {amount}")
    mtd = account.month_to_date_kwh
    if not mtd.is_finite() or mtd < 0:
        raise InvalidAccountState(f"month_to_date_kwh must be >= 0, got {mtd}")
    if account.last_purchase_at is not None:
        last = localtime.require_aware(account.last_purchase_at, "last_purchase_at")
        if at < last:
            raise PurchaseOutOfOrder(
                f"purchase at {at.isoformat()} precedes the last one at {last.isoformat()}"
            )


def _fixed_accruals(
    tariff: Tariff, version: TariffVersion, account: VendAccount, today: date
) -> tuple[tuple[Accrual, ...], date | None]:
    """The monthly-charge shares due at a purchase on local date `today`, and the new
    `fixed_charged_through` date."""
    through = account.fixed_charged_through
    if not version.fixed_charges and version.capacity is None:
        return (), through
    kva = account.terms.capacity_kva
    if version.fixed_charge_mode is FixedChargeMode.FIRST_PURCHASE_OF_MONTH:
        if through is not None and through >= today.replace(day=1):
            return (), through
        month_end = localtime.next_month_start(today) - timedelta(days=1)
        return (Accrual(version, Fraction(1), kva),), max(month_end, through or month_end)
    # Pro rata: every unpaid day up to today carries its day's share of its own version.
    day = today if through is None else through + timedelta(days=1)
    shares: dict[date, tuple[TariffVersion, Fraction]] = {}
    while day <= today:
        try:
            v = tariff.version_on(day)
        except NoTariffInForce:
            # Days before the tariff existed owe nothing under it.
            day += timedelta(days=1)
            continue
        share = Fraction(1, localtime.days_in_month(day))
        prev = shares.get(v.effective_from, (v, Fraction(0)))[1]
        shares[v.effective_from] = (v, prev + share)
        day += timedelta(days=1)
    accruals = tuple(
        Accrual(v, share, kva)
        for v, share in shares.values()
        if v.fixed_charges or v.capacity is not None
    )
    return accruals, max(today, through) if through is not None else today
