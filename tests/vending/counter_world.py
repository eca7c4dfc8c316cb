"""A utility with one counter, set up through the API as staff would: tariff, vending
point, customer, account, a token meter with its vending key, and a clerk on shift.

The app is built here from the counter router plus gridvend.auth's router (the lead
mounts the same router in gridvend.app).
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditEntry, AuditLog
from gridvend.auth import AccessToken, Auth, User
from gridvend.auth import make_router as make_auth_router
from gridvend.db import make_read_only_session_factory
from headend.models import MeterLifecycle, PrepaidMode
from headend.registry import MeterRegistration, register_meter
from meter_sim.fleet import sts_meter_pan
from protocols.sts import (
    BaseDate,
    Dkga,
    EncryptionAlgorithm,
    KeyConfig,
    KeyType,
    MeterState,
    meter_state_for,
    parse_meter_number,
)
from tests.conftest import TEST_PASSWORD
from tests.vending.factories import residential_stepped
from vending.api import CounterConfig, install_error_handler, make_router
from vending.counter import VendLimits
from vending.key_change_api import make_key_change_router
from vending.keystore import KeyEncryptionKey, KeyStore
from vending.models import (
    Account,
    AccountMeter,
    Customer,
    LedgerEntry,
    MeterTidCursor,
    Shift,
    TariffRecord,
    TariffVersionRecord,
    Vend,
    VendingPoint,
)
from vending.models_counter import TokenAcceptance, VendingPointBanking
from vending.reversals import AcceptanceCheck
from vending.security_module import SoftwareSecurityModule
from vending.tariff_documents import TariffDocument

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
SGC = "123457"
RNG = secrets.SystemRandom()


class Clock:
    """The API's clock: fixed unless a test moves it."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def key_config(seed: int = 7) -> KeyConfig:
    # A fixed test vending key: deterministic tokens from run to run.
    return KeyConfig(
        vending_key=bytes((seed * 31 + i) % 256 for i in range(8)),
        supply_group_code=SGC,
        tariff_index="01",
        key_revision=1,
        key_type=KeyType.DUTK,
        base_date=BaseDate.Y2014,
        algorithm=EncryptionAlgorithm.STA,
        dkga=Dkga.DKGA02,
    )


@functools.cache
def _password_hash() -> str:
    from pwdlib import PasswordHash

    return PasswordHash.recommended().hash(TEST_PASSWORD)


def quick_bearer_headers(session_factory: sessionmaker[Session], role: str) -> dict[str, str]:
    """Like tests.conftest.bearer_headers, without hashing a password per user (argon2
    takes most of a second here): the user and a token row are stored directly, as
    gridvend.auth stores them (the token's SHA-256)."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with session_factory() as session, session.begin():
        user = User(
            username=f"{role}-{uuid.uuid4().hex[:8]}",
            role=role,
            password_hash=_password_hash(),
            active=True,
            created_at=now,
        )
        session.add(user)
        session.flush()
        session.add(
            AccessToken(
                token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                user_id=user.id,
                created_at=now,
                expires_at=now + timedelta(hours=12),
                revoked=False,
            )
        )
    return {"Authorization": f"Bearer {token}"}


@dataclass
class World:
    session_factory: sessionmaker[Session]
    client: TestClient
    clock: Clock
    security_module: SoftwareSecurityModule
    config: KeyConfig
    keystore: KeyStore
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    meters: list[str] = field(default_factory=list)
    account_number: str = ""
    customer_id: int = 0

    def as_(self, role: str) -> dict[str, str]:
        return self.headers[role]

    def post(self, path: str, role: str, json: Any = None, **kw: Any) -> Any:
        return self.client.post(f"/api/vending{path}", headers=self.as_(role), json=json, **kw)

    def get(self, path: str, role: str, **kw: Any) -> Any:
        return self.client.get(f"/api/vending{path}", headers=self.as_(role), **kw)

    def vend(
        self,
        amount: str = "100.00",
        reference: str | None = None,
        payment_method: str = "cash",
        **extra: Any,
    ) -> Any:
        body = {
            "meter_number": self.meters[0],
            "amount": amount,
            "payment_method": payment_method,
            "reference": reference or f"r{RNG.randrange(10**12)}",
            **extra,
        }
        return self.post("/vends", "clerk", body)

    def meter(self, index: int = 0) -> MeterState:
        """A real STS meter (protocols.sts state machine) holding this meter's key."""
        return meter_state_for(self.config, parse_meter_number(self.meters[index]))

    def add_meter(self, serial_number: int, *, mode: PrepaidMode = PrepaidMode.TOKEN) -> str:
        pan = sts_meter_pan(serial_number)
        with self.session_factory() as session, session.begin():
            register_meter(
                session,
                MeterRegistration(
                    serial=f"SIM-{serial_number:08d}",
                    meter_number=pan,
                    prepaid_mode=mode,
                    lifecycle=MeterLifecycle.INSTALLED,
                    supply_group_code=self.config.supply_group_code,
                    tariff_index=self.config.tariff_index,
                    key_revision=self.config.key_revision,
                    key_type=2,
                    base_date=int(self.config.base_date),
                    encryption_algorithm="EA07",
                    dkga="DKGA02",
                ),
            )
        self.meters.append(pan)
        return pan

    def counts(self) -> dict[str, int]:
        """Rows per table: "nothing committed" means these do not change."""
        with self.session_factory() as session:
            rows = {
                model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
                for model in COUNTED
            }
        return rows | {"outstanding": self.outstanding(), "debt": self.debt()}

    def outstanding(self) -> int:
        with self.session_factory() as session:
            return session.scalar(select(func.sum(VendingPoint.outstanding_minor))) or 0

    def debt(self) -> int:
        with self.session_factory() as session:
            return session.scalar(select(func.sum(Account.debt_minor))) or 0


