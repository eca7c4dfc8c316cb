"""What the demo utility sells: its tariff, vending key, counter, clerk and customers."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from gridvend.auth import NewUser, Role, create_user
from meter_sim.model import DecoderSettings, MeterConfig
from protocols.sts import KeyConfig
from vending.accounts import (
    NewAccount,
    NewCustomer,
    add_customer,
    link_meter,
    open_account,
    save_tariff,
)
from vending.keystore import KeyStore
from vending.models import VendingPoint
from vending.tariff_documents import TariffDocument

SUPPLY_GROUP_CODE = "600100"
TARIFF_INDEX = "01"
KEY_REVISION = 1
DEMO_CLERK = "clerk"
DEMO_TARIFF = TariffDocument.model_validate(
    {
        "code": "RES-STEP",
        "name": "Residential stepped (demo)",
        "currency": "ZAR",
        "timezone": "Africa/Johannesburg",
        "versions": [
            {
                "effective_from": "2026-01-01",
                "energy": {
                    "kind": "blocks",
                    "blocks": [
                        {"up_to_kwh": "350", "rate_per_kwh": "1.7845"},
                        {"up_to_kwh": None, "rate_per_kwh": "2.5169"},
                    ],
                },
                "fixed_charges": [{"name": "service charge", "amount_per_month": "150.00"}],
                "levies": [{"name": "environmental levy", "per_kwh": "0.035"}],
                "vat_percent": "15",
            }
        ],
    }
)


@dataclass(frozen=True, slots=True)
class DemoKeys:
    vending_key: bytes

    def decoder_settings(self) -> DecoderSettings:
        """How the simulated meters are keyed: the same vending key as the key store."""
        return DecoderSettings(
            supply_group_code=SUPPLY_GROUP_CODE,
            tariff_index=TARIFF_INDEX,
            key_revision_number=KEY_REVISION,
            vending_key_hex=self.vending_key.hex(),
        )


def new_demo_keys() -> DemoKeys:
    return DemoKeys(secrets.token_bytes(20))


def seed_vending(
    session: Session,
    keystore: KeyStore,
    keys: DemoKeys,
    configs: list[MeterConfig],
    clerk_password: str,
    now: datetime,
) -> None:
    """Key store, tariff, a vending point, a clerk and one customer account per meter."""
    keystore.add_key(
        session,
        KeyConfig(
            vending_key=keys.vending_key,
            supply_group_code=SUPPLY_GROUP_CODE,
            tariff_index=TARIFF_INDEX,
            key_revision=KEY_REVISION,
        ),
        now=now,
    )
    save_tariff(session, DEMO_TARIFF, actor="demo", now=now)
    session.add(
        VendingPoint(
            code="HQ", name="Head office counter", currency="ZAR", credit_limit_minor=50_000_000
        )
    )
    create_user(session, NewUser(username=DEMO_CLERK, role=Role.CLERK, password=clerk_password))
    for number, config in enumerate(configs, start=1):
        customer = add_customer(session, NewCustomer(name=f"Demo customer {number}"), now)
        account = open_account(
            session, NewAccount(customer_id=customer.id, tariff_code=DEMO_TARIFF.code), now
        )
        link_meter(session, account.id, config.meter_number, actor="demo", now=now)
