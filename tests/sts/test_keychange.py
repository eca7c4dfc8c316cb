"""The vending-side key change builder, including the 1993 -> 2014 TID rollover."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from protocols.sts.errors import KeyChangeError
from protocols.sts.fields import BaseDate, tid_from_datetime
from protocols.sts.identifiers import parse_meter_number
from protocols.sts.keychange import build_key_change, build_rollover_key_change
from protocols.sts.keys import EncryptionAlgorithm, KeyConfig, derive_decoder_key
from protocols.sts.meter import MeterDecoder, TokenStatus, new_meter_state
from protocols.sts.tokens import CreditToken, CreditType, KeyChange1Token, encode_token

PAN = parse_meter_number("600727000000000009")
VK04 = bytes.fromhex("abababababababab949494949494949401234567")
BEFORE_ROLLOVER = datetime(2024, 11, 1, 12, 0)


def _config_1993(**kwargs: object) -> KeyConfig:
    values: dict[str, object] = {
        "vending_key": VK04,
        "supply_group_code": "123457",
        "tariff_index": "01",
        "key_revision": 1,
        "base_date": BaseDate.Y1993,
    }
    values.update(kwargs)
    return KeyConfig(**values)  # type: ignore[arg-type]


def test_rollover_from_1993_to_2014_sets_ro_and_moves_the_meter() -> None:
    current = _config_1993()
    change = build_rollover_key_change(current, PAN, new_key_revision=2)
    assert change.rollover
    first = change.sections[0]
    assert isinstance(first, KeyChange1Token)
    assert first.rollover and first.key_revision == 2
    new_config = dataclasses.replace(current, key_revision=2, base_date=BaseDate.Y2014)
    assert change.new_key == derive_decoder_key(new_config, PAN)

    old_key = derive_decoder_key(current, PAN)
    decoder = MeterDecoder(new_meter_state(old_key, supply_group_code="123457", tid_memory_size=3))
    for minute in range(3):
        tid = tid_from_datetime(BEFORE_ROLLOVER, BaseDate.Y1993) + minute
        token = encode_token(CreditToken(CreditType.ELECTRICITY, tid, 100), old_key)
        assert decoder.enter(token, BEFORE_ROLLOVER).status is TokenStatus.ACCEPT
    for token in change.tokens:
        decoder.enter(token, BEFORE_ROLLOVER)
    assert decoder.state.tid_memory == ()
    assert decoder.state.credit[0] == 300
    # A 2014-based TID is far smaller than the 1993-based ones, and is accepted now.
    tid = tid_from_datetime(BEFORE_ROLLOVER, BaseDate.Y2014)
    token = encode_token(CreditToken(CreditType.ELECTRICITY, tid, 50), change.new_key)
    assert decoder.enter(token, BEFORE_ROLLOVER).status is TokenStatus.ACCEPT


def test_rollover_that_keeps_the_same_key_is_refused() -> None:
    current = KeyConfig(
        bytes.fromhex("abababababababab"), "123456", "01", 1, dkga="02", base_date=1993
    )
    with pytest.raises(KeyChangeError, match="new key"):
        build_key_change(current, dataclasses.replace(current), PAN, rollover=True)


def test_base_date_change_without_rollover_is_refused() -> None:
    with pytest.raises(KeyChangeError, match="rollover"):
        build_key_change(
            _config_1993(),
            _config_1993(key_revision=2, base_date=BaseDate.Y2014),
            PAN,
            rollover=False,
        )


def test_base_date_cannot_move_back() -> None:
    with pytest.raises(KeyChangeError, match="back"):
        build_key_change(_config_1993(base_date=2014), _config_1993(key_revision=2), PAN)


def test_key_size_cannot_change_by_key_change() -> None:
    with pytest.raises(KeyChangeError, match="128-bit"):
        build_key_change(_config_1993(), _config_1993(algorithm=EncryptionAlgorithm.MISTY1), PAN)


def test_misty1_key_change_carries_the_new_supply_group_code() -> None:
    current = _config_1993(algorithm="11")
    new = _config_1993(algorithm="11", supply_group_code="999999", key_revision=2)
    change = build_key_change(current, new, PAN)
    assert [s.subclass for s in change.sections] == [3, 4, 8, 9]
    decoder = MeterDecoder(new_meter_state(change.current_key, supply_group_code="123457"))
    for token in reversed(change.tokens):
        decoder.enter(token, BEFORE_ROLLOVER)
    assert decoder.state.supply_group_code == "999999"
    assert decoder.state.decoder_key_hex == change.new_key.hex
