"""Reconciliation: our statement, the channel's file, and every kind of difference."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from gridvend.channel_cli import ChannelClient
from tests.channels.harness import ChannelWorld, build_channel_world
from tests.vending.world import add_metered_customer
from vending.channels.models import ReconciliationItem, ReconciliationRun

DAY = "2026-11-24"


@pytest.fixture
def channel_world(session_factory: sessionmaker[Session]) -> ChannelWorld:
    return build_channel_world(session_factory)


async def _sell(client: ChannelClient, meter: str, sales: dict[str, str]) -> None:
    for reference, amount in sales.items():
        order = {"reference": reference, "amount": amount, "currency": "ZAR", "meter_number": meter}
        assert (await client.send_json("POST", "/channel/v1/purchases", order)).status_code == 200


async def test_reconciliation_finds_each_kind_of_difference_and_keeps_the_run(
    channel_world: ChannelWorld,
) -> None:
    meter = add_metered_customer(channel_world.world, 1)
    async with channel_world.client() as client:
        await _sell(client, meter, {"A": "50.00", "B": "60.00", "C": "70.00", "E": "20.00"})
        await client.advise("E", "reverse")  # reversed: no longer ours to settle
        await _sell(client, meter, {"D": "80.00"})
        theirs = (
            "reference,amount,time\n"
            "A,50.00,2026-11-24T09:30:00Z\n"
            "B,66.00,2026-11-24T09:30:00Z\n"
            "D,80,2026-11-24T11:30:00+02:00\n"
            "E,20.00,2026-11-24T09:30:00Z\n"
            "X,10.00,2026-11-24T09:31:00Z\n"
        )
        uploaded = await client.send(
            "POST", f"/channel/v1/reconciliations/{DAY}", theirs.encode(), content_type="text/csv"
        )
        assert uploaded.status_code == 200, uploaded.text
        run = uploaded.json()
        stored = await client.send("GET", f"/channel/v1/reconciliations/by-id/{run['id']}?all=true")
    assert (run["matched"], run["missing_ours"], run["missing_theirs"], run["amount_mismatch"]) == (
        2,
        2,
        1,
        1,
    )
    outcomes = {item["reference"]: item["outcome"] for item in run["items"]}
    assert outcomes == {
        "B": "amount_mismatch",
        "C": "missing_theirs",
        "E": "missing_ours",
        "X": "missing_ours",
    }
    assert {i["reference"]: i["outcome"] for i in stored.json()["items"]} == {
        **outcomes,
        "A": "matched",
        "D": "matched",
    }
    assert channel_world.count(ReconciliationItem) == 6


async def test_our_statement_reconciles_with_itself(channel_world: ChannelWorld) -> None:
    meter = add_metered_customer(channel_world.world, 1)
    async with channel_world.client() as client:
        await _sell(client, meter, {"S-1": "50.00", "S-2": "12.50"})
        statement = await client.send("GET", f"/channel/v1/statements/{DAY}")
        uploaded = await client.send(
            "POST", f"/channel/v1/reconciliations/{DAY}", statement.content, content_type="text/csv"
        )
        other_day = await client.send("GET", "/channel/v1/statements/2026-11-23")
    assert statement.headers["content-type"].startswith("text/csv")
    assert statement.text == (
        "reference,amount,time\nS-1,50.00,2026-11-24T09:30:00Z\nS-2,12.50,2026-11-24T09:30:00Z\n"
    )
    assert (uploaded.json()["matched"], uploaded.json()["items"]) == (2, [])
    assert other_day.text == "reference,amount,time\n"


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("", "empty"),
        ("ref,amt,when\n", "line 1"),
        ("reference,amount,time\nA,50.00\n", "line 2"),
        ("reference,amount,time\nA,50.001,2026-11-24T09:30:00Z\n", "line 2"),
        ("reference,amount,time\nA,50.00,yesterday\n", "line 2"),
        ("reference,amount,time\nA,50.00,2026-11-24T09:30:00\n", "zone"),
        ("reference,amount,time\nA,1,2026-11-24T09:30:00Z\nA,1,2026-11-24T09:30:00Z\n", "twice"),
    ],
)
async def test_a_bad_settlement_file_is_refused_with_its_line_and_nothing_is_stored(
    channel_world: ChannelWorld, text: str, fault: str
) -> None:
    async with channel_world.client() as client:
        answer = await client.send(
            "POST", f"/channel/v1/reconciliations/{DAY}", text.encode(), content_type="text/csv"
        )
    assert (answer.status_code, answer.json()["code"]) == (422, "invalid_settlement_file")
    assert fault in answer.json()["message"]
    assert channel_world.count(ReconciliationRun) == 0
