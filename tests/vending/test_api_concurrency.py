"""Concurrent counter vends on one meter: threads, each with its own session, get
distinct TIDs and never the same token; the meter accepts every token. Runs on SQLite
and, when the local server answers, on PostgreSQL too."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditLog, verify_chain
from gridvend.db import make_engine, make_session_factory, upgrade
from protocols.sts import TokenStatus, process_token
from tests.vending.counter_world import NOW, World, make_world
from vending.api import counter_vend
from vending.counter import PaymentMethod, VendLimits
from vending.errors import VendingError
from vending.models import Shift, Vend

LOCAL_POSTGRES = os.environ.get(
    "GRIDVEND_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
THREADS = 6
VENDS_PER_THREAD = 4


@pytest.fixture(params=["sqlite", "postgresql"])
def any_session_factory(
    request: pytest.FixtureRequest, session_factory: sessionmaker[Session]
) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        if session_factory.kw["bind"].dialect.name != "sqlite":
            pytest.skip("the test database is not SQLite")
        yield session_factory
        return
    if session_factory.kw["bind"].dialect.name == "postgresql":
        yield session_factory
        return
    admin = make_engine(LOCAL_POSTGRES, connect_args={"connect_timeout": 2})
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError:
        admin.dispose()
        pytest.skip("no PostgreSQL server answers")
    separator = "&" if "?" in LOCAL_POSTGRES else "?"
    engine = make_engine(f"{LOCAL_POSTGRES}{separator}options=-csearch_path%3D{schema}")
    try:
        upgrade(engine)
        yield make_session_factory(engine)
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def world(any_session_factory: sessionmaker[Session]) -> Iterator[World]:
    yield from make_world(any_session_factory)


def test_concurrent_vends_on_one_meter_get_distinct_tids_and_tokens(world: World) -> None:
    with world.session_factory() as session:
        clerk = session.scalars(select(Shift.clerk)).one()
    audit = AuditLog()

    def sell(worker: int) -> list[Vend]:
        made = []
        for i in range(VENDS_PER_THREAD):
            sale = counter_vend(
                world.session_factory,
                clerk=clerk,
                clerk_key="1",
                meter_number=world.meters[0],
                amount=Decimal("20.00") + worker,
                payment_method=PaymentMethod.CASH,
                reference=f"w{worker}-{i}",
                security_module=world.security_module,
                audit=audit,
                clock=lambda: NOW,
                limits=VendLimits(),
            )
            assert sale.made_now
            made.append(sale.vend)
        return made

    with ThreadPoolExecutor(THREADS) as pool:
        vends = [v for batch in pool.map(sell, range(THREADS)) for v in batch]

    total = THREADS * VENDS_PER_THREAD
    assert len({v.tid for v in vends}) == total
    assert len({v.token_digits for v in vends}) == total
    with world.session_factory() as session:
        assert len(session.scalars(select(Vend)).all()) == total
        assert verify_chain(session).intact
    state = world.meter()
    for vend in sorted(vends, key=lambda v: v.tid or 0):
        assert vend.token_digits is not None
        result = process_token(state, vend.token_digits, NOW)
        assert result.status is TokenStatus.ACCEPT, result.message
        state = result.state
    assert Decimal(state.credit[0]) / 10 == sum(v.units_kwh for v in vends)


def test_the_same_reference_from_concurrent_retries_makes_one_vend(world: World) -> None:
    with world.session_factory() as session:
        clerk = session.scalars(select(Shift.clerk)).one()

    def retry(_: int) -> tuple[int, str | None, bool] | str:
        try:
            sale = counter_vend(
                world.session_factory,
                clerk=clerk,
                clerk_key="1",
                meter_number=world.meters[0],
                amount=Decimal("99.00"),
                payment_method=PaymentMethod.CASH,
                reference="same-ref",
                security_module=world.security_module,
                audit=AuditLog(),
                clock=lambda: datetime(2026, 11, 24, 11, 0, tzinfo=UTC),
                limits=VendLimits(),
            )
        except VendingError as exc:
            # The loser of an insert race is told to retry, and then gets the vend.
            return exc.code
        return sale.vend.id, sale.vend.token_digits, sale.made_now

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(retry, range(8)))
    made = [a for a in answers if isinstance(a, tuple)]
    assert all(a == "concurrent_duplicate" for a in answers if isinstance(a, str))
    assert len({(vend_id, token) for vend_id, token, _ in made}) == 1
    assert sum(1 for *_, fresh in made if fresh) == 1
    with world.session_factory() as session:
        assert len(session.scalars(select(Vend)).all()) == 1


@pytest.fixture
def limited_world(any_session_factory: sessionmaker[Session]) -> Iterator[World]:
    """A counter with room for five vends of 20.00 and six meters on their own accounts."""
    yield from make_world(any_session_factory, credit_limit="100.00")


def _own_account(world: World, serial_number: int) -> str:
    pan = world.add_meter(serial_number)
    customer = world.post("/customers", "clerk", {"name": f"Customer {serial_number}"}).json()
    account = world.post(
        "/accounts", "clerk", {"customer_id": customer["id"], "tariff_code": "RES-STEP"}
    ).json()
    linked = world.post(
        f"/accounts/{account['account_number']}/meters", "clerk", {"meter_number": pan}
    )
    assert linked.status_code == 201
    return pan


def test_concurrent_vends_at_one_point_never_take_it_past_its_credit_limit(
    limited_world: World,
) -> None:
    world = limited_world
    meters = [world.meters[0], *(_own_account(world, 10 + n) for n in range(5))]
    with world.session_factory() as session:
        clerk = session.scalars(select(Shift.clerk)).one()

    def sell(index: int) -> str:
        try:
            counter_vend(
                world.session_factory,
                clerk=clerk,
                clerk_key="1",
                meter_number=meters[index],
                amount=Decimal("20.00"),
                payment_method=PaymentMethod.CASH,
                reference=f"limit-{index}",
                security_module=world.security_module,
                audit=AuditLog(),
                clock=lambda: NOW,
                limits=VendLimits(),
            )
        except VendingError as exc:
            return exc.code
        return "sold"

    # Different meters, so only the vending point's row is shared: every vend may pass
    # the unlocked limit check, and the cash update must refuse the one too many.
    with ThreadPoolExecutor(len(meters)) as pool:
        answers = list(pool.map(sell, range(len(meters))))
    assert sorted(answers) == ["sold"] * 5 + ["vending_point_limit"]
    assert world.outstanding() == 10_000
    with world.session_factory() as session:
        assert len(session.scalars(select(Vend)).all()) == 5
        assert verify_chain(session).intact
