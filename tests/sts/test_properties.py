"""Property tests (hypothesis) of the STS codecs and ciphers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.sts.digits import TOKEN_MAX, format_token, group_digits, parse_token
from protocols.sts.errors import StsError
from protocols.sts.fields import (
    AMOUNT_MAX,
    BaseDate,
    amount_step,
    datetime_from_tid,
    decode_amount,
    decode_currency_amount,
    encode_amount,
    encode_currency_amount,
    tid_from_datetime,
)
from protocols.sts.identifiers import MeterPan, parse_meter_number
from protocols.sts.keys import DecoderKey
from protocols.sts.sta import sta_decrypt, sta_encrypt
from protocols.sts.tokens import Token, decode_token, encode_token
from tests.sts.strategies import all_tokens, decoder_keys, tids

settings.register_profile("sts", derandomize=True, deadline=None)
settings.load_profile("sts")


@given(token=all_tokens, key=decoder_keys())
def test_encode_then_decode_is_the_identity_for_every_token_and_algorithm(
    token: Token, key: DecoderKey
) -> None:
    digits = encode_token(token, key)
    assert len(digits) == 20
    assert digits.isdigit()
    assert decode_token(digits, key) == token


@given(
    token=all_tokens,
    key=decoder_keys(),
    position=st.integers(0, 19),
    delta=st.integers(1, 9),
)
def test_a_single_changed_digit_is_rejected_or_decodes_to_another_token(
    token: Token, key: DecoderKey, position: int, delta: int
) -> None:
    digits = encode_token(token, key)
    changed = digits[:position] + str((int(digits[position]) + delta) % 10) + digits[position + 1 :]
    try:
        decoded = decode_token(changed, key)
    except StsError:
        return  # rejected: format, CRC, subclass or range
    assert decoded != token


@given(value=st.integers(0, AMOUNT_MAX))
def test_amount_encoding_never_gives_less_and_is_within_one_step(value: int) -> None:
    carried = decode_amount(encode_amount(value))
    assert carried >= value
    assert carried - value < amount_step(carried)


@given(field=st.integers(0, 0xFFFF))
def test_every_amount_field_decodes_and_encodes_back_to_itself(field: int) -> None:
    assert encode_amount(decode_amount(field)) == field


@given(value=st.integers(0, 10**15))
def test_currency_amount_encoding_never_gives_less(value: int) -> None:
    exponent, mantissa = encode_currency_amount(value)
    carried = decode_currency_amount(exponent, mantissa)
    assert carried >= value
    assert carried - value < 10**exponent


@given(key=st.integers(0, 2**64 - 1), block=st.integers(0, 2**64 - 1))
def test_sta_decrypt_inverts_encrypt(key: int, block: int) -> None:
    assert sta_decrypt(key, sta_encrypt(key, block)) == block


@given(key=decoder_keys(), block=st.integers(0, 2**64 - 1))
def test_every_algorithm_decrypt_inverts_encrypt(key: DecoderKey, block: int) -> None:
    assert key.decrypt(key.encrypt(block)) == block


@given(value=st.integers(0, TOKEN_MAX), sep=st.sampled_from(["", " ", "-", " - "]))
def test_token_digits_parse_back_with_any_separator(value: int, sep: str) -> None:
    digits = format_token(value)
    assert parse_token(group_digits(digits).replace(" ", sep)) == value


@given(tid=tids, base=st.sampled_from(BaseDate))
def test_tid_and_datetime_round_trip(tid: int, base: BaseDate) -> None:
    assert tid_from_datetime(datetime_from_tid(tid, base), base) == tid


@given(
    mfr=st.one_of(st.from_regex(r"\A[0-9]{2}\Z"), st.from_regex(r"\A[0-9]{4}\Z")),
    serial=st.from_regex(r"\A[0-9]{8}\Z"),
    position=st.integers(0, 17),
    delta=st.integers(1, 9),
)
def test_meter_pan_round_trips_and_a_changed_digit_is_caught(
    mfr: str, serial: str, position: int, delta: int
) -> None:
    pan = MeterPan.from_parts(mfr, serial)
    assert parse_meter_number(pan.digits) == pan
    assert parse_meter_number(pan.drn) == pan
    digits = pan.digits
    changed = digits[:position] + str((int(digits[position]) + delta) % 10) + digits[position + 1 :]
    try:
        other = parse_meter_number(changed)
    except StsError:
        return
    # Luhn catches every single-digit change inside a checked part; a change in the IIN
    # can only pass when it turns one valid IIN into the other, which changes the PAN.
    assert other != pan
