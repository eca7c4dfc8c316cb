"""``gridvend sts``: STS tokens by hand, for technicians and for checking tokens.

Every command prints a human-readable answer, or JSON with ``--json``. Bad input prints
one line starting with ``error:`` to stderr and exits with status 2; a token that fails
its CRC exits with status 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields as dataclass_fields
from datetime import datetime
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import typer

from protocols.sts import (
    BaseDate,
    CreditToken,
    CreditType,
    DecoderKey,
    Dkga,
    EncryptionAlgorithm,
    KeyConfig,
    KeyType,
    MeterTestToken,
    StsError,
    Token,
    TokenClass,
    build_key_change,
    derive_decoder_key,
    encode_amount,
    encode_token,
    group_digits,
    parse_meter_number,
    tid_from_datetime,
    to_base_units,
    vending_key_from_hex,
)
from protocols.sts.crc import token_crc
from protocols.sts.errors import FieldRangeError, KeyFormatError
from protocols.sts.fields import datetime_from_tid
from protocols.sts.tokens import (
    block_crc_ok,
    decrypt_token,
    parse_block,
    round_up_amount,
)

app = typer.Typer(
    help="STS (IEC 62055-41) tokens: decoder keys, encode, decode, key change, meter numbers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

P = ParamSpec("P")
R = TypeVar("R")

_KEY_CHANGE_SUBCLASSES = {3, 4, 8, 9}


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _technician_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn an StsError into one readable line on stderr and exit status 2."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except StsError as exc:
            raise _fail(str(exc)) from None

    return wrapper


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


def _hex_int(text: str, what: str, bits: int) -> int:
    cleaned = text.strip().lower().removeprefix("0x")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise KeyFormatError(f"{what} must be hexadecimal, got {text!r}") from None
    if value >= 1 << bits:
        raise FieldRangeError(f"{what} must fit {bits} bits, got {text!r}")
    return value


def describe_token(token: Token) -> dict[str, Any]:
    """A JSON-friendly description of a token value: class, subclass, type and fields."""
    data: dict[str, Any] = {
        "class": int(token.token_class),
        "subclass": int(token.subclass),
        "type": type(token).__name__,
    }
    for item in dataclass_fields(token):
        value = getattr(token, item.name)
        data[item.name] = int(value) if isinstance(value, int) else value
    if isinstance(token, CreditToken):
        data["unit"] = token.credit_type.unit
    return data


def _tid(tid: int | None, issued_at: str | None, base_date: int | None) -> int:
    if tid is not None:
        if issued_at is not None:
            raise FieldRangeError("give either --tid or --issued-at, not both")
        return tid
    if issued_at is None or base_date is None:
        raise FieldRangeError("give --tid, or --issued-at together with --base-date")
    try:
        when = datetime.fromisoformat(issued_at)
    except ValueError:
        raise FieldRangeError(
            f"--issued-at must be an ISO date and time like 2024-05-01T13:45, got {issued_at!r}"
        ) from None
    return tid_from_datetime(when, BaseDate.parse(base_date))


def _value_field(
    token_class: int,
    subclass: int,
    value_field: str | None,
    kwh: str | None,
    m3: str | None,
    watts: int | None,
    register: int | None,
) -> int:
    given = [x for x in (value_field, kwh, m3, watts, register) if x is not None]
    if len(given) > 1:
        raise FieldRangeError("give only one of --value-field, --kwh, --m3, --watts, --register")
    if value_field is not None:
        return _hex_int(value_field, "--value-field", 16)
    if kwh is not None:
        if (token_class, subclass) != (0, CreditType.ELECTRICITY):
            raise FieldRangeError("--kwh is for electricity credit (--class 0 --subclass 0)")
        return _encode_rounded(to_base_units(kwh, "0.1"))
    if m3 is not None:
        if token_class != 0 or subclass not in (CreditType.WATER, CreditType.GAS):
            raise FieldRangeError("--m3 is for water or gas credit (--class 0 --subclass 1 or 2)")
        return _encode_rounded(to_base_units(m3, "0.1"))
    if watts is not None:
        if token_class != 2 or subclass not in (0, 6):
            raise FieldRangeError("--watts is for power limits (--class 2 --subclass 0 or 6)")
        return _encode_rounded(watts)
    if register is not None:
        if (token_class, subclass) != (2, 1):
            raise FieldRangeError("--register is for clear credit (--class 2 --subclass 1)")
        if not 0 <= register <= 0xFFFF:
            raise FieldRangeError(f"--register must be 0..65535, got {register}")
        return register
    if (token_class, subclass) == (2, 5):
        return 0  # clear tamper: the pad is zero
    raise FieldRangeError("give the value: --value-field, --kwh, --m3, --watts or --register")


def _encode_rounded(base_units: int) -> int:
    return encode_amount(round_up_amount(base_units))


@app.command("decoder-key")
@_technician_errors
def decoder_key_command(
    dkga: str = typer.Option(..., "--dkga", help="Key generation algorithm: 02 or 04."),
    vending_key: str = typer.Option(..., "--vending-key", help="Vending key in hex."),
    sgc: str = typer.Option(..., "--sgc", help="Supply group code (6 digits)."),
    ti: str = typer.Option(..., "--ti", help="Tariff index (2 digits)."),
    krn: int = typer.Option(..., "--krn", help="Key revision number (1..9)."),
    kt: int = typer.Option(..., "--kt", help="Key type: 0 DITK, 1 DDTK, 2 DUTK, 3 DCTK."),
    pan: str = typer.Option(..., "--pan", help="Meter PAN (18 digits) or DRN (11/13)."),
    base_date: int = typer.Option(1993, "--base-date", help="1993, 2014 or 2035 (DKGA04)."),
    ea: str = typer.Option("07", "--ea", help="Encryption algorithm: 07, 09 or 11."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Derive a meter's decoder key (printed in hex, normal byte order)."""
    meter = parse_meter_number(pan)
    config = KeyConfig(
        vending_key=vending_key_from_hex(vending_key),
        supply_group_code=sgc if len(sgc) == 6 else sgc.zfill(6),
        tariff_index=ti.zfill(2),
        key_revision=krn,
        key_type=KeyType.parse(kt),
        base_date=BaseDate.parse(base_date),
        algorithm=EncryptionAlgorithm.parse(ea),
        dkga=Dkga.parse(dkga),
    )
    key = derive_decoder_key(config, meter)
    data = {"decoder_key": key.hex, "ea": key.algorithm.value, "pan": meter.digits}
    _emit(as_json, data, key.hex)


