"""Value codecs: Decimal <-> lists of 16-bit Modbus registers.

Three encodings cover the meters gridvend speaks to:

* ``Float32``: IEEE-754 single precision in two registers, high word first (ABCD), as
  Eastron SDM meters publish their input registers.
* ``ScaledInt``: an unsigned or signed integer in one, two (high word first, the
  "hi/lo UINT32" of DDS238 and Acrel meters) or four registers, worth ``raw * 10**exponent``.
* ``Ascii``: text, two characters per register, first character in the high byte,
  padded with NUL (token entry, STS meter number, serial number).

Every function is pure. Decimal goes in and comes out so that billing arithmetic never
meets a binary float; the float32 codec is the one place where a value is rounded to
binary, and it says so.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

__all__ = [
    "Ascii",
    "Codec",
    "CodecError",
    "Float32",
    "NumericCodec",
    "ScaledInt",
    "check_registers",
]


class CodecError(ValueError):
    """A value cannot be encoded, or registers do not hold a valid value."""


def check_registers(registers: Sequence[int], count: int) -> None:
    """Check that ``registers`` is ``count`` 16-bit words.

    Raises:
        CodecError: wrong length or a word outside 0..65535.
    """
    if len(registers) != count:
        raise CodecError(f"expected {count} registers, got {len(registers)}")
    for word in registers:
        if not 0 <= word <= 0xFFFF:
            raise CodecError(f"register value {word} is not a 16-bit word")


def _words_from_int(raw: int, words: int) -> list[int]:
    return [(raw >> (16 * (words - 1 - i))) & 0xFFFF for i in range(words)]


def _int_from_words(registers: Sequence[int]) -> int:
    raw = 0
    for word in registers:
        raw = (raw << 16) | word
    return raw


@dataclass(frozen=True, slots=True)
class Float32:
    """IEEE-754 binary32 in two registers, high word first (Eastron "ABCD")."""

    @property
    def registers(self) -> int:
        return 2

    def encode(self, value: Decimal) -> list[int]:
        """Encode ``value`` rounded to the nearest binary32.

        Raises:
            CodecError: not finite, or beyond the binary32 range.
        """
        if not value.is_finite():
            raise CodecError(f"{value} is not a finite number")
        try:
            packed = struct.pack(">f", float(value))
        except OverflowError as exc:
            raise CodecError(f"{value} is out of the float32 range") from exc
        high, low = struct.unpack(">HH", packed)
        return [high, low]

    def decode(self, registers: Sequence[int]) -> Decimal:
        """Decode two registers to the exact Decimal value of the binary32 they hold.

        Raises:
            CodecError: wrong register count, NaN or infinity.
        """
        check_registers(registers, 2)
        (number,) = struct.unpack(">f", struct.pack(">HH", registers[0], registers[1]))
        if not math.isfinite(number):
            raise CodecError("float32 registers hold NaN or infinity")
        # float32 -> float64 is exact, and Decimal(float) is exact: no rounding here.
        return Decimal(number)


@dataclass(frozen=True, slots=True)
class ScaledInt:
    """An integer in ``words`` registers (high word first) worth ``raw * 10**exponent``.

    ``exponent=-2`` is the "x0.01" of a DDS238 energy register. Encoding rounds to the
    register's resolution with ``rounding`` (a ``decimal`` rounding mode).
    """

    words: int = 1
    signed: bool = False
    exponent: int = 0
    rounding: str = ROUND_HALF_EVEN

    def __post_init__(self) -> None:
        if self.words not in (1, 2, 4):
            raise ValueError(f"words must be 1, 2 or 4, not {self.words}")

    @property
    def registers(self) -> int:
        return self.words

    @property
    def _bits(self) -> int:
        return 16 * self.words

    @property
    def raw_min(self) -> int:
        return -(1 << (self._bits - 1)) if self.signed else 0

    @property
    def raw_max(self) -> int:
        return (1 << (self._bits - 1)) - 1 if self.signed else (1 << self._bits) - 1

    def to_raw(self, value: Decimal) -> int:
        """The integer stored for ``value`` after rounding to the resolution.

        Raises:
            CodecError: not finite, or out of the register's range.
        """
        if not value.is_finite():
            raise CodecError(f"{value} is not a finite number")
        try:
            raw = int(value.scaleb(-self.exponent).to_integral_value(rounding=self.rounding))
        except InvalidOperation as exc:
            raise CodecError(f"{value} cannot be scaled") from exc
        if not self.raw_min <= raw <= self.raw_max:
            raise CodecError(
                f"{value} is out of range for a {self._bits}-bit "
                f"{'signed' if self.signed else 'unsigned'} register scaled by 1e{self.exponent}"
            )
        return raw

    def encode(self, value: Decimal) -> list[int]:
        """Encode ``value`` (rounded to ``10**exponent``).

        Raises:
            CodecError: not finite, or out of the register's range.
        """
        raw = self.to_raw(value)
        return _words_from_int(raw & ((1 << self._bits) - 1), self.words)

    def decode(self, registers: Sequence[int]) -> Decimal:
        """Decode to ``raw * 10**exponent`` exactly.

        Raises:
            CodecError: wrong register count or a word out of range.
        """
        check_registers(registers, self.words)
        raw = _int_from_words(registers)
        if self.signed and raw > self.raw_max:
            raw -= 1 << self._bits
        return Decimal(raw).scaleb(self.exponent)


@dataclass(frozen=True, slots=True)
class Ascii:
    """Text in ``registers`` registers, two ASCII characters each, NUL-padded at the end."""

    registers: int

    @property
    def max_chars(self) -> int:
        return 2 * self.registers

    def encode_text(self, text: str) -> list[int]:
        """Encode printable ASCII ``text`` of at most ``2 * registers`` characters.

        Raises:
            CodecError: too long, or a character outside printable ASCII.
        """
        if len(text) > self.max_chars:
            raise CodecError(f"text is {len(text)} characters, at most {self.max_chars} fit")
        if not all(" " <= ch <= "~" for ch in text):
            raise CodecError("text must be printable ASCII")
        data = text.encode("ascii").ljust(self.max_chars, b"\x00")
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]

    def decode_text(self, registers: Sequence[int]) -> str:
        """Decode, dropping the NUL padding.

        Raises:
            CodecError: wrong register count, a NUL inside the text, or non-printable bytes.
        """
        check_registers(registers, self.registers)
        data = b"".join(word.to_bytes(2, "big") for word in registers)
        text = data.rstrip(b"\x00")
        if b"\x00" in text or not all(0x20 <= byte <= 0x7E for byte in text):
            raise CodecError("registers do not hold NUL-padded printable ASCII")
        return text.decode("ascii")


NumericCodec = Float32 | ScaledInt
Codec = Float32 | ScaledInt | Ascii
