import struct
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.modbus import Ascii, CodecError, Float32, ScaledInt

F32 = Float32()
# Derandomized: the same examples on every run, as the test suite must be deterministic.
DETERMINISTIC = settings(derandomize=True)
finite_float32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@DETERMINISTIC
@given(finite_float32)
def test_float32_round_trips_every_finite_binary32_exactly(number: float) -> None:
    value = Decimal(number)
    registers = F32.encode(value)
    assert all(0 <= word <= 0xFFFF for word in registers)
    assert F32.decode(registers) == value


def test_float32_is_high_word_first_like_eastron() -> None:
    # 230.0 = 0x43660000: the high word comes first on the wire.
    assert F32.encode(Decimal("230.0")) == [0x4366, 0x0000]
    assert F32.decode([0x4366, 0x0000]) == Decimal(230)


@DETERMINISTIC
@given(
    st.decimals(
        min_value=Decimal("-1e30"), max_value=Decimal("1e30"), allow_nan=False, allow_infinity=False
    )
)
def test_float32_encodes_any_decimal_to_the_nearest_binary32(value: Decimal) -> None:
    nearest = struct.unpack(">f", struct.pack(">f", float(value)))[0]
    assert F32.decode(F32.encode(value)) == Decimal(nearest)


@pytest.mark.parametrize("registers", [[0x7FC0, 0], [0x7F80, 0], [0xFF80, 0]])
def test_float32_refuses_nan_and_infinity_in_a_reply(registers: list[int]) -> None:
    with pytest.raises(CodecError, match="NaN or infinity"):
        F32.decode(registers)


def test_float32_refuses_values_beyond_its_range() -> None:
    with pytest.raises(CodecError, match="range"):
        F32.encode(Decimal("1e39"))
    with pytest.raises(CodecError, match="finite"):
        F32.encode(Decimal("NaN"))


codecs = st.builds(
    ScaledInt,
    words=st.sampled_from([1, 2, 4]),
    signed=st.booleans(),
    exponent=st.integers(min_value=-4, max_value=2),
)


@DETERMINISTIC
@given(codecs, st.data())
def test_scaled_int_round_trips_every_representable_value(codec: ScaledInt, data) -> None:
    raw = data.draw(st.integers(min_value=codec.raw_min, max_value=codec.raw_max))
    value = Decimal(raw).scaleb(codec.exponent)
    registers = codec.encode(value)
    assert len(registers) == codec.words
    assert all(0 <= word <= 0xFFFF for word in registers)
    assert codec.decode(registers) == value


@DETERMINISTIC
@given(codecs, st.lists(st.integers(min_value=0, max_value=0xFFFF), min_size=4, max_size=4))
def test_scaled_int_decodes_any_registers_and_encodes_them_back(
    codec: ScaledInt, words: list[int]
) -> None:
    registers = words[: codec.words]
    assert codec.encode(codec.decode(registers)) == registers


def test_uint32_is_hi_lo_and_scaled_like_dds238() -> None:
    energy = ScaledInt(words=2, exponent=-2)
    assert energy.encode(Decimal("1234.56")) == [0x0001, 0xE240]
    assert energy.decode([0x0001, 0xE240]) == Decimal("1234.56")


def test_signed_int16_power_decodes_negative_export() -> None:
    assert ScaledInt(signed=True).decode([0xFFFE]) == Decimal(-2)


def test_scaled_int_rounds_half_even_to_its_resolution() -> None:
    volts = ScaledInt(exponent=-1)
    assert volts.decode(volts.encode(Decimal("230.05"))) == Decimal("230.0")
    assert volts.decode(volts.encode(Decimal("230.15"))) == Decimal("230.2")


@pytest.mark.parametrize("value", ["-1", "65536", "Infinity"])
def test_scaled_int_refuses_values_out_of_range(value: str) -> None:
    with pytest.raises(CodecError):
        ScaledInt().encode(Decimal(value))


@pytest.mark.parametrize("registers", [[], [1, 2], [70000]])
def test_decoders_refuse_registers_of_the_wrong_shape(registers: list[int]) -> None:
    with pytest.raises(CodecError):
        ScaledInt().decode(registers)


@DETERMINISTIC
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20))
def test_ascii_round_trips_printable_text(text: str) -> None:
    codec = Ascii(10)
    registers = codec.encode_text(text)
    assert len(registers) == 10
    assert codec.decode_text(registers) == text


def test_ascii_puts_the_first_character_in_the_high_byte() -> None:
    assert Ascii(2).encode_text("ABC") == [0x4142, 0x4300]


@pytest.mark.parametrize("text", ["x" * 21, "é", "tab\t"])
def test_ascii_refuses_text_that_does_not_fit_or_is_not_printable(text: str) -> None:
    with pytest.raises(CodecError):
        Ascii(10).encode_text(text)


def test_ascii_refuses_registers_with_a_nul_inside_the_text() -> None:
    with pytest.raises(CodecError, match="NUL"):
        Ascii(2).decode_text([0x4100, 0x4200])
