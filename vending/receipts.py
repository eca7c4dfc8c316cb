"""Receipts: the plain text a counter printer prints and a printable HTML page.

A receipt shows the utility, vending point, clerk, receipt number, the date in the
utility's local time, the meter, the customer, every breakdown line, the units and the
token in groups of four digits, after the key change tokens when the vend handed out a
key change (vending.key_changes: they must be entered first). A reprint is marked COPY
(with its copy number); a reversed vend is marked REVERSED and its token is not shown
(its key change tokens still are: the key change stands).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

from jinja2 import Environment, StrictUndefined, select_autoescape
from sqlalchemy import BigInteger, String, Table, bindparam, func, select
from sqlalchemy.orm import Session

from headend.interface import MeterSummary, find_meter
from protocols.sts import group_digits
from vending.models import Account, Customer, TariffRecord, Vend, VendingPoint

WIDTH = 40


@dataclass(frozen=True, slots=True)
class ReceiptLine:
    label: str
    amount: str
    kwh: str | None = None


@dataclass(frozen=True, slots=True)
class ReceiptParts:
    """What a receipt prints beside the vend row: its account, customer, vending point
    (none for a channel's vend) and the tariff's time zone."""

    account_number: str
    customer_name: str
    point_name: str | None
    point_code: str | None
    timezone: str | None


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a receipt shows; money as major-unit text in ``currency``."""

    utility: str
    vending_point: str
    clerk: str
    receipt_number: str
    local_time: datetime
    meter_number: str
    customer: str
    account_number: str
    currency: str
    tendered: str
    lines: tuple[ReceiptLine, ...]
    debt_recovered: str
    change_carried: str
    units_kwh: str
    token_grouped: str | None
    payment_method: str
    copy_number: int = 0
    reversed: bool = False
    # Grouped, in entry order; shown even on a reversed vend: the key change stands.
    key_change_tokens: tuple[str, ...] = ()

    @property
    def is_copy(self) -> bool:
        return self.copy_number > 0


def build_receipt(
    session: Session,
    vend: Vend,
    *,
    utility: str,
    copy_number: int = 0,
    meter: MeterSummary | None = None,
    parts: ReceiptParts | None = None,
) -> Receipt:
    """The receipt of ``vend`` (``copy_number`` > 0 for a reprint). ``meter`` and
    ``parts``: the vend's meter and receipt parts when the caller holds them (each saves
    a query)."""
    if meter is None or meter.id != vend.meter_id:
        meter = find_meter(session, meter_id=vend.meter_id)
    breakdown: dict[str, Any] = vend.breakdown
    if parts is None:
        # Account, customer, vending point and tariff time zone in one query.
        row = (
            session.connection()
            .execute(
                _PARTS,
                {
                    "account_id": vend.account_id,
                    "point_id": vend.vending_point_id,
                    "tariff_code": breakdown.get("tariff_code"),
                },
            )
            .one()
        )
        parts = ReceiptParts(*row)
    zone = ZoneInfo(parts.timezone or "UTC")
    lines = tuple(
        ReceiptLine(label=line["label"], amount=line["amount"], kwh=line.get("kwh"))
        for line in breakdown.get("lines", [])
    )
    if Decimal(breakdown.get("carry_in", "0")) != 0:
        lines = (ReceiptLine("change from last purchase", breakdown["carry_in"]), *lines)
    reversed_ = vend.status == "reversed"
    return Receipt(
        utility=utility,
        vending_point=(
            f"{parts.point_name} ({parts.point_code})"
            if parts.point_code is not None
            else vend.channel
        ),
        clerk=vend.operator,
        receipt_number=vend.receipt_number,
        local_time=vend.created_at.astimezone(zone),
        meter_number=meter.meter_number or meter.serial if meter else str(vend.meter_id),
        customer=parts.customer_name,
        account_number=parts.account_number,
        currency=vend.currency,
        tendered=breakdown["tendered"],
        lines=lines,
        debt_recovered=breakdown["debt_recovered"],
        change_carried=breakdown["carry_out"],
        units_kwh=_kwh(vend.units_kwh),
        token_grouped=(
            group_digits(vend.token_digits) if vend.token_digits and not reversed_ else None
        ),
        payment_method=vend.payment_method,
        copy_number=copy_number,
        reversed=reversed_,
        key_change_tokens=tuple(group_digits(t) for t in breakdown.get("key_change_tokens", ())),
    )


_accounts = cast(Table, Account.__table__)
_customers = cast(Table, Customer.__table__)
_points = cast(Table, VendingPoint.__table__)
_tariffs = cast(Table, TariffRecord.__table__)
# ReceiptParts' fields, in order.
_PARTS = (
    select(
        _accounts.c.account_number,
        _customers.c.name.label("customer_name"),
        _points.c.name.label("point_name"),
        _points.c.code.label("point_code"),
        _tariffs.c.timezone,
    )
    .select_from(_accounts)
    .join(_customers, _customers.c.id == _accounts.c.customer_id)
    .outerjoin(_points, _points.c.id == bindparam("point_id", type_=BigInteger()))
    .outerjoin(
        _tariffs,
        _tariffs.c.code
        == func.coalesce(bindparam("tariff_code", type_=String()), _accounts.c.tariff_code),
    )
    .where(_accounts.c.id == bindparam("account_id"))
)


def _kwh(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.1")))


_env = Environment(
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _row(label: str, value: str, width: int = WIDTH) -> str:
    """``label .... value`` on one line of ``width`` characters (label cut if needed)."""
    room = width - len(value) - 1
    return f"{label[:room]:<{room}} {value}"


def render_text(receipt: Receipt) -> str:
    """The receipt for a 40-column counter printer."""
    out = [receipt.utility.center(WIDTH).rstrip()]
    if receipt.is_copy:
        out.append(f"*** COPY {receipt.copy_number} ***".center(WIDTH).rstrip())
    if receipt.reversed:
        out.append("*** REVERSED - TOKEN VOID ***".center(WIDTH).rstrip())
    out += [
        "-" * WIDTH,
        _row("Vending point", receipt.vending_point),
        _row("Clerk", receipt.clerk),
        _row("Receipt", receipt.receipt_number),
        _row("Date", receipt.local_time.strftime("%Y-%m-%d %H:%M %Z")),
        _row("Meter", receipt.meter_number),
        _row("Customer", receipt.customer),
        _row("Account", receipt.account_number),
        _row("Paid by", receipt.payment_method),
        "-" * WIDTH,
        _row(f"Amount tendered ({receipt.currency})", receipt.tendered),
        _row("Debt recovered", receipt.debt_recovered),
    ]
    for line in receipt.lines:
        label = f"{line.label} {line.kwh} kWh" if line.kwh is not None else line.label
        out.append(_row(label, line.amount))
    out += [
        _row("Change carried to next purchase", receipt.change_carried),
        "-" * WIDTH,
        _row("Units", f"{receipt.units_kwh} kWh"),
    ]
    if receipt.key_change_tokens:
        out += [
            "KEY CHANGE - ENTER THESE FIRST".center(WIDTH).rstrip(),
            *(
                f"{index}. {token}".center(WIDTH).rstrip()
                for index, token in enumerate(receipt.key_change_tokens, start=1)
            ),
        ]
    if receipt.token_grouped is not None:
        out += ["TOKEN".center(WIDTH).rstrip(), receipt.token_grouped.center(WIDTH).rstrip()]
    out.append("-" * WIDTH)
    return "\n".join(out) + "\n"


_HTML = _env.from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Receipt {{ r.receipt_number }}{% if r.is_copy %} (copy){% endif %}</title>
<style>
body { font-family: monospace; max-width: 22em; margin: 1em auto; }
table { width: 100%; border-collapse: collapse; }
td.n { text-align: right; }
.token { font-size: 1.4em; font-weight: bold; text-align: center; letter-spacing: .1em; }
.mark { text-align: center; font-weight: bold; border: 2px solid; padding: .2em; }
@media print { body { margin: 0; } }
</style></head>
<body>
<h1 style="text-align:center;font-size:1.2em">{{ r.utility }}</h1>
{% if r.is_copy %}<p class="mark">COPY {{ r.copy_number }}</p>{% endif %}
{% if r.reversed %}<p class="mark">REVERSED - TOKEN VOID</p>{% endif %}
<table>
<tr><td>Vending point</td><td class="n">{{ r.vending_point }}</td></tr>
<tr><td>Clerk</td><td class="n">{{ r.clerk }}</td></tr>
<tr><td>Receipt</td><td class="n">{{ r.receipt_number }}</td></tr>
<tr><td>Date</td><td class="n">{{ r.local_time.strftime("%Y-%m-%d %H:%M %Z") }}</td></tr>
<tr><td>Meter</td><td class="n">{{ r.meter_number }}</td></tr>
<tr><td>Customer</td><td class="n">{{ r.customer }}</td></tr>
<tr><td>Account</td><td class="n">{{ r.account_number }}</td></tr>
<tr><td>Paid by</td><td class="n">{{ r.payment_method }}</td></tr>
</table>
<hr>
<table>
<tr><td>Amount tendered ({{ r.currency }})</td><td class="n">{{ r.tendered }}</td></tr>
<tr><td>Debt recovered</td><td class="n">{{ r.debt_recovered }}</td></tr>
{% for line in r.lines %}
<tr><td>{{ line.label }}{% if line.kwh is not none %} {{ line.kwh }} kWh{% endif %}</td>
<td class="n">{{ line.amount }}</td></tr>
{% endfor %}
<tr><td>Change carried to next purchase</td><td class="n">{{ r.change_carried }}</td></tr>
<tr><td><b>Units</b></td><td class="n"><b>{{ r.units_kwh }} kWh</b></td></tr>
</table>
{% if r.key_change_tokens %}<hr><p style="text-align:center">KEY CHANGE - ENTER THESE FIRST</p>
<ol class="kct">
{% for token in r.key_change_tokens %}<li class="token">{{ token }}</li>
{% endfor %}
</ol>{% endif %}
{% if r.token_grouped %}<hr><p style="text-align:center">TOKEN</p>
<p class="token">{{ r.token_grouped }}</p>{% endif %}
</body></html>
"""
)


def render_html(receipt: Receipt) -> str:
    """A printable HTML page (every text escaped)."""
    return _HTML.render(r=receipt)
