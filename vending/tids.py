"""A meter's TID cursor: the one place a TID is allocated to a meter in the database.

``protocols.sts.next_tid`` is the rule; this keeps ``last_tid`` per meter and key in
``meter_tids``, locked for the caller's transaction, so that every token a meter gets
(credit or management) carries a TID the meter has not seen.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from protocols.sts import next_tid
from vending.models import MeterTidCursor
from vending.security_module import KeyAttributes, MeterKeyRef


def allocate_tid(
    session: Session,
    meter_id: int,
    ref: MeterKeyRef,
    attributes: KeyAttributes,
    now: datetime,
) -> int:
    """Lock the meter's cursor, take the next TID and move the cursor to it.

    A cursor left by another key (a key change, a new base date) starts again from the
    new key's base. Raises TidError or KeyExpiredError (``protocols.sts``) when no TID is
    left under the key; the cursor is then unchanged.
    """
    cursor = session.scalar(
        select(MeterTidCursor).where(MeterTidCursor.meter_id == meter_id).with_for_update()
    )
    key = (ref.supply_group_code, ref.key_revision, int(attributes.base_date))
    tid = tid_after(
        None
        if cursor is None
        else (cursor.supply_group_code, cursor.key_revision, cursor.base_date, cursor.last_tid),
        ref,
        attributes,
        now,
    )
    if cursor is None:
        session.add(
            MeterTidCursor(
                meter_id=meter_id,
                supply_group_code=ref.supply_group_code,
                key_revision=ref.key_revision,
                base_date=int(attributes.base_date),
                last_tid=tid,
            )
        )
    else:
        cursor.supply_group_code, cursor.key_revision, cursor.base_date = key
        cursor.last_tid = tid
    return tid


CursorRow = tuple[str, int, int, int]  # supply group code, key revision, base date, last TID


def tid_after(
    cursor: CursorRow | None, ref: MeterKeyRef, attributes: KeyAttributes, now: datetime
) -> int:
    """The next TID under ``ref``'s key (pure): the cursor continues only if it was left by
    that same key (SGC, key revision, base date); otherwise the key's sequence starts anew.
    Raises TidError or KeyExpiredError (``protocols.sts``) when no TID is left."""
    key = (ref.supply_group_code, ref.key_revision, int(attributes.base_date))
    last_tid = cursor[3] if cursor is not None and cursor[:3] == key else None
    return next_tid(now, attributes.base_date, last_tid, attributes.key_expiry_number)
