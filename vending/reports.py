"""Daily sales reports: by vending point and by tariff, with units sold and debt
recovered, as JSON-ready rows or CSV.

Days are calendar days in the utility's time zone. Reversed vends are left out of the
sales figures and counted separately, so a day's figures are what the utility kept.
Money is summed in minor units per currency and shown as major-unit text.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from vending import localtime
from vending.errors import VendingError
from vending.models import Vend, VendingPoint
from vending.money import Currency, Money

MAX_REPORT_DAYS = 366


@dataclass(frozen=True, slots=True)
class SalesRow:
    """One day and one group (a vending point code or a tariff code) in one currency."""

    day: date
    group: str
    currency: str
    vends: int
    amount: str
    units_kwh: str
    debt_recovered: str
    reversed_vends: int
    reversed_amount: str


@dataclass(frozen=True, slots=True)
class SalesReport:
    date_from: date
    date_to: date
    timezone: str
    by_vending_point: tuple[SalesRow, ...]
    by_tariff: tuple[SalesRow, ...]

    def as_json(self) -> dict[str, Any]:
        def rows(items: tuple[SalesRow, ...]) -> list[dict[str, Any]]:
            return [{**asdict(r), "day": r.day.isoformat()} for r in items]

        return {
            "date_from": self.date_from.isoformat(),
            "date_to": self.date_to.isoformat(),
            "timezone": self.timezone,
            "by_vending_point": rows(self.by_vending_point),
            "by_tariff": rows(self.by_tariff),
        }

    def as_csv(self) -> str:
        """One CSV table: a ``grouping`` column says which breakdown each row is in."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        fields = [
            "day",
            "group",
            "currency",
            "vends",
            "amount",
            "units_kwh",
            "debt_recovered",
            "reversed_vends",
            "reversed_amount",
        ]
        writer.writerow(["grouping", *fields])
        for grouping, items in (
            ("vending_point", self.by_vending_point),
            ("tariff", self.by_tariff),
        ):
            for row in items:
                values = asdict(row)
                writer.writerow([grouping, *(str(values[f]) for f in fields)])
        return out.getvalue()


class _Acc:
    __slots__ = ("amount", "debt", "kwh", "rev", "rev_amount", "vends")

    def __init__(self) -> None:
        self.vends = 0
        self.amount = 0
        self.kwh = Decimal(0)
        self.debt = 0
        self.rev = 0
        self.rev_amount = 0


def daily_sales(session: Session, date_from: date, date_to: date, timezone: str) -> SalesReport:
    """Sales per local day from ``date_from`` to ``date_to`` inclusive.

    VendingError invalid_period (end before start, or longer than MAX_REPORT_DAYS),
    invalid_timezone.
    """
    if date_to < date_from or (date_to - date_from).days >= MAX_REPORT_DAYS:
        raise VendingError(
            "invalid_period", f"give date_from <= date_to, at most {MAX_REPORT_DAYS} days"
        )
    try:
        zone = localtime.zone(timezone)
    except localtime.LocalTimeError as exc:
        raise VendingError("invalid_timezone", str(exc)) from None
    start = localtime.day_start(date_from, zone)
    end = localtime.day_start(date_to + timedelta(days=1), zone)
    points: dict[int, str] = {
        row.id: row.code for row in session.execute(select(VendingPoint.id, VendingPoint.code))
    }
    rows = session.execute(
        select(
            Vend.created_at,
            Vend.vending_point_id,
            Vend.channel,
            Vend.currency,
            Vend.tendered_minor,
            Vend.units_kwh,
            Vend.breakdown,
            Vend.status,
        ).where(Vend.created_at >= start, Vend.created_at < end)
    ).all()
    by_point: dict[tuple[date, str, str], _Acc] = defaultdict(_Acc)
    by_tariff: dict[tuple[date, str, str], _Acc] = defaultdict(_Acc)
    for created_at, point_id, channel, currency, minor, kwh, breakdown, status in rows:
        day = created_at.astimezone(zone).date()
        point = points.get(point_id, f"channel:{channel}") if point_id else f"channel:{channel}"
        tariff = str(breakdown.get("tariff_code", "?"))
        debt = Money.parse(breakdown.get("debt_recovered", "0"), Currency.of(currency)).minor
        for acc in (by_point[(day, point, currency)], by_tariff[(day, tariff, currency)]):
            if status == "reversed":
                acc.rev += 1
                acc.rev_amount += minor
            else:
                acc.vends += 1
                acc.amount += minor
                acc.kwh += kwh
                acc.debt += debt
    return SalesReport(
        date_from=date_from,
        date_to=date_to,
        timezone=timezone,
        by_vending_point=_rows(by_point),
        by_tariff=_rows(by_tariff),
    )


def _rows(groups: dict[tuple[date, str, str], _Acc]) -> tuple[SalesRow, ...]:
    out = []
    for (day, group, code), acc in sorted(groups.items()):
        currency = Currency.of(code)

        def text(minor: int, currency: Currency = currency) -> str:
            return str(Money(minor, currency).to_decimal())

        out.append(
            SalesRow(
                day=day,
                group=group,
                currency=code,
                vends=acc.vends,
                amount=text(acc.amount),
                units_kwh=str(acc.kwh.quantize(Decimal("0.1"))),
                debt_recovered=text(acc.debt),
                reversed_vends=acc.rev,
                reversed_amount=text(acc.rev_amount),
            )
        )
    return tuple(out)


def zone_or_error(name: str) -> ZoneInfo:
    try:
        return localtime.zone(name)
    except localtime.LocalTimeError as exc:
        raise VendingError("invalid_timezone", str(exc)) from None
