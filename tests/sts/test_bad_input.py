"""Bad input raises a specific, documented StsError with a readable message."""

from __future__ import annotations

import pytest

from protocols.sts import (
    CrcError,
    CreditToken,
    CreditType,
    DecoderKey,
    FieldRangeError,
    KeyConfig,
    KeyFormatError,
    MeterNumberError,
    MeterTestToken,
    StsError,
    TokenFormatError,
    UnknownSubclassError,
    UnsupportedAlgorithmError,
    decode_token,
    encode_amount,
    encode_token,
    parse_meter_number,
    to_base_units,
)
from protocols.sts.identifiers import MeterPan, luhn_check_digit

KEY = DecoderKey.from_hex("e653341f9d5bf36f")


@pytest.mark.parametrize(
    ("payload", "check"),
    [("1212345678", 7), ("60072700000000000", 9), ("010000000000", 8), ("1234567890", 3)],
)
def test_luhn_check_digits_match_the_reference_examples(payload: str, check: int) -> None:
    assert luhn_check_digit(payload) == check


@pytest.mark.parametrize(
    ("text", "pan"),
    [
        ("12123456787", "600727121234567876"),
        ("600727000000000009", "600727000000000009"),
        ("0000-0100000000008-2", "000001000000000082"),
        ("01000000000 08", "000001000000000082"),
    ],
)
def test_meter_numbers_in_every_form_are_parsed(text: str, pan: str) -> None:
    assert parse_meter_number(text).digits == pan


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("12123456788", "check digit"),
        ("600727000000000008", "check digit"),
        ("1234", "11 or 13 digits"),
        ("1212345678a", "only digits"),
        ("123456000000000009", "must start with"),
        ("", "only digits"),
    ],
)
def test_bad_meter_numbers_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(MeterNumberError, match=reason):
        parse_meter_number(text)


def test_meter_pan_parts_are_checked() -> None:
    assert MeterPan.from_parts("12", "12345678").drn == "12123456787"
    with pytest.raises(MeterNumberError, match="8 digits"):
        MeterPan.from_parts("12", "123")
    with pytest.raises(MeterNumberError, match="2 or 4"):
        MeterPan.from_parts("123", "12345678")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2371610050118319419", "20 digits"),
        ("237161005011831941977", "20 digits"),
        ("2371610050118319419a", "only digits"),
        ("99999999999999999999", "2\\*\\*66"),
        ("\uff12" * 20, "only digits"),  # full-width digits
    ],
)
def test_bad_token_text_is_a_format_error(text: str, reason: str) -> None:
    with pytest.raises(TokenFormatError, match=reason):
        decode_token(text, KEY)


def test_token_for_another_key_is_a_crc_error() -> None:
    with pytest.raises(CrcError, match="another meter"):
        decode_token("23716100501183194197", DecoderKey.from_hex("060b8643c59a27f1"))


@pytest.mark.parametrize(
    ("text", "algorithm", "reason"),
    [
        ("e653341f9d5bf3", "07", "16 hex digits"),
        ("e653341f9d5bf36g", "07", "hexadecimal"),
        ("e653341f9d5bf36f", "11", "32 hex digits"),
        ("e653341f9d5bf36f", "08", "07 \\(STA\\)"),
    ],
)
def test_bad_decoder_keys_are_refused(text: str, algorithm: str, reason: str) -> None:
    with pytest.raises(StsError, match=reason):
        DecoderKey.from_hex(text, algorithm)


def test_unsupported_key_generation_algorithms_are_refused() -> None:
    with pytest.raises(UnsupportedAlgorithmError, match="DKGA01"):
        KeyConfig(bytes(8), "123456", "01", 1, dkga="01")
    with pytest.raises(UnsupportedAlgorithmError, match="EA11 needs DKGA04"):
        KeyConfig(bytes(8), "123456", "01", 1, dkga="02", algorithm="11")
    with pytest.raises(KeyFormatError, match="20 bytes"):
        KeyConfig(bytes(8), "123456", "01", 1, dkga="04")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("supply_group_code", "12345", "supply group code"),
        ("tariff_index", "1", "tariff index"),
        ("key_revision", 10, "key revision"),
        ("key_expiry_number", 256, "key expiry"),
        ("key_type", 4, "key type"),
    ],
)
def test_key_configuration_fields_are_range_checked(field: str, value: object, reason: str) -> None:
    values: dict[str, object] = {
        "vending_key": bytes(20),
        "supply_group_code": "123456",
        "tariff_index": "01",
        "key_revision": 1,
    }
    values[field] = value
    with pytest.raises(FieldRangeError, match=reason):
        KeyConfig(**values)  # type: ignore[arg-type]


def test_amounts_out_of_range_or_inexact_are_refused() -> None:
    with pytest.raises(FieldRangeError, match="18201624"):
        encode_amount(18_201_625)
    with pytest.raises(FieldRangeError, match="round_up_amount"):
        CreditToken(CreditType.ELECTRICITY, 1, 20_000)
    with pytest.raises(FieldRangeError, match="TID"):
        CreditToken(CreditType.ELECTRICITY, 1 << 24, 1)
    with pytest.raises(FieldRangeError, match="RND"):
        CreditToken(CreditType.ELECTRICITY, 1, 1, 16)
    with pytest.raises(FieldRangeError, match="non-negative"):
        to_base_units("-1", "0.1")


def test_kwh_are_rounded_up_to_base_units() -> None:
    assert to_base_units("2.01", "0.1") == 21
    assert to_base_units("2.0", "0.1") == 20


def test_unknown_meter_test_subclass_is_refused() -> None:
    with pytest.raises(UnknownSubclassError, match="subclass"):
        MeterTestToken(1, 0, 2)
    with pytest.raises(FieldRangeError, match="manufacturer code"):
        MeterTestToken(1, 100, 0)


def test_encrypted_token_without_a_key_is_refused() -> None:
    with pytest.raises(KeyFormatError, match="decoder key"):
        encode_token(CreditToken(CreditType.ELECTRICITY, 1, 1))
