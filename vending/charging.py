"""The charge calculation shared by vend pricing and interval rating.

Both ask the same question -- "what does this energy, used at these month-to-date
positions in these bands, plus these shares of monthly charges, cost under these tariff
versions?" -- and both get the answer from `compute_charges`, so a token vend and the
central-balance rating of the same kWh at the same position cost the same money.

Each tariff version involved is one group: its energy lines (one per free-units /
block / band / flat line), fixed-charge lines, levies and one VAT line. Every line is
computed exactly, then rounded by `money.round_charge` (rule 1); percentage levies and
VAT are computed on the rounded lines they apply to. `exact_minor` keeps the unrounded
value of each line so that callers and tests can check how far rounding moved it.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from fractions import Fraction

from vending.money import Currency, Money, exact, major_to_minor, round_charge
from vending.tariffs import (
    FlatRate,
    MissingCapacity,
    SteppedBlocks,
    TariffVersion,
)

HALF = Fraction(1, 2)


class LineKind(enum.StrEnum):
    FREE_UNITS = "free_units"
    ENERGY = "energy"
    FIXED = "fixed"
    CAPACITY = "capacity"
    DEMAND = "demand"
    LEVY = "levy"
    VAT = "vat"


@dataclass(frozen=True, slots=True)
class ChargeLine:
    """One line of a bill or vend: `amount` is `exact_minor` rounded by rule 1.

    `kwh` is the energy on an energy or levy line (exact), `rate` the tariff figure
    applied (per kWh for energy; per month for fixed, per kVA-month for capacity, per
    kW-month for demand; per kWh for a levy with a per-kWh part, else its percentage;
    percent for VAT), and
    `effective_from` names the tariff version the line was priced under.
    """

    kind: LineKind
    label: str
    amount: Money
    exact_minor: Fraction
    effective_from: date
    kwh: Fraction | None = None
    rate: Decimal | None = None

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form for storing a breakdown (amounts in minor units)."""
        kwh = self.kwh_decimal
        return {
            "kind": self.kind.value,
            "label": self.label,
            "amount_minor": self.amount.minor,
            "effective_from": self.effective_from.isoformat(),
            "kwh": None if kwh is None else str(kwh),
            "rate": None if self.rate is None else str(self.rate),
        }

    @property
    def kwh_decimal(self) -> Decimal | None:
        """`kwh` as a Decimal for display and storage (exact for vend lines, which are
        multiples of 0.1 kWh; rated lines split by time may need rounding at 12 places)."""
        return None if self.kwh is None else fraction_to_decimal(self.kwh)


@dataclass(frozen=True, slots=True)
class Usage:
    """`kwh` used at month-to-date `position` kWh under `version`, in TOU `band` (or
    None when the version has no bands). `free_units` says whether the account gets the
    version's free basic units."""

    version: TariffVersion
    position: Fraction
    kwh: Fraction
    band: str | None
    free_units: bool


@dataclass(frozen=True, slots=True)
class Accrual:
    """`share` of a month's fixed and capacity charges of `version` (e.g. 1/30 for a
    day of a 30-day month); `capacity_kva` is the account's contracted capacity."""

    version: TariffVersion
    share: Fraction
    capacity_kva: Decimal | None


@dataclass(frozen=True, slots=True)
class Demand:
    """`share` of a month's demand charge of `version` on a maximum demand of `kw`."""

    version: TariffVersion
    kw: Fraction
    share: Fraction


