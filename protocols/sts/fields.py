"""Field codecs: the token identifier (TID) and the 16-bit amount/power-limit encoding.

TID: whole minutes from 00:00 on the key's base date (1993, 2014 or 2035) to the time of
issue, seconds truncated, in 24 bits. The time is the utility's civil time in one fixed
offset (no daylight saving, which would make TIDs go backwards); the caller converts to
it. An aware datetime is taken at its own wall-clock value.

Amount (credit in 0.1 kWh / 0.1 m3, power limits in W): a 2-bit exponent ``e`` and a 14-bit
mantissa ``m`` with cumulative offsets, value = m * 10**e + sum(2**14 * 10**(i-1), i=1..e).
Encoding rounds up so the customer never receives less than paid for.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from protocols.sts.errors import FieldRangeError, TidError

TID_MAX = 0xFFFFFF
KEN_NEVER_EXPIRES = 255


class BaseDate(enum.IntEnum):
    """The TID base dates. The value is the year; the base is 1 January 00:00."""

    Y1993 = 1993
    Y2014 = 2014
    Y2035 = 2035

    @property
    def start(self) -> datetime:
        """00:00 on 1 January of the base year (naive civil time)."""
        return datetime(int(self), 1, 1)

    @property
    def code(self) -> str:
        """The two-character code used by DKGA04 ("93", "14", "35")."""
        return f"{int(self) % 100:02d}"

    @property
    def last_minute(self) -> datetime:
        """The last minute that still has a TID (TID 0xFFFFFF)."""
        return self.start + timedelta(minutes=TID_MAX)

    @classmethod
    def parse(cls, value: int | str | BaseDate) -> BaseDate:
        """Accept 1993/2014/2035 (int or text) or the codes "93"/"14"/"35".

        Raises:
            FieldRangeError: any other value.
        """
        try:
            year = int(value)
        except (TypeError, ValueError):
            raise FieldRangeError(f"base date must be 1993, 2014 or 2035, got {value!r}") from None
        if year < 100:
            year += 1900 if year >= 93 else 2000
        try:
            return cls(year)
        except ValueError:
            raise FieldRangeError(f"base date must be 1993, 2014 or 2035, got {value!r}") from None


def tid_from_datetime(issued_at: datetime, base_date: BaseDate) -> int:
    """Return the TID (minutes since the base date, seconds truncated) of a time of issue.

    Raises:
        TidError: the time is before the base date or after its last minute
            (for base 1993: after 2024-11-24 20:15).
    """
    naive = issued_at.replace(tzinfo=None, second=0, microsecond=0)
    minutes = (naive - base_date.start) // timedelta(minutes=1)
    if minutes < 0:
        raise TidError(f"time of issue {naive:%Y-%m-%d %H:%M} is before base date {base_date}")
    if minutes > TID_MAX:
        raise TidError(
            f"time of issue {naive:%Y-%m-%d %H:%M} is past the last TID of base date "
            f"{int(base_date)} ({base_date.last_minute:%Y-%m-%d %H:%M}); the meter needs a "
            "rollover key change to a later base date"
        )
    return minutes


def datetime_from_tid(tid: int, base_date: BaseDate) -> datetime:
    """Return the (naive civil) minute a TID stands for.

    Raises:
        FieldRangeError: the TID is not in 0..0xFFFFFF.
    """
    check_tid(tid)
    return base_date.start + timedelta(minutes=tid)


def check_tid(tid: int) -> int:
    """Return ``tid`` if it fits 24 bits.

    Raises:
        FieldRangeError: otherwise.
    """
    if not 0 <= tid <= TID_MAX:
        raise FieldRangeError(f"TID must be in 0..{TID_MAX}, got {tid}")
    return tid


def key_expired(tid: int, key_expiry_number: int) -> bool:
    """True when a token with this TID is past the key expiry number (KEN).

    The meter's rule is ``(TID >> 16) > KEN``; KEN 255 never expires.
    """
    return (tid >> 16) > key_expiry_number


# Cumulative offsets of the four exponents: 0, 2**14, 2**14 * 11, 2**14 * 111.
_OFFSETS = (0, 16_384, 180_224, 1_818_624)
AMOUNT_MAX = 16_383 * 1000 + _OFFSETS[3]  # 18 201 624, field 0xFFFF


def amount_step(value: int) -> int:
    """The resolution (1, 10, 100 or 1000 base units) of the exponent that carries ``value``."""
    for exponent in (3, 2, 1):
        if value >= _OFFSETS[exponent]:
            return 10**exponent
    return 1


def encode_amount(value: int) -> int:
    """Encode a non-negative amount in base units to its 16-bit field, rounding **up**.

    The result decodes to the smallest representable value >= ``value``.

    Raises:
        FieldRangeError: ``value`` is negative or above 18 201 624 base units.
    """
    if not 0 <= value <= AMOUNT_MAX:
        raise FieldRangeError(f"amount must be in 0..{AMOUNT_MAX} base units, got {value}")
    for exponent, offset in enumerate(_OFFSETS):
        scale = 10**exponent
        mantissa = -((offset - value) // scale)  # ceil((value - offset) / scale)
        if mantissa <= 0x3FFF:
            return (exponent << 14) | max(mantissa, 0)
    raise AssertionError("unreachable: AMOUNT_MAX is representable")  # pragma: no cover


def decode_amount(field: int) -> int:
    """Decode a 16-bit amount field to base units.

    Raises:
        FieldRangeError: ``field`` is not in 0..0xFFFF.
    """
    if not 0 <= field <= 0xFFFF:
        raise FieldRangeError(f"amount field must be 16 bits, got {field}")
    exponent = field >> 14
    return (field & 0x3FFF) * 10**exponent + _OFFSETS[exponent]


def is_exact_amount(value: int) -> bool:
    """True when ``value`` base units is exactly representable (no rounding needed)."""
    return 0 <= value <= AMOUNT_MAX and decode_amount(encode_amount(value)) == value


def to_base_units(quantity: Decimal | str | int, resolution: Decimal | str) -> int:
    """Convert a quantity (e.g. kWh) to whole base units of ``resolution``, rounding up.

    ``to_base_units(Decimal("2.01"), "0.1")`` is 21 (0.1 kWh units): the customer never
    receives less than requested.

    Raises:
        FieldRangeError: the quantity is not a finite, non-negative number.
    """
    try:
        amount = Decimal(quantity)
        step = Decimal(resolution)
    except (InvalidOperation, ValueError, TypeError):
        raise FieldRangeError(f"quantity must be a number, got {quantity!r}") from None
    if not amount.is_finite() or amount < 0:
        raise FieldRangeError(f"quantity must be a non-negative number, got {quantity!r}")
    return int((amount / step).to_integral_value(rounding=ROUND_CEILING))


# Edition-3 currency credit (class 0 subclasses 4..7): the same rule with a 5-bit exponent.
CURRENCY_EXPONENT_MAX = 31


def _currency_offset(exponent: int) -> int:
    # sum(2**14 * 10**(n-1), n=1..e) == 2**14 * (10**e - 1) / 9
    return 16_384 * (10**exponent - 1) // 9


CURRENCY_AMOUNT_MAX = 0x3FFF * 10**CURRENCY_EXPONENT_MAX + _currency_offset(CURRENCY_EXPONENT_MAX)


def encode_currency_amount(value: int) -> tuple[int, int]:
    """Encode a currency amount (in 0.00001 currency units) as (exponent 0..31, mantissa), up.

    Edition-3 currency credit, single public source (see docs/sts.md, open questions).

    Raises:
        FieldRangeError: ``value`` is negative or too large.
    """
    if not 0 <= value <= CURRENCY_AMOUNT_MAX:
        raise FieldRangeError(f"currency amount must be in 0..{CURRENCY_AMOUNT_MAX}, got {value}")
    for exponent in range(CURRENCY_EXPONENT_MAX + 1):
        scale = 10**exponent
        mantissa = -((_currency_offset(exponent) - value) // scale)
        if mantissa <= 0x3FFF:
            return exponent, max(mantissa, 0)
    raise AssertionError("unreachable: CURRENCY_AMOUNT_MAX is representable")  # pragma: no cover


def decode_currency_amount(exponent: int, mantissa: int) -> int:
    """Decode an edition-3 currency (exponent, mantissa) pair to 0.00001 currency units.

    Raises:
        FieldRangeError: exponent not in 0..31 or mantissa not in 0..16383.
    """
    if not 0 <= exponent <= CURRENCY_EXPONENT_MAX or not 0 <= mantissa <= 0x3FFF:
        raise FieldRangeError(f"currency exponent/mantissa out of range: {exponent}/{mantissa}")
    return mantissa * 10**exponent + _currency_offset(exponent)
