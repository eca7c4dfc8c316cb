"""STS tokens as typed values, and their 64-bit blocks and 20-digit form.

Build a token value (e.g. :class:`CreditToken`), then :func:`encode_token` it with the
meter's :class:`~protocols.sts.keys.DecoderKey`; :func:`decode_token` is the inverse.
Each value validates its fields when constructed, raising :class:`FieldRangeError`.

Block layout (bit 0 = least significant): bits 63..60 subclass, 59..16 data, 15..0 CRC.
The class is not in the block: it goes into the CRC input and into the 66-bit token.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from protocols.sts.crc import token_crc
from protocols.sts.digits import format_token, parse_token, transpose_class, untranspose_class
from protocols.sts.errors import CrcError, FieldRangeError, KeyFormatError, UnknownSubclassError
from protocols.sts.fields import (
    check_tid,
    decode_amount,
    decode_currency_amount,
    encode_amount,
    encode_currency_amount,
)
from protocols.sts.keys import DecoderKey, KeyType


class TokenClass(enum.IntEnum):
    """The 2-bit token class."""

    CREDIT = 0
    NON_METER_SPECIFIC = 1  # not encrypted: meter test/display
    METER_SPECIFIC = 2  # management: limits, clear credit, key change


class CreditType(enum.IntEnum):
    """Class 0 subclasses 0..3: unit credit. Amounts in 0.1 kWh, 0.1 m3, 0.1 m3, 0.1 min."""

    ELECTRICITY = 0
    WATER = 1
    GAS = 2
    TIME = 3

    @property
    def unit(self) -> str:
        """The unit of one base unit of this credit."""
        return ("0.1 kWh", "0.1 m3", "0.1 m3", "0.1 min")[self]


class CurrencyType(enum.IntEnum):
    """Class 0 subclasses 4..7: edition-3 currency credit, in 0.00001 currency units."""

    ELECTRICITY = 4
    WATER = 5
    GAS = 6
    TIME = 7


class ManagementSubclass(enum.IntEnum):
    """Class 2 subclasses supported here."""

    SET_MAXIMUM_POWER_LIMIT = 0
    CLEAR_CREDIT = 1
    SET_TARIFF_RATE = 2
    KEY_CHANGE_1 = 3
    KEY_CHANGE_2 = 4
    CLEAR_TAMPER = 5
    SET_PHASE_UNBALANCE_LIMIT = 6
    SET_WATER_METER_FACTOR = 7
    KEY_CHANGE_3 = 8
    KEY_CHANGE_4 = 9


CLEAR_ALL_REGISTERS = 0xFFFF


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise FieldRangeError(f"{name} must be in {low}..{high}, got {value!r}")


def _check_exact_amount(name: str, value: int) -> int:
    _check_range(name, value, 0, 18_201_624)
    field = encode_amount(value)
    if decode_amount(field) != value:
        raise FieldRangeError(
            f"{name} {value} cannot be carried exactly; the nearest value not below it is "
            f"{decode_amount(field)} (use round_up_amount)"
        )
    return field


def round_up_amount(value: int) -> int:
    """The smallest amount a token can carry that is not below ``value`` (base units).

    Raises:
        FieldRangeError: negative or above 18 201 624.
    """
    return decode_amount(encode_amount(value))


@dataclass(frozen=True, slots=True)
class CreditToken:
    """Class 0, subclasses 0..3: transfer unit credit.

    ``amount`` is in base units (0.1 kWh for electricity, 0.1 m3 for water and gas) and
    must be exactly representable: pass it through :func:`round_up_amount` first.
    """

    credit_type: CreditType
    tid: int
    amount: int
    rnd: int = 0

    token_class: ClassVar[TokenClass] = TokenClass.CREDIT

    def __post_init__(self) -> None:
        object.__setattr__(self, "credit_type", CreditType(self.credit_type))
        check_tid(self.tid)
        _check_exact_amount("amount", self.amount)
        _check_range("RND", self.rnd, 0, 15)

    @property
    def subclass(self) -> int:
        return int(self.credit_type)


@dataclass(frozen=True, slots=True)
class CurrencyCreditToken:
    """Class 0, subclasses 4..7 (edition 3, single public source): currency credit.

    ``amount`` in 0.00001 currency units, exactly representable with a 5-bit exponent and
    a 14-bit mantissa. The RND nibble carries the sign and high exponent bits, and the CRC
    is the CRC_C variant. See docs/sts.md for the open question on this layout.
    """

    currency_type: CurrencyType
    tid: int
    amount: int
    negative: bool = False

    token_class: ClassVar[TokenClass] = TokenClass.CREDIT

    def __post_init__(self) -> None:
        object.__setattr__(self, "currency_type", CurrencyType(self.currency_type))
        check_tid(self.tid)
        exponent, mantissa = encode_currency_amount(self.amount)
        if decode_currency_amount(exponent, mantissa) != self.amount:
            raise FieldRangeError(
                f"currency amount {self.amount} cannot be carried exactly; the nearest value "
                f"not below it is {decode_currency_amount(exponent, mantissa)}"
            )

    @property
    def subclass(self) -> int:
        return int(self.currency_type)


@dataclass(frozen=True, slots=True)
class MeterTestToken:
    """Class 1: initiate meter test/display (never encrypted; any meter can read it).

    Subclass 0: 36-bit ``control`` and 2-digit manufacturer code (0..99) in 8 bits.
    Subclass 1: 28-bit ``control`` and 4-digit manufacturer code (0..9999) in 16 bits.
    """

    control: int
    manufacturer_code: int
    subclass: int = 0

    token_class: ClassVar[TokenClass] = TokenClass.NON_METER_SPECIFIC

    def __post_init__(self) -> None:
        if self.subclass not in (0, 1):
            raise UnknownSubclassError(
                f"meter test token subclass must be 0 (2-digit MfrCode) or 1 (4-digit), "
                f"got {self.subclass}"
            )
        bits, mfr_max = (36, 99) if self.subclass == 0 else (28, 9999)
        _check_range("control", self.control, 0, (1 << bits) - 1)
        _check_range("manufacturer code", self.manufacturer_code, 0, mfr_max)


@dataclass(frozen=True, slots=True)
class SetMaximumPowerLimitToken:
    """Class 2 subclass 0: maximum power limit in watts (exactly representable)."""

    tid: int
    watts: int
    rnd: int = 0

    token_class: ClassVar[TokenClass] = TokenClass.METER_SPECIFIC
    subclass: ClassVar[int] = ManagementSubclass.SET_MAXIMUM_POWER_LIMIT

    def __post_init__(self) -> None:
        check_tid(self.tid)
        _check_exact_amount("maximum power limit (W)", self.watts)
        _check_range("RND", self.rnd, 0, 15)


@dataclass(frozen=True, slots=True)
class ClearCreditToken:
    """Class 2 subclass 1: clear a credit register (0 electricity ... 0xFFFF all)."""

    tid: int
    register: int
    rnd: int = 0

    token_class: ClassVar[TokenClass] = TokenClass.METER_SPECIFIC
    subclass: ClassVar[int] = ManagementSubclass.CLEAR_CREDIT

    def __post_init__(self) -> None:
        check_tid(self.tid)
        _check_range("register", self.register, 0, 0xFFFF)
        _check_range("RND", self.rnd, 0, 15)


@dataclass(frozen=True, slots=True)
class SetTariffRateToken:
    """Class 2 subclass 2: tariff rate (16 bits, meaning reserved by the STS Association)."""

    tid: int
    rate: int
    rnd: int = 0

    token_class: ClassVar[TokenClass] = TokenClass.METER_SPECIFIC
    subclass: ClassVar[int] = ManagementSubclass.SET_TARIFF_RATE

    def __post_init__(self) -> None:
        check_tid(self.tid)
        _check_range("tariff rate", self.rate, 0, 0xFFFF)
        _check_range("RND", self.rnd, 0, 15)


@dataclass(frozen=True, slots=True)
class ClearTamperToken:
    """Class 2 subclass 5: clear the tamper condition (the 16-bit pad must be 0)."""

    tid: int
    rnd: int = 0

    token_class: ClassVar[TokenClass] = TokenClass.METER_SPECIFIC
    subclass: ClassVar[int] = ManagementSubclass.CLEAR_TAMPER

    def __post_init__(self) -> None:
        check_tid(self.tid)
        _check_range("RND", self.rnd, 0, 15)


@dataclass(frozen=True, slots=True)
class SetPhaseUnbalanceLimitToken:
    """Class 2 subclass 6: maximum phase power unbalance limit in watts (exact)."""

    tid: int
    watts: int
    rnd: int = 0

    token_class: ClassVar[TokenClass] = TokenClass.METER_SPECIFIC
    subclass: ClassVar[int] = ManagementSubclass.SET_PHASE_UNBALANCE_LIMIT

    def __post_init__(self) -> None:
        check_tid(self.tid)
        _check_exact_amount("phase unbalance limit (W)", self.watts)
        _check_range("RND", self.rnd, 0, 15)


@dataclass(frozen=True, slots=True)
class SetWaterMeterFactorToken:
    """Class 2 subclass 7: water meter factor (16 bits, reserved for water meters)."""

    tid: int
    factor: int
    rnd: int = 0

    token_class: ClassVar[TokenClass] = TokenClass.METER_SPECIFIC
    subclass: ClassVar[int] = ManagementSubclass.SET_WATER_METER_FACTOR

    def __post_init__(self) -> None:
        check_tid(self.tid)
        _check_range("water meter factor", self.factor, 0, 0xFFFF)
        _check_range("RND", self.rnd, 0, 15)


@dataclass(frozen=True, slots=True)
class KeyChange1Token:
    """Class 2 subclass 3: 1st section of a key change.

    Carries the new key's high nibble of KEN, KRN (1..9), the rollover flag, KT and 32
    key bits (DK bits 63..32 for a 64-bit key, 127..96 for MISTY1). ``reserved`` is bit 50
    (sent as 0).
    """

    ken_high: int
    key_revision: int
    rollover: bool
    key_type: KeyType
    key_bits: int
    reserved: int = 0

    token_class: ClassVar[TokenClass] = TokenClass.METER_SPECIFIC
    subclass: ClassVar[int] = ManagementSubclass.KEY_CHANGE_1

    def __post_init__(self) -> None:
        _check_range("KEN high nibble", self.ken_high, 0, 15)
        _check_range("key revision number", self.key_revision, 1, 9)
        object.__setattr__(self, "rollover", bool(self.rollover))
        object.__setattr__(self, "key_type", KeyType.parse(self.key_type))
        _check_range("key bits", self.key_bits, 0, 0xFFFF_FFFF)
        _check_range("reserved bit", self.reserved, 0, 1)


@dataclass(frozen=True, slots=True)
class KeyChange2Token:
    """Class 2 subclass 4: 2nd section: KEN low nibble, TI (0..99) and DK bits 31..0."""

    ken_low: int
    tariff_index: int
    key_bits: int

    token_class: ClassVar[TokenClass] = TokenClass.METER_SPECIFIC
    subclass: ClassVar[int] = ManagementSubclass.KEY_CHANGE_2

    def __post_init__(self) -> None:
        _check_range("KEN low nibble", self.ken_low, 0, 15)
        _check_range("tariff index", self.tariff_index, 0, 99)
        _check_range("key bits", self.key_bits, 0, 0xFFFF_FFFF)


@dataclass(frozen=True, slots=True)
class KeyChange3Token:
    """Class 2 subclass 8 (MISTY1 only): SGC low 12 bits and DK bits 95..64."""

    sgc_low: int
    key_bits: int

    token_class: ClassVar[TokenClass] = TokenClass.METER_SPECIFIC
    subclass: ClassVar[int] = ManagementSubclass.KEY_CHANGE_3

    def __post_init__(self) -> None:
        _check_range("SGC low 12 bits", self.sgc_low, 0, 0xFFF)
        _check_range("key bits", self.key_bits, 0, 0xFFFF_FFFF)


@dataclass(frozen=True, slots=True)
class KeyChange4Token:
    """Class 2 subclass 9 (MISTY1 only): SGC high 12 bits and DK bits 63..32."""

    sgc_high: int
    key_bits: int

    token_class: ClassVar[TokenClass] = TokenClass.METER_SPECIFIC
    subclass: ClassVar[int] = ManagementSubclass.KEY_CHANGE_4

    def __post_init__(self) -> None:
        _check_range("SGC high 12 bits", self.sgc_high, 0, 0xFFF)
        _check_range("key bits", self.key_bits, 0, 0xFFFF_FFFF)


RegisterToken = (
    SetMaximumPowerLimitToken
    | ClearCreditToken
    | SetTariffRateToken
    | ClearTamperToken
    | SetPhaseUnbalanceLimitToken
    | SetWaterMeterFactorToken
)
KeyChangeToken = KeyChange1Token | KeyChange2Token | KeyChange3Token | KeyChange4Token
Token = CreditToken | CurrencyCreditToken | MeterTestToken | RegisterToken | KeyChangeToken
TidToken = CreditToken | CurrencyCreditToken | RegisterToken
"""Tokens that carry a TID (the meter checks them against its TID memory and KEN)."""


def _tid_block(subclass: int, rnd: int, tid: int, value: int) -> int:
    return (subclass << 60) | (rnd << 56) | (tid << 32) | (value << 16)


def token_block(token: Token) -> int:
    """The 64-bit plaintext block of a token, CRC included."""
    data: int
    if isinstance(token, CreditToken):
        data = _tid_block(token.subclass, token.rnd, token.tid, encode_amount(token.amount))
    elif isinstance(token, CurrencyCreditToken):
        exponent, mantissa = encode_currency_amount(token.amount)
        nibble = (int(token.negative) << 3) | (exponent >> 2)
        field = ((exponent & 3) << 14) | mantissa
        data = _tid_block(token.subclass, nibble, token.tid, field)
        return data | token_crc(0, data >> 16, currency=True)
    elif isinstance(token, MeterTestToken):
        if token.subclass == 0:
            data = (token.control << 24) | (token.manufacturer_code << 16)
        else:
            data = (1 << 60) | (token.control << 32) | (token.manufacturer_code << 16)
    elif isinstance(token, SetMaximumPowerLimitToken | SetPhaseUnbalanceLimitToken):
        data = _tid_block(token.subclass, token.rnd, token.tid, encode_amount(token.watts))
    elif isinstance(token, ClearCreditToken):
        data = _tid_block(token.subclass, token.rnd, token.tid, token.register)
    elif isinstance(token, SetTariffRateToken):
        data = _tid_block(token.subclass, token.rnd, token.tid, token.rate)
    elif isinstance(token, ClearTamperToken):
        data = _tid_block(token.subclass, token.rnd, token.tid, 0)
    elif isinstance(token, SetWaterMeterFactorToken):
        data = _tid_block(token.subclass, token.rnd, token.tid, token.factor)
    elif isinstance(token, KeyChange1Token):
        control = (
            (token.key_revision << 4)
            | (int(token.rollover) << 3)
            | (token.reserved << 2)
            | int(token.key_type)
        )
        data = (3 << 60) | (token.ken_high << 56) | (control << 48) | (token.key_bits << 16)
    elif isinstance(token, KeyChange2Token):
        data = (4 << 60) | (token.ken_low << 56) | (token.tariff_index << 48)
        data |= token.key_bits << 16
    elif isinstance(token, KeyChange3Token):
        data = (8 << 60) | (token.sgc_low << 48) | (token.key_bits << 16)
    elif isinstance(token, KeyChange4Token):
        data = (9 << 60) | (token.sgc_high << 48) | (token.key_bits << 16)
    else:
        raise UnknownSubclassError(f"not an STS token value: {type(token).__name__}")
    return data | token_crc(token.token_class, data >> 16)


def block_crc_ok(token_class: int, block: int) -> bool:
    """True when a plaintext block's CRC matches (CRC_C for currency subclasses 4..7)."""
    currency = token_class == TokenClass.CREDIT and 4 <= (block >> 60) <= 7
    return token_crc(token_class, block >> 16, currency=currency) == block & 0xFFFF


