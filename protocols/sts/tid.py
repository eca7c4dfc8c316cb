"""The vending side's TID allocation rule.

A meter refuses a token whose TID it has already seen ("Used"), so one meter must never
get two tokens with the same TID. The rule: issue ``max(TID(now), last_tid + 1)``, and
refuse when that TID is past the key's expiry (KEN) or past the base date's last minute.

:func:`next_tid` is the pure rule. The vending service keeps ``last_tid`` per meter (and
per key: a key change to a new base date starts again from the new base) and must update
it in the same transaction that records the token.
"""

from __future__ import annotations

from datetime import datetime

from protocols.sts.errors import KeyExpiredError, TidError
from protocols.sts.fields import TID_MAX, BaseDate, key_expired, tid_from_datetime


def next_tid(
    now: datetime,
    base_date: BaseDate,
    last_tid: int | None,
    key_expiry_number: int = 255,
) -> int:
    """The TID for the next token to one meter.

    Args:
        now: time of issue in the utility's TID time (see :mod:`protocols.sts.fields`).
        base_date: the base date of the meter's current key.
        last_tid: the last TID issued to this meter under this key, or None.
        key_expiry_number: the KEN of the meter's key (255 = never expires).

    Raises:
        TidError: ``now`` is before the base date, or the TID would pass 0xFFFFFF (the meter
            needs a rollover key change first).
        KeyExpiredError: the TID would be past the key's expiry: the meter needs a key
            change to a key with a later KEN.
    """
    tid = tid_from_datetime(now, base_date)
    if last_tid is not None and last_tid >= tid:
        tid = last_tid + 1
    if tid > TID_MAX:
        raise TidError(
            f"no TID left on base date {int(base_date)}: the meter needs a rollover key change"
        )
    if key_expired(tid, key_expiry_number):
        raise KeyExpiredError(
            f"TID {tid} is past the key expiry number {key_expiry_number} of the meter's key "
            f"(TID >> 16 = {tid >> 16}); do a key change to a key with a later expiry"
        )
    return tid


class TidAllocator:
    """An in-memory allocator keeping the last TID per meter (for tests and simulators).

    The vending service implements the same contract against its database.
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def last_tid(self, meter: str) -> int | None:
        """The last TID issued to ``meter`` (its PAN or DRN), or None."""
        return self._last.get(meter)

    def allocate(
        self, meter: str, now: datetime, base_date: BaseDate, key_expiry_number: int = 255
    ) -> int:
        """Issue and remember the next TID for ``meter`` (see :func:`next_tid`).

        Raises:
            TidError, KeyExpiredError: as :func:`next_tid`; nothing is remembered then.
        """
        tid = next_tid(now, base_date, self._last.get(meter), key_expiry_number)
        self._last[meter] = tid
        return tid

    def reset(self, meter: str) -> None:
        """Forget ``meter``'s last TID (after a rollover key change to a new base date)."""
        self._last.pop(meter, None)
