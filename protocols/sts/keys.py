"""Decoder keys: the algorithms (EA), key types, and decoder key generation (DKGA02/DKGA04).

A meter's decoder key (DK) is derived from the supply group's vending key (VK) and the
meter's identity: key type (KT), supply group code (SGC), tariff index (TI), key revision
number (KRN) and PAN; DKGA04 also takes the TID base date and the encryption algorithm.

* DKGA02: X = PANBlock XOR CONTROLBlock; DK = DES_VK(X) XOR X XOR VK (64-bit VK, 64-bit DK).
* DKGA04: DK = the first 8 (EA07) or 16 (EA11) bytes of HMAC-SHA-256(VK, M) with a
  160-bit VK and M the length-prefixed ASCII message of the reference, section 7.5.

DKGA01 (legacy) and DKGA03 (deprecated, dual-DES) are not supported and raise
:class:`UnsupportedAlgorithmError`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass

from protocols.sts.dea import dea_decrypt, dea_encrypt, des_encrypt_bytes
from protocols.sts.errors import FieldRangeError, KeyFormatError, UnsupportedAlgorithmError
from protocols.sts.fields import KEN_NEVER_EXPIRES, BaseDate
from protocols.sts.identifiers import MeterPan
from protocols.sts.misty1 import misty1_decrypt, misty1_encrypt
from protocols.sts.sta import sta_decrypt, sta_encrypt


class EncryptionAlgorithm(enum.StrEnum):
    """Token encryption algorithm codes."""

    STA = "07"  # EA07, 64-bit key
    DEA = "09"  # EA09, single DES, 64-bit key
    MISTY1 = "11"  # EA11, 128-bit key

    @property
    def key_bytes(self) -> int:
        """Decoder key length in bytes: 8, or 16 for MISTY1."""
        return 16 if self is EncryptionAlgorithm.MISTY1 else 8

    @classmethod
    def parse(cls, value: str | int | EncryptionAlgorithm) -> EncryptionAlgorithm:
        """Accept "07"/"09"/"11", 7/9/11 or "EA07"/... .

        Raises:
            UnsupportedAlgorithmError: any other value.
        """
        text = str(value).upper().removeprefix("EA")
        text = text.zfill(2) if text.isdigit() else text
        try:
            return cls(text)
        except ValueError:
            raise UnsupportedAlgorithmError(
                f"encryption algorithm must be 07 (STA), 09 (DEA) or 11 (MISTY1), got {value!r}"
            ) from None


class KeyType(enum.IntEnum):
    """Decoder key type (KT)."""

    DITK = 0  # initialisation
    DDTK = 1  # default: credit tokens are refused
    DUTK = 2  # unique, the normal case
    DCTK = 3  # common

    @classmethod
    def parse(cls, value: int | str | KeyType) -> KeyType:
        """Accept 0..3 or the names DITK/DDTK/DUTK/DCTK.

        Raises:
            FieldRangeError: any other value.
        """
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        try:
            return cls(int(value))
        except (ValueError, TypeError):
            raise FieldRangeError(
                f"key type must be 0 (DITK), 1 (DDTK), 2 (DUTK) or 3 (DCTK), got {value!r}"
            ) from None


class Dkga(enum.StrEnum):
    """Decoder key generation algorithm codes."""

    DKGA01 = "01"
    DKGA02 = "02"
    DKGA03 = "03"
    DKGA04 = "04"

    @classmethod
    def parse(cls, value: str | int | Dkga) -> Dkga:
        """Accept "02"/"04" (and "01"/"03", which derivation then refuses), 2/4 or "DKGA02".

        Raises:
            UnsupportedAlgorithmError: an unknown code.
        """
        text = str(value).upper().removeprefix("DKGA")
        text = text.zfill(2) if text.isdigit() else text
        try:
            return cls(text)
        except ValueError:
            raise UnsupportedAlgorithmError(
                f"decoder key generation algorithm must be 02 or 04, got {value!r}"
            ) from None


def parse_hex_key(text: str, lengths: tuple[int, ...], what: str) -> bytes:
    """Parse a hex key (spaces allowed, optional 0x) of one of the given byte lengths.

    Raises:
        KeyFormatError: not hex, or the wrong length.
    """
    cleaned = "".join(text.split()).lower().removeprefix("0x")
    try:
        raw = bytes.fromhex(cleaned)
    except ValueError:
        raise KeyFormatError(f"{what} must be hexadecimal, got {text!r}") from None
    if len(raw) not in lengths:
        expected = " or ".join(f"{n * 2}" for n in lengths)
        raise KeyFormatError(
            f"{what} must have {expected} hex digits, got {len(cleaned)} hex digits"
        )
    return raw


@dataclass(frozen=True, slots=True)
class DecoderKey:
    """A decoder key and the algorithm it is used with.

    ``key`` is in normal byte order (first byte most significant), 8 bytes for EA07/EA09
    and 16 bytes for EA11.
    """

    key: bytes
    algorithm: EncryptionAlgorithm = EncryptionAlgorithm.STA

    def __post_init__(self) -> None:
        if len(self.key) != self.algorithm.key_bytes:
            raise KeyFormatError(
                f"a decoder key for EA{self.algorithm} must be {self.algorithm.key_bytes} "
                f"bytes ({self.algorithm.key_bytes * 2} hex digits), got {len(self.key)} bytes"
            )

    @classmethod
    def from_hex(
        cls, text: str, algorithm: EncryptionAlgorithm | str = EncryptionAlgorithm.STA
    ) -> DecoderKey:
        """Parse a hex decoder key for an algorithm.

        Raises:
            KeyFormatError: not hex or the wrong length for the algorithm.
            UnsupportedAlgorithmError: unknown algorithm code.
        """
        ea = EncryptionAlgorithm.parse(algorithm)
        return cls(parse_hex_key(text, (ea.key_bytes,), f"decoder key for EA{ea}"), ea)

    @property
    def hex(self) -> str:
        """The key as lowercase hex, normal byte order."""
        return self.key.hex()

    def encrypt(self, block: int) -> int:
        """Encrypt a 64-bit block with this key and its algorithm."""
        if self.algorithm is EncryptionAlgorithm.STA:
            return sta_encrypt(int.from_bytes(self.key, "big"), block)
        if self.algorithm is EncryptionAlgorithm.DEA:
            return dea_encrypt(int.from_bytes(self.key, "big"), block)
        return misty1_encrypt(self.key, block)

    def decrypt(self, block: int) -> int:
        """Decrypt a 64-bit block with this key and its algorithm."""
        if self.algorithm is EncryptionAlgorithm.STA:
            return sta_decrypt(int.from_bytes(self.key, "big"), block)
        if self.algorithm is EncryptionAlgorithm.DEA:
            return dea_decrypt(int.from_bytes(self.key, "big"), block)
        return misty1_decrypt(self.key, block)


def check_supply_group_code(sgc: str | int) -> str:
    """Return the SGC as its 6-digit string.

    Raises:
        FieldRangeError: not 6 decimal digits (an int is zero-padded).
    """
    text = f"{sgc:06d}" if isinstance(sgc, int) and sgc >= 0 else str(sgc)
    if len(text) != 6 or not text.isascii() or not text.isdigit():
        raise FieldRangeError(f"supply group code must have 6 digits, got {sgc!r}")
    return text


def check_tariff_index(ti: str | int) -> str:
    """Return the TI as its 2-digit string.

    Raises:
        FieldRangeError: not 2 decimal digits (an int 0..99 is zero-padded).
    """
    text = f"{ti:02d}" if isinstance(ti, int) and ti >= 0 else str(ti)
    if len(text) != 2 or not text.isascii() or not text.isdigit():
        raise FieldRangeError(f"tariff index must have 2 digits (00..99), got {ti!r}")
    return text


def check_key_revision(krn: int) -> int:
    """Return the KRN if it is 1..9.

    Raises:
        FieldRangeError: otherwise.
    """
    if not isinstance(krn, int) or not 1 <= krn <= 9:
        raise FieldRangeError(f"key revision number must be 1..9, got {krn!r}")
    return krn


def check_key_expiry_number(ken: int) -> int:
    """Return the KEN if it is 0..255 (255 = never expires).

    Raises:
        FieldRangeError: otherwise.
    """
    if not isinstance(ken, int) or not 0 <= ken <= KEN_NEVER_EXPIRES:
        raise FieldRangeError(f"key expiry number must be 0..255, got {ken!r}")
    return ken


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """Everything that determines a meter's decoder key, and the key's expiry.

    ``vending_key`` is the raw VK: 8 bytes for DKGA02, 20 bytes for DKGA04. It is a secret:
    keep it encrypted at rest. The constructor validates every field.
    """

    vending_key: bytes
    supply_group_code: str
    tariff_index: str
    key_revision: int
    key_type: KeyType = KeyType.DUTK
    base_date: BaseDate = BaseDate.Y2014
    algorithm: EncryptionAlgorithm = EncryptionAlgorithm.STA
    dkga: Dkga = Dkga.DKGA04
    key_expiry_number: int = KEN_NEVER_EXPIRES

    def __post_init__(self) -> None:
        check_supply_group_code(self.supply_group_code)
        check_tariff_index(self.tariff_index)
        check_key_revision(self.key_revision)
        check_key_expiry_number(self.key_expiry_number)
        object.__setattr__(self, "key_type", KeyType.parse(self.key_type))
        object.__setattr__(self, "base_date", BaseDate.parse(self.base_date))
        object.__setattr__(self, "algorithm", EncryptionAlgorithm.parse(self.algorithm))
        object.__setattr__(self, "dkga", Dkga.parse(self.dkga))
        _check_combination(self.dkga, self.algorithm, len(self.vending_key))

    def __repr__(self) -> str:
        # Never print the vending key (logs, tracebacks).
        return (
            f"KeyConfig(sgc={self.supply_group_code}, ti={self.tariff_index}, "
            f"krn={self.key_revision}, kt={int(self.key_type)}, base={int(self.base_date)}, "
            f"ea={self.algorithm}, dkga={self.dkga}, ken={self.key_expiry_number})"
        )


def _check_combination(dkga: Dkga, algorithm: EncryptionAlgorithm, vk_len: int) -> None:
    if dkga in (Dkga.DKGA01, Dkga.DKGA03):
        raise UnsupportedAlgorithmError(
            f"DKGA{dkga} is not supported (legacy/deprecated); use DKGA02 or DKGA04"
        )
    if dkga is Dkga.DKGA02:
        if algorithm is EncryptionAlgorithm.MISTY1:
            raise UnsupportedAlgorithmError("DKGA02 makes 64-bit keys; EA11 needs DKGA04")
        if vk_len != 8:
            raise KeyFormatError(f"a DKGA02 vending key must be 8 bytes, got {vk_len}")
    elif vk_len != 20:
        raise KeyFormatError(f"a DKGA04 vending key must be 20 bytes, got {vk_len}")


def pan_block(pan: MeterPan, key_type: KeyType) -> bytes:
    """The 8-byte PANBlock of DKGA01/02/03: 16 decimal digits used as hex nibbles.

    6-digit IIN: last 5 IIN digits + 11-digit DRN; 4-digit IIN: last 3 IIN digits +
    13-digit DRN. For a common key (DCTK) the DRN digits are zeros.
    """
    iin_part = pan.iin[1:]
    drn = "0" * len(pan.drn) if key_type is KeyType.DCTK else pan.drn
    return bytes.fromhex(iin_part + drn)


def control_block(key_type: KeyType, sgc: str, ti: str, krn: int) -> bytes:
    """The 8-byte CONTROLBlock: KT, SGC (6 BCD), TI (2 BCD), KRN, then FFFFFF."""
    return bytes.fromhex(f"{int(key_type):x}{sgc}{ti}{krn:x}ffffff")


def derive_dkga02(
    vending_key: bytes, pan: MeterPan, key_type: KeyType, sgc: str, ti: str, krn: int
) -> bytes:
    """DKGA02: DK = DES_VK(X) XOR X XOR VK with X = PANBlock XOR CONTROLBlock (8 bytes).

    Raises:
        KeyFormatError: the vending key is not 8 bytes.
    """
    if len(vending_key) != 8:
        raise KeyFormatError(f"a DKGA02 vending key must be 8 bytes, got {len(vending_key)}")
    x = bytes(
        a ^ b
        for a, b in zip(
            pan_block(pan, key_type), control_block(key_type, sgc, ti, krn), strict=True
        )
    )
    y = des_encrypt_bytes(vending_key, x)
    return bytes(a ^ b ^ c for a, b, c in zip(y, x, vending_key, strict=True))


def dkga04_message(
    pan: MeterPan,
    key_type: KeyType,
    sgc: str,
    ti: str,
    krn: int,
    base_date: BaseDate,
    algorithm: EncryptionAlgorithm,
) -> bytes:
    """The HMAC input of DKGA04: labels, separator, context, and the key length in bits."""

    def field(text: str) -> bytes:
        return bytes([len(text)]) + text.encode("ascii")

    labels = [Dkga.DKGA04.value, base_date.code, algorithm.value, ti]
    context = [sgc, f"{int(key_type):X}", f"{krn:X}", pan.digits]
    bits = algorithm.key_bytes * 8
    return (
        bytes([len(labels)])
        + b"".join(field(x) for x in labels)
        + b"\x00"
        + bytes([len(context)])
        + b"".join(field(x) for x in context)
        + bits.to_bytes(4, "big")
    )


def derive_dkga04(
    vending_key: bytes,
    pan: MeterPan,
    key_type: KeyType,
    sgc: str,
    ti: str,
    krn: int,
    base_date: BaseDate,
    algorithm: EncryptionAlgorithm,
) -> bytes:
    """DKGA04: the first 8 or 16 bytes of HMAC-SHA-256(VK, message).

    Raises:
        KeyFormatError: the vending key is not 20 bytes.
    """
    if len(vending_key) != 20:
        raise KeyFormatError(f"a DKGA04 vending key must be 20 bytes, got {len(vending_key)}")
    message = dkga04_message(pan, key_type, sgc, ti, krn, base_date, algorithm)
    digest = hmac.new(vending_key, message, hashlib.sha256).digest()
    return digest[: algorithm.key_bytes]


def derive_decoder_key(config: KeyConfig, pan: MeterPan) -> DecoderKey:
    """Derive a meter's decoder key from a key configuration and the meter's PAN.

    Raises:
        UnsupportedAlgorithmError: DKGA01/03, or DKGA02 with EA11.
        KeyFormatError: the vending key length does not fit the DKGA.
    """
    if config.dkga is Dkga.DKGA02:
        raw = derive_dkga02(
            config.vending_key,
            pan,
            config.key_type,
            config.supply_group_code,
            config.tariff_index,
            config.key_revision,
        )
    else:
        raw = derive_dkga04(
            config.vending_key,
            pan,
            config.key_type,
            config.supply_group_code,
            config.tariff_index,
            config.key_revision,
            config.base_date,
            config.algorithm,
        )
    return DecoderKey(raw, config.algorithm)


def vending_key_from_hex(text: str) -> bytes:
    """Parse a vending key in hex: 16 hex digits (DKGA02) or 40 hex digits (DKGA04).

    Raises:
        KeyFormatError: not hex or another length.
    """
    return parse_hex_key(text, (8, 20), "vending key")
