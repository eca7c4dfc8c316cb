"""The counter's vend through the REST API: the token works in a real STS meter, retries
are safe, reprints give the same token, reversed vends cannot be reprinted."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from headend.models import MeterEventRecord
from protocols.sts import TokenStatus, process_token
from tests.vending.counter_world import NOW, World, make_world
from tests.vending.factories import residential_stepped
from vending.models import Vend
from vending.tariff_documents import TariffDocument


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> Iterator[World]:
    yield from make_world(session_factory)


def test_a_vended_token_is_accepted_by_the_meter_with_the_receipts_units(world: World) -> None:
    answer = world.vend("250.00")
    assert answer.status_code == 201, answer.text
    vend = answer.json()
    result = process_token(world.meter(), vend["token"], NOW)
    assert result.status is TokenStatus.ACCEPT
    # Register 0 counts electricity in 0.1 kWh.
    credited_kwh = Decimal(result.state.credit[0]) / 10
    assert credited_kwh == Decimal(vend["units_kwh"]) > 0
    assert f"{vend['units_kwh']} kWh" in vend["receipt"]["text"]
    assert vend["token_grouped"] == " ".join(vend["token"][i : i + 4] for i in range(0, 20, 4))
    assert vend["receipt"]["token"] == vend["token_grouped"]


def test_successive_vends_carry_new_tids_the_meter_accepts_in_turn(world: World) -> None:
    state = world.meter()
    tids = []
    for _ in range(3):
        vend = world.vend("50.00").json()
        tids.append(vend["tid"])
        result = process_token(state, vend["token"], NOW)
        assert result.status is TokenStatus.ACCEPT
        state = result.state
    assert len(set(tids)) == 3


def test_the_breakdown_adds_up_to_the_amount_tendered(world: World) -> None:
    vend = world.vend("321.45").json()
    b = vend["breakdown"]
    charged = sum(Decimal(line["amount"]) for line in b["lines"])
    assert (
        charged + Decimal(b["debt_recovered"]) + Decimal(b["carry_out"])
        == Decimal(b["tendered"]) + Decimal(b["carry_in"])
        == Decimal("321.45")
    )


def test_a_retry_with_the_same_reference_answers_the_same_vend(world: World) -> None:
    first = world.vend("80.00", reference="till-7-0001")
    before = world.counts()
    again = world.vend("80.00", reference="till-7-0001")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["token"] == first.json()["token"]
    assert again.json()["receipt_number"] == first.json()["receipt_number"]
    assert world.counts() == before


def test_a_reference_reused_for_another_amount_is_refused(world: World) -> None:
    world.vend("80.00", reference="dup-1")
    before = world.counts()
    answer = world.vend("90.00", reference="dup-1")
    assert answer.status_code == 409
    assert answer.json()["detail"]["code"] == "reference_conflict"
    assert world.counts() == before


def test_a_reprint_returns_the_same_token_marked_copy_and_is_counted(world: World) -> None:
    vend = world.vend("120.00").json()
    number = vend["receipt_number"]
    first = world.post(f"/vends/{number}/reprint", "clerk")
    second = world.post(f"/vends/{number}/reprint", "supervisor")
    assert first.status_code == second.status_code == 200
    assert first.json()["token"] == second.json()["token"] == vend["token"]
    assert first.json()["receipt"]["copy_number"] == 1
    assert second.json()["receipt"]["copy_number"] == 2
    assert "COPY 2" in second.json()["receipt"]["text"]
    assert "COPY" not in vend["receipt"]["text"]
    text = world.post(f"/vends/{number}/reprint?format=text", "clerk").text
    assert "COPY 3" in text and vend["token_grouped"] in text
    html = world.post(f"/vends/{number}/reprint?format=html", "clerk").text
    assert "COPY 4" in html and vend["token_grouped"] in html
    assert world.get(f"/vends/{number}", "clerk").json()["reprints"] == 4


def test_a_reversed_vend_cannot_be_reprinted_as_valid(world: World) -> None:
    vend = world.vend("120.00").json()
    number = vend["receipt_number"]
    reversed_ = world.post(
        f"/vends/{number}/reversal", "supervisor", {"reason": "customer paid twice"}
    )
    assert reversed_.status_code == 200, reversed_.text
    assert reversed_.json()["status"] == "reversed"
    assert reversed_.json()["token"] is None
    assert "REVERSED" in reversed_.json()["receipt"]["text"]
    assert vend["token_grouped"] not in reversed_.json()["receipt"]["text"]
    before = world.counts()
    reprint = world.post(f"/vends/{number}/reprint", "clerk")
    assert reprint.status_code == 409
    assert reprint.json()["detail"]["code"] == "vend_reversed"
    assert world.counts() == before
    shown = world.get(f"/vends/{number}", "clerk").json()
    assert shown["token"] is None and shown["reversal_reason"] == "customer paid twice"


def test_a_reversal_puts_the_account_and_the_vending_point_back(world: World) -> None:
    world.clock.now = NOW - timedelta(days=1)
    first = world.vend("100.00").json()
    account_before = world.get(f"/accounts/{world.account_number}", "clerk").json()
    outstanding_before = world.outstanding()
    world.clock.now = NOW
    second = world.vend("300.00").json()
    assert world.outstanding() == outstanding_before + 30000
    answer = world.post(
        f"/vends/{second['receipt_number']}/reversal", "supervisor", {"reason": "wrong meter"}
    )
    assert answer.status_code == 200, answer.text
    account_after = world.get(f"/accounts/{world.account_number}", "clerk").json()
    for key in ("arrears", "change_carried", "month_to_date_kwh", "last_purchase_at"):
        assert account_after[key] == account_before[key]
    assert world.outstanding() == outstanding_before
    # The same purchase again is priced as the reversed one was.
    again = world.vend("300.00").json()
    assert again["units_kwh"] == second["units_kwh"]
    assert first["receipt_number"] != again["receipt_number"]


def test_only_the_latest_vend_of_an_account_can_be_reversed(world: World) -> None:
    first = world.vend("100.00").json()
    world.vend("100.00")
    before = world.counts()
    answer = world.post(
        f"/vends/{first['receipt_number']}/reversal", "supervisor", {"reason": "mistake"}
    )
    assert answer.status_code == 409
    assert answer.json()["detail"]["code"] == "reversal_not_latest"
    assert world.counts() == before


def test_a_token_the_meter_accepted_cannot_be_reversed(world: World) -> None:
    vend = world.vend("100.00").json()
    accepted = world.post(
        "/token-acceptances",
        "technician",
        {"meter_number": world.meters[0], "tid": vend["tid"]},
    )
    assert accepted.status_code == 201 and accepted.json()["new"] is True
    before = world.counts()
    answer = world.post(
        f"/vends/{vend['receipt_number']}/reversal", "supervisor", {"reason": "changed mind"}
    )
    assert answer.status_code == 409
    assert answer.json()["detail"]["code"] == "token_accepted"
    assert world.counts() == before


def test_a_vend_is_reversed_only_once(world: World) -> None:
    vend = world.vend("100.00").json()
    path = f"/vends/{vend['receipt_number']}/reversal"
    assert world.post(path, "supervisor", {"reason": "paid twice"}).status_code == 200
    again = world.post(path, "supervisor", {"reason": "paid twice"})
    assert again.json()["detail"]["code"] == "vend_already_reversed"


def test_the_lookup_shows_customer_tariff_arrears_and_limits(
    session_factory: sessionmaker[Session],
) -> None:
    for world in make_world(
        session_factory, debt="500.00", debt_recovery={"percent_of_purchase": "20"}
    ):
        by_meter = world.get("/lookup", "clerk", params={"meter": world.meters[0]})
        by_account = world.get("/lookup", "clerk", params={"account": world.account_number})
        assert by_meter.status_code == by_account.status_code == 200
        assert by_meter.json() == by_account.json()
        quote = by_meter.json()["quotes"][0]
        assert quote["customer"]["name"] == "Thandi Mokoena"
        assert quote["tariff"]["code"] == "RES-STEP"
        assert quote["arrears"] == "500.00"
        assert Decimal(quote["minimum_amount"]) > 0
        assert quote["maximum_amount"] == "100000.00"
        vend = world.vend("100.00").json()
        assert vend["breakdown"]["debt_recovered"] == "20.00"
        account = world.get(f"/accounts/{world.account_number}", "clerk").json()
        assert account["arrears"] == "480.00"


def test_a_vend_by_account_number_uses_its_meter(world: World) -> None:
    answer = world.post(
        "/vends",
        "clerk",
        {
            "account_number": world.account_number,
            "amount": "60",
            "payment_method": "card",
            "reference": "by-account-1",
        },
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["meter_number"] == world.meters[0][6:17]
    assert answer.json()["payment_method"] == "card"


def test_receipts_show_the_utility_point_clerk_and_local_time(world: World) -> None:
    vend = world.vend("100.00").json()
    text = vend["receipt"]["text"]
    assert "Demo Power" in text
    assert "Main counter (CTR1)" in text
    assert vend["receipt"]["clerk"] in text
    # 10:00 UTC is 12:00 in Johannesburg.
    assert "2026-11-24 12:00 SAST" in text
    html = world.client.get(
        f"/api/vending/vends/{vend['receipt_number']}/receipt.html", headers=world.as_("clerk")
    )
    assert html.status_code == 200
    assert "Thandi Mokoena" in html.text and vend["token_grouped"] in html.text


def test_a_points_receipts_are_numbered_in_turn_without_gaps(world: World) -> None:
    first = world.vend("100.00").json()["receipt_number"]
    refused = world.vend("0.00")
    assert refused.status_code == 422, refused.text
    second = world.vend("50.00").json()["receipt_number"]
    assert first.startswith("CTR1-") and second.startswith("CTR1-")
    assert int(second.removeprefix("CTR1-")) == int(first.removeprefix("CTR1-")) + 1


def test_a_tariff_version_added_between_two_vends_prices_the_second(world: World) -> None:
    assert (
        world.vend("100.00").json()["breakdown"]["tariff_effective_from"] != NOW.date().isoformat()
    )
    tariff = residential_stepped()
    newer = replace(tariff, versions=(replace(tariff.versions[0], effective_from=NOW.date()),))
    document = TariffDocument.from_tariff(newer).model_dump(mode="json")
    assert world.post("/tariffs", "supervisor", document).status_code == 201
    assert (
        world.vend("100.00").json()["breakdown"]["tariff_effective_from"] == NOW.date().isoformat()
    )


def test_the_vend_answer_prints_the_receipt_its_stored_vend_gives(world: World) -> None:
    # The vend builds its receipt from what its locks read; the stored vend's receipt is
    # read back from the database: the two must print the same.
    vend = world.vend("100.00").json()
    shown = world.client.get(
        f"/api/vending/vends/{vend['receipt_number']}", headers=world.as_("clerk")
    )
    assert shown.status_code == 200, shown.text
    assert shown.json()["receipt"] == vend["receipt"]


def _head_end_saw_acceptance(session: Session, meter_id: int, tid: int) -> bool:
    """What the head-end's interface would answer from its meter events."""
    events = session.scalars(
        select(MeterEventRecord.detail).where(
            MeterEventRecord.meter_id == meter_id, MeterEventRecord.kind == "token_accepted"
        )
    )
    return any(detail.get("tid") == tid for detail in events)


def test_a_token_accepted_event_from_the_meter_stops_the_reversal(
    session_factory: sessionmaker[Session],
) -> None:
    for world in make_world(session_factory, token_acceptance=_head_end_saw_acceptance):
        vend = world.vend("100.00").json()
        with session_factory() as session, session.begin():
            meter_id = session.scalars(select(Vend.meter_id)).one()
            session.add(
                MeterEventRecord(
                    meter_id=meter_id,
                    seq=1,
                    ts=NOW,
                    kind="token_accepted",
                    detail={"status": "accept", "tid": vend["tid"]},
                    received_at=NOW,
                )
            )
        answer = world.post(
            f"/vends/{vend['receipt_number']}/reversal", "supervisor", {"reason": "changed mind"}
        )
        assert answer.status_code == 409
        assert answer.json()["detail"]["code"] == "token_accepted"
