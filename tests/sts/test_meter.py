"""The meter-side decoder state machine: statuses, TID memory, key change, rollover."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.sts.crc import token_crc
from protocols.sts.errors import MeterStateError
from protocols.sts.keys import DecoderKey, KeyType
from protocols.sts.meter import (
    MeterDecoder,
    MeterState,
    TokenStatus,
    new_meter_state,
    process_token,
)
from protocols.sts.tokens import (
    ClearCreditToken,
    ClearTamperToken,
    CreditToken,
    CreditType,
    MeterTestToken,
    SetMaximumPowerLimitToken,
    encode_block,
    encode_token,
)
from tests.sts.vectors import load_vectors

NOW = datetime(2004, 3, 1, 14, 0)
KEY = DecoderKey.from_hex("e653341f9d5bf36f")  # CTSA01 decoder key (DKGA02, EA07)
OTHER_KEY = DecoderKey.from_hex("060b8643c59a27f1")
KEY_CHANGES = {v["id"]: v for v in load_vectors("key_change")}


def _meter(**kwargs: object) -> MeterState:
    defaults: dict[str, object] = {"supply_group_code": "123456", "tariff_index": "01"}
    defaults.update(kwargs)
    return new_meter_state(KEY, **defaults)  # type: ignore[arg-type]


def _credit(tid: int, amount: int = 10, key: DecoderKey = KEY) -> str:
    return encode_token(CreditToken(CreditType.ELECTRICITY, tid, amount, 5), key)


def test_credit_token_is_accepted_credited_and_its_tid_stored() -> None:
    result = process_token(_meter(), _credit(5_871_715, 100), NOW)
    assert result.status is TokenStatus.ACCEPT
    assert result.state.credit[0] == 100
    assert result.state.tid_memory == (5_871_715,)


def test_compliance_token_is_accepted_by_a_meter_with_its_key() -> None:
    result = process_token(_meter(), "2371 6100 5011 8319 4197", NOW)  # CTSA01 step 1
    assert result.status is TokenStatus.ACCEPT
    assert result.state.credit[0] == 1


def test_used_token_is_rejected_with_used_status_and_state_unchanged() -> None:
    first = process_token(_meter(), _credit(100), NOW)
    second = process_token(first.state, _credit(100), NOW)
    assert second.status is TokenStatus.USED
    assert second.state == first.state


def test_token_older_than_a_full_tid_memory_is_old() -> None:
    decoder = MeterDecoder(_meter(tid_memory_size=3))
    for tid in (10, 20, 30):
        assert decoder.enter(_credit(tid), NOW).status is TokenStatus.ACCEPT
    before = decoder.state
    assert decoder.enter(_credit(5), NOW).status is TokenStatus.OLD
    assert decoder.state == before
    # Newer than the smallest remembered TID: accepted, and the smallest is forgotten.
    assert decoder.enter(_credit(15), NOW).status is TokenStatus.ACCEPT
    assert decoder.state.tid_memory == (15, 20, 30)
    assert decoder.enter(_credit(12), NOW).status is TokenStatus.OLD


def test_token_older_than_manufacture_is_old() -> None:
    meter = _meter(manufactured_tid=1000, tid_memory_size=4)
    assert process_token(meter, _credit(999), NOW).status is TokenStatus.OLD
    assert process_token(meter, _credit(1000), NOW).status is TokenStatus.USED
    assert process_token(meter, _credit(1001), NOW).status is TokenStatus.ACCEPT


def test_token_past_the_key_expiry_number_is_key_expired() -> None:
    meter = _meter(key_expiry_number=85)
    # CTSA16: a 2004 token (TID 5 871 715, TID >> 16 = 89) against KEN 85.
    result = process_token(meter, _credit(5_871_715), NOW)
    assert result.status is TokenStatus.KEY_EXPIRED
    assert process_token(meter, _credit(85 << 16 | 0xFFFF), NOW).status is TokenStatus.ACCEPT


def test_credit_on_a_default_key_is_ddtk_error_but_management_is_accepted() -> None:
    meter = _meter(key_type=KeyType.DDTK)
    assert process_token(meter, _credit(100), NOW).status is TokenStatus.DDTK_ERROR
    limit = encode_token(SetMaximumPowerLimitToken(101, 1000, 5), KEY)
    result = process_token(meter, limit, NOW)
    assert result.status is TokenStatus.ACCEPT
    assert result.state.maximum_power_limit_w == 1000


def test_token_for_another_key_is_crc_error() -> None:
    result = process_token(_meter(), _credit(100, key=OTHER_KEY), NOW)
    assert result.status is TokenStatus.CRC_ERROR


def test_credit_that_would_overflow_the_register_is_refused() -> None:
    meter = _meter()
    meter = process_token(meter, _credit(1, 16_000), NOW).state
    small = MeterState.from_dict({**meter.to_dict(), "credit_max": 20_000})
    result = process_token(small, _credit(2, 16_000), NOW)
    assert result.status is TokenStatus.OVERFLOW
    assert result.state == small


@pytest.mark.parametrize("text", ["1234", "2371610050118319419x", "99999999999999999999"])
def test_malformed_input_is_format_error(text: str) -> None:
    assert process_token(_meter(), text, NOW).status is TokenStatus.FORMAT_ERROR


def test_reserved_class_and_unknown_subclass_are_function_errors() -> None:
    # Class 3 is reserved; class 2 subclass 12 is proprietary/unsupported.
    block = (12 << 60) | (5 << 56) | (100 << 32)
    unknown = encode_block(2, block | token_crc(2, block >> 16), KEY)
    assert process_token(_meter(), unknown, NOW).status is TokenStatus.FUNCTION_ERROR
    reserved = encode_block(3, block | token_crc(3, block >> 16), KEY)
    assert process_token(_meter(), reserved, NOW).status is TokenStatus.FUNCTION_ERROR


def test_water_credit_on_an_electricity_meter_is_function_error() -> None:
    water = encode_token(CreditToken(CreditType.WATER, 100, 10), KEY)
    assert process_token(_meter(), water, NOW).status is TokenStatus.FUNCTION_ERROR
    water_meter = _meter(credit_types=(1,))
    assert process_token(water_meter, water, NOW).state.credit[1] == 10


def test_key_change_section_with_key_revision_zero_is_range_error() -> None:
    block = (3 << 60) | (0xF << 56) | (0x02 << 48) | (0x1234 << 16)  # KRN 0, KT 2
    token = encode_block(2, block | token_crc(2, block >> 16), KEY)
    assert process_token(_meter(), token, NOW).status is TokenStatus.RANGE_ERROR


def test_meter_test_token_checks_the_manufacturer_code() -> None:
    test_all = encode_token(MeterTestToken(0xFF, 12, 0))
    assert process_token(_meter(manufacturer_code="12"), test_all, NOW).accepted
    result = process_token(_meter(manufacturer_code="34"), test_all, NOW)
    assert result.status is TokenStatus.MFR_CODE_ERROR


def test_clear_credit_and_clear_tamper_change_the_registers() -> None:
    meter = process_token(_meter(), _credit(1, 500), NOW).state
    meter = MeterState.from_dict({**meter.to_dict(), "tamper": True})
    meter = process_token(meter, encode_token(ClearTamperToken(2, 5), KEY), NOW).state
    assert meter.tamper is False
    meter = process_token(meter, encode_token(ClearCreditToken(3, 0xFFFF, 5), KEY), NOW).state
    assert meter.credit[0] == 0
    result = process_token(meter, encode_token(ClearCreditToken(4, 9, 5), KEY), NOW)
    assert result.status is TokenStatus.RANGE_ERROR


@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["1st-then-2nd", "2nd-then-1st"])
def test_key_change_installs_the_new_key_in_either_section_order(order: tuple[int, int]) -> None:
    vector = KEY_CHANGES["ctsa05-1"]  # TI 01 -> 02
    decoder = MeterDecoder(_meter())
    decoder.enter(_credit(100), NOW)
    tokens = [vector["expected_tokens"][i] for i in order]
    first = decoder.enter(tokens[0], NOW)
    assert first.status is (TokenStatus.FIRST_KCT if order[0] == 0 else TokenStatus.SECOND_KCT)
    assert decoder.state.decoder_key_hex == KEY.hex  # nothing applied yet
    assert decoder.enter(tokens[1], NOW + timedelta(seconds=30)).status is TokenStatus.ACCEPT
    assert decoder.state.decoder_key_hex == vector["new_decoder_key_hex"]
    assert decoder.state.tariff_index == "02"
    assert decoder.state.tid_memory == (100,)  # no rollover: memory kept
    assert decoder.enter(_credit(101, key=OTHER_KEY), NOW).status is TokenStatus.ACCEPT
    assert decoder.enter(_credit(102), NOW).status is TokenStatus.CRC_ERROR


def test_half_entered_key_change_times_out() -> None:
    vector = KEY_CHANGES["ctsa05-1"]
    decoder = MeterDecoder(_meter())
    decoder.enter(vector["expected_tokens"][0], NOW)
    late = decoder.enter(vector["expected_tokens"][1], NOW + timedelta(minutes=11))
    assert late.status is TokenStatus.SECOND_KCT
    assert decoder.state.decoder_key_hex == KEY.hex


def test_key_change_sets_the_key_expiry_number() -> None:
    vector = KEY_CHANGES["ctsa19-1-kct"]  # same key, KEN 85
    decoder = MeterDecoder(new_meter_state(OTHER_KEY, tariff_index="02"))
    for token in vector["expected_tokens"]:
        decoder.enter(token, NOW)
    assert decoder.state.key_expiry_number == 85
    credit = next(v for v in load_vectors("token") if v["id"] == "ctsa19-1-credit")
    assert decoder.enter(credit["expected_token"], NOW).status is TokenStatus.ACCEPT
    assert decoder.enter(_credit(86 << 16, key=OTHER_KEY), NOW).status is TokenStatus.KEY_EXPIRED


def test_misty1_key_change_needs_all_four_sections_in_any_order() -> None:
    vector = KEY_CHANGES["misty-ctsa05-1"]
    old = DecoderKey.from_hex(vector["old_decoder_key_hex"], "11")
    decoder = MeterDecoder(new_meter_state(old, supply_group_code="000001"))
    tokens = vector["expected_tokens"]
    statuses = [decoder.enter(tokens[i], NOW).status for i in (2, 0, 3, 1)]
    assert statuses == [
        TokenStatus.THIRD_KCT,
        TokenStatus.FIRST_KCT,
        TokenStatus.FOURTH_KCT,
        TokenStatus.ACCEPT,
    ]
    assert decoder.state.decoder_key_hex == vector["new_decoder_key_hex"]
    assert decoder.state.supply_group_code == vector["new_supply_group_code"]
    assert decoder.state.tariff_index == "02"


def test_rollover_key_change_clears_the_tid_memory() -> None:
    vector = KEY_CHANGES["ctsa26-1"]  # base 2014 KRN 4 -> base 2035 KRN 5, RO = 1
    old = DecoderKey.from_hex(vector["old_decoder_key_hex"])
    new = DecoderKey.from_hex(vector["new_decoder_key_hex"])
    decoder = MeterDecoder(new_meter_state(old, key_revision=4, tid_memory_size=2))
    for tid in (9_000_000, 9_000_001):
        decoder.enter(_credit(tid, key=old), NOW)
    credit_before = decoder.state.credit
    for token in vector["expected_tokens"]:
        decoder.enter(token, NOW)
    assert decoder.state.tid_memory == ()
    assert decoder.state.key_revision == 5
    assert decoder.state.credit == credit_before  # the balance survives a rollover
    # A small TID on the new base date is accepted; the old key's tokens are refused.
    assert decoder.enter(_credit(485, key=new), NOW).status is TokenStatus.ACCEPT
    assert decoder.enter(_credit(9_000_002, key=old), NOW).status is TokenStatus.CRC_ERROR


def test_key_change_to_an_initialisation_key_is_key_type_error() -> None:
    from protocols.sts.keychange import key_change_sections

    sections = key_change_sections(
        OTHER_KEY,
        key_type=KeyType.DITK,
        key_revision=1,
        tariff_index="01",
        key_expiry_number=255,
        supply_group_code="123456",
        rollover=False,
    )
    decoder = MeterDecoder(_meter())
    results = [decoder.enter(encode_token(s, KEY), NOW) for s in sections]
    assert results[-1].status is TokenStatus.KEY_TYPE_ERROR
    assert decoder.state.decoder_key_hex == KEY.hex
    assert decoder.state.pending_sections == ()


def test_meter_state_survives_json_round_trip() -> None:
    decoder = MeterDecoder(_meter())
    decoder.enter(_credit(100, 300), NOW)
    decoder.enter(KEY_CHANGES["ctsa05-1"]["expected_tokens"][0], NOW)
    saved = json.dumps(decoder.state.to_dict())
    assert MeterState.from_dict(json.loads(saved)) == decoder.state


@pytest.mark.parametrize(
    "change",
    [
        {"decoder_key_hex": "zz"},
        {"key_revision": 0},
        {"tid_memory": [3, 1]},
        {"credit": [0]},
        {"colour": "red"},
        {"manufacturer_code": "1"},
    ],
)
def test_invalid_meter_state_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(MeterStateError):
        MeterState.from_dict({**_meter().to_dict(), **change})


@settings(derandomize=True, deadline=None, max_examples=200)
@given(text=st.text(alphabet="0123456789 -x", max_size=24))
def test_meter_never_raises_for_typed_input(text: str) -> None:
    meter = _meter()
    result = process_token(meter, text, NOW)
    if not result.accepted:
        assert result.state == meter
