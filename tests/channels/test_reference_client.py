"""The reference client behaves like a bank: time-outs are retried with the same reference."""

from __future__ import annotations

import random

import httpx
from sqlalchemy.orm import Session, sessionmaker

from gridvend.channel_cli import ChannelClient, simulate_purchases
from tests.channels.harness import build_channel_world
from tests.vending.world import add_metered_customer
from vending.channels.models import ChannelAdvice
from vending.models import Vend


class _LosesAnswers(httpx.AsyncBaseTransport):
    """Delivers every request, but loses the answer to some purchases (seeded): the bank
    sees a time-out although gridvend has sold."""

    def __init__(self, inner: httpx.AsyncBaseTransport, share: float, seed: int) -> None:
        self.inner = inner
        self.share = share
        self.random = random.Random(seed)
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path == "/channel/v1/purchases" and self.random.random() < self.share:
            self.lost += 1
            raise httpx.ReadTimeout("no answer in time", request=request)
        return response


async def test_a_simulated_bank_with_lost_answers_gets_one_vend_per_purchase(
    session_factory: sessionmaker[Session],
) -> None:
    cw = build_channel_world(session_factory)
    meters = [add_metered_customer(cw.world, serial) for serial in range(5)]
    transport = _LosesAnswers(httpx.ASGITransport(app=cw.app()), share=0.3, seed=7)
    async with httpx.AsyncClient(transport=transport, base_url="http://gridvend") as http:
        client = ChannelClient(http, cw.key_id, cw.secret, clock=cw.clock.seconds)
        report = await simulate_purchases(
            client,
            meters,
            count=60,
            concurrency=6,
            amount="20.00",
            currency="ZAR",
            reference_prefix="SIM-",
            duplicate_rate=0.25,
            seed=3,
            timeout=5.0,
            attempts=8,
        )
    assert transport.lost > 0
    assert report.outcomes == {"completed": 60}
    assert report.timeouts == transport.lost  # each lost answer was retried
    assert report.duplicates_identical == report.duplicates_sent > 0
    assert len(report.tokens) == 60
    assert cw.count(Vend) == 60
    assert cw.count(ChannelAdvice) == 60  # every purchase confirmed
    assert report.table().row_count > 0
