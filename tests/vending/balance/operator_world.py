"""A central-balance world for the operator API: the vending world's keys and tariff,
central customers topped up at the counter, the balance engine fed from a list of
intervals, the head-end's real command queue, and the API with the balance routes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditEntry
from gridvend.auth import Auth
from gridvend.auth import make_router as make_auth_router
from headend.commands import CommandQueue
from headend.models import PrepaidMode
from tests.vending.counter_world import quick_bearer_headers
from tests.vending.world import VendingWorld, add_metered_customer, build_world, drn
from vending.api import install_error_handler
from vending.balance.api import make_balance_router
from vending.balance.engine import BalanceEngine, EngineSettings
from vending.balance.policy import DisconnectPolicy
from vending.counter import PaymentMethod, VendRequest, vend
from vending.models import Account, Customer

# Tuesday 24 November 2026, 10:00 in Johannesburg (UTC+2): outside friendly hours.
MORNING = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
POLICY = DisconnectPolicy(
    timezone="Africa/Johannesburg",
    grace_after_exhaustion=timedelta(minutes=30),
    grace_after_conversion=timedelta(0),
)
EMERGENCY_CREDIT_MINOR = 5_000


@dataclass(frozen=True)
class Interval:
    offset: int
    meter_id: int
    quantity: str
    t_start: datetime
    t_end: datetime
    energy_kwh: Decimal
    quality: str
    reason: str


@dataclass
class Stream:
    """The consumption stream as a list (the head-end's stream in production)."""

    records: list[Interval] = field(default_factory=list)

    def add(self, meter_id: int, start: datetime, kwh: str, quality: str = "measured") -> None:
        self.records.append(
            Interval(
                len(self.records) + 1,
                meter_id,
                "energy_import_kwh",
                start,
                start + timedelta(minutes=15),
                Decimal(kwh),
                quality,
                "spike" if quality == "flagged" else "",
            )
        )

    def __call__(self, session: Session, after_offset: int, limit: int) -> list[Interval]:
        return [r for r in self.records if r.offset > after_offset][:limit]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class BalanceWorld:
    vending: VendingWorld
    client: TestClient
    clock: Clock
    stream: Stream
    engine: BalanceEngine
    queue: CommandQueue
    headers: dict[str, dict[str, str]]
    meter_serials: dict[str, int] = field(default_factory=dict)

    @property
    def session_factory(self) -> sessionmaker[Session]:
        return self.vending.session_factory

    def get(self, path: str, role: str, **kw: Any) -> Any:
        return self.client.get(f"/api/vending{path}", headers=self.headers[role], **kw)

    def post(self, path: str, role: str, json: Any = None) -> Any:
        return self.client.post(f"/api/vending{path}", headers=self.headers[role], json=json)

    def central_customer(self, serial: int, top_up: str, *, protection: str | None = None) -> str:
        """A central-balance customer (no free units) who topped up an hour before
        MORNING; returns the account number."""
        add_metered_customer(self.vending, serial, prepaid_mode=PrepaidMode.CENTRAL)
        with self.session_factory() as session, session.begin():
            account = session.scalars(select(Account).order_by(Account.id.desc())).first()
            assert account is not None
            account.free_units_eligible = False
            session.get_one(Customer, account.customer_id).protection = protection
            number = account.account_number
        self.meter_serials[number] = serial
        self.top_up(serial, top_up, f"top-up-{serial}", MORNING - timedelta(hours=1))
        return number

    def token_customer(self, serial: int) -> str:
        add_metered_customer(self.vending, serial, prepaid_mode=PrepaidMode.TOKEN)
        with self.session_factory() as session:
            return session.scalars(select(Account.account_number).order_by(Account.id.desc())).one()

    def top_up(self, serial: int, amount: str, reference: str, at: datetime) -> None:
        request = VendRequest(
            drn(serial), Decimal(amount), PaymentMethod.CASH, "counter", reference, "clerk.one"
        )
        with self.session_factory() as session, session.begin():
            vend(
                session,
                request,
                security_module=self.vending.security_module,
                audit=self.vending.audit,
                now=at,
            )

    def meter_id(self, account_number: str) -> int:
        from vending.models import AccountMeter

        with self.session_factory() as session:
            return session.scalars(
                select(AccountMeter.meter_id)
                .join(Account, Account.id == AccountMeter.account_id)
                .where(Account.account_number == account_number)
            ).one()

    def meter_number(self, account_number: str) -> str:
        return drn(self.meter_serials[account_number])

    def exhaust(self, account_number: str) -> None:
        """Consumption far beyond a small top-up, rated by one engine round at MORNING."""
        self.stream.add(self.meter_id(account_number), MORNING - timedelta(minutes=30), "40.0")
        self.run_engine(MORNING)

    def run_engine(self, at: datetime) -> None:
        self.clock.now = at
        self.engine.run_once()

    def audited(self, action: str) -> int:
        with self.session_factory() as session:
            return (
                session.scalar(
                    select(func.count()).select_from(AuditEntry).where(AuditEntry.action == action)
                )
                or 0
            )


def make_balance_world(
    session_factory: sessionmaker[Session], *, emergency_credit_minor: int = EMERGENCY_CREDIT_MINOR
) -> Iterator[BalanceWorld]:
    vending = build_world(session_factory)
    clock = Clock(MORNING)
    stream = Stream()
    queue = CommandQueue(session_factory, audit=vending.audit, clock=clock)
    engine = BalanceEngine(
        session_factory,
        source=stream,
        commands=queue,
        audit=vending.audit,
        settings=EngineSettings(policy=POLICY),
        clock=clock,
    )
    app = FastAPI()
    install_error_handler(app)
    auth = Auth(session_factory)
    app.include_router(make_auth_router(session_factory, auth))
    app.include_router(
        make_balance_router(
            session_factory,
            require=auth.require,
            audit=vending.audit,
            emergency_credit_minor=emergency_credit_minor,
            clock=clock,
        )
    )
    headers = {
        role: quick_bearer_headers(session_factory, role)
        for role in ("admin", "supervisor", "clerk", "technician")
    }
    with TestClient(app) as client:
        yield BalanceWorld(vending, client, clock, stream, engine, queue, headers)
