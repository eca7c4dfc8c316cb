"""Every vector in tests/data/sts-vectors-dev.json, reproduced from its inputs."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Any

import pytest

from protocols.sts.crc import crc16_modbus, token_crc
from protocols.sts.dea import des_encrypt_bytes
from protocols.sts.digits import transpose_class
from protocols.sts.fields import (
    BaseDate,
    decode_currency_amount,
    encode_amount,
    encode_currency_amount,
    tid_from_datetime,
)
from protocols.sts.identifiers import parse_meter_number
from protocols.sts.keychange import build_key_change
from protocols.sts.keys import (
    DecoderKey,
    KeyConfig,
    control_block,
    derive_decoder_key,
    dkga04_message,
    pan_block,
)
from protocols.sts.misty1 import misty1_decrypt, misty1_encrypt
from protocols.sts.tokens import (
    ClearCreditToken,
    ClearTamperToken,
    CreditToken,
    CurrencyCreditToken,
    MeterTestToken,
    SetMaximumPowerLimitToken,
    SetPhaseUnbalanceLimitToken,
    Token,
    decode_token,
    encode_token,
    round_up_amount,
    token_block,
)
from tests.sts.vectors import ids, load_vectors

TOKEN_VECTORS = load_vectors("token")
DECODER_KEY_VECTORS = load_vectors("decoder_key", "intermediate")
KEY_CHANGE_VECTORS = load_vectors("key_change")


def _key_config(v: dict[str, Any], prefix: str = "") -> KeyConfig:
    return KeyConfig(
        vending_key=bytes.fromhex(v[f"{prefix}vending_key_hex"]),
        supply_group_code=v[f"{prefix}supply_group_code"],
        tariff_index=v[f"{prefix}tariff_index"],
        key_revision=v[f"{prefix}key_revision"],
        key_type=v[f"{prefix}key_type"],
        base_date=v.get(f"{prefix}base_date", 1993),
        algorithm=v["ea"],
        dkga=v["dkga"],
        key_expiry_number=v.get(f"{prefix}key_expiry_number", 255),
    )


def _tid(v: dict[str, Any]) -> int:
    if "issued_at" in v:
        tid = tid_from_datetime(datetime.fromisoformat(v["issued_at"]), BaseDate(v["base_date"]))
        if "tid" in v:
            assert tid == v["tid"]
        return tid
    return int(v["tid"])


def _token_from_vector(v: dict[str, Any]) -> Token:
    """Build the typed token from the vector's human-readable fields."""
    cls, sub = v["token_class"], v["token_subclass"]
    if cls == 1:
        return MeterTestToken(int(v["control_hex"], 16), int(v["manufacturer_code"]), sub)
    tid, field = _tid(v), int(v["value_field_hex"], 16)
    value = v["value"]
    if cls == 0 and sub <= 3:
        assert encode_amount(value["base_units"]) == field
        return CreditToken(sub, tid, round_up_amount(value["base_units"]), v["rnd"])
    if cls == 0:
        exponent, mantissa = encode_currency_amount(value["base_units"])
        assert (exponent, mantissa) == (v["currency_exponent"], v["currency_mantissa"])
        assert ((exponent & 3) << 14) | mantissa == field
        assert exponent >> 2 == v["sign_exponent_nibble"]
        return CurrencyCreditToken(sub, tid, decode_currency_amount(exponent, mantissa))
    if sub in (0, 6):
        assert encode_amount(value["base_units"]) == field
        kind = SetMaximumPowerLimitToken if sub == 0 else SetPhaseUnbalanceLimitToken
        return kind(tid, round_up_amount(value["base_units"]), v["rnd"])
    if sub == 1:
        return ClearCreditToken(tid, value["register"], v["rnd"])
    assert sub == 5 and value == {"pad": 0}
    return ClearTamperToken(tid, v["rnd"])


def _decoder_key(v: dict[str, Any]) -> DecoderKey | None:
    if v["token_class"] == 1:
        return None
    key = DecoderKey.from_hex(v["decoder_key_hex"], v["ea"])
    if "vending_key_hex" in v:
        derived = derive_decoder_key(_key_config(v), parse_meter_number(v["pan"]))
        assert derived == key
    return key


@pytest.mark.parametrize("vector", TOKEN_VECTORS, ids=ids(TOKEN_VECTORS))
def test_token_vector_is_encoded_and_decoded(vector: dict[str, Any]) -> None:
    token = _token_from_vector(vector)
    key = _decoder_key(vector)
    if "plaintext_block_hex" in vector:
        assert token_block(token) == int(vector["plaintext_block_hex"], 16)
    assert encode_token(token, key) == vector["expected_token"]
    assert decode_token(vector["expected_token"], key) == token


