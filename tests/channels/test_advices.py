"""Confirm and reverse advices: idempotent, in any order, with the counter's reversal rules."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.channel_cli import ChannelClient
from headend.models import PrepaidMode
from tests.channels.harness import ChannelWorld, build_channel_world
from tests.vending.world import add_metered_customer
from vending.channels.models import ChannelPurchase
from vending.models import Account, LedgerEntry, Vend

PURCHASE = "/channel/v1/purchases"


@pytest.fixture
def channel_world(session_factory: sessionmaker[Session]) -> ChannelWorld:
    return build_channel_world(session_factory)


async def _buy(client: ChannelClient, meter: str, reference: str, amount: str = "50.00") -> bytes:
    order = {"reference": reference, "amount": amount, "currency": "ZAR", "meter_number": meter}
    response = await client.send_json("POST", PURCHASE, order)
    assert response.status_code == 200, response.text
    return response.content


async def _status(client: ChannelClient, reference: str) -> str:
    return str((await client.send("GET", f"{PURCHASE}/{reference}")).json()["status"])


def _account(cw: ChannelWorld) -> tuple[int, int, Decimal, datetime | None]:
    with cw.session_factory() as session:
        account = session.scalars(select(Account)).one()
        return (
            account.debt_minor,
            account.carry_over_minor,
            account.month_to_date_kwh,
            account.last_purchase_at,
        )


async def test_a_reversal_puts_the_account_back_and_a_resent_one_changes_nothing(
    channel_world: ChannelWorld,
) -> None:
    meter = add_metered_customer(channel_world.world, 1, debt=Decimal("100.00"))
    before = _account(channel_world)
    async with channel_world.client() as client:
        receipt = await _buy(client, meter, "R-1")
        assert _account(channel_world) != before
        first = await client.advise("R-1", "reverse")
        again = await client.advise("R-1", "reverse")
        assert await _status(client, "R-1") == "reversed"
        retried = await client.send_json(
            "POST",
            PURCHASE,
            {"reference": "R-1", "amount": "50.00", "currency": "ZAR", "meter_number": meter},
        )
    assert (
        first
        == again
        == {
            "reference": "R-1",
            "advice": "reverse",
            "outcome": "applied",
            "code": None,
            "status": "reversed",
        }
    )
    assert _account(channel_world) == before
    assert retried.content == receipt  # the first answer, byte for byte
    with channel_world.session_factory() as session:
        vend = session.scalars(select(Vend)).one()
    assert (vend.status, vend.reversed_by) == ("reversed", "channel:acme-bank")


async def test_a_reversal_that_arrives_first_refuses_the_purchase(
    channel_world: ChannelWorld,
) -> None:
    meter = add_metered_customer(channel_world.world, 1)
    order = {"reference": "R-2", "amount": "50.00", "currency": "ZAR", "meter_number": meter}
    async with channel_world.client() as client:
        early = await client.advise("R-2", "reverse")
        assert (early["outcome"], early["status"]) == ("pending", "unknown")
        refused = await client.send_json("POST", PURCHASE, order)
        retried = await client.send_json("POST", PURCHASE, order)
        resent = await client.advise("R-2", "reverse")
        status = await _status(client, "R-2")
    assert (refused.status_code, refused.json()["code"]) == (409, "purchase_reversed")
    assert retried.content == refused.content
    assert (resent["outcome"], status) == ("applied", "reversed")
    assert channel_world.count(Vend) == 0


async def test_a_confirmation_that_arrives_first_confirms_the_purchase_and_bars_reversal(
    channel_world: ChannelWorld,
) -> None:
    meter = add_metered_customer(channel_world.world, 1)
    async with channel_world.client() as client:
        early = await client.advise("R-3", "confirm")
        await _buy(client, meter, "R-3")
        status = (await client.send("GET", f"{PURCHASE}/R-3")).json()
        reversal = await client.advise("R-3", "reverse")
    assert early["outcome"] == "pending"
    assert (status["status"], status["confirmed"]) == ("completed", True)
    assert (reversal["outcome"], reversal["code"]) == ("refused", "purchase_confirmed")
    assert channel_world.count(Vend) == 1


async def test_no_reversal_after_the_window(session_factory: sessionmaker[Session]) -> None:
    cw = build_channel_world(session_factory, reversal_window=timedelta(minutes=30))
    meter = add_metered_customer(cw.world, 1)
    async with cw.client() as client:
        await _buy(client, meter, "R-4")
        cw.clock.advance(minutes=31)
        answer = await client.advise("R-4", "reverse")
    assert (answer["outcome"], answer["code"], answer["status"]) == (
        "refused",
        "reversal_window_closed",
        "completed",
    )


async def test_a_token_the_meter_accepted_is_not_reversed(channel_world: ChannelWorld) -> None:
    meter = add_metered_customer(channel_world.world, 1)
    async with channel_world.client() as client:
        await _buy(client, meter, "R-5")
        with channel_world.session_factory() as session:
            vend = session.scalars(select(Vend)).one()
        channel_world.accepted.add((vend.meter_id, vend.tid or 0))
        answer = await client.advise("R-5", "reverse")
    assert (answer["outcome"], answer["code"]) == ("refused", "token_accepted")


async def test_only_the_latest_purchase_on_an_account_is_reversed(
    channel_world: ChannelWorld,
) -> None:
    meter = add_metered_customer(channel_world.world, 1)
    async with channel_world.client() as client:
        await _buy(client, meter, "R-6a")
        await _buy(client, meter, "R-6b")
        older = await client.advise("R-6a", "reverse")
        latest = await client.advise("R-6b", "reverse")
    assert (older["outcome"], older["code"]) == ("refused", "reversal_not_latest")
    assert latest["outcome"] == "applied"


async def test_a_spent_central_credit_is_reversed_into_a_flagged_negative_balance(
    channel_world: ChannelWorld,
) -> None:
    meter = add_metered_customer(channel_world.world, 1, prepaid_mode=PrepaidMode.CENTRAL)
    async with channel_world.client() as client:
        receipt = await client.send_json(
            "POST",
            PURCHASE,
            {"reference": "R-7", "amount": "100.00", "currency": "ZAR", "meter_number": meter},
        )
        assert (receipt.json()["balance"], receipt.json()["token"]) == ("100.00", None)
        with channel_world.session_factory() as session, session.begin():
            account = session.scalars(select(Account)).one()
            session.add(
                LedgerEntry(
                    account_id=account.id,
                    kind="consumption",
                    amount_minor=-6_000,
                    reference="reading:1",
                    detail={},
                    created_at=channel_world.clock(),
                )
            )
        answer = await client.advise("R-7", "reverse")
    assert (answer["outcome"], answer["balance"], answer["negative_balance"]) == (
        "applied",
        "-60.00",
        True,
    )
    with channel_world.session_factory() as session:
        reversal = session.scalars(select(LedgerEntry).where(LedgerEntry.kind == "reversal")).one()
    assert (reversal.amount_minor, reversal.detail["negative_balance"]) == (-10_000, True)


async def test_lookup_masks_the_name_and_shows_limits_and_arrears(
    channel_world: ChannelWorld,
) -> None:
    meter = add_metered_customer(channel_world.world, 1, debt=Decimal("120.00"))
    async with channel_world.client() as client:
        by_meter = await client.send_json("POST", "/channel/v1/lookup", {"meter_number": meter})
        number = by_meter.json()["account_number"]
        by_account = await client.send_json(
            "POST", "/channel/v1/lookup", {"account_number": number}
        )
        bought = await client.send_json(
            "POST",
            PURCHASE,
            {"reference": "R-8", "amount": "50.00", "currency": "ZAR", "account_number": number},
        )
    answer = by_meter.json()
    assert by_account.json() == answer
    assert answer["customer_name"] == "C******* 1"
    assert (answer["arrears"], answer["maximum_amount"], answer["prepaid_mode"]) == (
        "120.00",
        "5000.00",
        "token",
    )
    assert Decimal(answer["minimum_amount"]) >= Decimal("5.00")
    assert bought.json()["meter_number"] == meter
    assert channel_world.count(ChannelPurchase) == 1


async def test_the_status_of_an_unknown_reference_is_unknown(channel_world: ChannelWorld) -> None:
    async with channel_world.client() as client:
        answer = (await client.send("GET", f"{PURCHASE}/NEVER-SENT")).json()
    assert (answer["status"], answer["confirmed"]) == ("unknown", False)
