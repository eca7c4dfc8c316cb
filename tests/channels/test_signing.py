"""The signing recipe: the documented worked example, and what each check refuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vending.channels.signing import (
    SignatureError,
    check_timestamp,
    parse_headers,
    sign,
    signed_headers,
    string_to_sign,
    verify,
)

# The worked example of docs/channels.md (checked there with openssl as well).
SECRET = "gvs_Jx3r9Qm2VtY7pLk4Wn8Hs1Df6Ga0Zc5Eb2Ru7Io3Pe9"
BODY = (
    b'{"reference":"ACME-20261124-000123","amount":"150.00","currency":"ZAR",'
    b'"meter_number":"99000000017"}'
)
TIMESTAMP = 1795512600  # 2026-11-24T09:30:00Z
NONCE = "6f1c2a9e0b7d4c3a8e5f2b1d0c9a8e7f"
PATH = "/channel/v1/purchases"


def test_the_documented_worked_example_signs_as_documented() -> None:
    assert string_to_sign("POST", PATH, TIMESTAMP, NONCE, BODY) == (
        "GV1-HMAC-SHA256\nPOST\n/channel/v1/purchases\n1795512600\n"
        "6f1c2a9e0b7d4c3a8e5f2b1d0c9a8e7f\n"
        "7495e3ef72df51af19ea915a0dced842f75c73dcadda03d9fb4975acec37ba3b"
    )
    assert sign(SECRET, "POST", PATH, TIMESTAMP, NONCE, BODY) == (
        "eb3b9bcfde9983f709ff6c1e06fa1d9b047e45a4e3f8b0eae7d3354b187aab2b"
    )


def _signed() -> dict[str, str]:
    return signed_headers("gvk_1", SECRET, "POST", PATH, TIMESTAMP, NONCE, BODY)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", PATH, BODY),
        ("POST", "/channel/v1/lookup", BODY),
        ("POST", PATH, BODY.replace(b"150.00", b"1500.0")),
        ("POST", PATH + "?x=1", BODY),
    ],
    ids=["method", "path", "body", "query"],
)
def test_a_signature_covers_method_path_query_and_body(method: str, path: str, body: bytes) -> None:
    signed = parse_headers(dict(_signed()))
    verify(SECRET, signed, "POST", PATH, BODY)
    with pytest.raises(SignatureError) as error:
        verify(SECRET, signed, method, path, body)
    assert error.value.code == "bad_signature"


def test_another_secret_does_not_verify() -> None:
    with pytest.raises(SignatureError) as error:
        verify(SECRET + "x", parse_headers(dict(_signed())), "POST", PATH, BODY)
    assert error.value.code == "bad_signature"


@given(st.integers(min_value=-10_000, max_value=10_000))
def test_the_timestamp_window_is_five_minutes_either_side(skew: int) -> None:
    if abs(skew) <= 300:
        check_timestamp(TIMESTAMP, TIMESTAMP + skew)
    else:
        with pytest.raises(SignatureError) as error:
            check_timestamp(TIMESTAMP, TIMESTAMP + skew)
        assert error.value.code == "stale_timestamp"


@pytest.mark.parametrize(
    ("header", "value", "code"),
    [
        ("X-GV-Signature", None, "missing_signature"),
        ("X-GV-Key-Id", None, "missing_signature"),
        ("X-GV-Timestamp", "2026-11-24T09:30:00Z", "malformed_signature"),
        ("X-GV-Nonce", "short", "malformed_signature"),
        ("X-GV-Nonce", "has spaces in it, sixteen+", "malformed_signature"),
        ("X-GV-Signature", "ABCDEF", "malformed_signature"),
    ],
)
def test_missing_or_malformed_headers_have_their_codes(
    header: str, value: str | None, code: str
) -> None:
    headers: dict[str, str | None] = {**_signed(), header: value}
    with pytest.raises(SignatureError) as error:
        parse_headers(headers)
    assert error.value.code == code


def test_header_names_are_case_insensitive() -> None:
    lowered: dict[str, str | None] = {k.lower(): v for k, v in _signed().items()}
    assert parse_headers(lowered).nonce == NONCE