@pytest.mark.parametrize("vector", DECODER_KEY_VECTORS, ids=ids(DECODER_KEY_VECTORS))
def test_decoder_key_vector_is_derived(vector: dict[str, Any]) -> None:
    pan = parse_meter_number(vector["pan"])
    config = _key_config(vector)
    assert derive_decoder_key(config, pan).hex == vector["decoder_key_hex"]
    if "pan_block_hex" in vector:
        pb = pan_block(pan, config.key_type)
        cb = control_block(config.key_type, "123456", "01", 1)
        x = bytes(a ^ b for a, b in zip(pb, cb, strict=True))
        assert pb.hex() == vector["pan_block_hex"]
        assert cb.hex() == vector["control_block_hex"]
        assert x.hex() == vector["pan_xor_control_hex"]
        assert des_encrypt_bytes(config.vending_key, x).hex() == vector["des_output_hex"]
    if "hmac_message_hex" in vector:
        message = dkga04_message(
            pan,
            config.key_type,
            config.supply_group_code,
            config.tariff_index,
            config.key_revision,
            config.base_date,
            config.algorithm,
        )
        assert message.hex() == vector["hmac_message_hex"]
        digest = hmac.new(config.vending_key, message, hashlib.sha256).hexdigest()
        assert digest == vector["hmac_sha256_hex"]


def test_intermediate_token_values_match_every_step() -> None:
    (vector,) = [v for v in load_vectors("intermediate") if "crc_input_hex" in v]
    token = _token_from_vector(vector)
    key = _decoder_key(vector)
    assert key is not None
    block = token_block(token)
    assert f"{block >> 16:012x}" == vector["crc_input_hex"][2:]
    assert f"{token_crc(0, block >> 16):04x}" == vector["crc_field_hex"]
    assert f"{block:016x}" == vector["plaintext_block_hex"]
    cipher = key.encrypt(block)
    assert f"{cipher:016x}" == vector["ciphertext_hex"]
    assert f"{transpose_class(cipher, 0):x}" == vector["token_66bit_hex"]
    assert encode_token(token, key) == vector["expected_token"]


@pytest.mark.parametrize("vector", KEY_CHANGE_VECTORS, ids=ids(KEY_CHANGE_VECTORS))
def test_key_change_vector_is_built_in_order(vector: dict[str, Any]) -> None:
    pan = parse_meter_number(vector["pan"])
    change = build_key_change(
        _key_config(vector, "old_"),
        _key_config(vector, "new_"),
        pan,
        rollover=bool(vector["rollover"]),
    )
    assert change.current_key.hex == vector["old_decoder_key_hex"]
    assert change.new_key.hex == vector["new_decoder_key_hex"]
    assert [s.subclass for s in change.sections] == vector["expected_token_subclasses"]
    assert list(change.tokens) == vector["expected_tokens"]
    for section, digits in zip(change.sections, change.tokens, strict=True):
        assert decode_token(digits, change.current_key) == section


@pytest.mark.parametrize("vector", load_vectors("crc"), ids=ids(load_vectors("crc")))
def test_crc_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["crc_input_hex"])
    crc = crc16_modbus(data)
    assert f"{((crc & 0xFF) << 8) | (crc >> 8):04x}" == vector["expected_crc_field_hex"]
    assert (
        f"{token_crc(data[0], int.from_bytes(data[1:], 'big')):04x}"
        == (vector["expected_crc_field_hex"])
    )


def test_crc_is_crc16_modbus() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37


@pytest.mark.parametrize(
    ("plaintext", "ciphertext"),
    [
        ("0123456789abcdef", "8b1da5f56ab3d07c"),
        ("fedcba9876543210", "04b68240b13be95d"),
    ],
)
def test_misty1_matches_rfc2994_vectors(plaintext: str, ciphertext: str) -> None:
    key = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert misty1_encrypt(key, int(plaintext, 16)) == int(ciphertext, 16)
    assert misty1_decrypt(key, int(ciphertext, 16)) == int(plaintext, 16)


@pytest.mark.parametrize(
    "vector", load_vectors("block_cipher"), ids=ids(load_vectors("block_cipher"))
)
def test_block_cipher_vector(vector: dict[str, Any]) -> None:
    assert vector["cipher"] == "MISTY1"
    key = bytes.fromhex(vector["key_hex"])
    result = misty1_encrypt(key, int(vector["plaintext_hex"], 16))
    assert f"{result:016x}" == vector["expected_ciphertext_hex"]


def test_every_vector_kind_is_covered() -> None:
    kinds = {v["kind"] for v in load_vectors()}
    assert kinds == {"token", "decoder_key", "key_change", "crc", "intermediate", "block_cipher"}
