"""Receipt rendering: every field shown, 40 columns of text, escaped HTML, COPY and
REVERSED markings; and a central-mode vend's receipt has no token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from headend.models import PrepaidMode
from tests.vending.counter_world import World, make_world
from vending.models import LedgerEntry
from vending.receipts import WIDTH, Receipt, ReceiptLine, render_html, render_text

RECEIPT = Receipt(
    utility="Demo Power",
    vending_point="Main counter (CTR1)",
    clerk="clerk-1",
    receipt_number="CTR1-0000000042",
    local_time=datetime(2026, 11, 24, 10, 0, tzinfo=UTC).astimezone(
        ZoneInfo("Africa/Johannesburg")
    ),
    meter_number="99000000010",
    customer="<script>alert(1)</script> & Sons",
    account_number="A000000001",
    currency="ZAR",
    tendered="100.00",
    lines=(
        ReceiptLine("free units", "0.00", "50"),
        ReceiptLine("block 1 (0-350 kWh) with a very long label indeed", "50.00", "28"),
        ReceiptLine("VAT 15%", "7.50"),
    ),
    debt_recovered="10.00",
    change_carried="0.03",
    units_kwh="78.0",
    token_grouped="1234 5678 9012 3456 7890",
    payment_method="cash",
)


def test_the_text_receipt_shows_every_field_within_forty_columns() -> None:
    text = render_text(RECEIPT)
    assert all(len(line) <= WIDTH for line in text.splitlines())
    for expected in (
        "Demo Power",
        "Main counter (CTR1)",
        "clerk-1",
        "CTR1-0000000042",
        "2026-11-24 12:00 SAST",
        "99000000010",
        "A000000001",
        "100.00",
        "10.00",
        "78.0 kWh",
        "1234 5678 9012 3456 7890",
        "VAT 15%",
    ):
        assert expected in text, expected
    assert "COPY" not in text


def test_a_copy_and_a_reversal_are_marked() -> None:
    assert "*** COPY 2 ***" in render_text(replace(RECEIPT, copy_number=2))
    voided = replace(RECEIPT, reversed=True, token_grouped=None)
    assert "REVERSED" in render_text(voided)
    assert "1234 5678" not in render_text(voided)
    assert "COPY 1" in render_html(replace(RECEIPT, copy_number=1))
    assert "REVERSED" in render_html(voided)


def test_the_html_receipt_escapes_what_people_typed() -> None:
    html = render_html(RECEIPT)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Sons" in html
    assert "1234 5678 9012 3456 7890" in html


@pytest.fixture
def central(session_factory: sessionmaker[Session]) -> Iterator[World]:
    yield from make_world(session_factory, mode=PrepaidMode.CENTRAL)


def test_a_central_mode_vend_credits_the_ledger_and_its_reversal_takes_it_back(
    central: World,
) -> None:
    vend = central.vend("100.00").json()
    assert vend["token"] is None and vend["receipt"]["token"] is None
    assert "TOKEN" not in vend["receipt"]["text"]
    account = central.get(f"/accounts/{central.account_number}", "clerk").json()
    assert account["balance"] == "100.00"
    central.post(f"/vends/{vend['receipt_number']}/reversal", "supervisor", {"reason": "refund"})
    account = central.get(f"/accounts/{central.account_number}", "clerk").json()
    assert account["balance"] == "0.00"
    with central.session_factory() as session:
        kinds = session.scalars(select(LedgerEntry.kind).order_by(LedgerEntry.id)).all()
    assert kinds == ["payment", "reversal"]
