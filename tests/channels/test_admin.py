"""Creating channels: admins only, the secret shown once and stored encrypted."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditLog
from gridvend.auth import Auth
from gridvend.channel_cli import ChannelClient
from tests.channels.harness import Clock
from tests.conftest import bearer_headers
from tests.vending.world import add_metered_customer, build_world
from vending.channels.api import make_admin_router, make_router
from vending.channels.models import Channel
from vending.channels.service import ChannelError, channel_secret
from vending.keystore import KeyEncryptionKey

NEW_CHANNEL = {
    "code": "mpesa",
    "name": "M-Pesa",
    "currency": "ZAR",
    "payment_method": "mobile_money",
}


async def test_an_admin_creates_a_channel_whose_secret_is_shown_once_and_signs(
    session_factory: sessionmaker[Session],
) -> None:
    world = build_world(session_factory)
    meter = add_metered_customer(world, 1)
    kek = KeyEncryptionKey.generate()
    clock = Clock()
    app = FastAPI()
    auth = Auth(session_factory)
    app.include_router(
        make_admin_router(
            session_factory, require=auth.require, kek=kek, audit=AuditLog(), clock=clock
        )
    )
    app.include_router(
        make_router(
            session_factory,
            security_module=world.security_module,
            audit=world.audit,
            kek=kek,
            clock=clock,
        )
    )
    admin = bearer_headers(session_factory, "admin")
    clerk = bearer_headers(session_factory, "clerk")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gridvend") as http:
        assert (
            await http.post("/api/channels", json=NEW_CHANNEL, headers=clerk)
        ).status_code == 403
        created = await http.post("/api/channels", json=NEW_CHANNEL, headers=admin)
        duplicate = await http.post("/api/channels", json=NEW_CHANNEL, headers=admin)
        listed = await http.get("/api/channels", headers=admin)
        client = ChannelClient(
            http, created.json()["key_id"], created.json()["secret"], clock=clock.seconds
        )
        order = {"reference": "MP-1", "amount": "20.00", "currency": "ZAR", "meter_number": meter}
        bought = await client.send_json("POST", "/channel/v1/purchases", order)
    assert created.status_code == 201
    assert duplicate.json()["detail"]["code"] == "channel_exists"
    assert "secret" not in listed.json()[0]
    assert listed.json()[0]["key_id"] == created.json()["key_id"]
    assert bought.status_code == 200, bought.text
    secret = created.json()["secret"].encode()
    with session_factory() as session:
        stored = session.scalars(select(Channel)).one()
    assert secret not in stored.secret_ciphertext
    with pytest.raises(ChannelError) as error:
        channel_secret(stored, KeyEncryptionKey.generate())
    assert error.value.code == "channel_secret_undecryptable"


def test_the_channel_api_is_described_in_openapi(session_factory: sessionmaker[Session]) -> None:
    world = build_world(session_factory)
    app = FastAPI()
    app.include_router(
        make_router(
            session_factory,
            security_module=world.security_module,
            audit=world.audit,
            kek=KeyEncryptionKey.generate(),
        )
    )
    paths = app.openapi()["paths"]
    purchase = paths["/channel/v1/purchases"]["post"]
    assert "requestBody" in purchase
    assert {"200", "409", "422"} <= set(purchase["responses"])
    assert set(paths) >= {
        "/channel/v1/lookup",
        "/channel/v1/purchases/{reference}",
        "/channel/v1/purchases/{reference}/confirm",
        "/channel/v1/purchases/{reference}/reverse",
        "/channel/v1/statements/{business_date}",
        "/channel/v1/reconciliations/{business_date}",
    }