def parse_block(token_class: int, block: int) -> Token:
    """Read a token value from its plaintext block, in the meter's order of checks.

    Raises:
        CrcError: the CRC does not match.
        UnknownSubclassError: class 3, or a subclass this library does not define.
        FieldRangeError: a field is out of range (e.g. KRN 0, TI above 99).
    """
    if token_class not in (0, 1, 2):
        raise UnknownSubclassError(f"token class {token_class} is reserved")
    if not block_crc_ok(token_class, block):
        raise CrcError(
            "token failed its CRC check: it was made for another meter or key, "
            "or a digit was mistyped"
        )
    subclass = block >> 60
    nibble = (block >> 56) & 0xF
    tid = (block >> 32) & 0xFFFFFF
    value = (block >> 16) & 0xFFFF
    if token_class == TokenClass.CREDIT:
        if subclass <= 3:
            return CreditToken(CreditType(subclass), tid, decode_amount(value), nibble)
        if subclass <= 7:
            exponent = ((nibble & 7) << 2) | (value >> 14)
            amount = decode_currency_amount(exponent, value & 0x3FFF)
            return CurrencyCreditToken(CurrencyType(subclass), tid, amount, bool(nibble >> 3))
        raise UnknownSubclassError(f"credit token subclass {subclass} is reserved")
    if token_class == TokenClass.NON_METER_SPECIFIC:
        if subclass == 0:
            return MeterTestToken((block >> 24) & ((1 << 36) - 1), value & 0xFF, 0)
        if subclass == 1:
            return MeterTestToken((block >> 32) & ((1 << 28) - 1), value, 1)
        raise UnknownSubclassError(f"meter test token subclass {subclass} is not supported")
    return _parse_management(subclass, nibble, tid, value, block)


