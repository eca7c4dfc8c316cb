"""The head-end's narrow public interface for the money side (vending, balance engine).

Other packages call these functions with their own session (same database); they never
query head-end tables themselves.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from headend.commands.models import MeterCommand
from headend.models import ConsumptionEventRecord, Meter, MeterEventRecord, StreamOffset
from headend.registry import normalise_meter_number
from protocols.mqtt import EventKind
from protocols.quantities import Quantity

__all__ = [
    "MAX_CONSUMPTION_BATCH",
    "SUMMARY_COLUMNS",
    "CommandOutcome",
    "ConsumptionEvent",
    "MeterSummary",
    "OffsetError",
    "command_outcomes",
    "commit_offset",
    "find_meter",
    "latest_consumption",
    "load_offset",
    "meter_number_column",
    "move_meter_key",
    "normalise_meter_number",
    "read_consumption",
    "summarise_meter",
    "token_accepted",
]


@dataclass(frozen=True, slots=True)
class MeterSummary:
    """What vending needs to know about a meter."""

    id: int
    serial: str
    meter_number: str | None
    prepaid_mode: str
    lifecycle: str
    supply_group_code: str | None
    tariff_index: str | None
    key_revision: int | None


def find_meter(
    session: Session,
    *,
    meter_number: str | None = None,
    meter_id: int | None = None,
    fresh: bool = False,
) -> MeterSummary | None:
    """The meter with this STS meter number (DRN or PAN, as typed) or id, or None.

    ``fresh`` reads the row again even if the session holds it (what another transaction
    committed since, e.g. a key change completed while this one waited for a lock); the
    meter object the session may hold is left as it was.

    Raises ValueError for a meter number that cannot be one (wrong length, bad check
    digit, unknown IIN).
    """
    if meter_number is not None:
        number = normalise_meter_number(meter_number)
        return _summary(session.execute(_BY_NUMBER, {"number": number}).first())
    if meter_id is None:
        raise ValueError("give a meter_number or a meter_id")
    if fresh:
        return _summary(session.execute(_BY_ID, {"summary_meter_id": meter_id}).first())
    # By primary key: a meter the session already holds costs no query (a select would
    # return that same object anyway).
    meter = session.get(Meter, meter_id)
    return None if meter is None else summarise_meter(meter)


# Built once, and the summary's columns only (no Meter object loaded): every vend looks
# its meter up by number, and again (fresh) once its key change row is locked.
_SUMMARY_COLUMNS = (
    Meter.id,
    Meter.serial,
    Meter.meter_number,
    Meter.prepaid_mode,
    Meter.lifecycle,
    Meter.supply_group_code,
    Meter.tariff_index,
    Meter.key_revision,
)
# For callers that join the meter into a query of their own (a vend reads its meter with
# the account it locks): the summary's columns in field order, the first the meter's id,
# and the column a meter number is matched on (normalised first).
SUMMARY_COLUMNS = _SUMMARY_COLUMNS
meter_number_column = Meter.meter_number
_BY_NUMBER = select(*_SUMMARY_COLUMNS).where(Meter.meter_number == bindparam("number"))
_BY_ID = select(*_SUMMARY_COLUMNS).where(Meter.id == bindparam("summary_meter_id"))


def _summary(row: Any) -> MeterSummary | None:
    # The row's columns are the summary's fields, in order.
    return None if row is None else MeterSummary(*row)


def summarise_meter(meter: Meter) -> MeterSummary:
    """The summary of a meter row loaded by the caller (e.g. joined with its account)."""
    return MeterSummary(
        id=meter.id,
        serial=meter.serial,
        meter_number=meter.meter_number,
        prepaid_mode=meter.prepaid_mode,
        lifecycle=meter.lifecycle,
        supply_group_code=meter.supply_group_code,
        tariff_index=meter.tariff_index,
        key_revision=meter.key_revision,
    )


def move_meter_key(
    session: Session,
    meter_id: int,
    *,
    supply_group_code: str,
    tariff_index: str,
    key_revision: int,
    base_date: int,
    key_expiry_number: int,
) -> MeterSummary:
    """Record that the meter now holds the decoder key named by these fields (its key
    change tokens were handed out or entered); returns the updated summary.

    The caller has checked the values (a key it issued key change tokens for) and is
    responsible for auditing the act. Raises LookupError for an unknown meter.
    """
    meter = session.get(Meter, meter_id, with_for_update=True)
    if meter is None:
        raise LookupError(f"no meter {meter_id}")
    meter.supply_group_code = supply_group_code
    meter.tariff_index = tariff_index
    meter.key_revision = key_revision
    meter.base_date = base_date
    meter.key_expiry_number = key_expiry_number
    session.flush()
    return summarise_meter(meter)


def token_accepted(session: Session, meter_id: int, tid: int) -> bool:
    """Whether the meter reported accepting the token with this TID (its
    ``token_accepted`` event, as meters publish it with the token's ``tid``)."""
    details = session.scalars(
        select(MeterEventRecord.detail).where(
            MeterEventRecord.meter_id == meter_id,
            MeterEventRecord.kind == EventKind.TOKEN_ACCEPTED.value,
        )
    )
    return any(detail.get("tid") == tid for detail in details)


# --- commands the money side asked for ------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """Where a command to a meter stands, as an operator of the money side needs it.

    ``state`` is queued, sent, confirmed, failed or expired; ``confirmation`` says how a
    confirmed command was confirmed; ``last_error`` why a failed or expired one did not.
    """

    id: int
    meter_id: int
    name: str
    state: str
    attempts: int
    requested_at: datetime
    finished_at: datetime | None
    confirmation: str | None
    last_error: str | None


def command_outcomes(session: Session, command_ids: Collection[int]) -> dict[int, CommandOutcome]:
    """The outcome of each of these commands that exists, by id (one query)."""
    if not command_ids:
        return {}
    rows = session.scalars(select(MeterCommand).where(MeterCommand.id.in_(set(command_ids))))
    return {
        c.id: CommandOutcome(
            id=c.id,
            meter_id=c.meter_id,
            name=c.name,
            state=c.state,
            attempts=c.attempts,
            requested_at=c.requested_at,
            finished_at=c.finished_at,
            confirmation=c.confirmation,
            last_error=c.last_error,
        )
        for c in rows
    }


# --- the interval consumption stream --------------------------------------------------------

MAX_CONSUMPTION_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class ConsumptionEvent:
    """Energy one meter's register recorded in ``[t_start, t_end)`` (UTC), as published.

    ``offset`` is the record's position in the stream (increasing, gaps possible).
    Records are keyed by (meter_id, quantity, t_start): a record with a key seen before
    is a correction of it, and ``supersedes`` is then the offset of the record it
    replaces (rate the difference; never add both). ``energy_kwh`` is exact, in kWh, at
    the register's resolution. ``quality`` is "measured", "estimated" (interpolated over
    a gap; replaced by a correction when the real read arrives) or "flagged" (held for an
    operator: never charge it silently); ``reason`` says why for the last two.
    """

    offset: int
    meter_id: int
    quantity: str
    t_start: datetime
    t_end: datetime
    energy_kwh: Decimal
    quality: str
    reason: str
    supersedes: int | None
    created_at: datetime

    @property
    def key(self) -> tuple[int, str, datetime]:
        return (self.meter_id, self.quantity, self.t_start)


class OffsetError(ValueError):
    """An offset or consumer name a consumer cannot use; nothing was changed."""


def read_consumption(session: Session, *, after_offset: int, limit: int) -> list[ConsumptionEvent]:
    """Up to ``limit`` records of the stream with offsets above ``after_offset``, in order.

    At-least-once: a consumer calls this with its stored offset (:func:`load_offset`),
    applies the records, and stores the last one's offset with :func:`commit_offset` in
    the same transaction as its own effects. After a crash it reads the same records
    again, so its effects must be keyed by the record (or by meter and interval).
    Records become visible in offset order (publishers commit in that order), so no
    record ever appears below an offset a consumer has already passed.

    Raises:
        OffsetError: ``after_offset`` is negative, or ``limit`` is not in
            1..MAX_CONSUMPTION_BATCH.
    """
    if isinstance(after_offset, bool) or not isinstance(after_offset, int) or after_offset < 0:
        raise OffsetError(f"after_offset must be an integer >= 0, got {after_offset!r}")
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise OffsetError(f"limit must be an integer, got {limit!r}")
    if not 1 <= limit <= MAX_CONSUMPTION_BATCH:
        raise OffsetError(f"limit must be 1..{MAX_CONSUMPTION_BATCH}, got {limit}")
    rows = session.scalars(
        select(ConsumptionEventRecord)
        .where(ConsumptionEventRecord.id > after_offset)
        .order_by(ConsumptionEventRecord.id)
        .limit(limit)
    )
    return [_event(r) for r in rows]


def load_offset(session: Session, consumer: str) -> int:
    """The last offset ``consumer`` committed, 0 if it never did (read from the start).

    Raises:
        OffsetError: an empty consumer name or one longer than 64 characters.
    """
    _check_consumer(consumer)
    stored = session.get(StreamOffset, consumer)
    return stored.last_offset if stored is not None else 0


def commit_offset(session: Session, consumer: str, offset: int) -> None:
    """Record that ``consumer`` has applied every record up to ``offset``.

    Call it inside the transaction that holds the consumer's own effects; it takes effect
    when that transaction commits. Going back is refused (a replay is a new consumer
    name, or an operator's decision), and so is an offset beyond the stream's end.

    Raises:
        OffsetError: a bad consumer name, a negative offset, an offset below the stored
            one, or one above the last published record.
    """
    _check_consumer(consumer)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise OffsetError(f"offset must be an integer >= 0, got {offset!r}")
    # Locks the consumer's row (PostgreSQL), so two instances of one consumer serialise.
    stored = session.get(StreamOffset, consumer, with_for_update=True)
    current = stored.last_offset if stored is not None else 0
    if offset < current:
        raise OffsetError(
            f"consumer {consumer!r} is at offset {current}; it cannot go back to {offset}"
        )
    last = session.scalar(select(func.max(ConsumptionEventRecord.id))) or 0
    if offset > last:
        raise OffsetError(f"offset {offset} is beyond the last published record ({last})")
    now = datetime.now(UTC)
    if stored is None:
        session.add(StreamOffset(consumer=consumer, last_offset=offset, updated_at=now))
    else:
        stored.last_offset = offset
        stored.updated_at = now
    session.flush()


def latest_consumption(
    session: Session,
    meter_id: int,
    quantity: Quantity = Quantity.ENERGY_IMPORT_KWH,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
) -> list[ConsumptionEvent]:
    """The current record of each interval of one register, by ``t_start`` (ascending),
    for intervals starting in ``[since, until)``; corrections replace what they supersede.

    Raises:
        OffsetError: ``limit`` not in 1..MAX_CONSUMPTION_BATCH, or a naive ``since``/``until``.
    """
    if not 1 <= limit <= MAX_CONSUMPTION_BATCH:
        raise OffsetError(f"limit must be 1..{MAX_CONSUMPTION_BATCH}, got {limit}")
    for bound in (since, until):
        if bound is not None and bound.utcoffset() is None:
            raise OffsetError(f"since and until must be timezone-aware, got {bound!r}")
    record = ConsumptionEventRecord
    latest = select(func.max(record.id)).where(
        record.meter_id == meter_id, record.quantity == quantity.value
    )
    if since is not None:
        latest = latest.where(record.t_start >= since)
    if until is not None:
        latest = latest.where(record.t_start < until)
    latest = latest.group_by(record.t_start)
    rows = session.scalars(
        select(record).where(record.id.in_(latest)).order_by(record.t_start).limit(limit)
    )
    return [_event(r) for r in rows]


def _check_consumer(consumer: str) -> None:
    if not isinstance(consumer, str) or not 1 <= len(consumer) <= 64:
        raise OffsetError(f"a consumer is named by 1 to 64 characters, got {consumer!r}")


def _event(record: ConsumptionEventRecord) -> ConsumptionEvent:
    energy = record.energy_kwh
    try:
        places = Quantity(record.quantity).info.decimals
        shown = energy.quantize(Decimal(1).scaleb(-places))
        energy = shown if shown == energy else energy.normalize()
    except ValueError:
        pass
    return ConsumptionEvent(
        offset=record.id,
        meter_id=record.meter_id,
        quantity=record.quantity,
        t_start=record.t_start,
        t_end=record.t_end,
        energy_kwh=energy,
        quality=record.quality,
        reason=record.reason,
        supersedes=record.supersedes,
        created_at=record.created_at,
    )
