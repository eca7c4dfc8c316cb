"""The STS token CRC: CRC-16/MODBUS over the class and the top 48 bits, stored byte-swapped.

Input: 7 bytes big-endian of (class << 48) | (block >> 16), i.e. a byte holding the 2
class bits, then the subclass and the 44 data bits. Edition-3 currency tokens ("CRC_C")
append one byte 0x01. Register: reflected polynomial 0xA001, initial value 0xFFFF, no
final XOR. The 16-bit result is stored with its two bytes swapped in block bits 15..0.
"""

from __future__ import annotations


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS of ``data`` (check value for b"123456789" is 0x4B37)."""
    crc = 0xFFFF
    table = _TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def token_crc(token_class: int, block_high48: int, *, currency: bool = False) -> int:
    """Return the 16-bit CRC field (already byte-swapped) for a token.

    Args:
        token_class: the 2-bit class (0..3).
        block_high48: block bits 63..16 (subclass and data) as a 48-bit integer.
        currency: use the edition-3 CRC_C variant (one extra 0x01 byte).
    """
    crc = 0xFFFF
    table = _TABLE
    value = ((token_class & 3) << 48) | (block_high48 & 0xFFFF_FFFF_FFFF)
    for shift in (48, 40, 32, 24, 16, 8, 0):
        crc = (crc >> 8) ^ table[(crc ^ (value >> shift)) & 0xFF]
    if currency:
        crc = (crc >> 8) ^ table[(crc ^ 0x01) & 0xFF]
    return ((crc & 0xFF) << 8) | (crc >> 8)
