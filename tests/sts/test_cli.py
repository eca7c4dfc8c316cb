"""`gridvend sts` (the typer app in gridvend.sts_cli): the vectors come out of it too."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from gridvend.sts_cli import app
from tests.sts.vectors import ids, load_vectors

runner = CliRunner()
TOKEN_VECTORS = load_vectors("token")
DECODER_KEY_VECTORS = load_vectors("decoder_key")
KEY_CHANGE_VECTORS = load_vectors("key_change")


def _run(*args: str) -> Any:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("vector", DECODER_KEY_VECTORS, ids=ids(DECODER_KEY_VECTORS))
def test_decoder_key_command_reproduces_the_vector(vector: dict[str, Any]) -> None:
    data = _run(
        "decoder-key",
        "--dkga", vector["dkga"],
        "--vending-key", vector["vending_key_hex"],
        "--sgc", vector["supply_group_code"],
        "--ti", vector["tariff_index"],
        "--krn", str(vector["key_revision"]),
        "--kt", str(vector["key_type"]),
        "--pan", vector["pan"],
        "--base-date", str(vector.get("base_date", 1993)),
        "--ea", vector["ea"],
    )  # fmt: skip
    assert data["decoder_key"] == vector["decoder_key_hex"]


def _encode_args(vector: dict[str, Any]) -> list[str]:
    args = ["encode", "--class", str(vector["token_class"])]
    args += ["--subclass", str(vector["token_subclass"])]
    if vector["token_class"] == 1:
        return [
            *args,
            "--control",
            vector["control_hex"],
            "--mfr-code",
            vector["manufacturer_code"],
        ]
    args += ["--decoder-key", vector["decoder_key_hex"], "--ea", vector["ea"]]
    if "tid" in vector:
        args += ["--tid", str(vector["tid"])]
    else:
        args += ["--issued-at", vector["issued_at"], "--base-date", str(vector["base_date"])]
    nibble = vector.get("rnd", vector.get("sign_exponent_nibble"))
    return [*args, "--rnd", str(nibble), "--value-field", vector["value_field_hex"]]


@pytest.mark.parametrize("vector", TOKEN_VECTORS, ids=ids(TOKEN_VECTORS))
def test_encode_and_decode_commands_reproduce_the_vector(vector: dict[str, Any]) -> None:
    encoded = _run(*_encode_args(vector))
    assert encoded["token"] == vector["expected_token"]
    decode_args = ["decode", vector["expected_token"]]
    if vector["token_class"] != 1:
        decode_args += ["--decoder-key", vector["decoder_key_hex"], "--ea", vector["ea"]]
    decoded = _run(*decode_args)
    assert decoded["crc_ok"] is True
    assert decoded["class"] == vector["token_class"]
    assert decoded["subclass"] == vector["token_subclass"]


@pytest.mark.parametrize("vector", KEY_CHANGE_VECTORS, ids=ids(KEY_CHANGE_VECTORS))
def test_key_change_command_reproduces_the_vector(vector: dict[str, Any]) -> None:
    data = _run(
        "key-change",
        "--pan", vector["pan"],
        "--dkga", vector["dkga"],
        "--ea", vector["ea"],
        "--vending-key", vector["old_vending_key_hex"],
        "--sgc", vector["old_supply_group_code"],
        "--ti", vector["old_tariff_index"],
        "--krn", str(vector["old_key_revision"]),
        "--kt", str(vector["old_key_type"]),
        "--base-date", str(vector.get("old_base_date", 1993)),
        "--new-vending-key", vector["new_vending_key_hex"],
        "--new-sgc", vector["new_supply_group_code"],
        "--new-ti", vector["new_tariff_index"],
        "--new-krn", str(vector["new_key_revision"]),
        "--new-kt", str(vector["new_key_type"]),
        "--new-ken", str(vector["new_key_expiry_number"]),
        "--new-base-date", str(vector.get("new_base_date", 1993)),
        "--rollover" if vector["rollover"] else "--no-rollover",
    )  # fmt: skip
    assert [t["token"] for t in data["tokens"]] == vector["expected_tokens"]
    assert [t["subclass"] for t in data["tokens"]] == vector["expected_token_subclasses"]
    assert data["new_decoder_key"] == vector["new_decoder_key_hex"]


def test_encode_rounds_kwh_up_and_prints_four_digit_groups() -> None:
    result = runner.invoke(
        app,
        [
            "encode",
            "--decoder-key",
            "e653341f9d5bf36f",
            "--class",
            "0",
            "--subclass",
            "0",
            "--tid",
            "5915565",
            "--rnd",
            "5",
            "--kwh",
            "2000",
        ],
    )
    assert result.exit_code == 0
    groups = result.stdout.split()
    assert [len(g) for g in groups] == [4, 4, 4, 4, 4]
    decoded = _run("decode", result.stdout, "--decoder-key", "e653341f9d5bf36f")
    assert decoded["amount"] == 20_004  # 2000 kWh = 20 000 units, carried as 20 004


def test_meter_number_command_describes_a_valid_drn() -> None:
    data = _run("meter-number", "0100000000008")
    assert data["pan"] == "000001000000000082"
    assert data["manufacturer_code"] == "0100"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["meter-number", "12123456788"], "check digit"),
        (["decode", "1234", "--decoder-key", "e653341f9d5bf36f"], "20 digits"),
        (["decode", "23716100501183194197", "--decoder-key", "e653341f9d5bf36e"], "CRC"),
        (["decode", "23716100501183194197", "--decoder-key", "xyz"], "hexadecimal"),
        (["encode", "--class", "0", "--subclass", "0", "--tid", "1", "--kwh", "1"], "decoder-key"),
        (
            [
                "encode",
                "--class",
                "2",
                "--subclass",
                "12",
                "--tid",
                "1",
                "--value-field",
                "0",
                "--decoder-key",
                "e653341f9d5bf36f",
            ],
            "subclass 12",
        ),
        (
            [
                "encode",
                "--class",
                "0",
                "--subclass",
                "0",
                "--kwh",
                "1",
                "--decoder-key",
                "e653341f9d5bf36f",
            ],
            "--tid",
        ),
        (
            [
                "encode",
                "--class",
                "0",
                "--subclass",
                "0",
                "--tid",
                "1",
                "--kwh",
                "9999999",
                "--decoder-key",
                "e653341f9d5bf36f",
            ],
            "18201624",
        ),
        (
            [
                "decoder-key",
                "--dkga",
                "01",
                "--vending-key",
                "abababababababab",
                "--sgc",
                "123456",
                "--ti",
                "01",
                "--krn",
                "1",
                "--kt",
                "2",
                "--pan",
                "600727000000000009",
            ],
            "not supported",
        ),
        (
            [
                "key-change",
                "--pan",
                "600727000000000009",
                "--dkga",
                "02",
                "--vending-key",
                "abababababababab",
                "--sgc",
                "123456",
                "--ti",
                "01",
                "--krn",
                "1",
                "--rollover",
            ],
            "new key",
        ),
    ],
)
def test_bad_input_prints_a_readable_error_and_exits_non_zero(
    args: list[str], message: str
) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