def _parse_management(subclass: int, nibble: int, tid: int, value: int, block: int) -> Token:
    key_bits = (block >> 16) & 0xFFFF_FFFF
    byte48 = (block >> 48) & 0xFF
    match subclass:
        case ManagementSubclass.SET_MAXIMUM_POWER_LIMIT:
            return SetMaximumPowerLimitToken(tid, decode_amount(value), nibble)
        case ManagementSubclass.CLEAR_CREDIT:
            return ClearCreditToken(tid, value, nibble)
        case ManagementSubclass.SET_TARIFF_RATE:
            return SetTariffRateToken(tid, value, nibble)
        case ManagementSubclass.CLEAR_TAMPER:
            if value != 0:
                raise FieldRangeError(f"clear tamper token pad must be 0, got {value:#06x}")
            return ClearTamperToken(tid, nibble)
        case ManagementSubclass.SET_PHASE_UNBALANCE_LIMIT:
            return SetPhaseUnbalanceLimitToken(tid, decode_amount(value), nibble)
        case ManagementSubclass.SET_WATER_METER_FACTOR:
            return SetWaterMeterFactorToken(tid, value, nibble)
        case ManagementSubclass.KEY_CHANGE_1:
            return KeyChange1Token(
                ken_high=nibble,
                key_revision=byte48 >> 4,
                rollover=bool((byte48 >> 3) & 1),
                key_type=KeyType(byte48 & 3),
                key_bits=key_bits,
                reserved=(byte48 >> 2) & 1,
            )
        case ManagementSubclass.KEY_CHANGE_2:
            return KeyChange2Token(nibble, byte48, key_bits)
        case ManagementSubclass.KEY_CHANGE_3:
            return KeyChange3Token((block >> 48) & 0xFFF, key_bits)
        case ManagementSubclass.KEY_CHANGE_4:
            return KeyChange4Token((block >> 48) & 0xFFF, key_bits)
    raise UnknownSubclassError(f"management token subclass {subclass} is not supported")


