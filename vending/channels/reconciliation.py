"""Daily reconciliation: a channel's settlement file against our purchases of that day.

The file format (ours and theirs) is CSV, UTF-8, a header line and one line per
purchase::

    reference,amount,time
    BANK-000123,150.00,2026-11-24T09:30:12Z

``amount`` in major units of the channel's currency with at most its minor digits;
``time`` ISO 8601 with a zone. The business day is the UTC date of our purchase's time.
Completed purchases count; reversed ones (and ones refused by an early reversal) do not.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vending.channels.models import (
    Channel,
    ChannelPurchase,
    ReconciliationItem,
    ReconciliationRun,
)
from vending.channels.service import ChannelError
from vending.money import Currency, Money, MoneyError

HEADER = ("reference", "amount", "time")
MAX_LINES = 1_000_000
OUTCOMES = ("matched", "missing_ours", "missing_theirs", "amount_mismatch")


@dataclass(frozen=True, slots=True)
class SettlementLine:
    reference: str
    amount_minor: int
    time: datetime


def statement_csv(session: Session, channel: Channel, business_date: date) -> str:
    """Our completed purchases of the day in the settlement format, oldest first."""
    currency = Currency.of(channel.currency)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for line in _our_lines(session, channel, business_date).values():
        writer.writerow(
            (line.reference, Money(line.amount_minor, currency).to_decimal(), _iso(line.time))
        )
    return out.getvalue()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _our_lines(
    session: Session, channel: Channel, business_date: date
) -> dict[str, SettlementLine]:
    rows = session.execute(
        select(ChannelPurchase.reference, ChannelPurchase.amount_minor, ChannelPurchase.created_at)
        .where(
            ChannelPurchase.channel_id == channel.id,
            ChannelPurchase.business_date == business_date,
            ChannelPurchase.status == "completed",
        )
        .order_by(ChannelPurchase.created_at, ChannelPurchase.id)
    ).all()
    return {r.reference: SettlementLine(r.reference, r.amount_minor, r.created_at) for r in rows}


def parse_settlement(text: str, currency: Currency) -> list[SettlementLine]:
    """The lines of a settlement file; ChannelError invalid_settlement_file naming the
    line at fault (bad header, field count, amount, time, or a repeated reference)."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise ChannelError("invalid_settlement_file", "the file is empty") from None
    except csv.Error as exc:
        raise ChannelError("invalid_settlement_file", f"line 1: {exc}") from None
    if tuple(h.strip().lower() for h in header) != HEADER:
        raise ChannelError(
            "invalid_settlement_file", f"line 1: the header must be {','.join(HEADER)}"
        )
    lines: list[SettlementLine] = []
    seen: set[str] = set()
    try:
        for number, row in enumerate(reader, start=2):
            if not row or all(not field.strip() for field in row):
                continue
            if number > MAX_LINES:
                raise ChannelError("invalid_settlement_file", f"more than {MAX_LINES} lines")
            lines.append(_parse_line(number, row, currency, seen))
    except csv.Error as exc:
        raise ChannelError("invalid_settlement_file", f"line {reader.line_num}: {exc}") from None
    return lines


def _parse_line(number: int, row: list[str], currency: Currency, seen: set[str]) -> SettlementLine:
    def refuse(why: str) -> ChannelError:
        return ChannelError("invalid_settlement_file", f"line {number}: {why}", line=number)

    if len(row) != 3:
        raise refuse(f"expected 3 fields, found {len(row)}")
    reference, amount_text, time_text = (field.strip() for field in row)
    if not reference or len(reference) > 64:
        raise refuse("the reference must be 1 to 64 characters")
    if reference in seen:
        raise refuse(f"reference {reference} appears twice")
    seen.add(reference)
    try:
        amount = Money.parse(amount_text, currency)
    except MoneyError as exc:
        raise refuse(str(exc)) from None
    try:
        moment = datetime.fromisoformat(time_text.replace("Z", "+00:00"))
    except ValueError:
        raise refuse(f"time {time_text!r} is not ISO 8601") from None
    if moment.tzinfo is None:
        raise refuse("the time needs a zone (e.g. Z)")
    return SettlementLine(reference, amount.minor, moment.astimezone(UTC))


def reconcile(
    session: Session, channel: Channel, business_date: date, text: str, now: datetime
) -> ReconciliationRun:
    """Compare the channel's file for ``business_date`` with our purchases; store the run
    and one item per reference. ChannelError invalid_settlement_file."""
    theirs = {
        line.reference: line for line in parse_settlement(text, Currency.of(channel.currency))
    }
    ours = _our_lines(session, channel, business_date)
    counts = dict.fromkeys(OUTCOMES, 0)
    run = ReconciliationRun(
        channel_id=channel.id,
        business_date=business_date,
        file_sha256=hashlib.sha256(text.encode()).hexdigest(),
        uploaded_at=now,
        **counts,
    )
    session.add(run)
    session.flush()
    for reference in sorted(theirs.keys() | ours.keys()):
        their, our = theirs.get(reference), ours.get(reference)
        if our is None:
            outcome = "missing_ours"
        elif their is None:
            outcome = "missing_theirs"
        elif their.amount_minor != our.amount_minor:
            outcome = "amount_mismatch"
        else:
            outcome = "matched"
        counts[outcome] += 1
        session.add(
            ReconciliationItem(
                run_id=run.id,
                reference=reference,
                outcome=outcome,
                their_amount_minor=their.amount_minor if their else None,
                our_amount_minor=our.amount_minor if our else None,
                their_time=their.time if their else None,
                our_time=our.time if our else None,
            )
        )
    run.matched = counts["matched"]
    run.missing_ours = counts["missing_ours"]
    run.missing_theirs = counts["missing_theirs"]
    run.amount_mismatch = counts["amount_mismatch"]
    session.flush()
    return run


def run_document(
    session: Session, channel: Channel, run: ReconciliationRun, *, include_matched: bool = False
) -> dict[str, Any]:
    """A stored run as the API shows it: the counts and every line that needs a look
    (and the matched ones when asked)."""
    currency = Currency.of(channel.currency)

    def major(minor: int | None) -> str | None:
        return None if minor is None else str(Money(minor, currency).to_decimal())

    query = select(ReconciliationItem).where(ReconciliationItem.run_id == run.id)
    if not include_matched:
        query = query.where(ReconciliationItem.outcome != "matched")
    items = session.scalars(query.order_by(ReconciliationItem.reference)).all()
    return {
        "id": run.id,
        "business_date": run.business_date.isoformat(),
        "uploaded_at": run.uploaded_at.isoformat(),
        "file_sha256": run.file_sha256,
        "matched": run.matched,
        "missing_ours": run.missing_ours,
        "missing_theirs": run.missing_theirs,
        "amount_mismatch": run.amount_mismatch,
        "items": [
            {
                "reference": item.reference,
                "outcome": item.outcome,
                "their_amount": major(item.their_amount_minor),
                "our_amount": major(item.our_amount_minor),
                "their_time": _iso(item.their_time) if item.their_time else None,
                "our_time": _iso(item.our_time) if item.our_time else None,
            }
            for item in items
        ],
    }


def find_run(session: Session, channel: Channel, run_id: int) -> ReconciliationRun:
    """A run of this channel; ChannelError reconciliation_not_found."""
    run = session.get(ReconciliationRun, run_id)
    if run is None or run.channel_id != channel.id:
        raise ChannelError("reconciliation_not_found", f"no reconciliation {run_id}")
    return run
