"""Request signing for channels: HMAC-SHA256 over the request's identity and body digest.

Pure functions: the clock reading and the secret are passed in. The string to sign is
six lines joined by ``\\n`` (no trailing newline)::

    GV1-HMAC-SHA256
    POST                                   the method, upper case
    /channel/v1/purchases                  the path, plus "?" and the query if there is one
    1795510800                             the timestamp, Unix seconds (X-GV-Timestamp)
    6f1c2a9e0b7d4c3a8e5f2b1d0c9a8e7f       the nonce (X-GV-Nonce), 16-64 of [A-Za-z0-9_-]
    <hex SHA-256 of the body bytes>        of the empty string when there is no body

and the signature (X-GV-Signature) is the lower-case hex HMAC-SHA256 of that string's
UTF-8 bytes, keyed with the secret's ASCII bytes. The channel is named by X-GV-Key-Id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

SCHEME = "GV1-HMAC-SHA256"
WINDOW_S = 300
KEY_ID_HEADER = "X-GV-Key-Id"
TIMESTAMP_HEADER = "X-GV-Timestamp"
NONCE_HEADER = "X-GV-Nonce"
SIGNATURE_HEADER = "X-GV-Signature"

_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")


class SignatureError(Exception):
    """A request's signature headers are refused; ``code`` is the stable reason:
    missing_signature, malformed_signature, stale_timestamp, bad_signature."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    key_id: str
    timestamp: int
    nonce: str
    signature: str


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def string_to_sign(method: str, path: str, timestamp: int, nonce: str, body: bytes) -> str:
    """The canonical text the signature covers (see the module docstring)."""
    return "\n".join((SCHEME, method.upper(), path, str(timestamp), nonce, body_digest(body)))


def sign(secret: str, method: str, path: str, timestamp: int, nonce: str, body: bytes) -> str:
    """The hex signature of a request; ``timestamp`` in Unix seconds."""
    message = string_to_sign(method, path, timestamp, nonce, body).encode()
    return hmac.new(secret.encode("ascii"), message, hashlib.sha256).hexdigest()


def signed_headers(
    key_id: str, secret: str, method: str, path: str, timestamp: int, nonce: str, body: bytes
) -> dict[str, str]:
    """The four headers a client sends (the reference client and the tests use this)."""
    return {
        KEY_ID_HEADER: key_id,
        TIMESTAMP_HEADER: str(timestamp),
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: sign(secret, method, path, timestamp, nonce, body),
    }


def parse_headers(headers: dict[str, str | None]) -> SignedHeaders:
    """The signature headers of a request (names case-insensitive, as HTTP has them).

    SignatureError missing_signature when one is absent, malformed_signature when one is
    not of its form.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    names = (KEY_ID_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)
    values = [lowered.get(name.lower()) for name in names]
    missing = [name for name, value in zip(names, values, strict=True) if not value]
    if missing:
        raise SignatureError("missing_signature", f"send the headers {', '.join(missing)}")
    key_id, timestamp, nonce, signature = (str(v) for v in values)
    if not _TIMESTAMP.match(timestamp):
        raise SignatureError("malformed_signature", f"{TIMESTAMP_HEADER} must be Unix seconds")
    if not _NONCE.match(nonce):
        raise SignatureError(
            "malformed_signature", f"{NONCE_HEADER} must be 16 to 64 of A-Z a-z 0-9 _ -"
        )
    if not _SIGNATURE.match(signature):
        raise SignatureError(
            "malformed_signature", f"{SIGNATURE_HEADER} must be 64 lower-case hex digits"
        )
    if len(key_id) > 40:
        raise SignatureError("malformed_signature", f"{KEY_ID_HEADER} is too long")
    return SignedHeaders(key_id, int(timestamp), nonce, signature)


def check_timestamp(timestamp: int, now_s: float, window_s: int = WINDOW_S) -> None:
    """SignatureError stale_timestamp unless ``timestamp`` is within ``window_s`` of now
    (either side: clocks drift both ways)."""
    if abs(now_s - timestamp) > window_s:
        raise SignatureError(
            "stale_timestamp",
            f"the timestamp is {int(now_s - timestamp)} s from our clock; "
            f"the window is {window_s} s: check the client's clock",
        )


def verify(secret: str, signed: SignedHeaders, method: str, path: str, body: bytes) -> None:
    """SignatureError bad_signature unless the signature is the secret's (in constant time)."""
    expected = sign(secret, method, path, signed.timestamp, signed.nonce, body)
    if not hmac.compare_digest(expected, signed.signature):
        raise SignatureError(
            "bad_signature", "the signature does not match; see the signing recipe"
        )