@dataclass(frozen=True, slots=True)
class Charges:
    """The priced lines of one vend or one rated interval, in `currency`."""

    currency: Currency
    energy: tuple[ChargeLine, ...]
    fixed: tuple[ChargeLine, ...]
    levies: tuple[ChargeLine, ...]
    tax: tuple[ChargeLine, ...]
    # How far `total` may be from `exact_total` given the number of rounded lines.
    rounding_bound: Fraction

    def _sum(self, lines: Iterable[ChargeLine]) -> Money:
        return Money(sum(line.amount.minor for line in lines), self.currency)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form: currency, lines and totals by kind (minor units)."""
        return {
            "currency": self.currency.code,
            "lines": [line.to_dict() for line in self.lines],
            "energy_minor": self.energy_amount.minor,
            "fixed_minor": self.fixed_amount.minor,
            "levy_minor": self.levy_amount.minor,
            "tax_minor": self.tax_amount.minor,
            "total_minor": self.total.minor,
        }

    @property
    def lines(self) -> tuple[ChargeLine, ...]:
        return self.energy + self.fixed + self.levies + self.tax

    @property
    def energy_amount(self) -> Money:
        return self._sum(self.energy)

    @property
    def fixed_amount(self) -> Money:
        return self._sum(self.fixed)

    @property
    def levy_amount(self) -> Money:
        return self._sum(self.levies)

    @property
    def tax_amount(self) -> Money:
        return self._sum(self.tax)

    @property
    def total(self) -> Money:
        return self._sum(self.lines)

    @property
    def exact_total(self) -> Fraction:
        """The total in minor units had nothing been rounded (exact VAT on exact lines)."""
        return sum((line.exact_minor for line in self.lines), Fraction(0))

    @property
    def energy_kwh(self) -> Fraction:
        return sum((line.kwh for line in self.energy if line.kwh is not None), Fraction(0))

    @property
    def free_kwh(self) -> Fraction:
        return sum(
            (
                line.kwh
                for line in self.energy
                if line.kind is LineKind.FREE_UNITS and line.kwh is not None
            ),
            Fraction(0),
        )


def fraction_to_decimal(value: Fraction, places: int = 12) -> Decimal:
    """`value` as a Decimal: exact when it terminates within `places` decimals,
    otherwise rounded half-even to `places` (display only, never used for money)."""
    scaled = value * 10**places
    result = Decimal(round(scaled)).scaleb(-places).normalize()
    # normalize() writes 50 as 5E+1; keep plain digits for receipts and storage.
    exponent = result.as_tuple().exponent
    return result.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else result


_Regime = tuple[Fraction, tuple[int, str], Decimal]


# Every pricing asks this several times for the same version (an immutable value), so
# the answer is kept; a tuple, so no caller can change the kept answer.
@functools.lru_cache(maxsize=1024)
def _regimes(version: TariffVersion, band: str | None, free_units: bool) -> tuple[_Regime, ...]:
    """Where the price changes along the month's kWh axis: (start kWh, line key, rate).

    Block positions count the whole month's kWh, free units included, so free units are
    the first kWh of the month and block 1 continues after them.
    """
    free = exact(version.free_units_kwh_per_month) if free_units else Fraction(0)
    energy = version.energy
    if isinstance(energy, SteppedBlocks):
        starts = [exact(s) for s in energy.starts()]
        rates = [b.rate_per_kwh for b in energy.blocks]
        labels = [_block_label(energy, i) for i in range(len(energy.blocks))]
    elif isinstance(energy, FlatRate):
        starts, rates, labels = [Fraction(0)], [energy.rate_per_kwh], ["energy"]
    else:
        if band is None or band not in energy.band_rates:
            raise ValueError(f"a time-of-use usage needs one of its bands, got {band!r}")
        starts, rates, labels = [Fraction(0)], [energy.band_rates[band]], [band]
    regimes: list[_Regime] = []
    if free > 0:
        regimes.append((Fraction(0), (0, "free units"), Decimal(0)))
    for i, (start, rate, label) in enumerate(zip(starts, rates, labels, strict=True)):
        # A block wholly inside the free units never applies.
        if i + 1 < len(starts) and starts[i + 1] <= free:
            continue
        regimes.append((max(start, free), (i + 1, label), rate))
    return tuple(regimes)


def price_breaks(version: TariffVersion, band: str | None, free_units: bool) -> list[Fraction]:
    """The month-to-date kWh positions at which the price per kWh changes (ascending)."""
    return [start for start, _key, _rate in _regimes(version, band, free_units)][1:]


def _energy_slices(usage: Usage) -> list[tuple[tuple[int, str], Fraction, Decimal]]:
    """Split a usage at the free-units limit and block thresholds: (line key, kWh, rate)."""
    regimes = _regimes(usage.version, usage.band, usage.free_units)
    slices: list[tuple[tuple[int, str], Fraction, Decimal]] = []
    lo, hi = usage.position, usage.position + usage.kwh
    for j, (start, key, rate) in enumerate(regimes):
        end = regimes[j + 1][0] if j + 1 < len(regimes) else None
        a = max(lo, start)
        b = hi if end is None else min(hi, end)
        if b > a:
            slices.append((key, b - a, rate))
    return slices


def _block_label(blocks: SteppedBlocks, i: int) -> str:
    start = blocks.starts()[i]
    upper = blocks.blocks[i].up_to_kwh
    span = f"{start}-{upper} kWh" if upper is not None else f"above {start} kWh"
    return f"block {i + 1} ({span})"


def compute_charges(
    currency: Currency,
    usages: Sequence[Usage],
    accruals: Sequence[Accrual],
    demands: Sequence[Demand] = (),
) -> Charges:
    """Price `usages`, `accruals` and `demands` (see the module docstring for the rules).

    Fixed, capacity and demand lines are all in `Charges.fixed` (told apart by `kind`).

    Raises MissingCapacity when a version with a capacity charge is accrued for an
    account without contracted kVA.
    """
    by_date = {u.version.effective_from: u.version for u in usages}
    by_date.update({a.version.effective_from: a.version for a in accruals})
    by_date.update({d.version.effective_from: d.version for d in demands})
    versions = sorted(by_date.items(), key=lambda item: item[0])
    energy: list[ChargeLine] = []
    fixed: list[ChargeLine] = []
    levies: list[ChargeLine] = []
    tax: list[ChargeLine] = []
    bound = Fraction(0)
    for eff, version in versions:
        group_energy = _energy_lines(
            currency, eff, [u for u in usages if u.version.effective_from == eff]
        )
        group_fixed = _fixed_lines(
            currency, version, [a for a in accruals if a.version.effective_from == eff]
        ) + _demand_lines(
            currency, version, [d for d in demands if d.version.effective_from == eff]
        )
        chargeable_kwh = sum(
            (line.kwh or Fraction(0) for line in group_energy if line.kind is LineKind.ENERGY),
            Fraction(0),
        )
        energy_rounded = sum((line.amount.minor for line in group_energy), 0)
        energy_exact = sum((line.exact_minor for line in group_energy), Fraction(0))
        energy_err = HALF * len(group_energy)
        fixed_err = HALF * len(group_fixed)

        group_levies: list[ChargeLine] = []
        taxable_err = energy_err + fixed_err
        levy_err_total = Fraction(0)
        has_energy = bool(group_energy)
        for levy in version.levies if has_energy else ():
            per_kwh = chargeable_kwh * major_to_minor(levy.per_kwh, currency)
            pct = exact(levy.percent_of_energy) / 100
            on_rounded = per_kwh + pct * energy_rounded
            group_levies.append(
                ChargeLine(
                    kind=LineKind.LEVY,
                    label=levy.name,
                    amount=Money(round_charge(on_rounded), currency),
                    exact_minor=per_kwh + pct * energy_exact,
                    effective_from=eff,
                    kwh=chargeable_kwh,
                    rate=levy.per_kwh if levy.per_kwh else levy.percent_of_energy,
                )
            )
            err = HALF + pct * energy_err
            levy_err_total += err
            if levy.taxable:
                taxable_err += err

        taxable_lines = group_energy + group_fixed
        taxable_levies = [
            line for line, levy in zip(group_levies, version.levies, strict=False) if levy.taxable
        ]
        base_rounded = sum((line.amount.minor for line in taxable_lines + taxable_levies), 0)
        base_exact = sum((line.exact_minor for line in taxable_lines + taxable_levies), Fraction(0))
        vat_rate = exact(version.vat_percent) / 100
        tax.append(
            ChargeLine(
                kind=LineKind.VAT,
                label=f"VAT {version.vat_percent}%",
                amount=Money(round_charge(base_rounded * vat_rate), currency),
                exact_minor=base_exact * vat_rate,
                effective_from=eff,
                rate=version.vat_percent,
            )
        )
        bound += energy_err + fixed_err + levy_err_total + HALF + vat_rate * taxable_err
        energy += group_energy
        fixed += group_fixed
        levies += group_levies
    return Charges(currency, tuple(energy), tuple(fixed), tuple(levies), tuple(tax), bound)


def _energy_lines(currency: Currency, eff: date, usages: Sequence[Usage]) -> list[ChargeLine]:
    totals: dict[tuple[int, str], list[Fraction]] = {}
    rates: dict[tuple[int, str], Decimal] = {}
    for usage in usages:
        for key, kwh, rate in _energy_slices(usage):
            acc = totals.setdefault(key, [Fraction(0), Fraction(0)])
            acc[0] += kwh
            acc[1] += kwh * major_to_minor(rate, currency)
            rates[key] = rate
    lines = []
    for key in sorted(totals):
        kwh, value = totals[key]
        lines.append(
            ChargeLine(
                kind=LineKind.FREE_UNITS if key[0] == 0 else LineKind.ENERGY,
                label=key[1],
                amount=Money(round_charge(value), currency),
                exact_minor=value,
                effective_from=eff,
                kwh=kwh,
                rate=rates[key],
            )
        )
    return lines


def _demand_lines(
    currency: Currency, version: TariffVersion, demands: Sequence[Demand]
) -> list[ChargeLine]:
    if not demands or version.demand is None:
        return []
    rate = major_to_minor(version.demand.rate_per_kw_month, currency)
    value = sum((d.kw * d.share * rate for d in demands), Fraction(0))
    return [
        ChargeLine(
            kind=LineKind.DEMAND,
            label="demand charge",
            amount=Money(round_charge(value), currency),
            exact_minor=value,
            effective_from=version.effective_from,
            rate=version.demand.rate_per_kw_month,
        )
    ]


def _fixed_lines(
    currency: Currency, version: TariffVersion, accruals: Sequence[Accrual]
) -> list[ChargeLine]:
    if not accruals:
        return []
    share = sum((a.share for a in accruals), Fraction(0))
    lines = []
    for fc in version.fixed_charges:
        value = share * major_to_minor(fc.amount_per_month, currency)
        lines.append(
            ChargeLine(
                kind=LineKind.FIXED,
                label=fc.name,
                amount=Money(round_charge(value), currency),
                exact_minor=value,
                effective_from=version.effective_from,
                rate=fc.amount_per_month,
            )
        )
    if version.capacity is not None:
        value = Fraction(0)
        for a in accruals:
            if a.capacity_kva is None:
                raise MissingCapacity(
                    "the tariff has a capacity charge but the account has no contracted kVA"
                )
            value += (
                a.share
                * exact(a.capacity_kva)
                * major_to_minor(version.capacity.rate_per_kva_month, currency)
            )
        lines.append(
            ChargeLine(
                kind=LineKind.CAPACITY,
                label="capacity charge",
                amount=Money(round_charge(value), currency),
                exact_minor=value,
                effective_from=version.effective_from,
                rate=version.capacity.rate_per_kva_month,
            )
        )
    return lines


class UsageCostCurve:
    """`compute_charges` totals for one usage as its kWh vary, with the rest fixed.

    A vend searches for the most 0.1 kWh steps its money buys, pricing a dozen candidate
    quantities; this precomputes everything that does not depend on the quantity (price
    breaks, fixed lines, other versions' groups) and applies the same lines and rounding
    as `compute_charges`, without building lines. Tests hold the two equal.

    The quantity-dependent part runs on integers (kWh counted in `1/unit` kWh, every
    rate over one common denominator) and rounds with `_round_half_even`, which is
    `round_charge` on the same exact value: Fraction arithmetic normalises every
    intermediate result and was two fifths of a vend's pricing.
    """

    def __init__(
        self,
        currency: Currency,
        version: TariffVersion,
        position: Fraction,
        band: str | None,
        free_units: bool,
        accruals: Sequence[Accrual],
    ) -> None:
        prices = _curve_prices(currency, version, band, free_units)
        self._prices = prices
        # Every kWh figure here is a whole number of 1/unit kWh.
        self._unit = math.lcm(prices.unit, position.denominator)
        self._position = position.numerator * (self._unit // position.denominator)
        scale = self._unit // prices.unit
        self._pieces = [
            (start * scale, None if end is None else end * scale, chargeable, rate)
            for start, end, chargeable, rate in prices.pieces
        ]
        eff = version.effective_from
        same = [a for a in accruals if a.version.effective_from == eff]
        other = compute_charges(
            currency, [], [a for a in accruals if a.version.effective_from != eff]
        )
        fixed = _fixed_lines(currency, version, same)
        self._fixed_total = sum(line.amount.minor for line in fixed)
        fixed_exact = sum((line.exact_minor for line in fixed), Fraction(0))
        self._other_total = other.total.minor
        self._exact_base = other.exact_total + fixed_exact * (1 + prices.vat)

    def _slices(self, kwh: Fraction) -> tuple[int, list[tuple[int, bool, int]]]:
        """The unit the slices count kWh in, and each price's (kWh, chargeable, rate)."""
        unit, scale = self._unit, 1
        if unit % kwh.denominator:
            unit = math.lcm(unit, kwh.denominator)
            scale = unit // self._unit
        lo = self._position * scale
        hi = lo + kwh.numerator * (unit // kwh.denominator)
        out = []
        for start, end, chargeable, rate in self._pieces:
            a = max(lo, start * scale)
            b = hi if end is None else min(hi, end * scale)
            if b > a:
                out.append((b - a, chargeable, rate))
        return unit, out

    def total(self, kwh: Fraction) -> int:
        """The rounded total, in minor units, of `kwh` at the usage's position."""
        unit, slices = self._slices(kwh)
        prices = self._prices
        per_energy_line = unit * prices.rate_denominator
        energy = sum(_round_half_even(k * rate, per_energy_line) for k, _c, rate in slices)
        chargeable = sum(k for k, c, _r in slices if c)
        levies = taxable = 0
        for pn, pd, qn, qd, is_taxable in prices.levies if slices else ():
            # chargeable/unit x pn/pd + qn/qd x energy, over one denominator.
            amount = _round_half_even(
                chargeable * pn * qd + qn * energy * unit * pd, unit * pd * qd
            )
            levies += amount
            taxable += amount if is_taxable else 0
        vat = _round_half_even(
            (energy + self._fixed_total + taxable) * prices.vat.numerator, prices.vat.denominator
        )
        return self._other_total + energy + self._fixed_total + levies + vat

    def exact(self, kwh: Fraction) -> Fraction:
        """The unrounded total, in minor units (linear between price breaks)."""
        unit, slices = self._slices(kwh)
        if not slices:
            return self._exact_base
        prices = self._prices
        energy = Fraction(sum(k * rate for k, _c, rate in slices), unit * prices.rate_denominator)
        chargeable = Fraction(sum(k for k, c, _r in slices if c), unit)
        return self._exact_base + energy * prices.per_energy + chargeable * prices.per_kwh


@dataclass(frozen=True, slots=True)
class _CurvePrices:
    """What a `UsageCostCurve` needs of a tariff version, in integers where it can."""

    # kWh figures below count 1/unit kWh.
    unit: int
    # (start, end or None, chargeable, rate x rate_denominator in minor units per kWh)
    pieces: tuple[tuple[int, int | None, bool, int], ...]
    rate_denominator: int
    # (per kWh numerator, denominator, percent of energy numerator, denominator, taxable)
    levies: tuple[tuple[int, int, int, int, bool], ...]
    vat: Fraction
    # The exact total is linear in the energy's exact cost E and its chargeable kWh C
    # (levies and VAT are shares of them): base + E x per_energy + C x per_kwh.
    per_energy: Fraction
    per_kwh: Fraction


# Like _regimes: the same version is priced on every vend.
@functools.lru_cache(maxsize=1024)
def _curve_prices(
    currency: Currency, version: TariffVersion, band: str | None, free_units: bool
) -> _CurvePrices:
    regimes = _regimes(version, band, free_units)
    starts = [start for start, _key, _rate in regimes]
    rates = [major_to_minor(rate, currency) for _start, _key, rate in regimes]
    unit = math.lcm(*(x.denominator for x in starts))
    rate_denominator = math.lcm(*(r.denominator for r in rates))
    ends: list[Fraction | None] = [*starts[1:], None]
    pieces = tuple(
        (
            start.numerator * (unit // start.denominator),
            None if end is None else end.numerator * (unit // end.denominator),
            key[0] != 0,
            rate.numerator * (rate_denominator // rate.denominator),
        )
        for (start, key, _r), end, rate in zip(regimes, ends, rates, strict=True)
    )
    levies = [
        (major_to_minor(lv.per_kwh, currency), exact(lv.percent_of_energy) / 100, lv.taxable)
        for lv in version.levies
    ]
    vat = exact(version.vat_percent) / 100
    taxable_pct = sum((pct for _p, pct, taxable in levies if taxable), Fraction(0))
    taxable_per_kwh = sum((p for p, _pct, taxable in levies if taxable), Fraction(0))
    return _CurvePrices(
        unit=unit,
        pieces=pieces,
        rate_denominator=rate_denominator,
        levies=tuple(
            (per_kwh.numerator, per_kwh.denominator, pct.numerator, pct.denominator, taxable)
            for per_kwh, pct, taxable in levies
        ),
        vat=vat,
        per_energy=1 + sum((pct for _p, pct, _t in levies), Fraction(0)) + vat * (1 + taxable_pct),
        per_kwh=sum((p for p, _pct, _t in levies), Fraction(0)) + vat * taxable_per_kwh,
    )


def _round_half_even(numerator: int, denominator: int) -> int:
    """`round_charge(Fraction(numerator, denominator))` for a positive denominator."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2):
        quotient += 1
    return quotient
