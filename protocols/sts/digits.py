"""The 66-bit token (class-bit transposition) and its 20 decimal digits.

The class is not encrypted. After encryption, the class bits replace block bits 28 (class
bit 1) and 27 (class bit 0), and the two displaced cipher bits move to token bits 65 and
64. The 66-bit number is printed as 20 decimal digits, zero-padded.
"""

from __future__ import annotations

from protocols.sts.errors import TokenFormatError

TOKEN_DIGITS = 20
TOKEN_MAX = (1 << 66) - 1
_CLEAR_27_28 = ~((1 << 28) | (1 << 27)) & 0xFFFF_FFFF_FFFF_FFFF


def transpose_class(block: int, token_class: int) -> int:
    """Insert the 2 class bits into a 64-bit (encrypted) block, giving the 66-bit token."""
    displaced = (block >> 27) & 3
    return (displaced << 64) | (block & _CLEAR_27_28) | ((token_class & 3) << 27)


def untranspose_class(token: int) -> tuple[int, int]:
    """Split a 66-bit token into (class, 64-bit encrypted block)."""
    token_class = (token >> 27) & 3
    block = (token & _CLEAR_27_28) | (((token >> 64) & 3) << 27)
    return token_class, block


def format_token(token: int) -> str:
    """The 20-digit decimal form of a 66-bit token (leading zeros kept)."""
    if not 0 <= token <= TOKEN_MAX:
        raise TokenFormatError(f"token value must fit 66 bits, got {token}")
    return f"{token:020d}"


def group_digits(digits: str, size: int = 4) -> str:
    """Print a token in groups of ``size`` digits separated by spaces ("1234 5678 ...")."""
    return " ".join(digits[i : i + size] for i in range(0, len(digits), size))


def parse_token(text: str) -> int:
    """Parse a token as typed (spaces and dashes allowed) into its 66-bit value.

    Raises:
        TokenFormatError: not exactly 20 digits after removing separators, or the value is
            not below 2**66 (no valid token is that large).
    """
    if not isinstance(text, str):
        raise TokenFormatError(f"token must be text, got {type(text).__name__}")
    cleaned = "".join(text.split()).replace("-", "")
    if not cleaned.isascii() or not cleaned.isdigit():
        raise TokenFormatError(f"token must contain only digits, spaces and dashes: {text!r}")
    if len(cleaned) != TOKEN_DIGITS:
        raise TokenFormatError(f"token must have {TOKEN_DIGITS} digits, got {len(cleaned)}")
    value = int(cleaned)
    if value > TOKEN_MAX:
        raise TokenFormatError(
            f"token {cleaned} is too large to be an STS token (must be below 2**66); "
            "check for a typing error"
        )
    return value
