"""A small, real vending world in the test database: keys, a tariff, customers, meters."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditLog
from gridvend.db import make_read_only_session_factory
from headend.models import MeterLifecycle, PrepaidMode
from headend.registry import MeterRegistration, register_meter
from protocols.sts import KeyConfig, MeterPan, luhn_check_digit, parse_meter_number
from tests.vending.factories import residential_stepped
from vending.accounts import (
    NewAccount,
    NewCustomer,
    add_customer,
    link_meter,
    open_account,
    save_tariff,
)
from vending.keystore import KeyEncryptionKey, KeyStore
from vending.models import VendingPoint
from vending.security_module import SoftwareSecurityModule
from vending.tariff_documents import TariffDocument

SGC = "600123"
TARIFF_INDEX = "01"
KRN = 1
OPENED = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)


@dataclass
class VendingWorld:
    session_factory: sessionmaker[Session]
    key_config: KeyConfig
    security_module: SoftwareSecurityModule
    audit: AuditLog
    tariff_code: str
    keystore: KeyStore

    def meter_pan(self, meter_number: str) -> MeterPan:
        return parse_meter_number(meter_number)


def drn(serial: int) -> str:
    """A valid 11-digit meter number (DRN) for manufacturer 99."""
    body = f"99{serial:08d}"
    return body + str(luhn_check_digit(body))


def build_world(session_factory: sessionmaker[Session]) -> VendingWorld:
    key_config = KeyConfig(
        vending_key=secrets.token_bytes(20),
        supply_group_code=SGC,
        tariff_index=TARIFF_INDEX,
        key_revision=KRN,
    )
    store = KeyStore(KeyEncryptionKey.generate())
    tariff = residential_stepped()
    with session_factory() as session, session.begin():
        store.add_key(session, key_config)
        save_tariff(session, TariffDocument.from_tariff(tariff), actor="test", now=OPENED)
    return VendingWorld(
        session_factory=session_factory,
        key_config=key_config,
        security_module=SoftwareSecurityModule(
            store, make_read_only_session_factory(session_factory.kw["bind"])
        ),
        audit=AuditLog(),
        tariff_code=tariff.code,
        keystore=store,
    )


def add_metered_customer(
    world: VendingWorld,
    serial: int,
    *,
    prepaid_mode: PrepaidMode = PrepaidMode.TOKEN,
    debt: Decimal = Decimal(0),
) -> str:
    """A customer with an account on the world's tariff and a registered, linked meter;
    returns the meter number."""
    meter_number = drn(serial)
    with world.session_factory() as session, session.begin():
        register_meter(
            session,
            MeterRegistration(
                serial=f"MTR-{serial}",
                meter_number=meter_number,
                prepaid_mode=prepaid_mode,
                lifecycle=MeterLifecycle.INSTALLED,
                supply_group_code=SGC,
                tariff_index=TARIFF_INDEX,
                key_revision=KRN,
            ),
            now=OPENED,
        )
        customer = add_customer(session, NewCustomer(name=f"Customer {serial}"), OPENED)
        account = open_account(
            session,
            NewAccount(customer_id=customer.id, tariff_code=world.tariff_code, debt=debt),
            OPENED,
        )
        link_meter(session, account.id, meter_number, actor="test", now=OPENED)
    return meter_number


def add_vending_point(world: VendingWorld, code: str, credit_limit_minor: int) -> int:
    with world.session_factory() as session, session.begin():
        point = VendingPoint(
            code=code, name=f"Point {code}", currency="ZAR", credit_limit_minor=credit_limit_minor
        )
        session.add(point)
        session.flush()
        return point.id
