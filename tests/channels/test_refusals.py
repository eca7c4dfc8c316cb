"""Every refused request has its own code, and a refused request writes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditEntry
from gridvend.channel_cli import ChannelClient
from tests.channels.harness import NOW, ChannelWorld, build_channel_world
from tests.vending.world import add_metered_customer, drn
from vending.accounts import link_meter
from vending.channels.models import Channel, ChannelAdvice, ChannelPurchase
from vending.models import Account, LedgerEntry, MeterTidCursor, Vend

PURCHASE = "/channel/v1/purchases"


@pytest.fixture
def channel_world(session_factory: sessionmaker[Session]) -> ChannelWorld:
    return build_channel_world(
        session_factory,
        max_amount=Decimal("600"),
        daily_limit=Decimal("1000"),
        rate_limit_per_minute=1000,
    )


def _state(cw: ChannelWorld) -> tuple[Any, ...]:
    with cw.session_factory() as session:
        counts = tuple(
            session.scalar(select(func.count()).select_from(model))
            for model in (Vend, ChannelPurchase, ChannelAdvice, LedgerEntry, MeterTidCursor)
        )
        last_audit = session.scalar(select(func.max(AuditEntry.id)))
        accounts = session.execute(
            select(Account.debt_minor, Account.carry_over_minor, Account.last_purchase_at)
        ).all()
    return counts, last_audit, accounts


def _order(meter: str, **changes: str) -> dict[str, str]:
    return {
        "reference": "ACME-1",
        "amount": "50.00",
        "currency": "ZAR",
        "meter_number": meter,
        **changes,
    }


async def _raw(
    client: ChannelClient, body: bytes, mutate: Callable[[dict[str, str]], None]
) -> httpx.Response:
    headers = client.headers("POST", PURCHASE, body)
    mutate(headers)
    return await client.http.post(PURCHASE, content=body, headers=headers)


Case = Callable[[ChannelClient, str], Awaitable[httpx.Response]]


async def _bad_signature(client: ChannelClient, meter: str) -> httpx.Response:
    body = json.dumps(_order(meter)).encode()

    def flip(headers: dict[str, str]) -> None:
        last = headers["X-GV-Signature"][-1]
        headers["X-GV-Signature"] = headers["X-GV-Signature"][:-1] + ("0" if last != "0" else "1")

    return await _raw(client, body, flip)


async def _body_changed_after_signing(client: ChannelClient, meter: str) -> httpx.Response:
    headers = client.headers("POST", PURCHASE, json.dumps(_order(meter)).encode())
    tampered = json.dumps(_order(meter, amount="500.00")).encode()
    return await client.http.post(PURCHASE, content=tampered, headers=headers)


async def _stale_timestamp(client: ChannelClient, meter: str) -> httpx.Response:
    now = client.clock
    client.clock = lambda: now() - 301
    try:
        return await client.send_json("POST", PURCHASE, _order(meter))
    finally:
        client.clock = now


async def _unknown_key(client: ChannelClient, meter: str) -> httpx.Response:
    client.key_id, key_id = "gvk_000000000000000000000000", client.key_id
    try:
        return await client.send_json("POST", PURCHASE, _order(meter))
    finally:
        client.key_id = key_id


async def _missing_signature(client: ChannelClient, meter: str) -> httpx.Response:
    return await client.http.post(PURCHASE, json=_order(meter))


async def _replayed_nonce(client: ChannelClient, meter: str) -> httpx.Response:
    body = json.dumps({"meter_number": meter}).encode()
    headers = client.headers("POST", "/channel/v1/lookup", body)
    first = await client.http.post("/channel/v1/lookup", content=body, headers=headers)
    assert first.status_code == 200
    return await client.http.post("/channel/v1/lookup", content=body, headers=headers)


def _purchase(**changes: str) -> Case:
    async def case(client: ChannelClient, meter: str) -> httpx.Response:
        order = _order(meter, **changes)
        if order.get("meter_number") == "unknown":
            order["meter_number"] = drn(99_999)
        return await client.send_json("POST", PURCHASE, order)

    return case


CASES: list[tuple[str, Case, int, str]] = [
    ("bad signature", _bad_signature, 401, "bad_signature"),
    ("body changed after signing", _body_changed_after_signing, 401, "bad_signature"),
    ("stale timestamp", _stale_timestamp, 401, "stale_timestamp"),
    ("replayed nonce", _replayed_nonce, 401, "replayed_nonce"),
    ("unknown key", _unknown_key, 401, "unknown_key"),
    ("no signature", _missing_signature, 401, "missing_signature"),
    ("amount below the minimum", _purchase(amount="1.00"), 422, "amount_below_minimum"),
    ("amount above the maximum", _purchase(amount="600.01"), 422, "amount_above_maximum"),
    ("amount finer than a cent", _purchase(amount="50.001"), 422, "invalid_amount"),
    ("amount not a number", _purchase(amount="fifty"), 422, "invalid_request"),
    ("other currency", _purchase(currency="USD"), 422, "currency_mismatch"),
    ("unknown meter", _purchase(meter_number="unknown"), 404, "meter_not_found"),
    ("impossible meter number", _purchase(meter_number="12345"), 422, "invalid_meter_number"),
    (
        "unknown account",
        _purchase(meter_number=None, account_number="A999"),
        404,
        "account_not_found",
    ),
    ("bad reference", _purchase(reference="no spaces please"), 422, "invalid_request"),
]


@pytest.mark.parametrize(
    ("case", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_a_refused_purchase_has_its_own_code_and_writes_nothing(
    channel_world: ChannelWorld, case: Case, status: int, code: str
) -> None:
    meter = add_metered_customer(channel_world.world, 1)
    before = _state(channel_world)
    async with channel_world.client() as client:
        response = await case(client, meter)
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert _state(channel_world) == before


async def test_the_same_reference_with_another_body_is_a_conflict_and_writes_nothing(
    channel_world: ChannelWorld,
) -> None:
    meter = add_metered_customer(channel_world.world, 1)
    other_meter = add_metered_customer(channel_world.world, 2)
    async with channel_world.client() as client:
        first = await client.send_json("POST", PURCHASE, _order(meter))
        assert first.status_code == 200
        before = _state(channel_world)
        for changed in (_order(meter, amount="60.00"), _order(other_meter)):
            response = await client.send_json("POST", PURCHASE, changed)
            assert (response.status_code, response.json()["code"]) == (409, "reference_conflict")
        again = await client.send_json("POST", PURCHASE, _order(meter))
    assert _state(channel_world) == before
    assert again.content == first.content


async def test_the_daily_limit_refuses_the_purchase_that_would_pass_it(
    channel_world: ChannelWorld,
) -> None:
    meter = add_metered_customer(channel_world.world, 1)
    async with channel_world.client() as client:
        for n in range(2):
            order = _order(meter, reference=f"D-{n}", amount="500.00")
            assert (await client.send_json("POST", PURCHASE, order)).status_code == 200
        before = _state(channel_world)
        refused = await client.send_json("POST", PURCHASE, _order(meter, reference="D-2"))
    assert (refused.status_code, refused.json()["code"]) == (409, "daily_limit_exceeded")
    assert _state(channel_world) == before


async def test_a_channel_over_its_rate_is_told_to_slow_down(
    session_factory: sessionmaker[Session],
) -> None:
    cw = build_channel_world(session_factory, rate_limit_per_minute=3)
    meter = add_metered_customer(cw.world, 1)
    async with cw.client() as client:
        answers = [
            await client.send_json("POST", "/channel/v1/lookup", {"meter_number": meter})
            for _ in range(4)
        ]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[-1].json()["code"] == "rate_limited"
        cw.clock.advance(seconds=20)  # one request's worth of the bucket refilled
        again = await client.send_json("POST", "/channel/v1/lookup", {"meter_number": meter})
    assert again.status_code == 200


async def test_a_refused_request_still_spends_its_nonce(channel_world: ChannelWorld) -> None:
    meter = add_metered_customer(channel_world.world, 1)
    async with channel_world.client() as client:
        body = json.dumps(_order(drn(99_999))).encode()
        headers = client.headers("POST", PURCHASE, body)
        first = await client.http.post(PURCHASE, content=body, headers=headers)
        assert first.json()["code"] == "meter_not_found"
        replay = await client.http.post(PURCHASE, content=body, headers=headers)
    assert replay.json()["code"] == "replayed_nonce"
    assert meter


async def test_a_suspended_channel_is_refused(channel_world: ChannelWorld) -> None:
    meter = add_metered_customer(channel_world.world, 1)
    with channel_world.session_factory() as session, session.begin():
        session.scalars(select(Channel)).one().active = False
    before = _state(channel_world)
    async with channel_world.client() as client:
        refused = await client.send_json("POST", PURCHASE, _order(meter))
    assert (refused.status_code, refused.json()["code"]) == (403, "channel_inactive")
    assert _state(channel_world) == before


async def test_an_account_with_two_meters_needs_the_meter_number(
    channel_world: ChannelWorld,
) -> None:
    meter = add_metered_customer(channel_world.world, 1)
    second = add_metered_customer(channel_world.world, 2)
    with channel_world.session_factory() as session, session.begin():
        first_account, second_account = session.scalars(select(Account).order_by(Account.id))
        link_meter(session, first_account.id, second, actor="test", now=NOW)
        number = first_account.account_number
    async with channel_world.client() as client:
        order = {**_order(meter), "meter_number": None, "account_number": number}
        refused = await client.send_json("POST", PURCHASE, order)
    assert (refused.status_code, refused.json()["code"]) == (409, "account_meter_ambiguous")
    assert second_account.id != first_account.id


async def test_concurrent_purchases_never_pass_the_daily_limit_together(
    channel_world: ChannelWorld,
) -> None:
    meters = [add_metered_customer(channel_world.world, serial) for serial in range(10)]
    async with channel_world.client() as client:
        answers = await asyncio.gather(
            *(
                client.send_json(
                    "POST", PURCHASE, _order(meter, reference=f"C-{n}", amount="200.00")
                )
                for n, meter in enumerate(meters)
            )
        )
    codes = sorted(a.json().get("code", "completed") for a in answers)
    assert codes == ["completed"] * 5 + ["daily_limit_exceeded"] * 5
    assert channel_world.count(Vend) == 5