COUNTED = (
    Customer,
    Account,
    AccountMeter,
    TariffRecord,
    TariffVersionRecord,
    VendingPoint,
    Shift,
    Vend,
    MeterTidCursor,
    LedgerEntry,
    AuditEntry,
    TokenAcceptance,
    VendingPointBanking,
)


def build_app(
    session_factory: sessionmaker[Session],
    security_module: SoftwareSecurityModule,
    clock: Callable[[], datetime],
    limits: VendLimits = VendLimits(),
    token_acceptance: AcceptanceCheck | None = None,
) -> FastAPI:
    app = FastAPI()
    install_error_handler(app)
    auth = Auth(session_factory)
    app.include_router(make_auth_router(session_factory, auth))
    app.include_router(
        make_router(
            session_factory,
            require=auth.require,
            require_later=auth.require_later,
            security_module=security_module,
            audit=AuditLog(),
            clock=clock,
            limits=limits,
            config=CounterConfig(utility_name="Demo Power", timezone="Africa/Johannesburg"),
            token_acceptance=token_acceptance,
        )
    )
    app.include_router(
        make_key_change_router(
            session_factory,
            require=auth.require,
            security_module=security_module,
            audit=AuditLog(),
            clock=clock,
        )
    )
    return app


def make_world(
    session_factory: sessionmaker[Session],
    *,
    credit_limit: str = "100000.00",
    debt: str = "0",
    debt_recovery: dict[str, Any] | None = None,
    open_shift: bool = True,
    mode: PrepaidMode = PrepaidMode.TOKEN,
    token_acceptance: AcceptanceCheck | None = None,
    config: KeyConfig | None = None,
) -> Iterator[World]:
    kek = KeyEncryptionKey.generate()
    config = config or key_config()
    keystore = KeyStore(kek)
    with session_factory() as session, session.begin():
        keystore.add_key(session, config)
    # Read-only key sessions, as gridvend.runtime gives the module: a key change asks
    # for keys in the middle of its transaction.
    module = SoftwareSecurityModule(
        keystore, make_read_only_session_factory(session_factory.kw["bind"])
    )
    clock = Clock()
    app = build_app(session_factory, module, clock, token_acceptance=token_acceptance)
    with TestClient(app) as client:
        world = World(session_factory, client, clock, module, config, keystore)
        for role in ("admin", "supervisor", "clerk", "technician"):
            world.headers[role] = quick_bearer_headers(session_factory, role)
        world.add_meter(1, mode=mode)
        tariff = TariffDocument.from_tariff(residential_stepped()).model_dump(mode="json")
        assert world.post("/tariffs", "supervisor", tariff).status_code == 201
        point = {"code": "CTR1", "name": "Main counter", "currency": "ZAR"}
        point["credit_limit"] = credit_limit
        assert world.post("/vending-points", "admin", point).status_code == 201
        customer = world.post(
            "/customers",
            "clerk",
            {"name": "Thandi Mokoena", "phone": "+27 82 555 0101", "address": "12 Long St"},
        ).json()
        world.customer_id = customer["id"]
        account = world.post(
            "/accounts",
            "clerk",
            {
                "customer_id": customer["id"],
                "tariff_code": "RES-STEP",
                "debt": debt,
                "debt_recovery": debt_recovery or {},
            },
        ).json()
        world.account_number = account["account_number"]
        linked = world.post(
            f"/accounts/{world.account_number}/meters", "clerk", {"meter_number": world.meters[0]}
        )
        assert linked.status_code == 201, linked.text
        if open_shift:
            shift = world.post(
                "/shifts", "clerk", {"vending_point": "CTR1", "opening_float": "500.00"}
            )
            assert shift.status_code == 201, shift.text
        yield world


def kwh(text: str) -> Decimal:
    return Decimal(text)
