"""Retried and concurrent purchases: one vend and one answer per reference, whatever happens."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.channels.harness import ChannelWorld, build_channel_world
from tests.vending.world import add_metered_customer
from vending.channels.models import ChannelPurchase
from vending.models import Vend

PURCHASES = 1000
SENDS = 4  # the first request and three retries
METERS = 25


@pytest.fixture
def channel_world(session_factory: sessionmaker[Session]) -> ChannelWorld:
    return build_channel_world(session_factory)


async def test_a_thousand_purchases_each_retried_three_times_make_a_thousand_vends(
    channel_world: ChannelWorld,
) -> None:
    meters = [add_metered_customer(channel_world.world, serial) for serial in range(METERS)]
    gate = asyncio.Semaphore(4)
    bodies: dict[str, set[bytes]] = {}

    async with channel_world.client() as client:

        async def buy(n: int) -> None:
            order = {
                "reference": f"ACME-{n:06d}",
                "amount": "20.00",
                "currency": "ZAR",
                "meter_number": meters[n % METERS],
            }
            async with gate:
                if n % 4 == 0:  # every fourth: all copies at once, as a confused switch
                    responses = await asyncio.gather(
                        *(
                            client.send_json("POST", "/channel/v1/purchases", order)
                            for _ in range(SENDS)
                        )
                    )
                else:
                    responses = [
                        await client.send_json("POST", "/channel/v1/purchases", order)
                        for _ in range(SENDS)
                    ]
            assert [r.status_code for r in responses] == [200] * SENDS, responses[0].text
            bodies[order["reference"]] = {r.content for r in responses}

        await asyncio.gather(*(buy(n) for n in range(PURCHASES)))

    assert all(len(answers) == 1 for answers in bodies.values())
    tokens = {json.loads(next(iter(answers)))["token"] for answers in bodies.values()}
    assert len(tokens) == PURCHASES
    with channel_world.session_factory() as session:
        vends = session.scalars(select(Vend)).all()
        stored = session.scalars(select(ChannelPurchase)).all()
    assert len(vends) == PURCHASES
    assert len({v.token_digits for v in vends}) == PURCHASES
    assert len(stored) == PURCHASES
    assert {s.response_body for s in stored} == {next(iter(b)) for b in bodies.values()}


class _CrashAfterCommit:
    """ASGI middleware: the application runs (and commits), then the connection drops
    before the answer leaves, the first ``crashes`` times."""

    def __init__(self, app: Any, crashes: int) -> None:
        self.app = app
        self.crashes = crashes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.crashes == 0:
            await self.app(scope, receive, send)
            return
        self.crashes -= 1

        async def swallow(message: Any) -> None:
            return None

        await self.app(scope, receive, swallow)
        raise ConnectionResetError("the server went away after committing")


async def test_a_crash_between_commit_and_answer_is_recovered_by_the_retry(
    channel_world: ChannelWorld,
) -> None:
    meter = add_metered_customer(channel_world.world, 1)
    order = {"reference": "ACME-CRASH", "amount": "50.00", "currency": "ZAR", "meter_number": meter}
    app = _CrashAfterCommit(channel_world.app(), crashes=1)
    async with channel_world.client(app) as client:
        with pytest.raises(ConnectionResetError):
            await client.send_json("POST", "/channel/v1/purchases", order)
        assert channel_world.count(Vend) == 1  # committed, though the bank never heard
        status = await client.send("GET", "/channel/v1/purchases/ACME-CRASH")
        assert status.json()["status"] == "completed"
        retry = await client.send_json("POST", "/channel/v1/purchases", order)
    assert retry.status_code == 200
    with channel_world.session_factory() as session:
        stored = session.scalars(select(ChannelPurchase)).one()
        vend = session.scalars(select(Vend)).one()
    assert retry.content == stored.response_body
    assert retry.json()["token"].replace(" ", "") == vend.token_digits
    assert channel_world.count(Vend) == 1


async def test_a_retry_with_the_amount_written_differently_is_the_same_purchase(
    channel_world: ChannelWorld,
) -> None:
    meter = add_metered_customer(channel_world.world, 2)
    async with channel_world.client() as client:
        first = await client.send_json(
            "POST",
            "/channel/v1/purchases",
            {"reference": "R-1", "amount": "50.00", "currency": "ZAR", "meter_number": meter},
        )
        second = await client.send(
            "POST",
            "/channel/v1/purchases",
            b'{"meter_number": "%s", "currency": "ZAR", "amount": "50", "reference": "R-1"}'
            % meter.encode(),
        )
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert channel_world.count(Vend) == 1
