"""The errors raised by the STS library.

Every error is a :class:`StsError` (itself a :class:`ValueError`, because each one means
"this input is not acceptable"). The subclasses say which part of the input is wrong, and
their messages are written for the technician who typed it, e.g. "token must have 20
digits, got 19".

Errors are raised by the vending side (encoding, key derivation, key change, TID
allocation) and by the decoding functions. The meter-side state machine
(:mod:`protocols.sts.meter`) never raises for a bad token: it answers with the standard's
status code instead, and only raises for a badly built meter state.
"""

from __future__ import annotations


class StsError(ValueError):
    """Base class of every error raised by :mod:`protocols.sts`."""


class TokenFormatError(StsError):
    """The token text is not 20 decimal digits, or its value is not below 2**66."""


class MeterNumberError(StsError):
    """A meter number (DRN) or meter PAN is malformed or fails its Luhn check digit."""


class FieldRangeError(StsError):
    """A field value is out of the range its token field can carry (amount, TID, KRN, TI...)."""


class KeyFormatError(StsError):
    """A key (vending key or decoder key) is not valid hex or has the wrong length."""


class UnsupportedAlgorithmError(StsError):
    """An encryption algorithm (EA) or key generation algorithm (DKGA) is not supported."""


class UnknownSubclassError(StsError):
    """The token class or subclass is not defined, or is not supported by this library."""


class CrcError(StsError):
    """The decrypted token fails its CRC: wrong decoder key, wrong meter or a typing error."""


class KeyExpiredError(StsError):
    """The token's TID is past the key expiry number (KEN) of the decoder key."""


class TidError(StsError):
    """A token identifier (TID) cannot be issued: before the base date or past its last minute."""


class KeyChangeError(StsError):
    """A key change cannot be built from the given current and new key configurations."""


class MeterStateError(StsError):
    """A meter-side decoder state is inconsistent (bad serialized data or construction)."""
