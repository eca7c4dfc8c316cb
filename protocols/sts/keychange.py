"""Key change: the section tokens that install a new decoder key in a meter.

All sections are encrypted with the meter's **current** decoder key and carry the new one:

* 64-bit keys (EA07/EA09): section 1 (class 2 subclass 3) and section 2 (subclass 4);
* 128-bit MISTY1 keys (EA11): also section 3 (subclass 8) and section 4 (subclass 9), which
  carry the new supply group code as well.

The TID rollover (moving a meter to a later base date, e.g. 1993 -> 2014) is a key change
with the rollover (RO) bit set: the meter clears its TID memory. The base date itself is not
in the tokens; the vending side must record it with the meter's new key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from protocols.sts.errors import KeyChangeError
from protocols.sts.fields import BaseDate
from protocols.sts.identifiers import MeterPan
from protocols.sts.keys import DecoderKey, KeyConfig, KeyType, derive_decoder_key
from protocols.sts.tokens import (
    KeyChange1Token,
    KeyChange2Token,
    KeyChange3Token,
    KeyChange4Token,
    KeyChangeToken,
    encode_token,
)


def key_change_sections(
    new_key: DecoderKey,
    *,
    key_type: KeyType,
    key_revision: int,
    tariff_index: str,
    key_expiry_number: int,
    supply_group_code: str,
    rollover: bool,
) -> tuple[KeyChangeToken, ...]:
    """The section token values for installing ``new_key``, in issue order.

    Two sections for a 64-bit key, four (subclasses 3, 4, 8, 9) for a 128-bit key.

    Raises:
        FieldRangeError: a field out of range (KRN, TI, KEN).
    """
    dk = int.from_bytes(new_key.key, "big")
    ken_high, ken_low = key_expiry_number >> 4, key_expiry_number & 0xF
    ti = int(tariff_index)
    if len(new_key.key) == 8:
        return (
            KeyChange1Token(ken_high, key_revision, rollover, key_type, dk >> 32),
            KeyChange2Token(ken_low, ti, dk & 0xFFFF_FFFF),
        )
    sgc = int(supply_group_code)
    return (
        KeyChange1Token(ken_high, key_revision, rollover, key_type, dk >> 96),
        KeyChange2Token(ken_low, ti, dk & 0xFFFF_FFFF),
        KeyChange3Token(sgc & 0xFFF, (dk >> 64) & 0xFFFF_FFFF),
        KeyChange4Token(sgc >> 12, (dk >> 32) & 0xFFFF_FFFF),
    )


@dataclass(frozen=True, slots=True)
class KeyChange:
    """A built key change: both decoder keys and the ordered section tokens."""

    current_key: DecoderKey
    new_key: DecoderKey
    rollover: bool
    sections: tuple[KeyChangeToken, ...]
    tokens: tuple[str, ...]
    """The 20-digit section tokens, in the order they should be entered."""


def build_key_change(
    current: KeyConfig, new: KeyConfig, pan: MeterPan, *, rollover: bool | None = None
) -> KeyChange:
    """Build the key change that moves a meter from ``current`` to ``new``.

    ``rollover`` defaults to "the base date changes". Token fields come from ``new``:
    KT, KRN, KEN (``new.key_expiry_number``), TI, and for MISTY1 the SGC.

    Raises:
        KeyChangeError: the key size changes (64 <-> 128 bit), the base date moves back,
            the base date moves without the rollover bit, or a rollover keeps the same key
            (old tokens could then be replayed after the TID memory is cleared).
        UnsupportedAlgorithmError, KeyFormatError: from key derivation.
    """
    if current.algorithm.key_bytes != new.algorithm.key_bytes:
        raise KeyChangeError(
            f"cannot change from a {current.algorithm.key_bytes * 8}-bit key (EA"
            f"{current.algorithm}) to a {new.algorithm.key_bytes * 8}-bit key (EA"
            f"{new.algorithm}) with key change tokens"
        )
    if new.base_date < current.base_date:
        raise KeyChangeError(
            f"the base date cannot move back from {int(current.base_date)} to {int(new.base_date)}"
        )
    if rollover is None:
        rollover = new.base_date != current.base_date
    if new.base_date != current.base_date and not rollover:
        raise KeyChangeError(
            "moving a meter to a new base date needs the rollover (RO) bit, "
            "otherwise every new token would be refused as Old"
        )
    current_key = derive_decoder_key(current, pan)
    new_key = derive_decoder_key(new, pan)
    if rollover and new_key == current_key:
        raise KeyChangeError(
            "a rollover key change must install a new key (new key revision or vending key): "
            "the meter forgets its used TIDs, so old tokens could be entered again"
        )
    sections = key_change_sections(
        new_key,
        key_type=new.key_type,
        key_revision=new.key_revision,
        tariff_index=new.tariff_index,
        key_expiry_number=new.key_expiry_number,
        supply_group_code=new.supply_group_code,
        rollover=rollover,
    )
    tokens = tuple(encode_token(section, current_key) for section in sections)
    return KeyChange(current_key, new_key, rollover, sections, tokens)


def build_rollover_key_change(
    current: KeyConfig,
    pan: MeterPan,
    *,
    new_key_revision: int,
    new_vending_key: bytes | None = None,
    new_base_date: BaseDate = BaseDate.Y2014,
) -> KeyChange:
    """The TID rollover: move a meter to ``new_base_date`` with a new KRN, RO bit set.

    Everything else (SGC, TI, KT, KEN, algorithms) stays. ``new_vending_key`` is the
    vending key issued for the new KRN (defaults to the current one, which is how the
    public DKGA04 test keys work).

    Raises:
        KeyChangeError: as :func:`build_key_change`, e.g. when the new key equals the old.
    """
    new = dataclasses.replace(
        current,
        key_revision=new_key_revision,
        base_date=new_base_date,
        vending_key=current.vending_key if new_vending_key is None else new_vending_key,
    )
    return build_key_change(current, new, pan, rollover=True)
