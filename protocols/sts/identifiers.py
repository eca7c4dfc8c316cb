"""Meter numbers (DRN) and meter PANs, with their Luhn check digits.

An STS meter is identified by its 18-digit primary account number (PAN):

* IIN ``600727`` + 11-digit DRN (2-digit manufacturer code, 8-digit serial, check digit), or
* IIN ``0000`` + 13-digit DRN (4-digit manufacturer code, 8-digit serial, check digit),

followed by a PAN check digit over IIN + DRN. Customers type the DRN (the "meter number"
printed on the meter). Both check digits are standard Luhn.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.sts.errors import MeterNumberError

IIN_2_DIGIT_MFR = "600727"
IIN_4_DIGIT_MFR = "0000"


def luhn_check_digit(payload: str) -> int:
    """Return the Luhn check digit (0..9) for a string of decimal digits.

    Raises:
        MeterNumberError: ``payload`` is empty or has a character that is not a digit.
    """
    if not payload or not payload.isascii() or not payload.isdigit():
        raise MeterNumberError(f"check digit needs decimal digits, got {payload!r}")
    total = 0
    # The rightmost payload digit is doubled (it sits next to the check digit).
    for position, char in enumerate(reversed(payload)):
        digit = ord(char) - 48
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return (10 - total % 10) % 10


def _digits(text: str, what: str) -> str:
    cleaned = text.strip().replace(" ", "").replace("-", "")
    if not cleaned or not cleaned.isascii() or not cleaned.isdigit():
        raise MeterNumberError(f"{what} must contain only digits, got {text!r}")
    return cleaned


@dataclass(frozen=True, slots=True)
class MeterPan:
    """A meter's PAN: issuer identification number (IIN) and decoder reference number (DRN).

    Build it with :func:`parse_meter_number` or :meth:`from_parts`; the constructor checks
    the lengths and the DRN check digit.
    """

    iin: str
    drn: str

    def __post_init__(self) -> None:
        if self.iin == IIN_2_DIGIT_MFR:
            expected = 11
        elif self.iin == IIN_4_DIGIT_MFR:
            expected = 13
        else:
            raise MeterNumberError(
                f"IIN must be {IIN_2_DIGIT_MFR} or {IIN_4_DIGIT_MFR}, got {self.iin!r}"
            )
        if len(self.drn) != expected or not self.drn.isascii() or not self.drn.isdigit():
            raise MeterNumberError(
                f"meter number (DRN) for IIN {self.iin} must have {expected} digits, "
                f"got {self.drn!r}"
            )
        check = luhn_check_digit(self.drn[:-1])
        if int(self.drn[-1]) != check:
            raise MeterNumberError(
                f"meter number {self.drn} fails its check digit "
                f"(last digit should be {check}); check for a typing error"
            )

    @classmethod
    def from_parts(cls, manufacturer_code: str, serial: str) -> MeterPan:
        """Build a PAN from a 2- or 4-digit manufacturer code and an 8-digit serial number.

        Raises:
            MeterNumberError: wrong lengths or non-digits.
        """
        mfr = _digits(manufacturer_code, "manufacturer code")
        ser = _digits(serial, "serial number")
        if len(mfr) not in (2, 4):
            raise MeterNumberError(f"manufacturer code must have 2 or 4 digits, got {mfr!r}")
        if len(ser) != 8:
            raise MeterNumberError(f"serial number must have 8 digits, got {ser!r}")
        payload = mfr + ser
        iin = IIN_2_DIGIT_MFR if len(mfr) == 2 else IIN_4_DIGIT_MFR
        return cls(iin, payload + str(luhn_check_digit(payload)))

    @property
    def manufacturer_code(self) -> str:
        """The 2- or 4-digit manufacturer code at the start of the DRN."""
        return self.drn[: len(self.drn) - 9]

    @property
    def serial(self) -> str:
        """The 8-digit decoder serial number."""
        return self.drn[-9:-1]

    @property
    def check_digit(self) -> int:
        """The PAN check digit over IIN + DRN."""
        return luhn_check_digit(self.iin + self.drn)

    @property
    def digits(self) -> str:
        """The 18-digit PAN: IIN + DRN + PAN check digit."""
        return f"{self.iin}{self.drn}{self.check_digit}"

    def __str__(self) -> str:
        return self.digits


def parse_meter_number(text: str) -> MeterPan:
    """Parse a meter number as typed: an 11- or 13-digit DRN or an 18-digit PAN.

    Spaces and dashes are ignored. An 11-digit DRN gets IIN 600727 and a 13-digit DRN
    IIN 0000. An 18-digit PAN must start with one of the two IINs and both of its check
    digits must be right.

    Raises:
        MeterNumberError: non-digits, a wrong length, an unknown IIN or a wrong check digit.
    """
    digits = _digits(text, "meter number")
    if len(digits) == 11:
        return MeterPan(IIN_2_DIGIT_MFR, digits)
    if len(digits) == 13:
        return MeterPan(IIN_4_DIGIT_MFR, digits)
    if len(digits) == 18:
        if digits.startswith(IIN_2_DIGIT_MFR):
            pan = MeterPan(IIN_2_DIGIT_MFR, digits[6:17])
        elif digits.startswith(IIN_4_DIGIT_MFR):
            pan = MeterPan(IIN_4_DIGIT_MFR, digits[4:17])
        else:
            raise MeterNumberError(
                f"meter PAN must start with {IIN_2_DIGIT_MFR} or {IIN_4_DIGIT_MFR}, got {digits}"
            )
        if pan.digits != digits:
            raise MeterNumberError(
                f"meter PAN {digits} fails its check digit (last digit should be "
                f"{pan.check_digit}); check for a typing error"
            )
        return pan
    raise MeterNumberError(
        f"meter number must have 11 or 13 digits (DRN) or 18 digits (PAN), got {len(digits)} digits"
    )