def encode_token(token: Token, decoder_key: DecoderKey | None = None) -> str:
    """Encode a token value to its 20 digits (no separators; see ``group_digits``).

    Class 1 tokens are not encrypted and need no key.

    Raises:
        KeyFormatError: a class 0/2 token without a decoder key.
    """
    block = token_block(token)
    if token.token_class != TokenClass.NON_METER_SPECIFIC:
        if decoder_key is None:
            raise KeyFormatError("a decoder key is needed to encode class 0 and 2 tokens")
        block = decoder_key.encrypt(block)
    return format_token(transpose_class(block, token.token_class))


def encode_block(token_class: int, block: int, decoder_key: DecoderKey | None) -> str:
    """Encrypt (unless class 1) and transpose a raw 64-bit plaintext block to 20 digits."""
    if token_class != TokenClass.NON_METER_SPECIFIC:
        if decoder_key is None:
            raise KeyFormatError("a decoder key is needed to encode class 0 and 2 tokens")
        block = decoder_key.encrypt(block)
    return format_token(transpose_class(block, token_class))


def decrypt_token(text: str, decoder_key: DecoderKey | None) -> tuple[int, int]:
    """Parse 20 digits and return (class, plaintext block); class 1 needs no key.

    Raises:
        TokenFormatError: not 20 digits or not below 2**66.
        KeyFormatError: a class 0/2 token without a decoder key.
    """
    token_class, block = untranspose_class(parse_token(text))
    if token_class != TokenClass.NON_METER_SPECIFIC:
        if decoder_key is None:
            raise KeyFormatError("a decoder key is needed to decode class 0 and 2 tokens")
        block = decoder_key.decrypt(block)
    return token_class, block


def decode_token(text: str, decoder_key: DecoderKey | None = None) -> Token:
    """Decode 20 digits (spaces/dashes allowed) to a token value.

    Raises:
        TokenFormatError: not 20 digits or not below 2**66.
        KeyFormatError: a class 0/2 token without a decoder key.
        CrcError: wrong key, wrong meter or a mistyped digit.
        UnknownSubclassError: reserved class or unsupported subclass.
        FieldRangeError: a field out of range.
    """
    token_class, block = decrypt_token(text, decoder_key)
    return parse_block(token_class, block)
