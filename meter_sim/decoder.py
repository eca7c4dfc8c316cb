"""The simulated meter's STS decoder: its key, and the standard's token statuses.

The decoding itself is :mod:`protocols.sts` (a pure state machine); this module gives a
simulated meter its decoder key from its :class:`DecoderSettings`, and maps the
standard's detailed statuses onto the few a meter shows (Accept / Used / Old / Key
expired / Error / Reject).

Simulated meters derive their decoder key from a *public test vending key*
(:data:`SIM_TEST_VENDING_KEY_HEX`, the DKGA04 example key of the STS reference) unless
their settings name a vending key or a decoder key. Never use it for real meters.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from protocols.sts import (
    BaseDate,
    DecoderKey,
    Dkga,
    EncryptionAlgorithm,
    KeyConfig,
    KeyType,
    MeterState,
    StsError,
    derive_decoder_key,
    new_meter_state,
    parse_meter_number,
    process_token,
)
from protocols.sts import TokenResult as StsTokenResult
from protocols.sts import TokenStatus as StsStatus

SIM_TEST_VENDING_KEY_HEX = "abababababababab949494949494949401234567"
"""Public DKGA04 test vending key (160-bit) used by simulated meters by default."""

SIM_TEST_VENDING_KEY_DKGA02_HEX = "abababababababab"
"""Public DKGA02 test vending key (64-bit) used when a meter's settings ask for DKGA02."""

# Credit register limit in 0.1 kWh, the same 8+3 digit register the model keeps.
CREDIT_MAX_BASE_UNITS = 999_999_999


class DecoderSetupError(ValueError):
    """The decoder settings do not give a usable key (bad key, unsupported combination)."""


def key_config(
    *,
    vending_key_hex: str | None,
    supply_group_code: str,
    tariff_index: str,
    key_revision_number: int,
    key_type: int,
    key_expiry_number: int,
    base_date_year: int,
    encryption_algorithm: str,
    key_generation_algorithm: str,
) -> KeyConfig:
    """The STS key configuration of a simulated meter (vending key defaults to the test key).

    Raise :class:`DecoderSetupError` if the combination is not supported.
    """
    dkga = Dkga.parse(key_generation_algorithm)
    if vending_key_hex is None:
        vending_key_hex = (
            SIM_TEST_VENDING_KEY_DKGA02_HEX if dkga is Dkga.DKGA02 else SIM_TEST_VENDING_KEY_HEX
        )
    try:
        return KeyConfig(
            vending_key=bytes.fromhex(vending_key_hex),
            supply_group_code=supply_group_code,
            tariff_index=tariff_index,
            key_revision=key_revision_number,
            key_type=KeyType(key_type),
            base_date=BaseDate(base_date_year),
            algorithm=EncryptionAlgorithm.parse(encryption_algorithm),
            dkga=dkga,
            key_expiry_number=key_expiry_number,
        )
    except (StsError, ValueError) as exc:
        raise DecoderSetupError(f"unusable decoder settings: {exc}") from None


def initial_state(
    meter_number: str,
    config: KeyConfig,
    *,
    decoder_key_hex: str | None = None,
    tid_memory_size: int = 20,
) -> MeterState:
    """A new meter's decoder state: the key derived for ``meter_number`` (18-digit PAN).

    Raise :class:`DecoderSetupError` for a bad meter number or key.
    """
    try:
        if decoder_key_hex is not None:
            key = DecoderKey.from_hex(decoder_key_hex, config.algorithm)
        else:
            key = derive_decoder_key(config, parse_meter_number(meter_number))
        pan = parse_meter_number(meter_number)
        manufacturer_code = pan.drn[:2] if len(pan.drn) == 11 else pan.drn[:4]
        state = new_meter_state(
            key,
            key_type=config.key_type,
            key_revision=config.key_revision,
            key_expiry_number=config.key_expiry_number,
            tariff_index=config.tariff_index,
            supply_group_code=config.supply_group_code,
            manufacturer_code=manufacturer_code,
            tid_memory_size=tid_memory_size,
        )
    except (StsError, ValueError) as exc:
        raise DecoderSetupError(f"unusable decoder settings: {exc}") from None
    return dataclasses.replace(state, credit_max=CREDIT_MAX_BASE_UNITS)


def decode(
    state: MeterState, digits: str, meter_now: datetime, credit_base_units: int
) -> StsTokenResult:
    """Run one token through the STS meter process, with the model's credit register.

    The model keeps the authoritative credit (exact, consumed continuously); the STS
    state gets it in 0.1 kWh so its overflow check sees the real balance.
    """
    credit = (credit_base_units, *state.credit[1:])
    return process_token(dataclasses.replace(state, credit=credit), digits, meter_now)


REJECT_STATUSES = frozenset({StsStatus.CRC_ERROR})
KEY_CHANGE_STATUSES = frozenset(
    {StsStatus.FIRST_KCT, StsStatus.SECOND_KCT, StsStatus.THIRD_KCT, StsStatus.FOURTH_KCT}
)