@app.command("encode")
@_technician_errors
def encode_command(
    token_class: int = typer.Option(..., "--class", help="0 credit, 1 test/display, 2 management."),
    subclass: int = typer.Option(..., "--subclass", help="Token subclass."),
    decoder_key: str | None = typer.Option(None, "--decoder-key", help="Decoder key in hex."),
    ea: str = typer.Option("07", "--ea", help="Encryption algorithm: 07, 09 or 11."),
    tid: int | None = typer.Option(None, "--tid", help="Token identifier (minutes)."),
    issued_at: str | None = typer.Option(None, "--issued-at", help="ISO time of issue."),
    base_date: int | None = typer.Option(None, "--base-date", help="1993, 2014 or 2035."),
    rnd: int = typer.Option(0, "--rnd", help="Random nibble 0..15."),
    value_field: str | None = typer.Option(None, "--value-field", help="Raw 16-bit field, hex."),
    kwh: str | None = typer.Option(None, "--kwh", help="Electricity credit in kWh (rounded up)."),
    m3: str | None = typer.Option(None, "--m3", help="Water/gas credit in m3 (rounded up)."),
    watts: int | None = typer.Option(None, "--watts", help="Power limit in W (rounded up)."),
    register: int | None = typer.Option(None, "--register", help="Register to clear."),
    control: str | None = typer.Option(None, "--control", help="Class 1: control bits, hex."),
    mfr_code: str | None = typer.Option(None, "--mfr-code", help="Class 1: 2 or 4 digits."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Encode one token and print its 20 digits."""
    token: Token
    key: DecoderKey | None = None
    if token_class == TokenClass.NON_METER_SPECIFIC:
        if control is None or mfr_code is None:
            raise FieldRangeError("class 1 tokens need --control HEX and --mfr-code DIGITS")
        if not mfr_code.isdigit():
            raise FieldRangeError(f"--mfr-code must be digits, got {mfr_code!r}")
        token = MeterTestToken(_hex_int(control, "--control", 36), int(mfr_code), subclass)
    else:
        if token_class not in (0, 2):
            raise FieldRangeError(f"--class must be 0, 1 or 2, got {token_class}")
        if subclass in _KEY_CHANGE_SUBCLASSES and token_class == 2:
            raise FieldRangeError("key change sections are made with `gridvend sts key-change`")
        if decoder_key is None:
            raise KeyFormatError("class 0 and 2 tokens need --decoder-key")
        key = DecoderKey.from_hex(decoder_key, ea)
        if not 0 <= subclass <= 15:
            raise FieldRangeError(f"--subclass must be 0..15, got {subclass}")
        if not 0 <= rnd <= 15:
            raise FieldRangeError(f"--rnd must be 0..15, got {rnd}")
        token_id = _tid(tid, issued_at, base_date)
        if not 0 <= token_id <= 0xFFFFFF:
            raise FieldRangeError(f"--tid must be 0..16777215, got {token_id}")
        field = _value_field(token_class, subclass, value_field, kwh, m3, watts, register)
        block = (subclass << 60) | (rnd << 56) | (token_id << 32) | (field << 16)
        currency = token_class == 0 and 4 <= subclass <= 7
        token = parse_block(
            token_class, block | token_crc(token_class, block >> 16, currency=currency)
        )
    digits = encode_token(token, key)
    data = {"token": digits, "grouped": group_digits(digits), **describe_token(token)}
    _emit(as_json, data, group_digits(digits))


@app.command("decode")
@_technician_errors
def decode_command(
    token: str = typer.Argument(..., help="The 20-digit token (spaces and dashes allowed)."),
    decoder_key: str | None = typer.Option(None, "--decoder-key", help="Decoder key in hex."),
    ea: str = typer.Option("07", "--ea", help="Encryption algorithm: 07, 09 or 11."),
    base_date: int | None = typer.Option(None, "--base-date", help="Show the TID as a date."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Decode a token: class, subclass, fields and CRC status."""
    key = DecoderKey.from_hex(decoder_key, ea) if decoder_key is not None else None
    token_class, block = decrypt_token(token, key)
    crc_ok = token_class in (0, 1, 2) and block_crc_ok(token_class, block)
    if not crc_ok:
        data = {"class": token_class, "crc_ok": False, "block": f"{block:016x}"}
        if as_json:
            typer.echo(json.dumps(data, indent=2, sort_keys=True))
        raise _fail(
            "token failed its CRC check: wrong decoder key or meter, or a mistyped digit", 1
        )
    value = parse_block(token_class, block)
    data = {"crc_ok": True, "block": f"{block:016x}", **describe_token(value)}
    tid = getattr(value, "tid", None)
    if tid is not None and base_date is not None:
        data["issued_at"] = datetime_from_tid(tid, BaseDate.parse(base_date)).isoformat()
    lines = [f"{name}: {data[name]}" for name in sorted(data) if name != "block"]
    _emit(as_json, data, "\n".join(lines))


@app.command("key-change")
@_technician_errors
def key_change_command(
    pan: str = typer.Option(..., "--pan", help="Meter PAN (18 digits) or DRN (11/13)."),
    dkga: str = typer.Option(..., "--dkga", help="Key generation algorithm: 02 or 04."),
    ea: str = typer.Option("07", "--ea", help="Encryption algorithm: 07, 09 or 11."),
    vending_key: str = typer.Option(..., "--vending-key", help="Current vending key, hex."),
    sgc: str = typer.Option(..., "--sgc", help="Current supply group code."),
    ti: str = typer.Option(..., "--ti", help="Current tariff index."),
    krn: int = typer.Option(..., "--krn", help="Current key revision number."),
    kt: int = typer.Option(2, "--kt", help="Current key type."),
    base_date: int = typer.Option(1993, "--base-date", help="Current base date."),
    new_vending_key: str | None = typer.Option(None, "--new-vending-key", help="Default: same."),
    new_sgc: str | None = typer.Option(None, "--new-sgc", help="Default: same."),
    new_ti: str | None = typer.Option(None, "--new-ti", help="Default: same."),
    new_krn: int | None = typer.Option(None, "--new-krn", help="Default: same."),
    new_kt: int | None = typer.Option(None, "--new-kt", help="Default: same."),
    new_ken: int = typer.Option(255, "--new-ken", help="New key expiry number (255 = never)."),
    new_base_date: int | None = typer.Option(None, "--new-base-date", help="Default: same."),
    rollover: bool | None = typer.Option(
        None, "--rollover/--no-rollover", help="RO bit; default: set when the base date moves."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print the key change section tokens, in the order they must be entered."""
    meter = parse_meter_number(pan)
    current = KeyConfig(
        vending_key=vending_key_from_hex(vending_key),
        supply_group_code=sgc.zfill(6),
        tariff_index=ti.zfill(2),
        key_revision=krn,
        key_type=KeyType.parse(kt),
        base_date=BaseDate.parse(base_date),
        algorithm=EncryptionAlgorithm.parse(ea),
        dkga=Dkga.parse(dkga),
    )
    new = KeyConfig(
        vending_key=vending_key_from_hex(new_vending_key)
        if new_vending_key
        else current.vending_key,
        supply_group_code=(new_sgc or sgc).zfill(6),
        tariff_index=(new_ti or ti).zfill(2),
        key_revision=krn if new_krn is None else new_krn,
        key_type=KeyType.parse(kt if new_kt is None else new_kt),
        base_date=BaseDate.parse(base_date if new_base_date is None else new_base_date),
        algorithm=current.algorithm,
        dkga=current.dkga,
        key_expiry_number=new_ken,
    )
    change = build_key_change(current, new, meter, rollover=rollover)
    sections = [
        {"section": n, "subclass": int(s.subclass), "token": t, "grouped": group_digits(t)}
        for n, (s, t) in enumerate(zip(change.sections, change.tokens, strict=True), start=1)
    ]
    data = {
        "current_decoder_key": change.current_key.hex,
        "new_decoder_key": change.new_key.hex,
        "rollover": change.rollover,
        "tokens": sections,
    }
    text = "\n".join(f"{s['section']}: {s['grouped']}" for s in sections)
    _emit(as_json, data, text)


@app.command("meter-number")
@_technician_errors
def meter_number_command(
    digits: str = typer.Argument(..., help="A DRN (11 or 13 digits) or a meter PAN (18)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check a meter number (DRN) or PAN, including its check digits."""
    pan = parse_meter_number(digits)
    data = {
        "valid": True,
        "drn": pan.drn,
        "pan": pan.digits,
        "iin": pan.iin,
        "manufacturer_code": pan.manufacturer_code,
        "serial": pan.serial,
    }
    text = "\n".join(f"{k}: {v}" for k, v in data.items())
    _emit(as_json, data, text)
