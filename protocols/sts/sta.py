"""EA07: the Standard Transfer Algorithm (STA), a 16-round substitution-permutation cipher.

STA is not DES. Each round substitutes every nibble of the 64-bit block through one of two
4-bit S-boxes (chosen by a bit of the rotating key register) and then permutes the 64 bits.
The key register starts as NOT(key) rotated right by 12 and rotates left by one bit per
round. There is no key XOR: the key only selects S-boxes.

Speed: a round is done with eight lookups. For each byte position and each pair of S-box
choices (for its two nibbles), a 256-entry table maps the byte to its substituted *and
permuted* contribution to the 64-bit output, so a round is eight lookups OR-ed together.
Per decoder key, the 16 rounds' table choices are computed once and cached.
"""

from __future__ import annotations

from functools import lru_cache

_MASK64 = 0xFFFF_FFFF_FFFF_FFFF

S1 = (14, 10, 7, 9, 12, 3, 2, 5, 13, 0, 15, 1, 4, 8, 6, 11)
S2 = (12, 8, 2, 13, 7, 6, 1, 3, 11, 5, 9, 15, 0, 4, 10, 14)
# Bit i of the input goes to bit P[i] of the output.
P = (
    55, 42, 10, 18, 24, 21, 44, 35, 2, 22, 56, 43, 27, 58, 9, 50,
    6, 36, 12, 61, 37, 38, 53, 16, 62, 3, 7, 4, 32, 20, 63, 25,
    51, 52, 54, 33, 49, 19, 46, 29, 48, 31, 23, 30, 41, 28, 13, 5,
    40, 60, 39, 11, 15, 17, 1, 0, 57, 34, 59, 8, 47, 14, 45, 26,
)  # fmt: skip

_S_INV = tuple(tuple(box.index(v) for v in range(16)) for box in (S1, S2))
_P_INV = tuple(P.index(i) for i in range(64))

Table = tuple[int, ...]
Stage = tuple[Table, Table, Table, Table, Table, Table, Table, Table]


def _permute(value: int, perm: tuple[int, ...]) -> int:
    out = 0
    for i in range(64):
        if (value >> i) & 1:
            out |= 1 << perm[i]
    return out


def _substitute_byte(byte: int, selector: int, boxes: tuple[tuple[int, ...], ...]) -> int:
    # selector bit 0 chooses the box for the low nibble, bit 1 for the high nibble.
    low = boxes[selector & 1][byte & 0xF]
    high = boxes[selector >> 1][byte >> 4]
    return (high << 4) | low


def _tables(
    boxes: tuple[tuple[int, ...], ...] | None, perm: tuple[int, ...] | None
) -> tuple[tuple[Table, ...], ...]:
    """tables[j][selector][byte] = perm(substitute(byte) << 8j), either step optional."""
    result = []
    for j in range(8):
        per_selector = []
        for selector in range(4 if boxes else 1):
            row = []
            for byte in range(256):
                value = _substitute_byte(byte, selector, boxes) if boxes else byte
                value <<= 8 * j
                row.append(_permute(value, perm) if perm else value)
            per_selector.append(tuple(row))
        result.append(tuple(per_selector))
    return tuple(result)


_SBOXES = (S1, S2)
_ENCRYPT = _tables(_SBOXES, P)  # S-box then permutation: one encryption round
_UNSUB_UNPERMUTE = _tables(_S_INV, _P_INV)  # inverse S-box, then inverse permutation
_UNSUB = _tables(_S_INV, None)  # inverse S-box only (last decryption step)
_UNPERMUTE = _tables(None, _P_INV)  # inverse permutation only (first decryption step)


def _rotl(value: int, count: int) -> int:
    count %= 64
    return ((value << count) | (value >> (64 - count))) & _MASK64


def _round_keys(key: int) -> list[int]:
    start = _rotl(~key & _MASK64, 64 - 12)  # rotate right by 12
    return [_rotl(start, r) for r in range(16)]


def _selectors(round_key: int) -> list[int]:
    # For byte j: bit 4n+3 of the round key picks S2 for nibble n = 2j (low), 2j+1 (high).
    return [
        ((round_key >> (8 * j + 3)) & 1) | (((round_key >> (8 * j + 7)) & 1) << 1) for j in range(8)
    ]


def _stage(tables: tuple[tuple[Table, ...], ...], selectors: list[int]) -> Stage:
    t = [tables[j][selectors[j]] for j in range(8)]
    return (t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7])


@lru_cache(maxsize=4096)
def _encrypt_stages(key: int) -> tuple[Stage, ...]:
    return tuple(_stage(_ENCRYPT, _selectors(rk)) for rk in _round_keys(key))


@lru_cache(maxsize=4096)
def _decrypt_stages(key: int) -> tuple[Stage, ...]:
    round_keys = _round_keys(key)
    stages = [_stage(_UNPERMUTE, [0] * 8)]
    # Rounds 15..1: undo S-box of round r, then the permutation of round r-1.
    stages += [_stage(_UNSUB_UNPERMUTE, _selectors(round_keys[r])) for r in range(15, 0, -1)]
    stages.append(_stage(_UNSUB, _selectors(round_keys[0])))
    return tuple(stages)


def _run(stages: tuple[Stage, ...], d: int) -> int:
    for t0, t1, t2, t3, t4, t5, t6, t7 in stages:
        d = (
            t0[d & 0xFF]
            | t1[(d >> 8) & 0xFF]
            | t2[(d >> 16) & 0xFF]
            | t3[(d >> 24) & 0xFF]
            | t4[(d >> 32) & 0xFF]
            | t5[(d >> 40) & 0xFF]
            | t6[(d >> 48) & 0xFF]
            | t7[d >> 56]
        )
    return d


def sta_encrypt(key: int, block: int) -> int:
    """Encrypt a 64-bit block with a 64-bit decoder key (both big-endian integers)."""
    return _run(_encrypt_stages(key), block & _MASK64)


def sta_decrypt(key: int, block: int) -> int:
    """Decrypt a 64-bit block with a 64-bit decoder key (both big-endian integers)."""
    return _run(_decrypt_stages(key), block & _MASK64)
