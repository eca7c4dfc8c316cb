"""A channel purchase for a meter with a pending key change: refused with the tokens
(the channel's refusal shape), then completed when the channel acknowledges them."""

from __future__ import annotations

import dataclasses
import secrets
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditEntry
from tests.channels.harness import NOW, ChannelWorld, build_channel_world
from tests.vending.world import add_metered_customer
from vending.channels.models import ChannelPurchase
from vending.key_changes import KeyTarget, request_key_change
from vending.models import Vend

PURCHASE = "/channel/v1/purchases"


@pytest.fixture
def channel_world(session_factory: sessionmaker[Session]) -> ChannelWorld:
    return build_channel_world(session_factory)


def _pending_key_change(cw: ChannelWorld, meter: str) -> list[str]:
    world = cw.world
    new = dataclasses.replace(world.key_config, key_revision=2, vending_key=secrets.token_bytes(20))
    with cw.session_factory() as session, session.begin():
        world.keystore.add_key(session, new)
    with cw.session_factory() as session, session.begin():
        record = request_key_change(
            session,
            meter,
            KeyTarget(key_revision=2),
            security_module=world.security_module,
            audit=world.audit,
            actor="supervisor",
            reason="",
            now=NOW,
        )
        return list(record.tokens)


def _counts(cw: ChannelWorld) -> tuple[int, int, int]:
    with cw.session_factory() as session:
        return (
            cw.count(Vend),
            cw.count(ChannelPurchase),
            int(session.scalar(select(func.count()).select_from(AuditEntry)) or 0),
        )


async def test_a_purchase_is_refused_with_the_tokens_until_the_channel_acknowledges_them(
    channel_world: ChannelWorld,
) -> None:
    meter = add_metered_customer(channel_world.world, 1)
    tokens = _pending_key_change(channel_world, meter)
    order = {"reference": "ACME-KC", "amount": "50.00", "currency": "ZAR", "meter_number": meter}
    async with channel_world.client() as client:
        lookup = await client.send_json("POST", "/channel/v1/lookup", {"meter_number": meter})
        assert lookup.json()["key_change_pending"] is True
        before = _counts(channel_world)
        refused = await client.send_json("POST", PURCHASE, order)
        assert refused.status_code == 409
        assert refused.json()["code"] == "key_change_required"
        assert refused.json()["detail"]["tokens"] == tokens
        assert _counts(channel_world) == before
        acknowledged = {**order, "key_change_acknowledged": True}
        sold = await client.send_json("POST", PURCHASE, acknowledged)
        assert sold.status_code == 200, sold.text
        receipt = sold.json()
        assert receipt["breakdown"]["key_change_tokens"] == tokens
        assert Decimal(receipt["units_kwh"]) > 0
        retry = await client.send_json("POST", PURCHASE, acknowledged)
        assert retry.content == sold.content
        lookup = await client.send_json("POST", "/channel/v1/lookup", {"meter_number": meter})
        assert lookup.json()["key_change_pending"] is False
